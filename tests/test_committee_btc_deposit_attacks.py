"""Bitcoin deposits under attack: what a depositor, a relayer or the chain may try, and what the
committee credits.  Issue 15, "Tests on the devnets": a deposit is credited once whatever is
replayed; a deposit to another account's address, with a wrong amount, or reorged out before
depth is not credited; the depositor's refund path works after its timelock and not before.
A committee that comes back after a deposit was refunded credits nothing: an attester signs a
credit only while the coin is the committee's and its refund path is not about to open.

A bridge of the test's own (``tests/support/committee.py``) with its committee's custody keys,
attesters and a deliverer in this process, the session's regtest node and Anvil.  Every block is
mined by the test; every wait has a deadline.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest
from sqlalchemy import text

from bridge.committee.crypto import address_of, sign
from bridge.committee.messages import Kind, bitcoin_source, digest
from bridge.committee.replica import owner_of
from bridge.committee.store import AttestationStore, Equivocation
from bridge.core.db import make_engine
from bridge.core.errors import ContractReverted
from bridge.core.testing import wait_until
from bridge.custody.scripts import deposit_script, deposit_script_pubkey, refund_pubkey_of_evm_key
from bridge.custody.spend import CustodyCoin, build_refund
from chains.bitcoin_wallet import BtcKey, Utxo
from chains.btc.primitives import OutPoint, Tx, TxIn, TxOut
from chains.btc.script import dust_threshold, p2pkh_script
from chains.btc.sighash import SIGHASH_ALL, segwit_v0_sighash
from devnets.controls import BitcoinDevnet
from support.committee import attesters, deliverer, own_bridge
from support.scenario import FAUCET, fund_btc

log = logging.getLogger("test.committee.btc.attacks")
DEPOSIT = 40_000_000


# --- helpers ----------------------------------------------------------------------------------------


async def _bridge(evm, btc, tmp_path, **kw):
    bridge = await own_bridge(evm, tmp_path / "bridge", btc_start=await btc.height(), **kw)
    await fund_btc(btc, FAUCET, 2 * 10**8)
    return bridge


async def _register(bridge, key: str, user: str, replicas) -> None:
    await bridge.contract.register_btc_key(key)
    await wait_until(lambda: all(r.btc_keys(user) for r in replicas), timeout=20, what=f"{user[:10]}'s key in every replica")


def _address_of(bridge, user: str, key: str) -> bytes:
    """The output script of ``user``'s deposit address (its registered key refunds)."""
    return deposit_script_pubkey(bridge.config.bitcoin.policy, user, refund_pubkey_of_evm_key(key))


async def _mine_until(btc, predicate, what: str, timeout: float = 60.0) -> None:
    """Mine a block at a time until ``predicate`` holds (a deadline, never a bare sleep)."""

    async def step() -> bool:
        value = predicate()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return True
        await BitcoinDevnet(btc).mine(1)
        return False

    await wait_until(step, timeout=timeout, interval=0.3, what=what)


def _btc(replica, user: str) -> tuple[int, int] | None:
    return replica.balances().get((owner_of(user), "BTC"))


async def _credits(bridge) -> list:
    return [e for e in await bridge.contract.events() if e.name == "Credited"]


async def _folded(daemons, height: int, what: str) -> None:
    """Until every daemon's Bitcoin fold passed ``height`` (its deposit indexer's cursor)."""

    def past() -> bool:
        return all((d.follower.indexers[-1].stats.get("height") or -1) >= height for d in daemons)

    await wait_until(past, timeout=30, what=what)


def _p2wpkh_spend(key: BtcKey, coin: Utxo, outputs: list[tuple[bytes, int]]) -> Tx:
    """One signed P2WPKH spend of ``coin``, exactly as given (no dust or fee policy applied)."""
    unsigned = Tx(2, [TxIn(OutPoint.from_hex(coin.txid, coin.vout), b"", 0xFFFFFFFD)], [TxOut(v, s) for s, v in outputs])
    sig = key.sign_digest(segwit_v0_sighash(unsigned, 0, p2pkh_script(key.pubkey_hash), coin.value_sats)) + bytes([SIGHASH_ALL])
    return Tx(2, [unsigned.vin[0]._replace(witness=(sig, key.pubkey))], unsigned.vout)


