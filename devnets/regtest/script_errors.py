"""Why a script failed, in Core's ``ScriptErrorString`` words, and the policy-only script rules.

The kernel's verify call answers only yes or no; bitcoind's reject reason carries the script error
("mandatory-script-verify-flag-failed (Script failed an OP_EQUALVERIFY operation)").  Once the
kernel has said no, this re-runs the failing input's script in a small interpreter that knows the
opcodes our contracts use (hash locks, CLTV/CSV refunds, IF/ELSE, multisig) to name the first failing step.
Signatures cannot be checked here; they are assumed good, so a script that otherwise succeeds is
reported as failing on its final stack, which is what Core says for a bad signature under the
consensus flags.

The kernel's C API only takes consensus flags, so bitcoind's extra standard flags are checked here
after the kernel accepted an input (``policy_failure``) for the segwit v0 spends the project makes:
minimal OP_IF arguments, strict-DER low-S signatures with a known sighash type, compressed keys.
"""

from __future__ import annotations

import hashlib

from chains.btc import primitives as p
from chains.btc.script import LOCKTIME_THRESHOLD, decode_script_num, is_p2sh, is_valid_signature_encoding, witness_program

EVAL_FALSE = "Script evaluated without error but finished with a false/empty top stack element"
EQUALVERIFY = "Script failed an OP_EQUALVERIFY operation"
VERIFY = "Script failed an OP_VERIFY operation"
CHECKSIGVERIFY = "Script failed an OP_CHECKSIGVERIFY operation"
STACK_SIZE = "Operation not valid with the current stack size"
UNBALANCED = "Invalid OP_IF construction"
LOCKTIME = "Locktime requirement not satisfied"
NEGATIVE_LOCKTIME = "Negative locktime"
CLEANSTACK = "Stack size must be exactly one after execution"
WITNESS_MISMATCH = "Witness program hash mismatch"
WITNESS_EMPTY = "Witness program was passed an empty witness"
WITNESS_MISMATCH_SIZE = "Witness program has incorrect length"
OP_RETURN = "OP_RETURN was encountered"
BAD_OPCODE = "Opcode missing or not understood"
PUBKEY_COUNT = "Pubkey count negative or limit exceeded"
SIG_COUNT = "Sig count negative or greater than pubkey count"
SIG_NULLDUMMY = "Dummy CHECKMULTISIG argument must be zero"
MINIMALIF = "OP_IF/NOTIF argument must be minimal"
SIG_DER = "Non-canonical DER signature"
SIG_HIGH_S = "Non-canonical signature: S value is unnecessarily high"
SIG_HASHTYPE = "Signature hash type missing or not understood"
PUBKEYTYPE = "Using non-compressed keys in segwit"
UPGRADABLE_NOPS = "NOPx reserved for soft-fork upgrades"

_HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


class _Fail(Exception):
    pass


class _Unknown(Exception):
    """An opcode this small interpreter does not model: the policy check steps aside (the kernel's
    consensus verdict stands) rather than refuse a script bitcoind would relay."""


def _true(b: bytes) -> bool:
    for i, c in enumerate(b):
        if c:
            return not (i == len(b) - 1 and c == 0x80)
    return False


def _ops(script: bytes):
    i = 0
    while i < len(script):
        op = script[i]
        i += 1
        if op <= 0x4E:
            if op < 0x4C:
                n = op
            elif op == 0x4C:
                n = script[i]
                i += 1
            elif op == 0x4D:
                n = int.from_bytes(script[i : i + 2], "little")
                i += 2
            else:
                n = int.from_bytes(script[i : i + 4], "little")
                i += 4
            yield op, script[i : i + n]
            i += n
        else:
            yield op, None


def _check_sig_and_key(sig: bytes, pubkey: bytes) -> None:
    """Core's CheckSignatureEncoding (DERSIG, LOW_S, STRICTENC) then CheckPubKeyEncoding (segwit v0)."""
    if sig:
        if not is_valid_signature_encoding(sig):
            raise _Fail(SIG_DER)
        len_r = sig[3]
        s_value = int.from_bytes(sig[6 + len_r : 6 + len_r + sig[5 + len_r]], "big")
        if s_value > _HALF_ORDER:
            raise _Fail(SIG_HIGH_S)
        if sig[-1] & ~0x80 not in (1, 2, 3):
            raise _Fail(SIG_HASHTYPE)
    if not (len(pubkey) == 33 and pubkey[0] in (2, 3)):
        raise _Fail(PUBKEYTYPE)


