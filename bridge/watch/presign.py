"""The party's side of a Bitcoin watch job: claim and refund transactions signed in advance.

A segwit v0 signature (BIP143) commits to the spent outpoint, amount, script, outputs
and lock time, but not to the witness.  So the party signs its claim now, with a
32-byte placeholder where the preimage goes, and the watcher later swaps the real
secret into the witness (signature, preimage, 01, script): the txid, size and fee do
not change, and the watcher never holds the key.

Fee bumps need a new signature, which the watcher cannot make; the party therefore
signs a short ladder of feerates and the watcher climbs it while a spend is stuck.
Every rung signals BIP125 replaceability and spends the same outpoint, so each one
replaces the one below it.
"""

from __future__ import annotations

from typing import Any, Sequence

from bridge.core.errors import InputError
from htlc.audit import audit
from htlc.bitcoin_script import SECRET_SIZE
from htlc.bitcoin_tx import SEQUENCE_RBF, HtlcCoin, Signer, spend_htlc
from chains.btc.primitives import Tx

#: sat/vB; the watcher starts at the first and escalates while a spend is stuck.
DEFAULT_LADDER = (2, 5, 12, 30)
PREIMAGE_PLACEHOLDER = bytes(SECRET_SIZE)
#: Witness item index of the preimage in a claim: signature, preimage, 01, script.
PREIMAGE_INDEX = 1


def _check_ladder(feerates: Sequence[int]) -> list[int]:
    rates = list(feerates)
    if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
        raise InputError(f"feerate ladder must be whole sat/vB >= 1, got {rates!r}", field="feerates")
    if any(b <= a for a, b in zip(rates, rates[1:])):
        raise InputError(f"feerate ladder must rise strictly, got {rates!r}", field="feerates")
    return rates


def presign_claims(
    coin: HtlcCoin,
    claim_key: Signer,
    payout: bytes,
    feerates: Sequence[int] = DEFAULT_LADDER,
    network: str = "regtest",
) -> list[dict[str, Any]]:
    """Claim spends of ``coin`` to ``payout`` (a scriptPubKey), one per feerate, preimage left blank."""
    audit(coin.script, network=network)
    return [
        {"feerate": rate, "tx": spend_htlc(coin, claim_key, [PREIMAGE_PLACEHOLDER, b"\x01"], payout, rate, network=network).hex}
        for rate in _check_ladder(feerates)
    ]


def presign_refunds(
    coin: HtlcCoin,
    refund_key: Signer,
    payout: bytes,
    feerates: Sequence[int] = DEFAULT_LADDER,
    network: str = "regtest",
) -> list[dict[str, Any]]:
    """Refund spends of ``coin`` to ``payout``, valid from the script's refund height (nLockTime)."""
    terms = audit(coin.script, network=network)
    return [
        {
            "feerate": rate,
            "tx": spend_htlc(
                coin,
                refund_key,
                [b""],
                payout,
                rate,
                locktime=terms.locktime,
                sequence=SEQUENCE_RBF,
                network=network,
            ).hex,
        }
        for rate in _check_ladder(feerates)
    ]


def complete_claim(presigned_hex: str, secret: bytes) -> str:
    """The pre-signed claim with ``secret`` in place of the placeholder, ready to broadcast."""
    if len(secret) != SECRET_SIZE:
        raise InputError(f"secret must be {SECRET_SIZE} bytes, got {len(secret)}", field="secret")
    tx = Tx.from_hex(presigned_hex)
    txin = tx.vin[0]
    if len(txin.witness) != 4 or txin.witness[PREIMAGE_INDEX] != PREIMAGE_PLACEHOLDER:
        raise InputError("pre-signed claim has no preimage placeholder in its witness", field="presigned")
    witness = (*txin.witness[:PREIMAGE_INDEX], secret, *txin.witness[PREIMAGE_INDEX + 1 :])
    return Tx(tx.version, [txin._replace(witness=witness)], tx.vout, tx.locktime).hex()
