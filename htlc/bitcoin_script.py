"""The two Bitcoin HTLC scripts the bridge builds and understands.

* ``p2wsh``: our own contract (DESIGN.md, HTLC section), paid to as P2WSH::

    OP_IF OP_SIZE 32 OP_EQUALVERIFY OP_SHA256 <H> OP_EQUALVERIFY <claim_pubkey>
    OP_ELSE <refund_height> OP_CHECKLOCKTIMEVERIFY OP_DROP <refund_pubkey>
    OP_ENDIF OP_CHECKSIG

* ``p2sh-bip199``: the P2SH contract of BIP-199 as decred/atomicswap writes it,
  so users of those tools can swap with us::

    OP_IF OP_SIZE 32 OP_EQUALVERIFY OP_SHA256 <H> OP_EQUALVERIFY OP_DUP OP_HASH160 <claim_pkh>
    OP_ELSE <lock> OP_CHECKLOCKTIMEVERIFY OP_DROP OP_DUP OP_HASH160 <refund_pkh>
    OP_ENDIF OP_EQUALVERIFY OP_CHECKSIG

Everything is encoded the way Bitcoin Core's ``CScript <<`` does (minimal
pushes, minimal CScriptNum), so one set of parameters has exactly one script;
``htlc.audit`` relies on that to recognise scripts byte for byte.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

from bitcoinlib.encoding import hash160 as _hash160
from bitcoinlib.encoding import pubkeyhash_to_addr_base58, pubkeyhash_to_addr_bech32

from bridge.errors import InputError
from chains.bitcoin_tx import BASE58_VERSIONS, BECH32_HRP

OP_0 = 0x00
OP_PUSHDATA1 = 0x4C
OP_PUSHDATA2 = 0x4D
OP_PUSHDATA4 = 0x4E
OP_1NEGATE = 0x4F
OP_1 = 0x51
OP_16 = 0x60
OP_IF = 0x63
OP_ELSE = 0x67
OP_ENDIF = 0x68
OP_DROP = 0x75
OP_DUP = 0x76
OP_EQUAL = 0x87
OP_EQUALVERIFY = 0x88
OP_SIZE = 0x82
OP_SHA256 = 0xA8
OP_HASH160 = 0xA9
OP_CHECKSIG = 0xAC
OP_CHECKLOCKTIMEVERIFY = 0xB1

#: Names of other opcodes a tampered script is likely to carry, for readable refusals.
_MORE_NAMES = {
    0x61: "OP_NOP", 0x64: "OP_NOTIF", 0x69: "OP_VERIFY", 0x6A: "OP_RETURN", 0x74: "OP_DEPTH", 0x7C: "OP_SWAP",
    0x9A: "OP_BOOLAND", 0x9B: "OP_BOOLOR", 0xA6: "OP_RIPEMD160", 0xA7: "OP_SHA1", 0xAA: "OP_HASH256",
    0xAB: "OP_CODESEPARATOR", 0xAD: "OP_CHECKSIGVERIFY", 0xAE: "OP_CHECKMULTISIG", 0xB2: "OP_CHECKSEQUENCEVERIFY",
}

OPCODE_NAMES = {
    OP_0: "OP_0", OP_PUSHDATA1: "OP_PUSHDATA1", OP_PUSHDATA2: "OP_PUSHDATA2", OP_PUSHDATA4: "OP_PUSHDATA4",
    OP_1NEGATE: "OP_1NEGATE", OP_IF: "OP_IF", OP_ELSE: "OP_ELSE", OP_ENDIF: "OP_ENDIF", OP_DROP: "OP_DROP",
    OP_DUP: "OP_DUP", OP_EQUAL: "OP_EQUAL", OP_EQUALVERIFY: "OP_EQUALVERIFY", OP_SIZE: "OP_SIZE",
    OP_SHA256: "OP_SHA256", OP_HASH160: "OP_HASH160", OP_CHECKSIG: "OP_CHECKSIG",
    OP_CHECKLOCKTIMEVERIFY: "OP_CHECKLOCKTIMEVERIFY",
    **{OP_1 + i: f"OP_{i + 1}" for i in range(16)},
    **_MORE_NAMES,
}

#: nLockTime values below this are block heights, at or above it Unix times (BIP65).
LOCKTIME_THRESHOLD = 500_000_000
#: nLockTime is a uint32, so a CLTV argument at or above this can never be satisfied.
MAX_LOCKTIME = 2**32 - 1
SECRET_SIZE = 32

TEMPLATE_P2WSH = "p2wsh"
TEMPLATE_P2SH_BIP199 = "p2sh-bip199"

_SECP256K1_P = 2**256 - 2**32 - 977


def opcode_name(op: int) -> str:
    if 0x01 <= op <= 0x4B:
        return f"a {op}-byte push"
    return OPCODE_NAMES.get(op, f"opcode 0x{op:02x}")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hash160(data: bytes) -> bytes:
    return _hash160(data)


def is_compressed_pubkey(pubkey: bytes) -> bool:
    """A 33-byte SEC key whose x is on secp256k1 (segwit policy allows only these)."""
    if len(pubkey) != 33 or pubkey[0] not in (2, 3):
        return False
    x = int.from_bytes(pubkey[1:], "big")
    if x >= _SECP256K1_P:
        return False
    rhs = (pow(x, 3, _SECP256K1_P) + 7) % _SECP256K1_P
    # Euler's criterion: x is on the curve iff x^3+7 is a square mod p.
    return pow(rhs, (_SECP256K1_P - 1) // 2, _SECP256K1_P) == 1


# --- pushes ------------------------------------------------------------------------


def push_data(data: bytes) -> bytes:
    """The minimal push of ``data`` (Bitcoin Core's ``CScript << std::vector``)."""
    n = len(data)
    if n == 0:
        return bytes([OP_0])
    if n == 1 and 1 <= data[0] <= 16:
        return bytes([OP_1 + data[0] - 1])
    if n == 1 and data[0] == 0x81:
        return bytes([OP_1NEGATE])
    if n <= 0x4B:
        return bytes([n]) + data
    if n <= 0xFF:
        return bytes([OP_PUSHDATA1, n]) + data
    if n <= 0xFFFF:
        return bytes([OP_PUSHDATA2]) + n.to_bytes(2, "little") + data
    return bytes([OP_PUSHDATA4]) + n.to_bytes(4, "little") + data


def script_num(n: int) -> bytes:
    """Minimal CScriptNum encoding: little-endian magnitude, sign in the top bit."""
    if n == 0:
        return b""
    magnitude = abs(n)
    out = bytearray()
    while magnitude:
        out.append(magnitude & 0xFF)
        magnitude >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if n < 0 else 0)
    elif n < 0:
        out[-1] |= 0x80
    return bytes(out)