async def _one_coin(btc, sats: int) -> tuple[BtcKey, Utxo]:
    """A fresh key holding exactly one confirmed coin of ``sats``."""
    payer = BtcKey.generate()
    await fund_btc(btc, payer, sats)
    [coin] = await btc.utxos([payer.p2wpkh_script])
    return payer, coin


async def _verdict(btc, raw: bytes) -> dict:
    [verdict] = await btc.rpc.call("testmempoolaccept", [raw.hex()])
    return verdict


# --- the tests --------------------------------------------------------------------------------------


async def test_a_deposit_is_credited_once_whatever_is_replayed(evm, btc, regtest, tmp_path):
    log.info("declare: a 3-of-4 bridge with BTC custody, attesters 0-2 and a deliverer; Bitcoin depth 2")
    bridge = await _bridge(evm, btc, tmp_path)
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=2)
    user, key = await bridge.user(tusd=0)
    domain, committee = bridge.config.domain, bridge.committee
    credit = DEPOSIT - bridge.config.bitcoin.sweep_allowance
    want = {(owner_of(user), "BTC"): (credit, 0)}
    async with attesters(bridge, settings, [0, 1, 2]) as running, deliverer(bridge, settings) as delivery:
        replicas = [d.attester.replica for d in running] + [delivery.deliverer.replica]
        await _register(bridge, key, user, replicas)

        log.info("act: pay 0.4 BTC to the user's deposit address; mine until it is credited everywhere")
        paid = await btc.send_to([FAUCET], [(_address_of(bridge, user, key), DEPOSIT)], 2)
        vout = next(i for i, o in enumerate(Tx.parse(bytes.fromhex(paid.raw_hex)).vout) if o.value == DEPOSIT)
        await _mine_until(btc, lambda: all(r.balances() == want for r in replicas), "the credit in every replica")
        source_tx, source_index = bitcoin_source(paid.txid, vout)
        assert await bridge.contract.credited_output(source_tx, source_index)
        [deposit] = running[0].attester.btc.deposits(account=user)
        original = running[0].attester.btc.credit_message(deposit)
        original_id = digest(domain, original)
        store = AttestationStore(make_engine(settings.store_url))
        assert set(store.get(original_id).signatures) == {address_of(bridge.keys[i]) for i in (0, 1, 2)}
        log.info("act: mine until the deposit is swept into custody (nothing in flight at the restart below)")
        watcher = delivery.payouts.watcher
        await _mine_until(btc, lambda: not watcher.coins(kind="deposit") and bool(watcher.coins(kind="custody")), "the deposit swept")

        log.info("act: the same deposit's DEPOSIT_CREDIT with another expiry, signed by every committee key, put in the store")
        replay = dataclasses.replace(original, expiry=original.expiry + 3_600)
        replay_id = digest(domain, replay)
        assert replay_id != original_id
        now = int(time.time())
        refused = []
        for i, k in enumerate(bridge.keys):
            try:
                accepted = store.put(domain, replay, address_of(k), sign(replay_id, k), committee, now)
                assert accepted.new
            except Equivocation:
                refused.append(i)
        log.info("assert: the store refuses it from the three keys that signed the original (evidence kept); key 3 alone gets in")
        assert refused == [0, 1, 2]
        evidence = {(e.signer, e.first_message_id, e.second_message_id) for e in store.evidence()}
        assert evidence == {(address_of(bridge.keys[i]), original_id, replay_id) for i in (0, 1, 2)}
        assert set(store.get(replay_id).signatures) == {address_of(bridge.keys[3])}
        assert store.quorum(replay_id, committee, domain, now).quorum is None

        log.info("act: deliver the replay and the original by hand with quorums signed outside the store")
        for message, mid in ((replay, replay_id), (original, original_id)):
            with pytest.raises(ContractReverted) as caught:
                await bridge.contract.credit_deposit(key, message, committee, [0, 1, 2], [sign(mid, bridge.keys[i]) for i in (0, 1, 2)])
            assert caught.value.reason == "AlreadyConsumed", caught.value.message
        log.info("assert: the deliverer ends the replay's delivery as acted on chain, sending nothing")
        await wait_until(lambda: _delivered(delivery.deliverer, replay_id), timeout=30, what="the replay's delivery closed")
        assert delivery.deliverer.view(replay_id.hex()).tx_hash is None
        assert len(await _credits(bridge)) == 1

    log.info("act: attesters 0-3 and a deliverer again, every one on a fresh replica database (the same store)")
    fresh = bridge.settings(tmp_path / "fresh", store_url=settings.store_url, regtest=regtest, btc_confirmations=2)
    async with attesters(bridge, fresh, [0, 1, 2, 3]) as running, deliverer(bridge, fresh) as delivery:
        replicas = [d.attester.replica for d in running] + [delivery.deliverer.replica]
        await BitcoinDevnet(btc).mine(2)
        await _folded([*running, delivery], await btc.height() - 1, "every fresh Bitcoin fold at the tip")
        await wait_until(lambda: all(r.balances() == want for r in replicas), timeout=30, what="the same balance in every fresh replica")
        deliverer_ = delivery.deliverer
        await wait_until(
            lambda: _delivered(deliverer_, original_id) and _delivered(deliverer_, replay_id), timeout=30, what="both messages closed by the fresh deliverer"
        )
        log.info("assert: one Credited event, nothing sent by the fresh deliverer, balances unchanged, the deposit swept once")
        assert all(v.tx_hash is None for v in deliverer_.list()), [(v.id, v.state, v.tx_hash) for v in deliverer_.list()]
        credits = await _credits(bridge)
        assert len(credits) == 1 and credits[0]["amount"] == credit
        assert all(r.balances() == want for r in replicas)
        assert not delivery.payouts.watcher.coins(kind="deposit")


