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

from typing import Iterator

import coincurve

from bridge.core.errors import InputError
from chains.btc.address import NETWORKS, b58check_encode, encode_segwit_address
from chains.btc.primitives import hash160, push_int, sha256
from chains.btc.script import OPCODE_NAMES as CORE_OPCODE_NAMES
from chains.btc.script import (
    OP_CHECKLOCKTIMEVERIFY,
    OP_CHECKSIG,
    OP_DROP,
    OP_DUP,
    OP_ELSE,
    OP_ENDIF,
    OP_EQUALVERIFY,
    OP_HASH160,
    OP_IF,
    OP_PUSHDATA1,
    OP_PUSHDATA2,
    OP_PUSHDATA4,
    OP_SHA256,
    OP_SIZE,
    LOCKTIME_THRESHOLD,
    p2sh_script,
    p2wsh_script,
)
from chains.btc.script import push_minimal


def _htlc_name(op: int) -> str:
    """Core's opcode name, with small numbers spelled as opcodes (``OP_0``, ``OP_1NEGATE``, ``OP_16``)."""
    name = CORE_OPCODE_NAMES[op]
    return name if name.startswith("OP_") else f"OP_{'1NEGATE' if name == '-1' else name}"


#: Names for readable refusals; pushes of 1..75 bytes and undefined opcodes have none.
OPCODE_NAMES = {op: _htlc_name(op) for op in range(256) if not 0x01 <= op <= 0x4B and CORE_OPCODE_NAMES[op] != "OP_UNKNOWN"}

#: nLockTime is a uint32, so a CLTV argument at or above this can never be satisfied.
MAX_LOCKTIME = 2**32 - 1
SECRET_SIZE = 32

TEMPLATE_P2WSH = "p2wsh"
TEMPLATE_P2SH_BIP199 = "p2sh-bip199"


def opcode_name(op: int) -> str:
    if 0x01 <= op <= 0x4B:
        return f"a {op}-byte push"
    return OPCODE_NAMES.get(op, f"opcode 0x{op:02x}")


def is_compressed_pubkey(pubkey: bytes) -> bool:
    """A 33-byte SEC key whose x is on secp256k1 (segwit policy allows only these)."""
    if len(pubkey) != 33 or pubkey[0] not in (2, 3):
        return False
    try:
        coincurve.PublicKey(pubkey)  # libsecp256k1 parses it only if x is on the curve
    except ValueError:
        return False
    return True


# --- pushes ------------------------------------------------------------------------


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
            size = int.from_bytes(script[i : i + width], "little")
            i += width
        if i + size > len(script):
            raise InputError(f"script truncated: push at byte {start} wants {size} bytes, {len(script) - i} left")
        yield start, op, script[i : i + size]
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
    return b"".join(
        [
            bytes([OP_IF, OP_SIZE]),
            push_int(SECRET_SIZE),
            bytes([OP_EQUALVERIFY, OP_SHA256]),
            push_minimal(hashlock),
            bytes([OP_EQUALVERIFY]),
            push_minimal(claim_pubkey),
            bytes([OP_ELSE]),
            push_int(refund_height),
            bytes([OP_CHECKLOCKTIMEVERIFY, OP_DROP]),
            push_minimal(refund_pubkey),
            bytes([OP_ENDIF, OP_CHECKSIG]),
        ]
    )


def p2sh_htlc_script(hashlock: bytes, claim_pubkey_hash: bytes, refund_pubkey_hash: bytes, locktime: int) -> bytes:
    """The BIP-199 / decred-atomicswap redeem script (lock by height or Unix time)."""
    hashlock = _check_bytes(hashlock, 32, "hashlock")
    claim_pubkey_hash = _check_bytes(claim_pubkey_hash, 20, "claim pubkey hash")
    refund_pubkey_hash = _check_bytes(refund_pubkey_hash, 20, "refund pubkey hash")
    check_locktime(locktime, heights_only=False)
    return b"".join(
        [
            bytes([OP_IF, OP_SIZE]),
            push_int(SECRET_SIZE),
            bytes([OP_EQUALVERIFY, OP_SHA256]),
            push_minimal(hashlock),
            bytes([OP_EQUALVERIFY, OP_DUP, OP_HASH160]),
            push_minimal(claim_pubkey_hash),
            bytes([OP_ELSE]),
            push_int(locktime),
            bytes([OP_CHECKLOCKTIMEVERIFY, OP_DROP, OP_DUP, OP_HASH160]),
            push_minimal(refund_pubkey_hash),
            bytes([OP_ENDIF, OP_EQUALVERIFY, OP_CHECKSIG]),
        ]
    )


def htlc_script_pubkey(template: str, script: bytes) -> bytes:
    if template == TEMPLATE_P2WSH:
        return p2wsh_script(script)
    if template == TEMPLATE_P2SH_BIP199:
        return p2sh_script(script)
    raise InputError(f"unknown HTLC template {template!r}")


def check_network(network: str) -> str:
    if network not in NETWORKS:
        raise InputError(f"unknown Bitcoin network {network!r}; expected one of {', '.join(NETWORKS)}", network=network)
    return network


def htlc_address(template: str, script: bytes, network: str = "regtest") -> str:
    """``bcrt1q…``/``tb1q…``/``bc1q…`` for P2WSH, ``2…``/``3…`` for the P2SH template."""
    params = NETWORKS[check_network(network)]
    if template == TEMPLATE_P2WSH:
        return encode_segwit_address(params.hrp, 0, sha256(script))
    if template == TEMPLATE_P2SH_BIP199:
        return b58check_encode(bytes((params.p2sh,)) + hash160(script))
    raise InputError(f"unknown HTLC template {template!r}")