def decode_script_num(data: bytes) -> int:
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def push_int(n: int) -> bytes:
    """``CScript << int64``: OP_0/OP_1NEGATE/OP_1..OP_16 for small values, else a minimal number push."""
    if n == 0:
        return bytes([OP_0])
    if n == -1 or 1 <= n <= 16:
        return bytes([OP_1NEGATE if n == -1 else OP_1 + n - 1])
    return push_data(script_num(n))


def iter_pushes(script: bytes) -> Iterator[tuple[int, int, bytes | None]]:
    """Yield ``(position, opcode, pushed data or None)``; ``InputError`` on a truncated push."""
    i = 0
    while i < len(script):
        op = script[i]
        start = i
        i += 1
        if op > OP_PUSHDATA4:
            yield start, op, None
            continue
        if op <= 0x4B:
            size = op
        else:
            width = {OP_PUSHDATA1: 1, OP_PUSHDATA2: 2, OP_PUSHDATA4: 4}[op]
            if i + width > len(script):
                raise InputError(f"script truncated inside the {opcode_name(op)} length at byte {start}")
            size = int.from_bytes(script[i:i + width], "little")
            i += width
        if i + size > len(script):
            raise InputError(f"script truncated: push at byte {start} wants {size} bytes, {len(script) - i} left")
        yield start, op, script[i:i + size]
        i += size


# --- validation of parameters ---------------------------------------------------------