def _delivered(deliverer_, mid: bytes) -> bool:
    try:
        return deliverer_.view(mid.hex()).state == "delivered"
    except Exception:  # noqa: BLE001 - not discovered yet
        return False


async def test_a_deposit_to_another_accounts_address_credits_that_account_only(evm, btc, regtest, tmp_path):
    log.info("declare: users A and B with registered keys; attesters 0, 1, 3 and a deliverer; depth 2")
    bridge = await _bridge(evm, btc, tmp_path)
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=2)
    a, a_key = await bridge.user(tusd=0)
    b, b_key = await bridge.user(tusd=0)
    policy = bridge.config.bitcoin.policy
    async with attesters(bridge, settings, [0, 1, 3]) as running, deliverer(bridge, settings) as delivery:
        replicas = [d.attester.replica for d in running] + [delivery.deliverer.replica]
        await _register(bridge, a_key, a, replicas)
        await _register(bridge, b_key, b, replicas)

        log.info("act: A pays 0.4 BTC to B's deposit address, and 0.1 BTC to an address of A's account with B's refund key (nobody's)")
        forged = deposit_script_pubkey(policy, a, refund_pubkey_of_evm_key(b_key))
        assert forged not in (_address_of(bridge, a, a_key), _address_of(bridge, b, b_key))
        paid = await btc.send_to([FAUCET], [(_address_of(bridge, b, b_key), DEPOSIT), (forged, 10_000_000)], 2)
        credit = DEPOSIT - bridge.config.bitcoin.sweep_allowance
        await _mine_until(btc, lambda: all(_btc(r, b) == (credit, 0) for r in replicas), "B's credit in every replica")
        await BitcoinDevnet(btc).mine(2)
        await _folded(running, await btc.height() - 1, "every attester's fold at the tip")

        log.info("assert: B is credited once, A not at all; only B's output was ever a deposit")
        for r in replicas:
            assert _btc(r, a) is None and _btc(r, b) == (credit, 0), r.balances()
        credits = await _credits(bridge)
        assert [(c["account"].lower(), c["amount"]) for c in credits] == [(b.lower(), credit)]
        for d in running:
            watcher = d.attester.btc
            assert watcher.deposits(account=a) == []
            [deposit] = watcher.deposits(account=b)
            assert (deposit.txid, deposit.amount, deposit.state) == (paid.txid, DEPOSIT, "seen")
            assert [x.account for x in watcher.deposits()] == [b.lower()]
        forged_out = f"{paid.txid}:{next(i for i, o in enumerate(Tx.parse(bytes.fromhex(paid.raw_hex)).vout) if o.script_pubkey == forged)}"
        assert all(forged_out not in {f"{c.txid}:{c.vout}" for c in d.attester.btc.coins(unspent=False)} for d in running)


