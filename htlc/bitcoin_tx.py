"""Bitcoin transactions for HTLCs, built and signed here with bitcoinlib keys (no node wallet).

* funding: the party's own P2WPKH coins, selected, changed and signed by the
  Bitcoin adapter's wallet code (``chains.bitcoin_wallet``), plus the HTLC checks;
* claim and refund of either HTLC template, signed here (BIP143 digest for
  P2WSH, the legacy digest for the P2SH template; ``chains.btc.sighash``).

Claim/refund fees are an integer feerate in sat/vB times the vsize of the
signed transaction itself (re-signed until they agree, since a DER signature
is 70 to 72 bytes).  Every builder refuses dust outputs and absurd fees (above
``max_fee`` or 10% of the amount moved) with ``InputError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from bitcoinlib.keys import Key, sign

from bridge.core.errors import InputError
from chains import bitcoin_wallet as wallet
from chains.bitcoin_tx import address_to_script
from chains.btc.primitives import SEQUENCE_FINAL, OutPoint, Tx, TxIn, TxOut, hash160, sha256
from chains.btc.script import dust_threshold, push_minimal
from chains.btc.sighash import SIGHASH_ALL, legacy_sighash, segwit_v0_sighash
from htlc.audit import audit
from htlc.bitcoin_script import SECRET_SIZE, TEMPLATE_P2SH_BIP199, TEMPLATE_P2WSH, htlc_script_pubkey

if TYPE_CHECKING:
    from chains.bitcoin import BitcoinAdapter

#: Non-final, so nLockTime is enforced (needed by OP_CHECKLOCKTIMEVERIFY), no RBF signal.
SEQUENCE_LOCKTIME = 0xFFFFFFFE
#: BIP125 replaceable: a claim can be fee-bumped if it sits in the mempool too long.
SEQUENCE_RBF = 0xFFFFFFFD

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
            fee=fee,
            amount=amount,
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
    return address_to_script(destination, network) if isinstance(destination, str) else bytes(destination)


# --- funding -------------------------------------------------------------------------------


def build_funding(
    utxos: Iterable[wallet.Utxo],
    keys: Sequence[wallet.BtcKey],
    htlc_script_pubkey: bytes,
    amount: int,
    feerate: int,
    *,
    change_script: bytes | None = None,
    network: str = "regtest",
    max_fee: int = DEFAULT_MAX_FEE,
) -> wallet.SignedTx:
    """Pay ``amount`` sats to an HTLC output from the P2WPKH coins of ``keys``.

    Coin selection, change and signing are the Bitcoin adapter's (``build_payment``);
    this adds the HTLC-specific refusals: a dust HTLC, a fee above 10% of the amount.
    """
    _check_feerate(feerate)
    _check_output(amount, htlc_script_pubkey, "HTLC amount")
    signed = wallet.build_payment(keys, utxos, [(htlc_script_pubkey, amount)], feerate, change_script=change_script, network=network, max_fee=max_fee)
    _check_fee(signed.fee_sats, amount, max_fee, "funding")
    return signed


async def fund_htlc(
    adapter: BitcoinAdapter,
    keys: Sequence[wallet.BtcKey],
    script: bytes,
    amount: int,
    feerate: int | None = None,
    *,
    template: str = TEMPLATE_P2WSH,
    max_fee: int = DEFAULT_MAX_FEE,
) -> tuple[HtlcCoin, wallet.SignedTx]:
    """Fund the HTLC ``script`` from ``keys``' coins (the adapter selects and signs), check, broadcast."""
    spk = htlc_script_pubkey(template, script)
    _check_output(amount, spk, "HTLC amount")
    signed = await adapter.send_to(keys, [(spk, amount)], feerate, broadcast=False)
    _check_fee(signed.fee_sats, amount, max_fee, "funding")
    await adapter.send(signed.raw_hex)
    vout = next(n for n, out in enumerate(Tx.parse(bytes.fromhex(signed.raw_hex)).vout) if out.script_pubkey == spk)
    return HtlcCoin(signed.txid, vout, amount, script, template), signed


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
        txin = TxIn(OutPoint.from_hex(coin.txid, coin.vout), b"", sequence)
        unsigned = Tx(2, [txin], [TxOut(max(coin.amount - fee, 0), spk)], locktime)
        if coin.template == TEMPLATE_P2WSH:
            sig = sign_digest(key, segwit_v0_sighash(unsigned, 0, coin.script, coin.amount))
            txin = txin._replace(witness=(sig, *stack, coin.script))
        else:
            sig = sign_digest(key, legacy_sighash(unsigned, 0, coin.script))
            txin = txin._replace(script_sig=b"".join(push_minimal(item) for item in [sig, pubkey, *stack, coin.script]))
        return Tx(2, [txin], unsigned.vout, locktime)

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
        coin,
        claim_key,
        [preimage, b"\x01"],
        destination,
        feerate,
        sequence=SEQUENCE_RBF if rbf else SEQUENCE_FINAL,
        network=network,
        max_fee=max_fee,
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
        coin,
        refund_key,
        [b""],
        destination,
        feerate,
        locktime=terms.locktime,
        sequence=SEQUENCE_LOCKTIME,
        network=network,
        max_fee=max_fee,
    )


async def find_htlc_coins(adapter: BitcoinAdapter, script: bytes, template: str = TEMPLATE_P2WSH) -> list[HtlcCoin]:
    """Unspent outputs paying the HTLC (confirmed, and unconfirmed ones in the node's mempool)."""
    coins = await adapter.utxos([htlc_script_pubkey(template, script)], include_mempool=True)
    return [HtlcCoin(u.txid, u.vout, u.value_sats, script, template) for u in coins]