def _run(script: bytes, stack: list[bytes], tx: p.Tx, index: int, policy: bool = False) -> None:
    exec_stack: list[bool] = []

    def need(n: int) -> None:
        if len(stack) < n:
            raise _Fail(STACK_SIZE)

    for op, data in _ops(script):
        executing = all(exec_stack)
        if 0x63 <= op <= 0x68:  # IF NOTIF VERIF VERNOTIF ELSE ENDIF
            if op in (0x63, 0x64):
                value = False
                if executing:
                    need(1)
                    top = stack.pop()
                    if policy and top not in (b"", b"\x01"):
                        raise _Fail(MINIMALIF)
                    value = _true(top)
                    if op == 0x64:
                        value = not value
                exec_stack.append(value)
            elif op == 0x67:
                if not exec_stack:
                    raise _Fail(UNBALANCED)
                exec_stack[-1] = not exec_stack[-1]
            elif op == 0x68:
                if not exec_stack:
                    raise _Fail(UNBALANCED)
                exec_stack.pop()
            else:
                raise _Fail(BAD_OPCODE)
            continue
        if not executing:
            continue
        if data is not None:
            stack.append(data)
        elif op == 0x00:
            stack.append(b"")
        elif op == 0x4F or 0x51 <= op <= 0x60:
            n = -1 if op == 0x4F else op - 0x50
            stack.append(p.script_num_encode(n))
        elif op == 0x61:  # NOP
            pass
        elif op == 0x69:  # VERIFY
            need(1)
            if not _true(stack.pop()):
                raise _Fail(VERIFY)
        elif op == 0x6A:
            raise _Fail(OP_RETURN)
        elif op == 0x75:  # DROP
            need(1)
            stack.pop()
        elif op == 0x76:  # DUP
            need(1)
            stack.append(stack[-1])
        elif op == 0x7C:  # SWAP
            need(2)
            stack[-1], stack[-2] = stack[-2], stack[-1]
        elif op == 0x82:  # SIZE
            need(1)
            stack.append(p.script_num_encode(len(stack[-1])))
        elif op in (0x87, 0x88):  # EQUAL, EQUALVERIFY
            need(2)
            a, b = stack.pop(), stack.pop()
            if op == 0x88:
                if a != b:
                    raise _Fail(EQUALVERIFY)
            else:
                stack.append(b"\x01" if a == b else b"")
        elif op in (0xA6, 0xA8, 0xA9, 0xAA):  # RIPEMD160 SHA256 HASH160 HASH256
            need(1)
            x = stack.pop()
            if op == 0xA6:
                stack.append(hashlib.new("ripemd160", x).digest())
            elif op == 0xA8:
                stack.append(hashlib.sha256(x).digest())
            elif op == 0xA9:
                stack.append(p.hash160(x))
            else:
                stack.append(p.hash256(x))
        elif op in (0xAE, 0xAF):  # CHECKMULTISIG(VERIFY): signatures assumed good, as for CHECKSIG
            need(1)
            keys = decode_script_num(stack.pop())
            if not 0 <= keys <= 20:
                raise _Fail(PUBKEY_COUNT)
            need(keys + 1)
            pubkeys = [stack.pop() for _ in range(keys)]
            sigs_wanted = decode_script_num(stack.pop())
            if not 0 <= sigs_wanted <= keys:
                raise _Fail(SIG_COUNT)
            need(sigs_wanted + 1)
            sigs = [stack.pop() for _ in range(sigs_wanted)]
            dummy = stack.pop()
            if policy:
                if dummy:
                    raise _Fail(SIG_NULLDUMMY)
                for sig in sigs:
                    _check_sig_and_key(sig, pubkeys[0])
                for pubkey in pubkeys:
                    _check_sig_and_key(b"", pubkey)
            if op == 0xAE:
                stack.append(b"\x01")
        elif op in (0xAC, 0xAD):  # CHECKSIG(VERIFY): assumed good, see module doc
            need(2)
            pubkey = stack.pop()
            sig = stack.pop()
            if policy:
                _check_sig_and_key(sig, pubkey)
            if op == 0xAC:
                stack.append(b"\x01")
        elif op == 0xB1:  # CHECKLOCKTIMEVERIFY
            need(1)
            lock = decode_script_num(stack[-1])
            if lock < 0:
                raise _Fail(NEGATIVE_LOCKTIME)
            if (lock < LOCKTIME_THRESHOLD) != (tx.locktime < LOCKTIME_THRESHOLD) or lock > tx.locktime:
                raise _Fail(LOCKTIME)
            if tx.vin[index].sequence == p.SEQUENCE_FINAL:
                raise _Fail(LOCKTIME)
        elif op == 0xB2:  # CHECKSEQUENCEVERIFY
            need(1)
            seq = decode_script_num(stack[-1])
            if seq < 0:
                raise _Fail(NEGATIVE_LOCKTIME)
            if not seq & (1 << 31):
                txseq = tx.vin[index].sequence
                if tx.version < 2 or txseq & (1 << 31):
                    raise _Fail(LOCKTIME)
                mask = (1 << 22) | 0xFFFF
                a, b = seq & mask, txseq & mask
                if ((a < (1 << 22)) != (b < (1 << 22))) or a > b:
                    raise _Fail(LOCKTIME)
        elif op in (0xB0, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9):  # NOP1, NOP4-10
            if policy:
                raise _Fail(UPGRADABLE_NOPS)
        elif policy:
            raise _Unknown(op)
        else:
            raise _Fail(BAD_OPCODE)
    if exec_stack:
        raise _Fail(UNBALANCED)


