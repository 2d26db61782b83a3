"""Bitcoin Script: opcodes, parsing, Core's asm text, output classification and relay policy.

Everything here mirrors Bitcoin Core's own rules (``Solver``, ``ScriptToAsmStr``,
``IsStandard``, ``GetDustThreshold``) so that the embedded node shows and refuses
exactly what bitcoind would.

Over 400 lines on purpose: one interpreter-free view of Script (opcodes, parsing, asm, classification,
policy) whose parts share the opcode table.
"""

from __future__ import annotations

import math

from chains.btc.primitives import Tx, TxOut, hash160, push_data, ser_compact_size, sha256

# --- opcodes ----------------------------------------------------------------

OP_0 = 0x00
OP_PUSHDATA1 = 0x4C
OP_PUSHDATA2 = 0x4D
OP_PUSHDATA4 = 0x4E
OP_1NEGATE = 0x4F
OP_RESERVED = 0x50
OP_1 = 0x51
OP_16 = 0x60
OP_IF = 0x63
OP_ELSE = 0x67
OP_ENDIF = 0x68
OP_RETURN = 0x6A
OP_DROP = 0x75
OP_DUP = 0x76
OP_SIZE = 0x82
OP_EQUAL = 0x87
OP_EQUALVERIFY = 0x88
OP_SHA256 = 0xA8
OP_HASH160 = 0xA9
OP_CHECKSIG = 0xAC
OP_CHECKMULTISIG = 0xAE
OP_CHECKLOCKTIMEVERIFY = 0xB1
OP_CHECKSEQUENCEVERIFY = 0xB2
OP_INVALIDOPCODE = 0xFF

_NAMES = {
    0x00: "0",
    0x4C: "OP_PUSHDATA1",
    0x4D: "OP_PUSHDATA2",
    0x4E: "OP_PUSHDATA4",
    0x4F: "-1",
    0x50: "OP_RESERVED",
    0x61: "OP_NOP",
    0x62: "OP_VER",
    0x63: "OP_IF",
    0x64: "OP_NOTIF",
    0x65: "OP_VERIF",
    0x66: "OP_VERNOTIF",
    0x67: "OP_ELSE",
    0x68: "OP_ENDIF",
    0x69: "OP_VERIFY",
    0x6A: "OP_RETURN",
    0x6B: "OP_TOALTSTACK",
    0x6C: "OP_FROMALTSTACK",
    0x6D: "OP_2DROP",
    0x6E: "OP_2DUP",
    0x6F: "OP_3DUP",
    0x70: "OP_2OVER",
    0x71: "OP_2ROT",
    0x72: "OP_2SWAP",
    0x73: "OP_IFDUP",
    0x74: "OP_DEPTH",
    0x75: "OP_DROP",
    0x76: "OP_DUP",
    0x77: "OP_NIP",
    0x78: "OP_OVER",
    0x79: "OP_PICK",
    0x7A: "OP_ROLL",
    0x7B: "OP_ROT",
    0x7C: "OP_SWAP",
    0x7D: "OP_TUCK",
    0x7E: "OP_CAT",
    0x7F: "OP_SUBSTR",
    0x80: "OP_LEFT",
    0x81: "OP_RIGHT",
    0x82: "OP_SIZE",
    0x83: "OP_INVERT",
    0x84: "OP_AND",
    0x85: "OP_OR",
    0x86: "OP_XOR",
    0x87: "OP_EQUAL",
    0x88: "OP_EQUALVERIFY",
    0x89: "OP_RESERVED1",
    0x8A: "OP_RESERVED2",
    0x8B: "OP_1ADD",
    0x8C: "OP_1SUB",
    0x8D: "OP_2MUL",
    0x8E: "OP_2DIV",
    0x8F: "OP_NEGATE",
    0x90: "OP_ABS",
    0x91: "OP_NOT",
    0x92: "OP_0NOTEQUAL",
    0x93: "OP_ADD",
    0x94: "OP_SUB",
    0x95: "OP_MUL",
    0x96: "OP_DIV",
    0x97: "OP_MOD",
    0x98: "OP_LSHIFT",
    0x99: "OP_RSHIFT",
    0x9A: "OP_BOOLAND",
    0x9B: "OP_BOOLOR",
    0x9C: "OP_NUMEQUAL",
    0x9D: "OP_NUMEQUALVERIFY",
    0x9E: "OP_NUMNOTEQUAL",
    0x9F: "OP_LESSTHAN",
    0xA0: "OP_GREATERTHAN",
    0xA1: "OP_LESSTHANOREQUAL",
    0xA2: "OP_GREATERTHANOREQUAL",
    0xA3: "OP_MIN",
    0xA4: "OP_MAX",
    0xA5: "OP_WITHIN",
    0xA6: "OP_RIPEMD160",
    0xA7: "OP_SHA1",
    0xA8: "OP_SHA256",
    0xA9: "OP_HASH160",
    0xAA: "OP_HASH256",
    0xAB: "OP_CODESEPARATOR",
    0xAC: "OP_CHECKSIG",
    0xAD: "OP_CHECKSIGVERIFY",
    0xAE: "OP_CHECKMULTISIG",
    0xAF: "OP_CHECKMULTISIGVERIFY",
    0xB0: "OP_NOP1",
    0xB1: "OP_CHECKLOCKTIMEVERIFY",
    0xB2: "OP_CHECKSEQUENCEVERIFY",
    0xB3: "OP_NOP4",
    0xB4: "OP_NOP5",
    0xB5: "OP_NOP6",
    0xB6: "OP_NOP7",
    0xB7: "OP_NOP8",
    0xB8: "OP_NOP9",
    0xB9: "OP_NOP10",
    0xBA: "OP_CHECKSIGADD",
    0xFF: "OP_INVALIDOPCODE",
}
_NAMES.update({0x50 + n: str(n) for n in range(1, 17)})
OPCODE_NAMES: dict[int, str] = {op: _NAMES.get(op, "OP_UNKNOWN") for op in range(256)}
"""Core's ``GetOpName`` for every byte value (pushes of 1..75 bytes have no name of their own)."""

