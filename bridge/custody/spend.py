"""Spending custody and deposit coins: committee sweeps and payouts as PSBTs, the depositor's refund.

* ``build_sweep`` / ``build_payout`` (``build_spend`` underneath) propose a transaction spending
  custody or deposit coins through their multisig path, paying the given outputs with the change
  back to the custody address, as a BIP-174 PSBT (``chains.btc.psbt``): every input carries its
  ``witness_utxo`` and ``witness_script``, the change output its witness script.  Version 2,
  every input's sequence 0xfffffffd (BIP-125 replaceable, no relative lock), locktime 0.  The fee
  is ``feerate`` (sat/vB) times the vsize of the finished transaction, computed exactly for
  M signatures of 71 bytes per input (a low-R DER signature plus its sighash byte, as Bitcoin
  Core, embit and this module sign).
* ``add_signature`` adds one committee member's SIGHASH_ALL partial signatures (BIP-143) to every
  input its key can sign; ``combine`` merges the members' copies; ``finalize`` checks the partial
  signatures and builds each witness (``0 <M sigs in key order> [1] <script>``, the ``1``
  choosing a deposit script's IF branch) and returns the network transaction.  A PSBT signed by
  any BIP-174 signer (embit's ``sign_with``, say) finalizes here the same way.
* ``build_refund``: the depositor takes a deposit back alone after the script's relative delay
  (nSequence = delay, version 2, witness ``<sig> 0 <script>``).

What an attester must check before it signs is ``bridge.custody.policy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import coincurve

from bridge.core.errors import InputError, InsufficientFunds
from bridge.custody.scripts import CustodyPolicy, CustodyRefused, custody_script, multisig_terms, parse_deposit_script
from chains.btc import keys as btc_keys
from chains.btc import psbt as P
from chains.btc.address import address_to_script
from chains.btc.primitives import OutPoint, Tx, TxIn, TxOut
from chains.btc.script import dust_threshold, is_valid_signature_encoding, p2wsh_script
from chains.btc.sighash import SIGHASH_ALL, segwit_v0_sighash
from htlc.bitcoin_tx import DEFAULT_MAX_FEE, SEQUENCE_RBF, SignedTx, pubkey_of, sign_digest

TX_VERSION = 2
#: DER signature with a low R (ground, as Core's ``CKey::Sign``) and low S, plus the sighash byte.
SIGNATURE_SIZE = 71
_DUMMY_SIG = b"\x30" + bytes(SIGNATURE_SIZE - 2) + bytes((SIGHASH_ALL,))
#: What a finalized input no longer needs (BIP-174's finalizer clears them).
_SIGNING_FIELDS = (P.IN_PARTIAL_SIG, P.IN_SIGHASH, P.IN_REDEEM_SCRIPT, P.IN_WITNESS_SCRIPT, P.IN_BIP32)

__all__ = [
    "SEQUENCE_RBF",
    "CustodyCoin",
    "add_signature",
    "build_payout",
    "build_refund",
    "build_spend",
    "build_sweep",
    "build_withdrawal_payout",
    "combine",
    "finalize",
    "multisig_witness",
    "spend_vsize",
]


@dataclass(frozen=True)
class CustodyCoin:
    """An unspent custody or deposit output: where it is, what it holds, the script behind it."""

    txid: str
    vout: int
    amount: int
    witness_script: bytes

    @property
    def outpoint(self) -> OutPoint:
        return OutPoint.from_hex(self.txid, self.vout)

    @property
    def script_pubkey(self) -> bytes:
        return p2wsh_script(self.witness_script)


# --- witnesses and sizes ----------------------------------------------------------------------


def multisig_witness(witness_script: bytes, signatures: Sequence[bytes]) -> list[bytes]:
    """The witness of the multisig path: the CHECKMULTISIG dummy, the signatures (in key order), the
    IF selector for a deposit script, the script.  No check of the signatures here."""
    _, _, is_deposit = multisig_terms(witness_script)
    return [b"", *signatures, *([b"\x01"] if is_deposit else []), witness_script]


def _dummy_witness(witness_script: bytes) -> tuple[bytes, ...]:
    threshold, _, _ = multisig_terms(witness_script)
    return tuple(multisig_witness(witness_script, [_DUMMY_SIG] * threshold))


def spend_vsize(tx: Tx, witness_scripts: Sequence[bytes]) -> int:
    """vsize of ``tx`` once every input carries its multisig witness of 71-byte signatures."""
    vin = [txin._replace(witness=_dummy_witness(ws)) for txin, ws in zip(tx.vin, witness_scripts)]
    return Tx(tx.version, vin, tx.vout, tx.locktime).vsize


# --- proposing a spend ------------------------------------------------------------------------


def _check_feerate(feerate: int) -> int:
    if isinstance(feerate, bool) or not isinstance(feerate, int) or feerate < 1:
        raise InputError(f"feerate must be a whole number of sat/vB >= 1, got {feerate!r}", field="feerate")
    return feerate


def _check_coins(coins: Sequence[CustodyCoin]) -> None:
    if not coins:
        raise InputError("a custody spend needs at least one coin")
    seen: set[OutPoint] = set()
    for coin in coins:
        if isinstance(coin.amount, bool) or not isinstance(coin.amount, int) or coin.amount <= 0:
            raise InputError(f"coin {coin.txid}:{coin.vout} has amount {coin.amount!r}")
        if coin.outpoint in seen:
            raise InputError(f"coin {coin.txid}:{coin.vout} given twice")
        seen.add(coin.outpoint)
        multisig_terms(coin.witness_script)  # CustodyRefused unless the committee can spend it


def build_spend(
    coins: Sequence[CustodyCoin],
    payments: Sequence[tuple[bytes | str, int]],
    change_script: bytes,
    feerate: int,
    *,
    change_witness_script: bytes | None = None,
    network: str = "regtest",
    max_fee: int = DEFAULT_MAX_FEE,
) -> P.Psbt:
    """The unsigned PSBT spending ``coins`` to ``payments`` (output script or address, sats) with the
    rest, less the fee, to ``change_script``.  Change below the dust threshold is left to the fee
    when there are payments; a sweep (no payments) must have change."""
    _check_feerate(feerate)
    _check_coins(coins)
    outs = []
    for dest, amount in payments:
        spk = address_to_script(dest, network) if isinstance(dest, str) else bytes(dest)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < dust_threshold(spk):
            raise InputError(f"payment of {amount!r} sat is below the dust threshold {dust_threshold(spk)} of its output", field="payments")
        outs.append(TxOut(amount, spk))
    vin = [TxIn(coin.outpoint, b"", SEQUENCE_RBF) for coin in coins]
    scripts = [coin.witness_script for coin in coins]
    total_in = sum(coin.amount for coin in coins)
    remainder = total_in - sum(out.value for out in outs)
    fee = feerate * spend_vsize(Tx(TX_VERSION, vin, [*outs, TxOut(0, change_script)]), scripts)
    with_change = remainder - fee >= dust_threshold(change_script)
    if with_change:
        outs.append(TxOut(remainder - fee, change_script))
    elif not outs:
        raise InsufficientFunds(f"sweep of {total_in} sat leaves {remainder - fee} sat after the {fee} sat fee: below dust", fee=fee)
    else:
        fee = feerate * spend_vsize(Tx(TX_VERSION, vin, outs), scripts)
        if remainder < fee:
            raise InsufficientFunds(f"coins of {total_in} sat cannot pay {total_in - remainder} sat plus the {fee} sat fee", fee=fee)
        fee = remainder  # the dust that would have been change goes to the miner
    if fee > max_fee:
        raise InputError(f"fee {fee} sat exceeds the configured maximum {max_fee} sat", fee=fee, max_fee=max_fee)
    psbt = P.Psbt.from_tx(Tx(TX_VERSION, vin, outs, 0))
    for record, coin in zip(psbt.inputs, coins):
        record[P.k(P.IN_WITNESS_UTXO)] = TxOut(coin.amount, coin.script_pubkey).serialize()
        record[P.k(P.IN_WITNESS_SCRIPT)] = coin.witness_script
    if with_change and change_witness_script is not None:
        psbt.outputs[-1][P.k(P.OUT_WITNESS_SCRIPT)] = change_witness_script
    return psbt


def build_payout(coins: Sequence[CustodyCoin], payments: Sequence[tuple[bytes | str, int]], policy: CustodyPolicy, feerate: int, **kw: Any) -> P.Psbt:
    """Pay ``payments`` from custody ``coins``, change to ``policy``'s custody address."""
    script = custody_script(policy)
    return build_spend(coins, payments, p2wsh_script(script), feerate, change_witness_script=script, network=policy.network, **kw)