async def test_an_amount_below_the_minimum_or_dust_is_refused_visibly(evm, btc, regtest, tmp_path):
    log.info("declare: a bridge with a 20,000-sat minimum deposit; attesters 0-2 and a deliverer; depth 1")
    minimum = 20_000
    bridge = await _bridge(evm, btc, tmp_path, min_deposit=minimum)
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=1)
    user, key = await bridge.user(tusd=0)
    script = _address_of(bridge, user, key)
    dust = dust_threshold(script)
    assert dust == 330  # a P2WSH output's, at the default dust relay feerate
    async with attesters(bridge, settings, [0, 1, 2]) as running, deliverer(bridge, settings) as delivery:
        replicas = [d.attester.replica for d in running] + [delivery.deliverer.replica]
        await _register(bridge, key, user, replicas)

        log.info("act: pay exactly the minimum, the minimum less one sat, and the dust threshold (relayed)")
        payer, coin = await _one_coin(btc, 10_000_000)
        relayed = await btc.send_to([payer], [(script, minimum), (script, minimum - 1), (script, dust)], 2)
        log.info("act: a miner puts a real dust output (100 sats, below what nodes relay) in a block of its own")
        [change] = [u for u in await btc.utxos([payer.p2wpkh_script], include_mempool=True) if u.txid == relayed.txid]
        await BitcoinDevnet(btc).mine(1)
        tiny = _p2wpkh_spend(payer, change, [(script, 100), (payer.p2wpkh_script, change.value_sats - 100 - 1_000)])
        assert "dust" in (await _verdict(btc, tiny.serialize()))["reject-reason"]
        await btc.rpc.call("generateblock", BtcKey.generate().p2wpkh_address(), [tiny.serialize().hex()])

        credit = minimum - bridge.config.bitcoin.sweep_allowance
        await _mine_until(btc, lambda: all(_btc(r, user) == (credit, 0) for r in replicas), "the minimum credited in every replica")
        await BitcoinDevnet(btc).mine(2)
        await _folded([*running, delivery], await btc.height(), "every Bitcoin fold at the tip")

        log.info("assert: exactly the minimum is credited; min-1, the dust threshold and dust are refused with the reason, in every view")
        for watcher in [d.attester.btc for d in running] + [delivery.payouts.watcher]:
            rows = {x.amount: x for x in watcher.deposits(account=user)}
            assert set(rows) == {minimum, minimum - 1, dust, 100}, rows
            assert rows[minimum].state == "seen" and rows[minimum].reason == ""
            for amount in (minimum - 1, dust, 100):
                assert rows[amount].state == "refused", rows[amount]
                assert rows[amount].reason == f"{amount} sats is below the minimum deposit of {minimum} sats"
            assert rows[100].txid == tiny.txid
        credits = await _credits(bridge)
        assert [c["amount"] for c in credits] == [credit]
        for r in replicas:
            assert _btc(r, user) == (credit, 0)


