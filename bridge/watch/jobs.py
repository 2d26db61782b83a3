"""The watch job as it travels (JSON), and the watcher's audit of it before accepting.

    {"kind": "claim" | "refund", "chain": "bitcoin" | "evm", "hashlock": hex,
     "payout": scriptPubKey hex (bitcoin) | address (evm),
     "htlc": {"script": hex, "outpoint": "txid:vout", "amount": sats}            # bitcoin
           | {"contract": address, "swap": {sender, recipient, token, amount,    # evm
              hashlock, expiry, nonce}},
     "presigned": [{"feerate": sat/vB, "tx": hex}, ...],     # bitcoin only, rising feerates
     "reveal": {"chain": "evm", "contract": address, "swap_id": hex, "from_height": n}
             | {"chain": "bitcoin", "outpoint": "txid:vout", "from_height": n},   # claim jobs
     "secret": hex}                                           # claim jobs, instead of reveal

A claim job names where the secret will appear (the other leg of the swap, which the
counterparty claims) or, for the initiator, carries the secret itself.  Nothing in a
job is trusted: the HTLC is audited on chain, its expiry read from the script or the
``Locked`` event, and every pre-signed transaction must spend exactly that outpoint,
pay the party all but its fee, and carry a valid signature by the key the script names.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from bitcoinlib.keys import Key, Signature, verify

from bridge.core.errors import BridgeError, InputError, NotFound
from bridge.watch.models import CLAIM, KINDS, REFUND
from bridge.watch.presign import PREIMAGE_INDEX, PREIMAGE_PLACEHOLDER
from chains.base import BITCOIN, EVM
from chains.bitcoin import BitcoinAdapter
from chains.btc.primitives import Tx
from chains.btc.sighash import SIGHASH_ALL, segwit_v0_sighash
from chains.evm import EvmAdapter
from htlc.audit import AuditError, HtlcTerms, audit
from htlc.bitcoin_script import TEMPLATE_P2WSH
from htlc.evm import EvmHtlc, SwapParams, SwapStatus


class JobRefused(InputError):
    """The watcher will not take this job; ``reason`` says what is wrong with it."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(f"watch job refused: {reason}", reason=reason, **details)
        self.reason = reason


@dataclass(frozen=True)
class Presigned:
    feerate: int
    tx: Tx

    @property
    def hex(self) -> str:
        return self.tx.hex()


@dataclass(frozen=True)
class Reveal:
    chain: str
    from_height: int
    contract: str | None = None
    swap_id: bytes | None = None
    outpoint: tuple[str, int] | None = None


@dataclass(frozen=True)
class JobSpec:
    kind: str
    chain: str
    hashlock: bytes
    payout: str
    htlc: dict[str, Any]
    presigned: tuple[Presigned, ...]
    reveal: Reveal | None
    secret: bytes | None
    canonical: str

    @property
    def id(self) -> str:
        """One id per HTLC and kind: a re-sent job finds its row, another job for that HTLC conflicts."""
        ref = self.htlc["outpoint"] if self.chain == BITCOIN else f"{self.htlc['contract']}:{self.swap.id.hex()}"
        return hashlib.sha256(f"{self.chain}|{self.kind}|{ref}".lower().encode()).hexdigest()[:32]

    @property
    def outpoint(self) -> tuple[str, int]:
        return _outpoint(self.htlc["outpoint"], "htlc.outpoint")

    @property
    def swap(self) -> SwapParams:
        s = self.htlc["swap"]
        return SwapParams(s["sender"], s["recipient"], s["token"], int(s["amount"]), s["hashlock"], int(s["expiry"]), int(s["nonce"]))


# --- format ---------------------------------------------------------------------------------


