"""A Bitcoin deposit does not depend on fold timing: an attester whose Bitcoin fold passed the
paying block before its EVM fold folded the account's key registration rescans those blocks when
it adopts the key (``btc_deposits``: the indexer's backfill), records the deposit exactly as an
attester that saw it in order, and signs its DEPOSIT_CREDIT; a deposit the depositor already took
back by the refund path is recorded as taken back and never credited.

The late attesters are ``AttesterDaemon`` objects this test steps by hand (their EVM fold held
back while their Bitcoin fold runs ahead); in-order attesters and the deliverer run in this
process.  A bridge of the test's own (``tests/support/committee.py``), the session's regtest node
and Anvil; every block is mined by the test, every wait has a deadline.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import text

from bridge.committee.crypto import address_of
from bridge.committee.messages import Kind, bitcoin_source, digest
from bridge.committee.replica import owner_of
from bridge.committee.store import AttestationStore
from bridge.core.db import make_engine
from bridge.core.testing import wait_until
from bridge.custody.scripts import deposit_script, deposit_script_pubkey, refund_pubkey_of_evm_key
from bridge.custody.spend import CustodyCoin, build_refund
from chains.bitcoin_wallet import BtcKey
from chains.btc.primitives import Tx
from devnets.controls import BitcoinDevnet
from relayers.committee import AttesterDaemon
from support.committee import attesters, custody_coin_rows, deliverer, own_bridge
from support.scenario import FAUCET, fund_btc

log = logging.getLogger("test.committee.btc.rescan")
DEPOSIT = 30_000_000


# --- helpers ----------------------------------------------------------------------------------------


async def _late(bridge, settings, index: int, where: Path) -> AttesterDaemon:
    """Attester ``index`` on a replica of its own, not running: the test steps its folds."""
    return await AttesterDaemon.from_settings(settings, bridge.keys[index], db_url=f"sqlite:///{where / f'late-{index}.sqlite'}")


async def _close(daemons) -> None:
    for d in daemons:
        await d.evm.close()
        await d.btc.close()


async def _catch_up(indexer) -> int:
    """Step ``indexer`` until it is at its tip: its cursor height."""
    for _ in range(1000):
        if (await indexer.step()).caught_up:
            return indexer.cursor().height
    raise AssertionError(f"{indexer.name} never caught up")


def _btc_rows(engine) -> tuple[list[tuple], list[tuple]]:
    """What two views of the same Bitcoin blocks must agree on: ``btc_deposit`` and ``custody_coin``."""
    with engine.connect() as conn:
        deposits = [tuple(r) for r in conn.execute(text("SELECT * FROM btc_deposit ORDER BY outpoint"))]
    return deposits, custody_coin_rows(engine)


def _btc_height(daemon) -> int:
    return daemon.follower.indexers[-1].stats.get("height") or -1


def _signed_credits(settings, txid: str, vout: int) -> list:
    source_tx, source_index = bitcoin_source(txid, vout)
    with make_engine(settings.store_url).connect() as conn:
        return conn.execute(
            text("SELECT id FROM committee_message WHERE kind = :k AND source_tx = :s AND source_index = :i"),
            {"k": int(Kind.DEPOSIT_CREDIT), "s": source_tx.hex(), "i": source_index},
        ).all()


async def _pay(btc, script: bytes, sats: int) -> tuple[str, int]:
    paid = await btc.send_to([FAUCET], [(script, sats)], 2)
    vout = next(i for i, o in enumerate(Tx.parse(bytes.fromhex(paid.raw_hex)).vout) if o.script_pubkey == script)
    return paid.txid, vout


# --- the tests --------------------------------------------------------------------------------------


async def test_an_attester_that_folds_the_registration_late_records_signs_and_the_deposit_is_credited_once(evm, btc, regtest, tmp_path):
    log.info("declare: a 3-of-4 bridge; attesters 0 and 2 in order with a deliverer; attester 1 stepped by hand; Bitcoin depth 1")
    bridge = await own_bridge(evm, tmp_path / "bridge", btc_start=await btc.height())
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=1)
    user, key = await bridge.user(tusd=0)
    await fund_btc(btc, FAUCET, 2 * 10**8)
    script = deposit_script_pubkey(bridge.config.bitcoin.policy, user, refund_pubkey_of_evm_key(key))
    late = await _late(bridge, settings, 1, tmp_path)
    evm_fold, btc_fold = late.follower.indexers
    watcher = late.attester.btc
    store = AttestationStore(make_engine(settings.store_url))
    credit = DEPOSIT - bridge.config.bitcoin.sweep_allowance
    try:
        await _catch_up(evm_fold)
        await _catch_up(btc_fold)
        async with attesters(bridge, settings, [0, 2]) as running, deliverer(bridge, settings) as delivery:
            replicas = [d.attester.replica for d in running] + [delivery.deliverer.replica]
            log.info("act: the user registers its key (attester 1's EVM fold held back) and pays 0.3 BTC to its address")
            await bridge.contract.register_btc_key(key)
            await wait_until(lambda: all(r.btc_keys(user) for r in replicas), timeout=20, what="the key in the in-order replicas")
            txid, vout = await _pay(btc, script, DEPOSIT)
            await BitcoinDevnet(btc).mine(1)
            paid_at = await btc.height()
            await wait_until(lambda: all(d.attester.btc.deposits(account=user) for d in running), timeout=20, what="the deposit seen in order")
            [deposit] = running[0].attester.btc.deposits(account=user)
            assert (deposit.txid, deposit.vout, deposit.block_height, deposit.state) == (txid, vout, paid_at, "seen")
            message_id = digest(bridge.config.domain, running[0].attester.btc.credit_message(deposit))
            two = {address_of(bridge.keys[i]) for i in (0, 2)}
            await wait_until(lambda: set(store.get(message_id).signatures) == two, timeout=20, what="attesters 0 and 2 signed the credit")

            log.info("act: attester 1's Bitcoin fold passes the paying block before its EVM fold sees the registration")
            assert await _catch_up(btc_fold) >= paid_at
            assert late.attester.replica.btc_keys(user) == [] and watcher.deposits() == []
            await late._sign()
            assert set(store.get(message_id).signatures) == two
            source_tx, source_index = bitcoin_source(txid, vout)
            assert not await bridge.contract.credited_output(source_tx, source_index), "credited without a quorum"

            log.info("act: its EVM fold folds the registration; the Bitcoin fold's next step rescans the blocks it passed")
            await _catch_up(evm_fold)
            assert late.attester.replica.btc_keys(user) and watcher.deposits() == []
            assert btc_fold.stats.get("backfills", 0) == 0
            cursor = btc_fold.cursor().height
            await btc_fold.step()
            assert btc_fold.stats["backfills"] == 1 and btc_fold.cursor().height == cursor
            assert watcher.watched() == late.attester.replica.btc_keys()
            await wait_until(lambda: _btc_height(running[0]) == cursor, timeout=20, what="attester 0 at the same Bitcoin height")
            log.info("assert: the late view holds exactly the rows of the in-order view")
            assert _btc_rows(late.attester.replica.engine) == _btc_rows(running[0].attester.replica.engine)
            [seen] = watcher.deposits(account=user)
            assert seen == deposit

            log.info("act: attester 1 signs; the quorum is complete and the deliverer credits the deposit")
            await late._sign()
            assert set(store.get(message_id).signatures) == two | {address_of(bridge.keys[1])}
            await wait_until(lambda: all(r.balances() == {(owner_of(user), "BTC"): (credit, 0)} for r in replicas), timeout=30, what="the credit")
            assert await bridge.contract.credited_output(source_tx, source_index)

            log.info("assert: more blocks; both views at the same height hold the same rows; one Credited event")
            await BitcoinDevnet(btc).mine(2)
            tip = await btc.height()
            await wait_until(lambda: _btc_height(running[0]) >= tip, timeout=20, what="attester 0 at the tip")
            await _catch_up(evm_fold)
            assert await _catch_up(btc_fold) == tip
            assert _btc_rows(late.attester.replica.engine) == _btc_rows(running[0].attester.replica.engine)
            credits = [e for e in await bridge.contract.events() if e.name == "Credited"]
            assert [(c["sourceTx"], c["sourceIndex"], c["amount"]) for c in credits] == [(source_tx, source_index, credit)]

            log.info("assert: the rescan again (its adoption forgotten, as if the commit were lost) changes nothing")
            before = _btc_rows(late.attester.replica.engine)
            with late.attester.replica.engine.begin() as conn:
                conn.execute(text("DELETE FROM btc_watched_key"))
            await btc_fold.step()
            assert btc_fold.stats["backfills"] == 2
            assert watcher.watched() == late.attester.replica.btc_keys()
            assert _btc_rows(late.attester.replica.engine) == before
    finally:
        await _close([late])


async def test_a_deposit_refunded_before_the_late_rescan_is_recorded_taken_back_and_never_credited(evm, btc, regtest, tmp_path):
    delay = 6
    log.info("declare: a bridge whose deposit addresses refund after %d blocks; attesters 0-2 stepped by hand; depth 1", delay)
    bridge = await own_bridge(evm, tmp_path / "bridge", btc_start=await btc.height(), btc_refund_delay=delay)
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=1)
    user, key = await bridge.user(tusd=0)
    await fund_btc(btc, FAUCET, 2 * 10**8)
    policy = bridge.config.bitcoin.policy
    witness = deposit_script(policy, user, refund_pubkey_of_evm_key(key))
    lates = [await _late(bridge, settings, i, tmp_path) for i in (0, 1, 2)]
    try:
        for d in lates:
            for indexer in d.follower.indexers:
                await _catch_up(indexer)

        log.info("act: the user registers its key, pays 0.3 BTC to its address, and takes it back after the delay")
        await bridge.contract.register_btc_key(key)
        txid, vout = await _pay(btc, deposit_script_pubkey(policy, user, refund_pubkey_of_evm_key(key)), DEPOSIT)
        await BitcoinDevnet(btc).mine(1)
        funded_at = await btc.height()
        home = BtcKey.generate()
        refund = build_refund(CustodyCoin(txid, vout, DEPOSIT, witness), bytes.fromhex(key.removeprefix("0x")), home.p2wpkh_script, feerate=2)
        await BitcoinDevnet(btc).mine_to(funded_at + delay - 1)
        assert await btc.send(refund.raw.hex()) == refund.txid
        await BitcoinDevnet(btc).mine(1)
        assert await btc.txout(txid, vout) is None

        log.info("act: every attester's Bitcoin fold passes both blocks before its EVM fold sees the registration")
        for d in lates:
            assert await _catch_up(d.follower.indexers[-1]) == await btc.height()
            assert d.attester.btc.deposits() == []
            await d._sign()
        log.info("act: the EVM folds fold the registration; the Bitcoin folds rescan; every attester signs what it would")
        for d in lates:
            await _catch_up(d.follower.indexers[0])
            await d.follower.indexers[-1].step()
            await d._sign()

        log.info("assert: every view records the deposit, spent by the refund, refused as taken back; the same rows everywhere")
        rows = [_btc_rows(d.attester.replica.engine) for d in lates]
        assert rows[0] == rows[1] == rows[2]
        deposits, coins = rows[0]
        assert [(c[0], c[3], c[6]) for c in coins] == [(f"{txid}:{vout}", "deposit", refund.txid)]
        for d in lates:
            [seen] = d.attester.btc.deposits(account=user)
            assert (seen.txid, seen.vout, seen.block_height, seen.state) == (txid, vout, funded_at, "refused")
            assert seen.reason == f"taken back by {refund.txid} before it was credited"
            assert d.attester.btc.coins(kind="deposit") == []
            assert d.attester.btc.creditable(await btc.height()) == []
        assert _signed_credits(settings, txid, vout) == [], "a DEPOSIT_CREDIT of a refunded deposit was signed"
        source_tx, source_index = bitcoin_source(txid, vout)
        assert not await bridge.contract.credited_output(source_tx, source_index)
        assert [e for e in await bridge.contract.events() if e.name == "Credited"] == []
    finally:
        await _close(lates)