def diagnose(tx: p.Tx, index: int, script_pubkey: bytes) -> str:
    """Core's script error text for input ``index`` (called only after the kernel said invalid)."""
    txin = tx.vin[index]
    witness = list(txin.witness)
    try:
        if len(script_pubkey) == 34 and script_pubkey[:2] == b"\x00\x20":
            if not witness:
                return WITNESS_EMPTY
            witness_script = witness[-1]
            if hashlib.sha256(witness_script).digest() != script_pubkey[2:]:
                return WITNESS_MISMATCH
            stack = witness[:-1]
            _run(witness_script, stack, tx, index)
            if len(stack) != 1:
                return CLEANSTACK
            if not _true(stack[-1]):
                return EVAL_FALSE
            return EVAL_FALSE
        if len(script_pubkey) == 22 and script_pubkey[:2] == b"\x00\x14":
            if not witness:
                return WITNESS_EMPTY
            if len(witness) != 2:
                return WITNESS_MISMATCH
            if p.hash160(witness[1]) != script_pubkey[2:]:
                return EQUALVERIFY
            return EVAL_FALSE
        stack: list[bytes] = []
        _run(txin.script_sig, stack, tx, index)
        _run(script_pubkey, stack, tx, index)
        return EVAL_FALSE
    except _Fail as failure:
        return str(failure)
    except (IndexError, ValueError):
        return EVAL_FALSE


def policy_failure(tx: p.Tx, index: int, script_pubkey: bytes) -> str | None:
    """For an input the kernel accepted: the first standard-flags-only rule it breaks, or None.
    Covers P2WPKH and P2WSH spends; other kinds pass (the kernel's consensus check stands)."""
    witness = list(tx.vin[index].witness)
    try:
        if len(script_pubkey) == 22 and script_pubkey[:2] == b"\x00\x14":
            _check_sig_and_key(witness[0], witness[1])
        elif len(script_pubkey) == 34 and script_pubkey[:2] == b"\x00\x20":
            _run(witness[-1], witness[:-1], tx, index, policy=True)
    except _Fail as failure:
        return str(failure)
    except (IndexError, ValueError, _Unknown):
        return None
    return None


def witness_standard(tx: p.Tx, spent_scripts: list[bytes]) -> bool:
    """Core's ``IsWitnessStandard`` for what the project spends: no witness on a non-witness output,
    and P2WSH witness scripts of at most 3600 bytes under at most 100 stack items of <= 80 bytes."""
    for txin, script in zip(tx.vin, spent_scripts):
        if not txin.witness or is_p2sh(script):  # P2SH-wrapped segwit: left to the kernel
            continue
        program = witness_program(script)
        if program is None:
            return False
        if program[0] == 0 and len(program[1]) == 32:
            items = txin.witness[:-1]
            if len(txin.witness[-1]) > 3600 or len(items) > 100 or any(len(i) > 80 for i in items):
                return False
    return True