def build_withdrawal_payout(
    coins: Sequence[CustodyCoin], destination: bytes, amount: int, policy: CustodyPolicy, feerate: int, max_fee: int = DEFAULT_MAX_FEE
) -> P.Psbt:
    """Pay a withdrawal of ``amount`` sats: the destination gets ``amount`` less the fee, custody
    gets back everything else, so custody gives up exactly ``amount`` (the margin debited) and
    the books hold to the sat.  The change is kept even when small (it is the committee's)."""
    _check_feerate(feerate)
    _check_coins(coins)
    custody = custody_script(policy)
    total = sum(c.amount for c in coins)
    change = total - amount
    if change < dust_threshold(p2wsh_script(custody)):
        raise InsufficientFunds(f"coins of {total} sat cannot pay {amount} sat and keep custody change above dust", needed=amount)
    vin = [TxIn(coin.outpoint, b"", SEQUENCE_RBF) for coin in coins]
    draft = Tx(TX_VERSION, vin, [TxOut(amount, bytes(destination)), TxOut(change, p2wsh_script(custody))])
    fee = feerate * spend_vsize(draft, [c.witness_script for c in coins])
    if fee > max_fee:
        raise InputError(f"fee {fee} sat exceeds the configured maximum {max_fee} sat", fee=fee, max_fee=max_fee)
    if amount - fee < dust_threshold(bytes(destination)):
        raise InputError(f"a withdrawal of {amount} sat leaves {amount - fee} sat after the {fee} sat fee: below dust", field="amount")
    psbt = P.Psbt.from_tx(Tx(TX_VERSION, vin, [TxOut(amount - fee, bytes(destination)), TxOut(change, p2wsh_script(custody))], 0))
    for record, coin in zip(psbt.inputs, coins):
        record[P.k(P.IN_WITNESS_UTXO)] = TxOut(coin.amount, coin.script_pubkey).serialize()
        record[P.k(P.IN_WITNESS_SCRIPT)] = coin.witness_script
    psbt.outputs[-1][P.k(P.OUT_WITNESS_SCRIPT)] = custody
    return psbt


