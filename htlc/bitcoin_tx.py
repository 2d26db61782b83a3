"""Bitcoin transactions for HTLCs, built and signed here with bitcoinlib keys.

Serialisation, the two signature digests (BIP143 for P2WSH/P2WPKH inputs,
the legacy one for the P2SH template) and the builders: funding from the
party's own P2WPKH coins, claim and refund of either HTLC template.

Fees come from an integer feerate in sat/vB applied to the vsize of the signed
transaction (re-signed until the fee matches, since a DER signature is 71 or
72 bytes); a builder refuses dust outputs and absurd fees with ``InputError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from bitcoinlib.keys import Key, sign

from bridge.errors import InputError, InsufficientFunds
from htlc.audit import audit
from htlc.bitcoin_address import address_to_script_pubkey
from htlc.bitcoin_script import (
    SECRET_SIZE,
    TEMPLATE_P2SH_BIP199,
    TEMPLATE_P2WSH,
    hash160,
    htlc_script_pubkey,
    p2wpkh_script_pubkey,
    push_data,
    sha256,
)
from htlc.bitcoin_wire import SEQUENCE_FINAL, SIGHASH_ALL, Tx, TxIn, TxOut, legacy_sighash, segwit_v0_sighash, varint

#: Non-final, so nLockTime is enforced (needed by OP_CHECKLOCKTIMEVERIFY), no RBF signal.
SEQUENCE_LOCKTIME = 0xFFFFFFFE
#: BIP125 replaceable: a claim can be fee-bumped if it sits in the mempool too long.
SEQUENCE_RBF = 0xFFFFFFFD

#: Bitcoin Core's default dust relay feerate, sat/kvB.
DUST_RELAY_FEERATE = 3000
#: Refuse any single transaction paying more than this (0.01 BTC) unless told otherwise.
DEFAULT_MAX_FEE = 1_000_000
#: ...or more than this share of the amount it moves.
MAX_FEE_FRACTION_PERCENT = 10


#: A bitcoinlib ``Key``, or any key object with ``pubkey`` (33 bytes) and
#: ``sign_digest(digest) -> DER`` such as ``chains.bitcoin_wallet.BtcKey``.
Signer = Any


def sign_digest(key: Signer, digest: bytes) -> bytes:
    """DER signature with low S (bitcoinlib enforces it) plus the SIGHASH_ALL byte."""
    if isinstance(key, Key):
        if not key.is_private:
            raise InputError("signing needs a private key, got a public one")
        return sign(digest, key, hash_type=SIGHASH_ALL).as_der_encoded(include_hash_type=True)
    return key.sign_digest(digest) + bytes([SIGHASH_ALL])


def pubkey_of(key: Signer) -> bytes:
    pubkey = key.public_byte if isinstance(key, Key) else key.pubkey
    if len(pubkey) != 33:
        raise InputError("uncompressed keys cannot sign segwit inputs; use a compressed key")
    return pubkey


# --- coins, results, fee policy --------------------------------------------------------


@dataclass(frozen=True)
class Utxo:
    """A coin of the party's own (P2WPKH) wallet."""

    txid: str
    vout: int
    amount: int
    script_pubkey: bytes


@dataclass(frozen=True)
class HtlcCoin:
    """A funded HTLC output: where it is, what it holds, and the script behind it."""

    txid: str
    vout: int
    amount: int
    script: bytes
    template: str = TEMPLATE_P2WSH


@dataclass(frozen=True)
class SignedTx:
    raw: bytes
    txid: str
    vsize: int
    fee: int

    @property
    def hex(self) -> str:
        return self.raw.hex()