# Lookup by the names people write (``OP_CHECKSIG``, ``CHECKSIG``, ``OP_TRUE``...), for script builders.
OPCODES: dict[str, int] = {name: op for op, name in _NAMES.items() if name.startswith("OP_")}
OPCODES.update({f"OP_{n}": 0x50 + n for n in range(1, 17)})
OPCODES.update({"OP_0": 0, "OP_FALSE": 0, "OP_TRUE": 0x51, "OP_1NEGATE": 0x4F, "OP_NOP2": 0xB1, "OP_NOP3": 0xB2})
OPCODES.update({name[3:]: op for name, op in list(OPCODES.items())})

SIGHASH_NAMES = {
    0x01: "ALL",
    0x81: "ALL|ANYONECANPAY",
    0x02: "NONE",
    0x82: "NONE|ANYONECANPAY",
    0x03: "SINGLE",
    0x83: "SINGLE|ANYONECANPAY",
}

# --- policy constants (Bitcoin Core's defaults) ------------------------------

MAX_SCRIPT_SIZE = 10_000
MAX_SCRIPT_ELEMENT_SIZE = 520
MAX_OPS_PER_SCRIPT = 201
MAX_PUBKEYS_PER_MULTISIG = 20
MAX_OP_RETURN_RELAY = 83  # -datacarriersize default before Core 30: 80 bytes of data + OP_RETURN + push
MAX_STANDARD_TX_WEIGHT = 400_000
MIN_STANDARD_TX_NONWITNESS_SIZE = 65
TX_MIN_STANDARD_VERSION = 1
TX_MAX_STANDARD_VERSION = 3
MAX_STANDARD_SCRIPTSIG_SIZE = 1650
MAX_STANDARD_P2WSH_STACK_ITEMS = 100
MAX_STANDARD_P2WSH_STACK_ITEM_SIZE = 80
MAX_STANDARD_P2WSH_SCRIPT_SIZE = 3600
MAX_STANDARD_TAPSCRIPT_STACK_ITEM_SIZE = 80
MAX_P2SH_SIGOPS = 15
MAX_STANDARD_TX_SIGOPS_COST = 16_000
MAX_BLOCK_WEIGHT = 4_000_000
MAX_BLOCK_SIGOPS_COST = 80_000
DUST_RELAY_TX_FEE = 3000  # sat/kvB
DEFAULT_MIN_RELAY_TX_FEE = 1000  # sat/kvB
DEFAULT_INCREMENTAL_RELAY_FEE = 1000  # sat/kvB
DEFAULT_ANCESTOR_LIMIT = 25
DEFAULT_DESCENDANT_LIMIT = 25
DEFAULT_ANCESTOR_SIZE_LIMIT_KVB = 101
DEFAULT_DESCENDANT_SIZE_LIMIT_KVB = 101
MAX_BIP125_RBF_SEQUENCE = 0xFFFFFFFD
LOCKTIME_THRESHOLD = 500_000_000
ANCHOR_SCRIPT = b"\x51\x02\x4e\x73"