def build_sweep(coins: Sequence[CustodyCoin], policy: CustodyPolicy, feerate: int, **kw: Any) -> P.Psbt:
    """Move deposit (or custody) ``coins`` into ``policy``'s custody address: one output."""
    return build_payout(coins, [], policy, feerate, **kw)


# --- signing, combining, finalizing -------------------------------------------------------------


def _signer(key: Any) -> tuple[bytes, Any]:
    """``(pubkey, sign(digest) -> DER)``.  A raw 32-byte secret, or a key holding one (``BtcKey``,
    ``chains.btc.keys.Secret``, ``coincurve.PrivateKey``), signs as Core does (low R, low S);
    any other signer object goes through ``htlc.bitcoin_tx.sign_digest``."""
    secret = key if isinstance(key, (bytes, bytearray)) else getattr(key, "secret", None)
    if isinstance(secret, (bytes, bytearray)) and len(secret) == 32:
        secret = bytes(secret)
        try:
            pubkey = coincurve.PrivateKey(secret).public_key.format(compressed=True)
        except ValueError:
            raise InputError("not a valid secp256k1 private key") from None
        return pubkey, lambda digest: btc_keys.sign_ecdsa(secret, digest)
    return pubkey_of(key), lambda digest: sign_digest(key, digest)[:-1]


def _input(psbt: P.Psbt, index: int) -> tuple[dict[bytes, bytes], bytes, TxOut]:
    """An unfinalized input's record, witness script and spent output, consistent with each other."""
    record = psbt.inputs[index]
    script = record.get(P.k(P.IN_WITNESS_SCRIPT))
    utxo = P.witness_utxo(record)
    if script is None or utxo is None:
        raise CustodyRefused("incomplete input", f"input {index} lacks its witness_script or witness_utxo")
    if utxo.script_pubkey != p2wsh_script(script):
        raise CustodyRefused("witness_script mismatch", f"input {index}: the witness_utxo does not pay to the witness_script")
    sighash = P.sighash_type(record)
    if sighash is not None and sighash != SIGHASH_ALL:
        raise CustodyRefused("sighash not ALL", f"input {index} asks for sighash type {sighash}")
    return record, script, utxo


def add_signature(psbt: P.Psbt, key: Any) -> int:
    """Add ``key``'s partial signature to every unfinalized input whose script names it (in place);
    returns how many were added.  Sign only a PSBT ``policy.check_payout`` accepted."""
    pubkey, sign = _signer(key)
    added = 0
    for index in range(len(psbt.inputs)):
        if P.is_finalized(psbt.inputs[index]):
            continue
        record, script, utxo = _input(psbt, index)
        if pubkey not in multisig_terms(script)[1]:
            continue
        digest = segwit_v0_sighash(psbt.tx, index, script, utxo.value)
        record[P.k(P.IN_PARTIAL_SIG, pubkey)] = sign(digest) + bytes((SIGHASH_ALL,))
        added += 1
    return added


