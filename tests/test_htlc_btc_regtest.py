"""Bitcoin HTLCs on the embedded regtest node: lock, claim, refund, and what consensus refuses.

The node is shared by the session, so each test uses fresh keys, asserts only on
its own coins, and never assumes an exact height.  The session's faucet (``tests/support/faucet.py``)
pays each test's parties.
"""

from __future__ import annotations

import hashlib
import secrets

import pytest

from bridge.core.errors import TransactionRejected
from chains.bitcoin import BitcoinAdapter
from chains.bitcoin_wallet import BtcKey
from chains.btc.primitives import hash160
from htlc.audit import audit
from htlc.bitcoin_script import TEMPLATE_P2SH_BIP199, p2sh_htlc_script, p2wsh_htlc_script
from htlc.bitcoin_tx import (
    SEQUENCE_LOCKTIME,
    build_claim,
    build_refund,
    find_htlc_coins,
    fund_htlc,
    spend_htlc,
)
from htlc.secret import extract_secret
from support.faucet import Faucet
from devnets.controls import BitcoinDevnet

PARTY_FUNDS = 1_000_000
LOCKED = 300_000


async def party(btc: BitcoinAdapter, faucet: Faucet) -> BtcKey:
    """A fresh key holding PARTY_FUNDS confirmed sats."""
    key = BtcKey.generate()
    await faucet.pay(btc, key, PARTY_FUNDS)
    assert await btc.balance([key.p2wpkh_script]) == PARTY_FUNDS
    return key


async def mine_to(btc: BitcoinAdapter, height: int) -> None:
    tip = await btc.height()
    if height > tip:
        await BitcoinDevnet(btc).mine(height - tip)
    assert await btc.height() == height


async def lock(btc, faucet, template="p2wsh", lock_in=20):
    """Alice locks LOCKED sats for Bob; returns (alice, bob, secret, coin, funding fee)."""
    alice, bob = await party(btc, faucet), BtcKey.generate()
    secret = secrets.token_bytes(32)
    h = hashlib.sha256(secret).digest()
    lock_height = await btc.height() + lock_in
    if template == "p2wsh":
        script = p2wsh_htlc_script(h, bob.pubkey, alice.pubkey, lock_height)
    else:
        script = p2sh_htlc_script(h, hash160(bob.pubkey), hash160(alice.pubkey), lock_height)
    coin, signed = await fund_htlc(btc, [alice], script, LOCKED, feerate=2, template=template)
    await BitcoinDevnet(btc).mine(1)
    terms = audit(script, bytes.fromhex(signed.raw_hex))
    assert (terms.amount, terms.output_index, terms.locktime) == (LOCKED, coin.vout, lock_height)
    assert await btc.balance([terms.script_pubkey]) == LOCKED
    assert await btc.balance([alice.p2wpkh_script]) == PARTY_FUNDS - LOCKED - signed.fee_sats
    return alice, bob, secret, coin, signed.fee_sats


async def rejected(btc: BitcoinAdapter, raw: bytes) -> str:
    with pytest.raises(TransactionRejected) as info:
        await btc.send(raw)
    return info.value.reason


@pytest.mark.parametrize("template", ["p2wsh", TEMPLATE_P2SH_BIP199])
async def test_lock_then_claim_pays_bob_and_reveals_the_secret(btc, faucet, template):
    alice, bob, secret, coin, _ = await lock(btc, faucet, template)
    assert await find_htlc_coins(btc, coin.script, template) == [coin]
    claim = build_claim(coin, secret, bob, bob.p2wpkh_address(), feerate=2)
    assert await btc.send(claim.raw) == claim.txid
    [block] = await BitcoinDevnet(btc).mine(1)
    assert await btc.balance([bob.p2wpkh_script]) == LOCKED - claim.fee
    assert await btc.balance([audit(coin.script).script_pubkey]) == 0
    assert await find_htlc_coins(btc, coin.script, template) == []
    # Alice learns the secret from the chain: the raw claim as the node returns it.
    raw = await btc.rpc.call("getrawtransaction", claim.txid, False, block)
    assert extract_secret(bytes.fromhex(raw), hashlib.sha256(secret).digest()) == secret


async def test_node_rejects_bad_claims_and_an_early_refund_with_consensus_reasons(btc, faucet):
    alice, bob, secret, coin, _ = await lock(btc, faucet, lock_in=30)
    dest = bob.p2wpkh_script
    wrong = spend_htlc(coin, bob, [secrets.token_bytes(32), b"\x01"], dest, 2)
    long = spend_htlc(coin, bob, [secret + b"\x00", b"\x01"], dest, 2)
    thief = spend_htlc(coin, alice, [secret, b"\x01"], dest, 2)
    for tx in (wrong, long):
        reason = await rejected(btc, tx.raw)
        assert "script-verify-flag-failed" in reason and "OP_EQUALVERIFY" in reason, reason
    reason = await rejected(btc, thief.raw)
    assert "script-verify-flag-failed" in reason and "false/empty top stack element" in reason, reason

    terms = audit(coin.script)
    tip = await btc.height()
    assert tip < terms.locktime
    # Final nLockTime (the tip) but below the script's lock: OP_CHECKLOCKTIMEVERIFY refuses.
    sneaky = spend_htlc(coin, alice, [b""], dest, 2, locktime=tip, sequence=SEQUENCE_LOCKTIME)
    reason = await rejected(btc, sneaky.raw)
    assert "script-verify-flag-failed" in reason and "Locktime requirement not satisfied" in reason, reason
    assert await rejected(btc, build_refund(coin, alice, dest, 2).raw) == "non-final"
    assert await btc.balance([terms.script_pubkey]) == LOCKED


async def test_refund_one_block_early_is_non_final_then_accepted(btc, faucet):
    alice, _, _, coin, funding_fee = await lock(btc, faucet, lock_in=6)
    lock_height = audit(coin.script).locktime
    refund = build_refund(coin, alice, alice.p2wpkh_address(), feerate=2)
    await mine_to(btc, lock_height - 1)
    # The next block would be lock_height; nLockTime = lock_height is final only in a later block.
    assert await rejected(btc, refund.raw) == "non-final"
    await BitcoinDevnet(btc).mine(1)
    assert await btc.send(refund.raw) == refund.txid
    await BitcoinDevnet(btc).mine(1)
    assert await btc.balance([alice.p2wpkh_script]) == PARTY_FUNDS - funding_fee - refund.fee
    assert await btc.balance([audit(coin.script).script_pubkey]) == 0


async def test_p2sh_refund_after_lock(btc, faucet):
    alice, _, _, coin, funding_fee = await lock(btc, faucet, TEMPLATE_P2SH_BIP199, lock_in=3)
    refund = build_refund(coin, alice, alice.p2wpkh_address(), feerate=2)
    assert await rejected(btc, refund.raw) == "non-final"
    await mine_to(btc, audit(coin.script).locktime)
    await btc.send(refund.raw)
    await BitcoinDevnet(btc).mine(1)
    assert await btc.balance([alice.p2wpkh_script]) == PARTY_FUNDS - funding_fee - refund.fee