# --- parsing ----------------------------------------------------------------


def parse_script(script: bytes) -> list[tuple[int, bytes | None]]:
    """Split a script into ``(opcode, data)``.  Push opcodes (0x00..0x4e) carry their data as bytes;
    a push cut short by the end of the script is the last entry, with data ``None``.  Other opcodes
    carry ``None``."""
    ops: list[tuple[int, bytes | None]] = []
    append = ops.append
    i, end = 0, len(script)
    while i < end:
        op = script[i]
        i += 1
        if op > OP_PUSHDATA4:
            append((op, None))
            continue
        if op < OP_PUSHDATA1:
            size = op
        else:
            width = 1 if op == OP_PUSHDATA1 else 2 if op == OP_PUSHDATA2 else 4
            if i + width > end:
                append((op, None))
                break
            size = int.from_bytes(script[i : i + width], "little")
            i += width
        if i + size > end:
            append((op, None))
            break
        append((op, script[i : i + size]))
        i += size
    return ops


MAX_OPCODE = 0xB9  # OP_NOP10: Core's HasValidOps predates OP_CHECKSIGADD and still stops here


def has_valid_ops(script: bytes) -> bool:
    """Core's ``HasValidOps``: every op parses, is at most OP_NOP10 and pushes at most 520 bytes."""
    for op, data in parse_script(script):
        if op > MAX_OPCODE:
            return False
        if op <= OP_PUSHDATA4 and (data is None or len(data) > MAX_SCRIPT_ELEMENT_SIZE):
            return False
    return True


def is_push_only(script: bytes, start: int = 0) -> bool:
    """Core's ``IsPushOnly``: only pushes and OP_1NEGATE..OP_16 (OP_RESERVED counts, as in Core)."""
    return all(op <= OP_16 and not (op <= OP_PUSHDATA4 and data is None) for op, data in parse_script(script[start:]))


def is_unspendable(script: bytes) -> bool:
    return (len(script) > 0 and script[0] == OP_RETURN) or len(script) > MAX_SCRIPT_SIZE


def decode_script_num(data: bytes) -> int:
    """CScriptNum value of a stack element (no minimality or size check), as ScriptToAsmStr uses it."""
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def is_valid_signature_encoding(sig: bytes) -> bool:
    """BIP66 strict DER (with the trailing sighash byte), Core's ``IsValidSignatureEncoding``."""
    n = len(sig)
    if n < 9 or n > 73 or sig[0] != 0x30 or sig[1] != n - 3:
        return False
    len_r = sig[3]
    if 5 + len_r >= n:
        return False
    len_s = sig[5 + len_r]
    if len_r + len_s + 7 != n:
        return False
    if sig[2] != 0x02 or len_r == 0 or sig[4] & 0x80:
        return False
    if len_r > 1 and sig[4] == 0x00 and not sig[5] & 0x80:
        return False
    if sig[len_r + 4] != 0x02 or len_s == 0 or sig[len_r + 6] & 0x80:
        return False
    if len_s > 1 and sig[len_r + 6] == 0x00 and not sig[len_r + 7] & 0x80:
        return False
    return True


def disassemble(script: bytes, sighash_decode: bool = False) -> str:
    """Core's ``ScriptToAsmStr``: small pushes as numbers, other pushes as hex, ``[error]`` on a cut push;
    with ``sighash_decode`` (scriptSig asm) DER signatures get ``[ALL]``-style suffixes."""
    decode_sigs = sighash_decode and not is_unspendable(script)
    words: list[str] = []
    for op, data in parse_script(script):
        if op > OP_PUSHDATA4:
            words.append(OPCODE_NAMES[op])
        elif data is None:
            words.append("[error]")
        elif len(data) <= 4:
            words.append(str(decode_script_num(data)))
        elif decode_sigs and data[-1] in SIGHASH_NAMES and is_valid_signature_encoding(data):
            words.append(data[:-1].hex() + "[" + SIGHASH_NAMES[data[-1]] + "]")
        else:
            words.append(data.hex())
    return " ".join(words)


def push_minimal(data: bytes) -> bytes:
    """The push ``SCRIPT_VERIFY_MINIMALDATA`` requires: like ``push_data`` but OP_0, OP_1..OP_16 and
    OP_1NEGATE for the data they stand for (what ``_is_minimal_push`` accepts)."""
    if not data:
        return bytes((OP_0,))
    if len(data) == 1 and 1 <= data[0] <= 16:
        return bytes((OP_1 + data[0] - 1,))
    if data == b"\x81":
        return bytes((OP_1NEGATE,))
    return push_data(data)