def dust_threshold(script_pubkey: bytes) -> int:
    """Bitcoin Core's ``GetDustThreshold`` at the default dust relay feerate."""
    size = 8 + len(varint(len(script_pubkey))) + len(script_pubkey)
    is_witness_program = 4 <= len(script_pubkey) <= 42 and script_pubkey[1] == len(script_pubkey) - 2 and (
        script_pubkey[0] == 0 or 0x51 <= script_pubkey[0] <= 0x60
    )
    # The cost of spending it later: outpoint, scriptSig length, sequence, and a signature + key.
    size += 32 + 4 + 1 + (107 // 4 if is_witness_program else 107) + 4
    return size * DUST_RELAY_FEERATE // 1000


def _check_feerate(feerate: int) -> int:
    if isinstance(feerate, bool) or not isinstance(feerate, int) or feerate < 1:
        raise InputError(f"feerate must be a whole number of sat/vB >= 1, got {feerate!r}", field="feerate")
    return feerate


def _check_output(value: int, script_pubkey: bytes, what: str) -> None:
    dust = dust_threshold(script_pubkey)
    if value < dust:
        raise InputError(f"{what} of {value} sat would be dust (threshold {dust} sat for this output type)", field=what, value=value)


def _check_fee(fee: int, amount: int, max_fee: int, what: str) -> None:
    if fee > max_fee:
        raise InputError(f"{what} fee {fee} sat exceeds the configured maximum {max_fee} sat", fee=fee, max_fee=max_fee)
    if fee * 100 > amount * MAX_FEE_FRACTION_PERCENT:
        raise InputError(
            f"{what} fee {fee} sat is more than {MAX_FEE_FRACTION_PERCENT}% of the {amount} sat it moves",
            fee=fee, amount=amount,
        )


def _fit_fee(build: Callable[[int], Tx], feerate: int) -> tuple[Tx, int]:
    """Sign with a fee, measure the vsize, raise the fee to ``feerate * vsize``, repeat.

    The fee only ever rises, so this ends; re-signing can shorten a DER
    signature by a byte, in which case the fee stays a fraction of a vbyte high
    rather than chasing it down again.
    """
    fee = feerate * build(0).vsize
    while True:
        tx = build(fee)
        needed = feerate * tx.vsize
        if needed <= fee:
            return tx, fee
        fee = needed


def _destination_script(destination: str | bytes, network: str) -> bytes:
    return address_to_script_pubkey(destination, network) if isinstance(destination, str) else bytes(destination)


# --- funding -------------------------------------------------------------------------------


def build_funding(
    utxos: Sequence[Utxo],
    key: Signer,
    htlc_script_pubkey: bytes,
    amount: int,
    feerate: int,
    *,
    change: str | bytes | None = None,
    network: str = "regtest",
    max_fee: int = DEFAULT_MAX_FEE,
) -> SignedTx:
    """Pay ``amount`` sats to the HTLC output from ``key``'s P2WPKH coins, change back to ``change``
    (default: the same P2WPKH).  Coins are taken largest first; a change below dust goes to the fee."""
    _check_feerate(feerate)
    _check_output(amount, htlc_script_pubkey, "HTLC amount")
    pubkey = pubkey_of(key)
    own_spk = p2wpkh_script_pubkey(pubkey)
    for u in utxos:
        if u.script_pubkey != own_spk:
            raise InputError(f"coin {u.txid}:{u.vout} is not paid to this key's P2WPKH output", coin=f"{u.txid}:{u.vout}")
    change_spk = own_spk if change is None else _destination_script(change, network)
    coins = sorted(utxos, key=lambda u: (-u.amount, u.txid, u.vout))

    def build(selected: Sequence[Utxo], outputs: list[TxOut]) -> Tx:
        tx = Tx([TxIn(u.txid, u.vout, sequence=SEQUENCE_RBF) for u in selected], outputs)
        script_code = b"\x76\xa9\x14" + hash160(pubkey) + b"\x88\xac"
        for n, u in enumerate(selected):
            sig = sign_digest(key, segwit_v0_sighash(tx, n, script_code, u.amount))
            tx.inputs[n].witness = [sig, pubkey]
        return tx

    total = 0
    for count in range(1, len(coins) + 1):
        selected = coins[:count]
        total += selected[-1].amount
        if total <= amount:
            continue
        tx, fee = _fit_fee(
            lambda f: build(selected, [TxOut(amount, htlc_script_pubkey), TxOut(max(total - amount - f, 0), change_spk)]),
            feerate,
        )
        if total - amount - fee >= dust_threshold(change_spk):
            _check_fee(fee, amount, max_fee, "funding")
            return SignedTx(tx.serialize(), tx.txid, tx.vsize, fee)
        tx = build(selected, [TxOut(amount, htlc_script_pubkey)])
        if total - amount >= feerate * tx.vsize:
            _check_fee(total - amount, amount, max_fee, "funding")
            return SignedTx(tx.serialize(), tx.txid, tx.vsize, total - amount)
    raise InsufficientFunds(
        f"coins worth {sum(u.amount for u in utxos)} sat cannot pay {amount} sat plus fees at {feerate} sat/vB",
        available=sum(u.amount for u in utxos), amount=amount,
    )


# --- spending an HTLC ------------------------------------------------------------------------


def spend_htlc(
    coin: HtlcCoin,
    key: Signer,
    stack: Sequence[bytes],
    destination: str | bytes,
    feerate: int,
    *,
    locktime: int = 0,
    sequence: int = SEQUENCE_RBF,
    network: str = "regtest",
    max_fee: int = DEFAULT_MAX_FEE,
) -> SignedTx:
    """Spend ``coin`` to one output with ``<sig> [<pubkey>] stack... <script>`` as its witness
    (P2WSH) or scriptSig (P2SH template, pubkey included).  No check of ``stack`` here:
    ``build_claim``/``build_refund`` are the checked entry points; tests use this one to
    hand the node spends it must reject."""
    _check_feerate(feerate)
    spk = _destination_script(destination, network)
    pubkey = pubkey_of(key)
    if coin.template not in (TEMPLATE_P2WSH, TEMPLATE_P2SH_BIP199):
        raise InputError(f"unknown HTLC template {coin.template!r}")

    def build(fee: int) -> Tx:
        tx = Tx([TxIn(coin.txid, coin.vout, sequence=sequence)], [TxOut(max(coin.amount - fee, 0), spk)], locktime)
        if coin.template == TEMPLATE_P2WSH:
            sig = sign_digest(key, segwit_v0_sighash(tx, 0, coin.script, coin.amount))
            tx.inputs[0].witness = [sig, *stack, coin.script]
        else:
            sig = sign_digest(key, legacy_sighash(tx, 0, coin.script))
            tx.inputs[0].script_sig = b"".join(push_data(item) for item in [sig, pubkey, *stack, coin.script])
        return tx

    tx, fee = _fit_fee(build, feerate)
    _check_output(coin.amount - fee, spk, "output")
    _check_fee(fee, coin.amount, max_fee, "spend")
    return SignedTx(tx.serialize(), tx.txid, tx.vsize, fee)


def build_claim(
    coin: HtlcCoin,
    preimage: bytes,
    claim_key: Signer,
    destination: str | bytes,
    feerate: int,
    *,
    network: str = "regtest",
    rbf: bool = True,
    max_fee: int = DEFAULT_MAX_FEE,
) -> SignedTx:
    """Claim with the secret: refuses a preimage the script would reject, or a key it does not name."""
    terms = audit(coin.script, network=network)
    if len(preimage) != SECRET_SIZE:
        raise InputError(f"preimage must be {SECRET_SIZE} bytes, got {len(preimage)}", field="preimage")
    if sha256(preimage) != terms.hashlock:
        raise InputError("sha256(preimage) does not match the HTLC's hashlock", field="preimage")
    if hash160(pubkey_of(claim_key)) != terms.claim_pubkey_hash:
        raise InputError("the claim key is not the one the HTLC pays on claim", field="claim_key")
    return spend_htlc(
        coin, claim_key, [preimage, b"\x01"], destination, feerate,
        sequence=SEQUENCE_RBF if rbf else SEQUENCE_FINAL, network=network, max_fee=max_fee,
    )


def build_refund(
    coin: HtlcCoin,
    refund_key: Signer,
    destination: str | bytes,
    feerate: int,
    *,
    network: str = "regtest",
    max_fee: int = DEFAULT_MAX_FEE,
) -> SignedTx:
    """Refund after the lock: nLockTime = the script's lock, sequence non-final so it is enforced.
    The node accepts it once the lock height is the tip height (``non-final`` before)."""
    terms = audit(coin.script, network=network)
    if hash160(pubkey_of(refund_key)) != terms.refund_pubkey_hash:
        raise InputError("the refund key is not the one the HTLC pays on refund", field="refund_key")
    return spend_htlc(
        coin, refund_key, [b""], destination, feerate,
        locktime=terms.locktime, sequence=SEQUENCE_LOCKTIME,
        network=network, max_fee=max_fee,
    )