def _check_bytes(value: bytes, size: int, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        got = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise InputError(f"{what} must be {size} bytes, got {got}", field=what)
    return bytes(value)


def _check_pubkey(pubkey: bytes, what: str) -> bytes:
    pubkey = _check_bytes(pubkey, 33, what)
    if not is_compressed_pubkey(pubkey):
        raise InputError(f"{what} {pubkey.hex()} is not a compressed secp256k1 public key", field=what)
    return pubkey


def check_locktime(locktime: int, *, heights_only: bool) -> int:
    if isinstance(locktime, bool) or not isinstance(locktime, int):
        raise InputError(f"lock time must be an int, got {type(locktime).__name__}", field="locktime")
    if locktime <= 0:
        raise InputError(f"lock time {locktime} must be positive (0 or less never locks)", field="locktime")
    if heights_only and locktime >= LOCKTIME_THRESHOLD:
        raise InputError(
            f"refund height {locktime} is not a block height (must be < {LOCKTIME_THRESHOLD:,}; larger values are Unix times)",
            field="locktime",
        )
    if locktime > MAX_LOCKTIME:
        raise InputError(f"lock time {locktime} exceeds nLockTime's maximum {MAX_LOCKTIME}", field="locktime")
    return locktime


def lock_kind(locktime: int) -> str:
    return "height" if locktime < LOCKTIME_THRESHOLD else "time"


# --- the templates ---------------------------------------------------------------------


def p2wsh_htlc_script(hashlock: bytes, claim_pubkey: bytes, refund_pubkey: bytes, refund_height: int) -> bytes:
    """Our HTLC witness script; ``InputError`` naming the bad parameter."""
    hashlock = _check_bytes(hashlock, 32, "hashlock")
    claim_pubkey = _check_pubkey(claim_pubkey, "claim pubkey")
    refund_pubkey = _check_pubkey(refund_pubkey, "refund pubkey")
    check_locktime(refund_height, heights_only=True)
    return b"".join([
        bytes([OP_IF, OP_SIZE]), push_int(SECRET_SIZE), bytes([OP_EQUALVERIFY, OP_SHA256]),
        push_data(hashlock), bytes([OP_EQUALVERIFY]), push_data(claim_pubkey),
        bytes([OP_ELSE]), push_int(refund_height), bytes([OP_CHECKLOCKTIMEVERIFY, OP_DROP]),
        push_data(refund_pubkey), bytes([OP_ENDIF, OP_CHECKSIG]),
    ])


def p2sh_htlc_script(hashlock: bytes, claim_pubkey_hash: bytes, refund_pubkey_hash: bytes, locktime: int) -> bytes:
    """The BIP-199 / decred-atomicswap redeem script (lock by height or Unix time)."""
    hashlock = _check_bytes(hashlock, 32, "hashlock")
    claim_pubkey_hash = _check_bytes(claim_pubkey_hash, 20, "claim pubkey hash")
    refund_pubkey_hash = _check_bytes(refund_pubkey_hash, 20, "refund pubkey hash")
    check_locktime(locktime, heights_only=False)
    return b"".join([
        bytes([OP_IF, OP_SIZE]), push_int(SECRET_SIZE), bytes([OP_EQUALVERIFY, OP_SHA256]),
        push_data(hashlock), bytes([OP_EQUALVERIFY, OP_DUP, OP_HASH160]), push_data(claim_pubkey_hash),
        bytes([OP_ELSE]), push_int(locktime), bytes([OP_CHECKLOCKTIMEVERIFY, OP_DROP, OP_DUP, OP_HASH160]),
        push_data(refund_pubkey_hash), bytes([OP_ENDIF, OP_EQUALVERIFY, OP_CHECKSIG]),
    ])


def p2wsh_script_pubkey(witness_script: bytes) -> bytes:
    return bytes([OP_0, 32]) + sha256(witness_script)


def p2sh_script_pubkey(redeem_script: bytes) -> bytes:
    return bytes([OP_HASH160, 20]) + hash160(redeem_script) + bytes([OP_EQUAL])


def htlc_script_pubkey(template: str, script: bytes) -> bytes:
    if template == TEMPLATE_P2WSH:
        return p2wsh_script_pubkey(script)
    if template == TEMPLATE_P2SH_BIP199:
        return p2sh_script_pubkey(script)
    raise InputError(f"unknown HTLC template {template!r}")


def check_network(network: str) -> str:
    if network not in BECH32_HRP:
        raise InputError(f"unknown Bitcoin network {network!r}; expected one of {', '.join(BECH32_HRP)}", network=network)
    return network


def htlc_address(template: str, script: bytes, network: str = "regtest") -> str:
    """``bcrt1q…``/``tb1q…``/``bc1q…`` for P2WSH, ``2…``/``3…`` for the P2SH template.

    bitcoinlib's encoders are given Bitcoin Core's prefixes explicitly: its own
    "regtest" network would use mainnet base58 versions.
    """
    check_network(network)
    if template == TEMPLATE_P2WSH:
        return pubkeyhash_to_addr_bech32(sha256(script), prefix=BECH32_HRP[network], witver=0)
    if template == TEMPLATE_P2SH_BIP199:
        return pubkeyhash_to_addr_base58(hash160(script), prefix=bytes([BASE58_VERSIONS[network][1]]))
    raise InputError(f"unknown HTLC template {template!r}")