async def test_a_deposit_reorged_out_before_depth_is_not_credited(evm, btc, regtest, tmp_path):
    log.info("declare: Bitcoin depth 3; attesters 0-2 and a deliverer; a payer holding one coin")
    bridge = await _bridge(evm, btc, tmp_path)
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=3)
    user, key = await bridge.user(tusd=0)
    script = _address_of(bridge, user, key)
    payer, coin = await _one_coin(btc, 60_000_000)
    async with attesters(bridge, settings, [0, 1, 2]) as running, deliverer(bridge, settings) as delivery:
        replicas = [d.attester.replica for d in running] + [delivery.deliverer.replica]
        await _register(bridge, key, user, replicas)

        log.info("act: pay 0.4 BTC to the user's deposit address (2 sat/vB) and mine it: 1 confirmation of 3")
        deposit = _p2wpkh_spend(payer, coin, [(script, DEPOSIT), (payer.p2wpkh_script, coin.value_sats - DEPOSIT - 300)])
        assert await btc.send(deposit.serialize().hex()) == deposit.txid
        [mined_in] = await BitcoinDevnet(btc).mine(1)
        assert (await btc.tx_status(deposit.txid)).confirmations == 1

        log.info("act: a reorg replaces that block with two empty ones; the deposit is back in the mempool")
        reorg = await BitcoinDevnet(btc).reorg(1)
        assert reorg["old_tip"] == mined_in and reorg["disconnected"] == 1, reorg
        assert deposit.txid in await btc.rpc.call("getrawmempool")
        log.info("act: the payer double-spends its coin to itself at a higher fee (full RBF): the deposit is gone")
        theft = _p2wpkh_spend(payer, coin, [(payer.p2wpkh_script, coin.value_sats - 5_000)])
        assert await btc.send(theft.serialize().hex()) == theft.txid
        mempool = await btc.rpc.call("getrawmempool")
        assert theft.txid in mempool and deposit.txid not in mempool
        await BitcoinDevnet(btc).mine(4)
        assert (await btc.tx_status(theft.txid)).confirmations == 4
        assert (await btc.tx_status(deposit.txid)).confirmations == -1
        await _folded([*running, delivery], await btc.height() - 2, "every fold at depth 3 below the tip")

        log.info("assert: no view ever saw the deposit at depth; nothing credited")
        for watcher in [d.attester.btc for d in running] + [delivery.payouts.watcher]:
            assert watcher.deposits(account=user) == []
            assert watcher.coins(kind="deposit", unspent=False) == []
        source_tx, source_index = bitcoin_source(deposit.txid, 0)
        assert not await bridge.contract.credited_output(source_tx, source_index)
        assert await _credits(bridge) == []
        assert all(_btc(r, user) is None for r in replicas)
        assert all(d.follower.indexers[-1].stats.get("reorgs", 0) == 0 for d in running)

        log.info("control: the same payer's next deposit to the same address is credited (the watch was live all along)")
        [again] = await btc.utxos([payer.p2wpkh_script])
        second = _p2wpkh_spend(payer, again, [(script, DEPOSIT), (payer.p2wpkh_script, again.value_sats - DEPOSIT - 300)])
        await btc.send(second.serialize().hex())
        credit = DEPOSIT - bridge.config.bitcoin.sweep_allowance
        await _mine_until(btc, lambda: all(_btc(r, user) == (credit, 0) for r in replicas), "the second deposit credited")
        assert [(c["sourceTx"], c["sourceIndex"]) for c in await _credits(bridge)] == [bitcoin_source(second.txid, 0)]