def combine(psbts: Sequence[P.Psbt]) -> P.Psbt:
    """BIP-174 combiner: one PSBT holding every copy's records.  On a clash the first copy's value
    wins, except that a partial signature which verifies replaces one which does not (a copy from
    a faulty member cannot crowd out another member's good signature)."""
    if not psbts:
        raise InputError("nothing to combine")
    out = psbts[0].copy()
    for other in psbts[1:]:
        if other.tx.serialize(witness=False) != out.tx.serialize(witness=False):
            raise CustodyRefused("different transactions", "PSBTs to combine must share their unsigned transaction")
        for index, (mine, theirs) in enumerate(zip(out.inputs, other.inputs)):
            for key, value in theirs.items():
                have = mine.setdefault(key, value)
                if have != value and key[0] == P.IN_PARTIAL_SIG and not P.is_finalized(mine):
                    _, script, utxo = _input(out, index)
                    digest = segwit_v0_sighash(out.tx, index, script, utxo.value)
                    if not _valid(key[1:], have, digest) and _valid(key[1:], value, digest):
                        mine[key] = value
        for mine, theirs in zip(out.outputs, other.outputs):
            for key, value in theirs.items():
                mine.setdefault(key, value)
    return out


def _valid(pubkey: bytes, sig: bytes, digest: bytes) -> bool:
    if not sig or sig[-1] != SIGHASH_ALL or not is_valid_signature_encoding(sig):
        return False
    try:
        return coincurve.PublicKey(pubkey).verify(sig[:-1], digest, hasher=None)  # libsecp256k1: low S only
    except (ValueError, TypeError):
        return False


def finalize(psbt: P.Psbt) -> Tx:
    """Finalize every input (in place) from M valid partial signatures in key order, and return
    the network transaction.  ``CustodyRefused`` ("not enough signatures") naming the first input
    short of its threshold; invalid partial signatures are never used."""
    for index in range(len(psbt.inputs)):
        if P.is_finalized(psbt.inputs[index]):
            continue
        record, script, utxo = _input(psbt, index)
        threshold, pubkeys, _ = multisig_terms(script)
        digest = segwit_v0_sighash(psbt.tx, index, script, utxo.value)
        partial = P.partial_sigs(record)
        sigs = [partial[pk] for pk in pubkeys if pk in partial and _valid(pk, partial[pk], digest)]
        if len(sigs) < threshold:
            raise CustodyRefused("not enough signatures", f"input {index} has {len(sigs)} valid of the {threshold} its script needs")
        for key in [key for key in record if key[0] in _SIGNING_FIELDS]:
            del record[key]
        record[P.k(P.IN_FINAL_WITNESS)] = P.ser_witness_stack(multisig_witness(script, sigs[:threshold]))
    return P.extract(psbt)


# --- the depositor's refund -----------------------------------------------------------------------


def build_refund(
    coin: CustodyCoin,
    refund_key: Any,
    destination: bytes | str,
    feerate: int,
    *,
    network: str = "regtest",
    sequence: int | None = None,
    max_fee: int = DEFAULT_MAX_FEE,
) -> SignedTx:
    """The depositor's refund of a deposit coin through the ELSE branch: nSequence = the script's
    delay (BIP-68), so the node takes it once the deposit has ``delay`` confirmations
    (``non-BIP68-final`` before).  ``sequence`` overrides it (tests show CSV refusing less)."""
    _check_feerate(feerate)
    terms = parse_deposit_script(coin.witness_script)
    pubkey, sign = _signer(refund_key)
    if pubkey != terms.refund_pubkey:
        raise CustodyRefused("refund key", "the key is not the one the deposit script refunds to")
    spk = address_to_script(destination, network) if isinstance(destination, str) else bytes(destination)
    seq = terms.refund_delay if sequence is None else sequence
    txin = TxIn(coin.outpoint, b"", seq)

    def build(fee: int, sig: bytes) -> Tx:
        return Tx(TX_VERSION, [txin._replace(witness=(sig, b"", coin.witness_script))], [TxOut(coin.amount - fee, spk)], 0)

    fee = feerate * build(0, _DUMMY_SIG).vsize
    while True:
        unsigned = build(fee, b"")
        sig = sign(segwit_v0_sighash(unsigned, 0, coin.witness_script, coin.amount)) + bytes((SIGHASH_ALL,))
        tx = build(fee, sig)
        if feerate * tx.vsize <= fee:  # a 72-byte signature from a signer that does not grind R
            break
        fee = feerate * tx.vsize
    if coin.amount - fee < dust_threshold(spk):
        raise InputError(f"refund of {coin.amount} sat less the {fee} sat fee would be dust", fee=fee)
    if fee > max_fee:
        raise InputError(f"fee {fee} sat exceeds the configured maximum {max_fee} sat", fee=fee, max_fee=max_fee)
    return SignedTx(tx.serialize(), tx.txid, tx.vsize, fee)