def assemble(*items: int | bytes | str) -> bytes:
    """Build a script: ints are opcodes, bytes are pushed (shortest push), strings are opcode names."""
    out = bytearray()
    for item in items:
        if isinstance(item, str):
            out.append(OPCODES[item.upper()])
        elif isinstance(item, int):
            out.append(item)
        else:
            out += push_data(item)
    return bytes(out)


# --- classification (Core's Solver) ----------------------------------------


def witness_program(script: bytes) -> tuple[int, bytes] | None:
    """``(version, program)`` if ``script`` is a witness program (BIP141), else ``None``."""
    n = len(script)
    if n < 4 or n > 42:
        return None
    first = script[0]
    if first != OP_0 and not OP_1 <= first <= OP_16:
        return None
    if script[1] + 2 != n:
        return None
    return (0 if first == OP_0 else first - 0x50), script[2:]


def p2pkh_script(pubkey_hash: bytes) -> bytes:
    """Also the BIP143 script code a P2WPKH input signs."""
    return bytes((OP_DUP, OP_HASH160, 20)) + pubkey_hash + bytes((OP_EQUALVERIFY, OP_CHECKSIG))


def p2wpkh_script(pubkey_hash: bytes) -> bytes:
    return bytes((OP_0, 20)) + pubkey_hash


def p2wsh_script(witness_script: bytes) -> bytes:
    return bytes((OP_0, 32)) + sha256(witness_script)


def p2sh_script(redeem_script: bytes) -> bytes:
    return bytes((OP_HASH160, 20)) + hash160(redeem_script) + bytes((OP_EQUAL,))


def is_p2sh(script: bytes) -> bool:
    return len(script) == 23 and script[0] == OP_HASH160 and script[1] == 0x14 and script[22] == OP_EQUAL


def is_p2pkh(script: bytes) -> bool:
    return len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23] == OP_EQUALVERIFY and script[24] == OP_CHECKSIG


def pubkey_valid_size(data: bytes) -> bool:
    """Core's ``CPubKey::ValidSize``: the header byte fixes the length."""
    if not data:
        return False
    header = data[0]
    if header in (2, 3):
        return len(data) == 33
    if header in (4, 6, 7):
        return len(data) == 65
    return False


def _small_number(op: int, data: bytes | None, lo: int, hi: int) -> int | None:
    """Core's ``GetScriptNumber`` for multisig m/n: OP_1..OP_16 or a minimal push of ≤4 bytes."""
    if OP_1 <= op <= OP_16:
        value = op - 0x50
    elif op <= OP_PUSHDATA4 and data is not None:
        if not _is_minimal_push(op, data) or len(data) > 4 or (data and not _is_minimal_num(data)):
            return None
        value = decode_script_num(data)
    else:
        return None
    return value if lo <= value <= hi else None


def _is_minimal_push(op: int, data: bytes) -> bool:
    n = len(data)
    if n == 0:
        return op == OP_0
    if n == 1 and 1 <= data[0] <= 16:
        return False
    if n == 1 and data[0] == 0x81:
        return False
    if n <= 75:
        return op == n
    if n <= 255:
        return op == OP_PUSHDATA1
    if n <= 65535:
        return op == OP_PUSHDATA2
    return True


def _is_minimal_num(data: bytes) -> bool:
    if data[-1] & 0x7F == 0:
        return len(data) > 1 and bool(data[-2] & 0x80)
    return True


def multisig_params(script: bytes) -> tuple[int, list[bytes]] | None:
    """``(required, pubkeys)`` for a bare multisig script as Core's ``MatchMultisig`` sees it."""
    if not script or script[-1] != OP_CHECKMULTISIG:
        return None
    ops = parse_script(script)
    if len(ops) < 3 or ops[-1] != (OP_CHECKMULTISIG, None):
        return None
    required = _small_number(*ops[0], 1, MAX_PUBKEYS_PER_MULTISIG)
    if required is None:
        return None
    keys = []
    i = 1
    while i < len(ops) and ops[i][1] is not None and pubkey_valid_size(ops[i][1]):  # type: ignore[arg-type]
        keys.append(ops[i][1])
        i += 1
    if i != len(ops) - 2:
        return None
    total = _small_number(*ops[i], required, MAX_PUBKEYS_PER_MULTISIG)
    if total is None or total != len(keys):
        return None
    return required, keys  # type: ignore[return-value]


