"""Audit a counterparty's Bitcoin HTLC before trusting it.

``audit`` accepts a script only if it is, byte for byte, one of the two
templates of ``htlc.bitcoin_script`` with valid parameters, and reports the
terms it commits to.  Anything else is refused with the first byte position
that differs from the closest template, because "almost our HTLC" is exactly
what a cheating counterparty would send (an extra branch, a 33-byte preimage
allowance, a key we do not hold).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from bridge.core.errors import InputError
from chains.btc.primitives import DecodeError, Tx, hash160, push_int
from chains.btc.script import (
    OP_1,
    OP_1NEGATE,
    OP_16,
    OP_CHECKLOCKTIMEVERIFY,
    OP_CHECKSIG,
    OP_DROP,
    OP_DUP,
    OP_ELSE,
    OP_ENDIF,
    OP_EQUALVERIFY,
    OP_HASH160,
    OP_IF,
    OP_SHA256,
    OP_SIZE,
    decode_script_num,
)
from htlc.bitcoin_script import (
    OPCODE_NAMES,
    TEMPLATE_P2SH_BIP199,
    TEMPLATE_P2WSH,
    check_locktime,
    check_network,
    htlc_address,
    htlc_script_pubkey,
    is_compressed_pubkey,
    lock_kind,
    opcode_name,
)


class AuditError(InputError):
    """The script (or its funding) is not an HTLC we accept; ``reason`` says why, ``position`` where."""

    def __init__(self, reason: str, position: int | None = None, template: str | None = None) -> None:
        super().__init__(f"HTLC audit refused: {reason}", reason=reason, position=position, template=template)
        self.reason = reason
        self.position = position
        self.template = template


@dataclass(frozen=True)
class HtlcTerms:
    template: str
    hashlock: bytes
    #: Full keys for the P2WSH template; None for the P2SH template, which commits to hashes only.
    claim_pubkey: bytes | None
    refund_pubkey: bytes | None
    claim_pubkey_hash: bytes
    refund_pubkey_hash: bytes
    locktime: int
    lock_kind: str  # "height" or "time" (BIP65: below 500,000,000 is a height)
    script: bytes
    script_pubkey: bytes
    address: str
    network: str
    funding_txid: str | None = None
    output_index: int | None = None
    amount: int | None = None

    def to_dict(self) -> dict[str, Any]:
        def enc(v: Any) -> Any:
            return v.hex() if isinstance(v, bytes) else v

        return {name: enc(getattr(self, name)) for name in self.__dataclass_fields__}


# --- template description ----------------------------------------------------------------


@dataclass(frozen=True)
class _Byte:
    value: int
    what: str


@dataclass(frozen=True)
class _Push:
    size: int
    field: str


@dataclass(frozen=True)
class _Lock:
    pass


def _ops(*codes: int) -> list[_Byte]:
    return [_Byte(c, OPCODE_NAMES[c]) for c in codes]


_HASH_CHECK: list[Any] = [
    *_ops(OP_IF, OP_SIZE),
    _Byte(0x01, "a 1-byte push of the secret size"),
    _Byte(0x20, "the secret size 32"),
    *_ops(OP_EQUALVERIFY, OP_SHA256),
    _Push(32, "hashlock"),
    *_ops(OP_EQUALVERIFY),
]

_TEMPLATES: dict[str, list[Any]] = {
    TEMPLATE_P2WSH: [
        *_HASH_CHECK,
        _Push(33, "claim_pubkey"),
        *_ops(OP_ELSE),
        _Lock(),
        *_ops(OP_CHECKLOCKTIMEVERIFY, OP_DROP),
        _Push(33, "refund_pubkey"),
        *_ops(OP_ENDIF, OP_CHECKSIG),
    ],
    TEMPLATE_P2SH_BIP199: [
        *_HASH_CHECK,
        *_ops(OP_DUP, OP_HASH160),
        _Push(20, "claim_pubkey_hash"),
        *_ops(OP_ELSE),
        _Lock(),
        *_ops(OP_CHECKLOCKTIMEVERIFY, OP_DROP, OP_DUP, OP_HASH160),
        _Push(20, "refund_pubkey_hash"),
        *_ops(OP_ENDIF, OP_EQUALVERIFY, OP_CHECKSIG),
    ],
}


class _Mismatch(Exception):
    def __init__(self, position: int, detail: str) -> None:
        super().__init__(detail)
        self.position = position
        self.detail = detail


def _found(script: bytes, pos: int) -> str:
    return f"found 0x{script[pos]:02x} ({opcode_name(script[pos])})"


def _read_lock(script: bytes, pos: int) -> tuple[int, int]:
    """The lock number at ``pos`` and the position after it; only Bitcoin Core's minimal form passes."""
    op = script[pos]
    if op == 0x00 or op == OP_1NEGATE or OP_1 <= op <= OP_16:
        value = {0x00: 0, OP_1NEGATE: -1}.get(op, op - OP_1 + 1)
        return value, pos + 1
    if not 1 <= op <= 5:
        raise _Mismatch(pos, f"expected the lock time as a number push of 1 to 5 bytes, {_found(script, pos)}")
    if pos + 1 + op > len(script):
        raise _Mismatch(pos, f"script ends inside the lock time push ({op} bytes wanted)")
    encoded = script[pos : pos + 1 + op]
    value = decode_script_num(encoded[1:])
    if push_int(value) != encoded:
        raise _Mismatch(pos, f"lock time push {encoded.hex()} is not minimally encoded (Bitcoin Core writes {push_int(value).hex()})")
    return value, pos + 1 + op


