"""What every attester checks before it signs a custody PSBT: the proposal against its own replica.

An attester signs a sweep or payout only if, by its own books (``ExpectedPayout``):

* every input is a custody or deposit coin it knows, once, and the PSBT states that coin's amount
  and script exactly (``witness_utxo``, ``witness_script``); every input signals BIP-125
  replacement with sequence 0xfffffffd (no relative lock), asks for SIGHASH_ALL only, and is not
  already finalized;
* the outputs are exactly what its replica owes (each owed script once, for exactly its amount),
  plus at most one change output, to the custody script;
* the fee (known input amounts less the outputs) is within the absolute cap and the per-vbyte
  cap (over the vsize the finished transaction will have, ``spend.spend_vsize``);
* the transaction is version 2 and its locktime is not in the future (a block height at most the
  attester's tip).

``check_payout`` raises ``PayoutRefused`` whose ``reason`` is one stable phrase per rule (the
message adds the particulars); ``sign_payout`` checks, then signs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from bridge.custody.scripts import CustodyRefused
from bridge.custody.spend import SEQUENCE_RBF, TX_VERSION, add_signature, spend_vsize
from chains.btc import psbt as P
from chains.btc.address import address_to_script, script_to_address
from chains.btc.primitives import OutPoint, TxOut
from chains.btc.script import LOCKTIME_THRESHOLD, dust_threshold, p2wsh_script
from chains.btc.sighash import SIGHASH_ALL

__all__ = ["ExpectedPayout", "PayoutCheck", "PayoutRefused", "check_payout", "sign_payout"]


class PayoutRefused(CustodyRefused):
    """A PSBT an honest attester refuses to sign; ``reason`` names the rule it breaks."""


def _outpoint(ref: OutPoint | tuple[str, int] | str) -> OutPoint:
    if isinstance(ref, OutPoint):
        return ref
    if isinstance(ref, str):
        txid, _, n = ref.partition(":")
        return OutPoint.from_hex(txid, int(n))
    txid, n = ref
    return OutPoint.from_hex(txid, n)


def _count(what: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CustodyRefused(what, f"{value!r} is not a whole number >= {low}")
    return value


@dataclass(frozen=True)
class ExpectedPayout:
    """What the attester's replica expects of a sweep or payout.

    ``coins``: the custody and deposit coins it knows, ``outpoint -> (amount, witness script)``
    (an outpoint as ``OutPoint``, ``(txid, vout)`` or ``"txid:vout"``); ``owed``: what must be paid,
    ``output script or address -> sats`` (a sweep owes nothing); ``change_script``: the custody
    output script; ``max_fee`` (sats) and ``max_feerate`` (sat/vB): the caps; ``tip_height``: the
    attester's chain tip (a locktime above it is refused)."""

    coins: Mapping[Any, tuple[int, bytes]]
    owed: Mapping[bytes | str, int]
    change_script: bytes
    max_fee: int
    max_feerate: int
    tip_height: int = 0
    network: str = "regtest"
    _coins: dict[OutPoint, tuple[int, bytes]] = field(init=False, repr=False, compare=False)
    _owed: dict[bytes, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for what, value in [("max_fee", self.max_fee), ("max_feerate", self.max_feerate), ("tip_height", self.tip_height)]:
            _count(what, value, 0)
        coins = {_outpoint(ref): (_count("coin amount", amount, 1), bytes(script)) for ref, (amount, script) in self.coins.items()}
        owed: dict[bytes, int] = {}
        for dest, amount in self.owed.items():
            _count("owed amount", amount, 1)
            spk = address_to_script(dest, self.network) if isinstance(dest, str) else bytes(dest)
            if spk in owed:
                raise CustodyRefused("owed", f"{self._show(spk)} is owed twice; merge the amounts")
            owed[spk] = amount
        if bytes(self.change_script) in owed:
            raise CustodyRefused("owed", "a payment to the custody script itself is not a payout")
        object.__setattr__(self, "_coins", coins)
        object.__setattr__(self, "_owed", owed)

    def _show(self, spk: bytes) -> str:
        return script_to_address(spk, self.network) or f"script {spk.hex()}"


@dataclass(frozen=True)
class PayoutCheck:
    """What an accepted PSBT does: the fee, the vsize of the finished transaction, the change."""

    fee: int
    vsize: int
    change: int
    inputs: int

    @property
    def feerate(self) -> float:
        return self.fee / self.vsize


def _refuse(reason: str, detail: str) -> PayoutRefused:
    return PayoutRefused(reason, detail)


def _check_input(psbt: P.Psbt, index: int, expected: ExpectedPayout) -> tuple[int, bytes]:
    txin = psbt.tx.vin[index]
    where = f"input {index} ({txin.prevout.txid_hex}:{txin.prevout.n})"
    known = expected._coins.get(txin.prevout)
    if known is None:
        raise _refuse("unknown input", f"{where} is no custody coin this replica knows")
    amount, script = known
    record = psbt.inputs[index]
    if P.is_finalized(record):
        raise _refuse("input finalized", f"{where} is already finalized")
    utxo = P.witness_utxo(record)
    if utxo is None:
        raise _refuse("witness_utxo missing", f"{where} has no witness_utxo")
    if utxo.value != amount:
        raise _refuse("witness_utxo amount mismatch", f"{where} claims {utxo.value} sat, the coin holds {amount}")
    if utxo.script_pubkey != p2wsh_script(script):
        raise _refuse("witness_utxo script mismatch", f"{where} claims output script {utxo.script_pubkey.hex()}, not the coin's")
    prev = P.non_witness_utxo(record)
    if prev is not None and (txin.prevout.n >= len(prev.vout) or prev.vout[txin.prevout.n] != TxOut(amount, p2wsh_script(script))):
        raise _refuse("non_witness_utxo mismatch", f"{where}: the non-witness UTXO disagrees with the coin")
    if record.get(P.k(P.IN_WITNESS_SCRIPT)) != script:
        raise _refuse("witness_script mismatch", f"{where} does not carry the coin's witness script")
    if P.k(P.IN_REDEEM_SCRIPT) in record:
        raise _refuse("redeem_script present", f"{where}: a native P2WSH coin has no redeem script")
    sighash = P.sighash_type(record)
    if sighash is not None and sighash != SIGHASH_ALL:
        raise _refuse("sighash not ALL", f"{where} asks for sighash type {sighash:#x}")
    for pubkey, sig in P.partial_sigs(record).items():
        if not sig or sig[-1] != SIGHASH_ALL:
            raise _refuse("sighash not ALL", f"{where} carries a signature of {pubkey.hex()} with sighash type {sig[-1:].hex() or 'none'}")
    if txin.sequence != SEQUENCE_RBF:
        raise _refuse("sequence not RBF", f"{where} has sequence {txin.sequence:#010x}, not {SEQUENCE_RBF:#010x}")
    return amount, script


def check_payout(psbt: P.Psbt, expected: ExpectedPayout) -> PayoutCheck:
    """Accept ``psbt`` as a sweep or payout this replica justifies, or raise ``PayoutRefused``."""
    tx = psbt.tx
    if tx.version != TX_VERSION:
        raise _refuse("version", f"transaction version {tx.version}, expected {TX_VERSION}")
    if tx.locktime >= LOCKTIME_THRESHOLD:
        raise _refuse("locktime in the future", f"locktime {tx.locktime} is a Unix time; only block heights up to the tip are signed")
    if tx.locktime > expected.tip_height:
        raise _refuse("locktime in the future", f"locktime {tx.locktime} is above the tip {expected.tip_height}")
    if not tx.vin:
        raise _refuse("no inputs", "the transaction spends nothing")
    seen: set[OutPoint] = set()
    for txin in tx.vin:
        if txin.prevout in seen:
            raise _refuse("duplicate input", f"{txin.prevout.txid_hex}:{txin.prevout.n} is spent twice")
        seen.add(txin.prevout)
    known = [_check_input(psbt, i, expected) for i in range(len(tx.vin))]

    owed = dict(expected._owed)
    paid: set[bytes] = set()
    change_outputs: list[int] = []
    strangers: list[int] = []
    for n, out in enumerate(tx.vout):
        spk = out.script_pubkey
        if spk in owed:
            if spk in paid:
                raise _refuse("duplicate owed output", f"output {n} pays {expected._show(spk)} a second time")
            if out.value != owed[spk]:
                raise _refuse("owed amount mismatch", f"output {n} pays {out.value} sat to {expected._show(spk)}, {owed[spk]} sat are owed")
            paid.add(spk)
        elif spk == expected.change_script:
            change_outputs.append(n)
        else:
            strangers.append(n)
    if strangers:
        n = strangers[0]
        out = tx.vout[n]
        if not change_outputs and len(strangers) == 1 and all(spk in paid for spk in owed):
            raise _refuse("change not to custody", f"output {n} sends {out.value} sat of change to {expected._show(out.script_pubkey)}, not to custody")
        raise _refuse("extra output", f"output {n} pays {out.value} sat to {expected._show(out.script_pubkey)}, which is neither owed nor custody")
    missing = [spk for spk in owed if spk not in paid]
    if missing:
        raise _refuse("missing owed output", f"nothing pays the {owed[missing[0]]} sat owed to {expected._show(missing[0])}")
    if len(change_outputs) > 1:
        raise _refuse("extra output", f"outputs {change_outputs} all pay custody; one change output is expected")
    change = tx.vout[change_outputs[0]].value if change_outputs else 0
    if change_outputs and change < dust_threshold(expected.change_script):
        raise _refuse("dust change", f"change of {change} sat is below the dust threshold")

    fee = sum(amount for amount, _ in known) - tx.total_out
    if fee < 0:
        raise _refuse("outputs exceed inputs", f"outputs {tx.total_out} sat, known inputs {fee + tx.total_out} sat")
    vsize = spend_vsize(tx, [script for _, script in known])
    if fee > expected.max_fee:
        raise _refuse("fee above cap", f"fee {fee} sat > the cap of {expected.max_fee} sat")
    if fee > expected.max_feerate * vsize:
        raise _refuse("feerate above cap", f"fee {fee} sat over {vsize} vB is {fee / vsize:.2f} sat/vB > the cap of {expected.max_feerate} sat/vB")
    return PayoutCheck(fee, vsize, change, len(tx.vin))


def sign_payout(psbt: P.Psbt, key: Any, expected: ExpectedPayout) -> PayoutCheck:
    """An attester's one call: check the PSBT against its replica, then add its signatures (in place)."""
    check = check_payout(psbt, expected)
    signed = psbt.copy()
    if add_signature(signed, key) != len(psbt.inputs):
        raise CustodyRefused("not a signer", "the key does not sign every input of this PSBT")
    psbt.inputs[:] = signed.inputs
    return check