async def _refunded_deposit(evm, btc, regtest, tmp_path, delay: int):
    """The refund story up to the refund mined: ``(bridge, settings, user, outpoint)``."""
    log.info("declare: a bridge whose deposit addresses refund after %d blocks; the user registers while the committee runs", delay)
    bridge = await _bridge(evm, btc, tmp_path, btc_refund_delay=delay)
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=1)
    user, key = await bridge.user(tusd=0)
    policy = bridge.config.bitcoin.policy
    async with attesters(bridge, settings, [0, 1, 2]) as running, deliverer(bridge, settings) as delivery:
        await _register(bridge, key, user, [d.attester.replica for d in running] + [delivery.deliverer.replica])
    log.info("act: the committee vanishes (every daemon stopped, nothing swept); the user pays 0.4 BTC to its deposit address")
    witness = deposit_script(policy, user, refund_pubkey_of_evm_key(key))
    paid = await btc.send_to([FAUCET], [(_address_of(bridge, user, key), DEPOSIT)], 2)
    vout = next(i for i, o in enumerate(Tx.parse(bytes.fromhex(paid.raw_hex)).vout) if o.value == DEPOSIT)
    await BitcoinDevnet(btc).mine(1)
    funded_at = await btc.height()
    coin = CustodyCoin(paid.txid, vout, DEPOSIT, witness)
    home = BtcKey.generate()
    refund = build_refund(coin, bytes.fromhex(key.removeprefix("0x")), home.p2wpkh_script, feerate=2)  # the user's own EVM key
    assert Tx.parse(refund.raw).vin[0].sequence == delay

    log.info("assert: before the delay the node refuses the refund (non-BIP68-final), up to the last block before it")
    assert (await _verdict(btc, refund.raw))["reject-reason"] == "non-BIP68-final"
    await BitcoinDevnet(btc).mine_to(funded_at + delay - 2)  # the next block is the delay-th minus one
    assert (await _verdict(btc, refund.raw))["reject-reason"] == "non-BIP68-final"
    with pytest.raises(Exception, match="non-BIP68-final"):
        await btc.send(refund.raw.hex())
    assert await btc.txout(paid.txid, vout) is not None
    log.info("act: one more block: the deposit has its %d confirmations; the refund is accepted and mined", delay)
    await BitcoinDevnet(btc).mine(1)
    assert (await _verdict(btc, refund.raw))["allowed"]
    assert await btc.send(refund.raw.hex()) == refund.txid
    await BitcoinDevnet(btc).mine(1)
    assert await btc.balance([home.p2wpkh_script]) == DEPOSIT - refund.fee
    assert await btc.txout(paid.txid, vout) is None
    return bridge, settings, user, (paid.txid, vout)


async def test_the_depositors_refund_path_works_after_its_delay_and_not_before(evm, btc, regtest, tmp_path):
    await _refunded_deposit(evm, btc, regtest, tmp_path, delay=6)


async def test_a_committee_back_after_the_refund_credits_nothing(evm, btc, regtest, tmp_path):
    bridge, settings, user, (txid, vout) = await _refunded_deposit(evm, btc, regtest, tmp_path, delay=6)
    log.info("act: the committee comes back and folds the deposit and its refund")
    async with attesters(bridge, settings, [0, 1, 2]) as running, deliverer(bridge, settings) as delivery:
        replicas = [d.attester.replica for d in running] + [delivery.deliverer.replica]
        await BitcoinDevnet(btc).mine(1)
        await _folded([*running, delivery], await btc.height(), "every Bitcoin fold at the tip")
        log.info("assert: every view records the coin spent by the refund, and none counts it as the committee's")
        for d in running:
            with d.attester.replica.engine.connect() as conn:
                rows = conn.execute(text("SELECT outpoint, spent_by FROM custody_coin WHERE kind = 'deposit'")).all()
            assert len(rows) == 1 and rows[0][0] == f"{txid}:{vout}" and rows[0][1] is not None
            assert d.attester.btc.coins(kind="deposit") == []
        log.info("assert: two blocks later (a signing round after the fold, surely) no key signed a credit of it; none on chain")
        await BitcoinDevnet(btc).mine(2)
        await _folded([*running, delivery], await btc.height(), "every Bitcoin fold at the tip again")
        source_tx, source_index = bitcoin_source(txid, vout)
        with make_engine(settings.store_url).connect() as conn:
            signed = conn.execute(
                text("SELECT id FROM committee_message WHERE kind = :k AND source_tx = :s AND source_index = :i"),
                {"k": int(Kind.DEPOSIT_CREDIT), "s": source_tx.hex(), "i": source_index},
            ).all()
        assert signed == [], "a DEPOSIT_CREDIT of a refunded deposit was signed"
        assert not await bridge.contract.credited_output(source_tx, source_index)
        assert await _credits(bridge) == []
        assert all(_btc(r, user) is None for r in replicas)