def _match(script: bytes, template: list[Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    pos = 0
    for element in template:
        if pos >= len(script):
            expected = element.what if isinstance(element, _Byte) else (f"the {element.field}" if isinstance(element, _Push) else "the lock time")
            raise _Mismatch(pos, f"script ends at byte {pos}, expected {expected}")
        if isinstance(element, _Byte):
            if script[pos] != element.value:
                raise _Mismatch(pos, f"expected {element.what} (0x{element.value:02x}), {_found(script, pos)}")
            pos += 1
        elif isinstance(element, _Push):
            if script[pos] != element.size:
                raise _Mismatch(pos, f"expected the {element.field} as a {element.size}-byte push (0x{element.size:02x}), {_found(script, pos)}")
            if pos + 1 + element.size > len(script):
                raise _Mismatch(pos, f"script ends inside the {element.field} push ({element.size} bytes wanted)")
            fields[element.field] = (pos + 1, script[pos + 1 : pos + 1 + element.size])
            pos += 1 + element.size
        else:
            value, end = _read_lock(script, pos)
            fields["locktime"] = (pos, value)
            pos = end
    if pos != len(script):
        raise _Mismatch(
            pos, f"unexpected trailing bytes ({len(script) - pos}) after the final OP_CHECKSIG, starting with 0x{script[pos]:02x} ({opcode_name(script[pos])})"
        )
    return fields


def _terms(template: str, fields: dict[str, Any], script: bytes, network: str) -> HtlcTerms:
    lock_pos, locktime = fields["locktime"]
    try:
        check_locktime(locktime, heights_only=template == TEMPLATE_P2WSH)
    except InputError as exc:
        raise AuditError(f"byte {lock_pos}: {exc.message}", lock_pos, template) from None
    if template == TEMPLATE_P2WSH:
        keys = {}
        for role in ("claim", "refund"):
            key_pos, key = fields[f"{role}_pubkey"]
            if not is_compressed_pubkey(key):
                raise AuditError(f"byte {key_pos}: {role} pubkey {key.hex()} is not a compressed secp256k1 public key", key_pos, template)
            keys[role] = key
        claim_pubkey, refund_pubkey = keys["claim"], keys["refund"]
        claim_pkh, refund_pkh = hash160(claim_pubkey), hash160(refund_pubkey)
    else:
        claim_pubkey = refund_pubkey = None
        claim_pkh, refund_pkh = fields["claim_pubkey_hash"][1], fields["refund_pubkey_hash"][1]
    return HtlcTerms(
        template=template,
        hashlock=fields["hashlock"][1],
        claim_pubkey=claim_pubkey,
        refund_pubkey=refund_pubkey,
        claim_pubkey_hash=claim_pkh,
        refund_pubkey_hash=refund_pkh,
        locktime=locktime,
        lock_kind=lock_kind(locktime),
        script=script,
        script_pubkey=htlc_script_pubkey(template, script),
        address=htlc_address(template, script, network),
        network=network,
    )


def _with_funding(terms: HtlcTerms, funding_tx: bytes) -> HtlcTerms:
    try:
        tx = Tx.parse(funding_tx)
    except DecodeError as exc:
        raise AuditError(f"funding transaction: {exc.message}: {exc.reason}") from None
    paying = [n for n, out in enumerate(tx.vout) if out.script_pubkey == terms.script_pubkey]
    if not paying:
        raise AuditError(f"funding transaction {tx.txid} pays nothing to the HTLC address {terms.address}")
    if len(paying) > 1:
        # Each output would be a separate HTLC to claim; refuse rather than count only one of them.
        raise AuditError(f"funding transaction {tx.txid} pays the HTLC address in {len(paying)} outputs {paying}; expected one")
    index = paying[0]
    return replace(terms, funding_txid=tx.txid, output_index=index, amount=tx.vout[index].value)


def audit(script: bytes, funding_tx: bytes | None = None, network: str = "regtest") -> HtlcTerms:
    """Recognise ``script`` as one of our HTLC templates and return its terms, else raise ``AuditError``.

    With ``funding_tx`` (raw bytes) also find the one output paying the HTLC and its amount.
    """
    check_network(network)
    if not isinstance(script, (bytes, bytearray)) or not script:
        raise AuditError("empty script", 0)
    script = bytes(script)
    misses: dict[str, _Mismatch] = {}
    for template, elements in _TEMPLATES.items():
        try:
            fields = _match(script, elements)
        except _Mismatch as miss:
            misses[template] = miss
            continue
        terms = _terms(template, fields, script, network)
        return _with_funding(terms, funding_tx) if funding_tx is not None else terms
    closest = max(misses, key=lambda t: misses[t].position)
    miss = misses[closest]
    if all(m.position == miss.position for m in misses.values()):
        details = {m.detail for m in misses.values()}
        detail = miss.detail if len(details) == 1 else "; ".join(f"{t}: {m.detail}" for t, m in misses.items())
        reason = f"not a recognised HTLC template (p2wsh, p2sh-bip199): byte {miss.position}: {detail}"
        closest_name = None
    else:
        reason = f"closest template {closest} differs at byte {miss.position}: {miss.detail}"
        closest_name = closest
    raise AuditError(reason, miss.position, closest_name)