def _hex(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise JobRefused(f"{what} must be a hex string, got {_shown(value)}", field=what)
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise JobRefused(f"{what} is not hex", field=what) from None
    if size is not None and len(raw) != size:
        raise JobRefused(f"{what} must be {size} bytes, got {len(raw)}", field=what)
    return raw


#: An output index is a uint32 in the transaction.
MAX_VOUT = 0xFFFFFFFF
#: What the database's signed 64-bit integer columns hold (heights, expiries, amounts are far below).
MAX_STORED_INT = 2**63 - 1
#: Bitcoin's supply in sats: no output holds more.
MAX_SATS = 21_000_000 * 100_000_000
#: Rungs of a pre-signed fee ladder (each one's signature is verified on intake).
MAX_RUNGS = 64
#: A block height to scan from, far above any chain's.
MAX_HEIGHT = 2**40
_VOUT = re.compile(r"[0-9]{1,10}")


def _shown(value: Any) -> str:
    """``value`` for a refusal message: short and printable, whatever was sent."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _outpoint(value: Any, what: str) -> tuple[str, int]:
    txid, _, vout = value.partition(":") if isinstance(value, str) else ("", "", "")
    if len(txid) != 64 or not _VOUT.fullmatch(vout) or int(vout) > MAX_VOUT:
        raise JobRefused(f"{what} must be TXID:VOUT, got {_shown(value)}", field=what)
    _hex(txid, what, 32)
    return txid.lower(), int(vout)


def _int(value: Any, what: str, maximum: int = MAX_STORED_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise JobRefused(f"{what} must be an integer in 0..{maximum}, got {_shown(value)}", field=what)
    return value


def parse_job(body: Any) -> JobSpec:
    """Check the job's shape (no chain access); ``JobRefused`` names the first bad field."""
    if not isinstance(body, dict):
        raise JobRefused("a job must be a JSON object")
    kind, chain = body.get("kind"), body.get("chain")
    if kind not in KINDS:
        raise JobRefused(f"kind must be one of {', '.join(KINDS)}, got {_shown(kind)}", field="kind")
    if chain not in (BITCOIN, EVM):
        raise JobRefused(f"chain must be bitcoin or evm, got {_shown(chain)}", field="chain")
    hashlock = _hex(body.get("hashlock"), "hashlock", 32)
    htlc = body.get("htlc")
    if not isinstance(htlc, dict):
        raise JobRefused("htlc must be an object", field="htlc")
    payout = body.get("payout")
    if not isinstance(payout, str) or not payout:
        raise JobRefused("payout is missing", field="payout")
    presigned: list[Presigned] = []
    if chain == BITCOIN:
        _hex(htlc.get("script"), "htlc.script")
        _outpoint(htlc.get("outpoint"), "htlc.outpoint")
        _int(htlc.get("amount"), "htlc.amount", MAX_SATS)
        _hex(payout, "payout")
        ladder = body.get("presigned")
        if not isinstance(ladder, list) or not ladder:
            raise JobRefused("a bitcoin job needs its pre-signed transactions (presigned: [{feerate, tx}, ...])", field="presigned")
        if len(ladder) > MAX_RUNGS:
            raise JobRefused(f"presigned has {len(ladder)} transactions, more than {MAX_RUNGS}", field="presigned")
        for n, rung in enumerate(ladder):
            if not isinstance(rung, dict):
                raise JobRefused(f"presigned[{n}] must be an object", field="presigned")
            try:
                tx = Tx.parse(_hex(rung.get("tx"), f"presigned[{n}].tx"))
            except InputError as exc:
                raise JobRefused(f"presigned[{n}].tx does not parse: {exc.message}", field="presigned") from None
            presigned.append(Presigned(_int(rung.get("feerate"), f"presigned[{n}].feerate"), tx))
    else:
        if body.get("presigned"):
            raise JobRefused("an evm job takes no pre-signed transactions (the watcher calls the contract)", field="presigned")
        if not isinstance(htlc.get("contract"), str) or not isinstance(htlc.get("swap"), dict):
            raise JobRefused("an evm htlc needs contract and swap", field="htlc")
    secret = None
    if body.get("secret") is not None:
        if kind != CLAIM:
            raise JobRefused("only a claim job takes a secret", field="secret")
        secret = _hex(body["secret"], "secret", 32)
        if hashlib.sha256(secret).digest() != hashlock:
            raise JobRefused("sha256(secret) is not the hashlock", field="secret")
    reveal = _parse_reveal(body.get("reveal"))
    if kind == CLAIM and secret is None and reveal is None:
        raise JobRefused("a claim job needs the secret or where it will be revealed (reveal)", field="reveal")
    if kind == REFUND and reveal is not None:
        raise JobRefused("a refund job takes no reveal", field="reveal")
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    spec = JobSpec(kind, chain, hashlock, payout, htlc, tuple(presigned), reveal, secret, canonical)
    if chain == EVM:
        try:
            _ = spec.swap  # decoded now, so a malformed one is refused at intake
        except (InputError, KeyError, TypeError, ValueError) as exc:
            raise JobRefused(f"htlc.swap is not a valid swap: {exc}", field="htlc.swap") from None
    return spec


def _parse_reveal(value: Any) -> Reveal | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise JobRefused("reveal must be an object", field="reveal")
    start = _int(value.get("from_height", 0), "reveal.from_height", MAX_HEIGHT)
    if value.get("chain") == EVM:
        if not isinstance(value.get("contract"), str):
            raise JobRefused("reveal.contract is missing", field="reveal.contract")
        return Reveal(EVM, start, contract=value["contract"], swap_id=_hex(value.get("swap_id"), "reveal.swap_id", 32))
    if value.get("chain") == BITCOIN:
        return Reveal(BITCOIN, start, outpoint=_outpoint(value.get("outpoint"), "reveal.outpoint"))
    raise JobRefused(f"reveal.chain must be bitcoin or evm, got {_shown(value.get('chain'))}", field="reveal.chain")


# --- audit against the chains ---------------------------------------------------------------


async def audit_job(spec: JobSpec, btc: BitcoinAdapter | None, evm: EvmAdapter | None) -> int:
    """Check the job against the chain; returns the HTLC's expiry (height or unix seconds)."""
    if spec.chain == BITCOIN:
        if btc is None:
            raise JobRefused("this watcher does not follow bitcoin")
        expiry = await _audit_bitcoin(spec, btc)
    else:
        if evm is None:
            raise JobRefused("this watcher does not follow the evm chain")
        expiry = await _audit_evm(spec, evm)
    if spec.reveal is not None and (btc if spec.reveal.chain == BITCOIN else evm) is None:
        raise JobRefused(f"this watcher does not follow the reveal chain {spec.reveal.chain}")
    if spec.reveal is not None and spec.reveal.chain == EVM:
        htlc = EvmHtlc(evm, spec.reveal.contract)
        try:
            locked = await htlc.locked_swap(spec.reveal.swap_id, spec.reveal.from_height)
        except NotFound:
            raise JobRefused(f"reveal: no swap 0x{spec.reveal.swap_id.hex()} locked in {spec.reveal.contract}") from None
        if locked.swap.hashlock != spec.hashlock:
            raise JobRefused("reveal: that swap locks a different hashlock, its claim cannot reveal this secret")
    return expiry


async def _audit_bitcoin(spec: JobSpec, btc: BitcoinAdapter) -> int:
    try:
        terms = audit(bytes.fromhex(spec.htlc["script"]), network=btc.network)
    except AuditError as exc:
        raise JobRefused(f"htlc.script: {exc.reason}") from None
    if terms.template != TEMPLATE_P2WSH:
        raise JobRefused(f"htlc.script is the {terms.template} template; the watcher completes p2wsh spends only")
    if terms.hashlock != spec.hashlock:
        raise JobRefused(f"the script locks {terms.hashlock.hex()}, not the job's hashlock")
    txid, vout = spec.outpoint
    out = await btc.txout(txid, vout)
    if out is None:
        raise JobRefused(f"htlc output {txid}:{vout} is not unspent (already spent, or never funded)")
    if out.script_pubkey != terms.script_pubkey:
        raise JobRefused(f"output {txid}:{vout} does not pay this HTLC script")
    amount = out.value
    if amount != spec.htlc["amount"]:
        raise JobRefused(f"output {txid}:{vout} holds {amount} sats, the job says {spec.htlc['amount']}")
    previous_fee = -1
    for n, rung in enumerate(spec.presigned):
        fee = _check_presigned(spec, terms, amount, n, rung)
        if fee <= previous_fee:
            raise JobRefused(f"presigned[{n}] pays a fee of {fee} sats, not more than the rung below ({previous_fee})")
        previous_fee = fee
    return terms.locktime


def _check_presigned(spec: JobSpec, terms: HtlcTerms, amount: int, n: int, rung: Presigned) -> int:
    what = f"presigned[{n}] ({spec.kind})"
    tx = rung.tx
    txid, vout = spec.outpoint
    if len(tx.vin) != 1 or (tx.vin[0].prevout.txid_hex, tx.vin[0].prevout.n) != (txid, vout):
        raise JobRefused(f"{what} does not spend exactly the HTLC output {txid}:{vout}")
    if len(tx.vout) != 1 or tx.vout[0].script_pubkey.hex() != spec.payout.lower():
        raise JobRefused(
            f"{what} does not pay the party: its output goes to {', '.join(o.script_pubkey.hex() for o in tx.vout) or 'nowhere'}, not payout {spec.payout}"
        )
    fee = amount - tx.vout[0].value
    if fee <= 0 or fee * 10 > amount:
        raise JobRefused(f"{what} pays a fee of {fee} sats on {amount}: not between 1 sat and 10% of the amount")
    if tx.vin[0].sequence >= 0xFFFFFFFE:
        raise JobRefused(f"{what} does not signal replaceability (sequence {tx.vin[0].sequence:#x}), so it cannot be fee-bumped")
    witness = tx.vin[0].witness
    if spec.kind == CLAIM:
        if len(witness) != 4 or witness[PREIMAGE_INDEX] != PREIMAGE_PLACEHOLDER or witness[2] != b"\x01":
            raise JobRefused(f"{what} witness is not (signature, 32-byte placeholder, 01, script)")
        pubkey = terms.claim_pubkey
    else:
        if len(witness) != 3 or witness[1] != b"":
            raise JobRefused(f"{what} witness is not (signature, empty, script)")
        if tx.locktime != terms.locktime:
            raise JobRefused(f"{what} has nLockTime {tx.locktime}, the script refunds at height {terms.locktime}")
        pubkey = terms.refund_pubkey
    if witness[-1] != terms.script:
        raise JobRefused(f"{what} witness script is not the HTLC script")
    sig = witness[0]
    digest = segwit_v0_sighash(tx, 0, terms.script, amount)
    try:
        valid = sig[-1] == SIGHASH_ALL and verify(digest, Signature.parse_bytes(sig), Key(pubkey))
    except Exception:  # noqa: BLE001 - any undecodable signature is simply not valid
        valid = False
    if not valid:
        raise JobRefused(f"{what} signature is not a valid SIGHASH_ALL signature by the script's {spec.kind} key")
    return fee


async def _audit_evm(spec: JobSpec, evm: EvmAdapter) -> int:
    swap = spec.swap
    if swap.hashlock != spec.hashlock:
        raise JobRefused("htlc.swap.hashlock is not the job's hashlock")
    wanted = swap.recipient if spec.kind == CLAIM else swap.sender
    if spec.payout.lower() != wanted.lower():
        role = "recipient" if spec.kind == CLAIM else "sender"
        raise JobRefused(f"payout {spec.payout} is not the swap's {role} {wanted}: the contract pays only that address")
    try:
        htlc = EvmHtlc(evm, spec.htlc["contract"])
    except InputError as exc:
        raise JobRefused(f"htlc.contract: {exc.message}", field="htlc.contract") from None
    if not await evm.code(htlc.address):
        raise JobRefused(f"htlc.contract {htlc.address} has no code: not an HTLC contract", field="htlc.contract")
    # The id is the keccak of every parameter: LOCKED proves these exact terms were locked.
    try:
        status = await htlc.swap(swap.id)
    except BridgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - another contract's answer (undecodable, or no SwapStatus)
        raise JobRefused(f"htlc.contract {htlc.address} does not answer as an HTLC: {type(exc).__name__}", field="htlc.contract") from None
    if status != SwapStatus.LOCKED:
        raise JobRefused(f"swap 0x{swap.id.hex()} is {status.name.lower()} in {htlc.address}, nothing to {spec.kind}")
    if swap.expiry > MAX_STORED_INT:  # locked, but with an expiry no job row can hold (nor any clock reach)
        raise JobRefused(f"htlc.swap.expiry {swap.expiry} is out of range", field="htlc.swap")
    return swap.expiry