def classify(script: bytes) -> str:
    """Core's ``Solver`` output type name, as shown in ``scriptPubKey.type``."""
    if is_p2sh(script):
        return "scripthash"
    wp = witness_program(script)
    if wp is not None:
        version, program = wp
        if version == 0 and len(program) == 20:
            return "witness_v0_keyhash"
        if version == 0 and len(program) == 32:
            return "witness_v0_scripthash"
        if version == 1 and len(program) == 32:
            return "witness_v1_taproot"
        if script == ANCHOR_SCRIPT:
            return "anchor"
        return "witness_unknown" if version != 0 else "nonstandard"
    if script and script[0] == OP_RETURN and is_push_only(script, 1):
        return "nulldata"
    n = len(script)
    if (n == 35 or n == 67) and script[-1] == OP_CHECKSIG and script[0] == n - 2 and pubkey_valid_size(script[1:-1]):
        return "pubkey"
    if is_p2pkh(script):
        return "pubkeyhash"
    if multisig_params(script) is not None:
        return "multisig"
    return "nonstandard"


# --- relay policy -------------------------------------------------------------


def is_standard_output(script: bytes, max_datacarrier_bytes: int | None = MAX_OP_RETURN_RELAY) -> bool:
    """Core's ``IsStandard`` for one output script (bare multisig up to 3 keys passes here; whether
    bare multisig is relayed at all is ``-permitbaremultisig``, on by default)."""
    kind = classify(script)
    if kind == "nonstandard":
        return False
    if kind == "multisig":
        required, keys = multisig_params(script)  # type: ignore[misc]
        return 1 <= len(keys) <= 3 and 1 <= required <= len(keys)
    if kind == "nulldata":
        return max_datacarrier_bytes is not None and len(script) <= max_datacarrier_bytes
    return True


def fee_for_size(feerate_sat_per_kvb: int, size: int) -> int:
    """Core's ``CFeeRate::GetFee``: the fee for ``size`` virtual bytes, rounded up."""
    return math.ceil(feerate_sat_per_kvb * size / 1000) if size else 0


def dust_threshold(script_pubkey: bytes, dust_relay_feerate: int = DUST_RELAY_TX_FEE) -> int:
    """Core's ``GetDustThreshold``: the cost of an output plus the input that would spend it."""
    if is_unspendable(script_pubkey):
        return 0
    size = 8 + len(ser_compact_size(len(script_pubkey))) + len(script_pubkey)
    if witness_program(script_pubkey) is not None:
        size += 32 + 4 + 1 + 107 // 4 + 4
    else:
        size += 32 + 4 + 1 + 107 + 4
    return fee_for_size(dust_relay_feerate, size)


def is_dust(txout: TxOut, dust_relay_feerate: int = DUST_RELAY_TX_FEE) -> bool:
    return txout.value < dust_threshold(txout.script_pubkey, dust_relay_feerate)


def standard_tx_reject_reason(tx: Tx, max_datacarrier_bytes: int | None = MAX_OP_RETURN_RELAY, dust_relay_feerate: int = DUST_RELAY_TX_FEE) -> str | None:
    """Core's ``IsStandardTx`` (v28 order: any dust output is refused; v29's single zero-fee
    "ephemeral dust" output is not modelled) plus the mempool's small-size check: the reject
    reason bitcoind gives, or ``None``.

    Checks that need the spent outputs (``bad-txns-nonstandard-inputs``, witness policy) are the
    mempool's job."""
    if not TX_MIN_STANDARD_VERSION <= tx.version <= TX_MAX_STANDARD_VERSION:
        return "version"
    if tx.weight > MAX_STANDARD_TX_WEIGHT:
        return "tx-size"
    for txin in tx.vin:
        if len(txin.script_sig) > MAX_STANDARD_SCRIPTSIG_SIZE:
            return "scriptsig-size"
        if not is_push_only(txin.script_sig):
            return "scriptsig-not-pushonly"
    data_outputs = 0
    for txout in tx.vout:
        if not is_standard_output(txout.script_pubkey, max_datacarrier_bytes):
            return "scriptpubkey"
        if classify(txout.script_pubkey) == "nulldata":
            data_outputs += 1
        elif is_dust(txout, dust_relay_feerate):
            return "dust"
    if data_outputs > 1:
        return "multi-op-return"
    if tx.stripped_size < MIN_STANDARD_TX_NONWITNESS_SIZE:
        return "tx-size-small"
    return None
