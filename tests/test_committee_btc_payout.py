"""BTC margin goes back to Bitcoin: a withdrawal request on the EVM chain, a payout co-signed by
three of four attesters while the fourth is down, confirmed at depth, closed by a PAYOUT_DONE
quorum message; a stuck payout is replaced at a higher fee; deposits are swept into custody.

A bridge of the test's own (``tests/support/committee.py``), three attesters and a deliverer in
this process, on the session's regtest node and Anvil.
"""

from __future__ import annotations

import logging

from bridge.committee.replica import owner_of
from bridge.core.errors import NotFound
from bridge.core.testing import wait_until
from bridge.custody.scripts import deposit_script_pubkey, refund_pubkey_of_evm_key
from chains.btc.primitives import Tx
from chains.bitcoin_wallet import BtcKey
from devnets.controls import BitcoinDevnet
from support.committee import attesters, deliverer, own_bridge
from support.scenario import FAUCET, fund_btc, mine_empty

log = logging.getLogger("test.committee.payout")
DEPOSIT = 30_000_000
WITHDRAW = 10_000_000


async def _mine_until(btc, predicate, what: str, timeout: float = 60.0):
    """Mine a block at a time until ``predicate`` holds (a deadline, never a bare sleep)."""

    async def step():
        if await predicate() if callable(predicate) else predicate:
            return True
        await BitcoinDevnet(btc).mine(1)
        return False

    await wait_until(step, timeout=timeout, interval=0.3, what=what)


async def test_btc_withdrawal_is_paid_by_3_of_4_and_closed_once(evm, btc, regtest, tmp_path):
    log.info("declare: a bridge with BTC custody; attesters 0, 1, 2 up, attester 3 down; depth 1")
    bridge = await own_bridge(evm, tmp_path / "bridge", btc_start=await btc.height())
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=1)
    user, key = await bridge.user(tusd=0)
    await fund_btc(btc, FAUCET, 2 * 10**8)
    payee = BtcKey.generate()
    async with attesters(bridge, settings, [0, 1, 2]) as running, deliverer(bridge, settings) as delivery:
        service = delivery.deliverer.replica
        replicas = [d.attester.replica for d in running] + [service]
        await bridge.contract.register_btc_key(key)
        await wait_until(lambda: all(r.btc_keys(user) for r in replicas), timeout=20, what="the key in every replica")

        log.info("act: deposit 0.3 BTC; credited; swept into custody")
        script = deposit_script_pubkey(bridge.config.bitcoin.policy, user, refund_pubkey_of_evm_key(key))
        await btc.send_to([FAUCET], [(script, DEPOSIT)], 2)
        credit = DEPOSIT - bridge.config.bitcoin.sweep_allowance
        await _mine_until(btc, lambda: _all_equal(replicas, {(owner_of(user), "BTC"): (credit, 0)}), "the credit in every replica")
        watcher = delivery.payouts.watcher
        await _mine_until(btc, lambda: _swept(watcher), "the deposit swept into custody")

        log.info("act: request 0.1 BTC to a Bitcoin address; 3 of 4 co-sign the payout")
        receipt = await bridge.contract.request_btc_withdrawal(key, WITHDRAW, payee.p2wpkh_script)
        nonce = bridge.contract.events_in(receipt)[0]["requestNonce"]
        await _mine_until(btc, lambda: _request_state(service, nonce, "released"), "the payout confirmed and its PAYOUT_DONE folded")
        await wait_until(lambda: _op(delivery, f"payout:{nonce}").get("state") == "done", timeout=20, what="the payout done")

        log.info("assert: paid once on Bitcoin, the request closed on chain, the hold posted everywhere")
        view = delivery.payouts.view(f"payout:{nonce}")
        assert view["state"] == "done", view
        paid = Tx.parse(bytes.fromhex(view["raw_tx"]))
        to_payee = [o.value for o in paid.vout if o.script_pubkey == payee.p2wpkh_script]
        fee = sum(c.amount for c in watcher.coins(unspent=False) if f"{c.txid}:{c.vout}" in view["inputs"].split(",")) - sum(o.value for o in paid.vout)
        assert len(to_payee) == 1 and to_payee[0] == WITHDRAW - fee and 0 < fee < 10_000
        assert await btc.balance([payee.p2wpkh_script]) == WITHDRAW - fee
        assert await bridge.contract.released(nonce)
        want = {(owner_of(user), "BTC"): (credit - WITHDRAW, 0)}
        await wait_until(lambda: all(r.balances() == want for r in replicas), timeout=20, what="the posted hold in every replica")
        signers = {d.attester.address.hex() for d in running}
        for pid in {p.id for p in delivery.payouts.proposals.proposals(group=f"payout:{nonce}")}:
            assert set(delivery.payouts.proposals.signed(pid)) <= signers
        events = [e.name for e in await bridge.contract.events()]
        assert events.count("PaidOut") == 1


async def test_a_stuck_payout_is_replaced_at_a_higher_fee(evm, btc, regtest, tmp_path):
    bridge = await own_bridge(evm, tmp_path / "bridge", btc_start=await btc.height())
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=1)
    user, key = await bridge.user(tusd=0)
    await fund_btc(btc, FAUCET, 2 * 10**8)
    payee = BtcKey.generate()
    async with attesters(bridge, settings, [0, 1, 3]) as running, deliverer(bridge, settings) as delivery:
        service = delivery.deliverer.replica
        await bridge.contract.register_btc_key(key)
        await wait_until(lambda: all(d.attester.replica.btc_keys(user) for d in running) and service.btc_keys(user), timeout=20, what="the key")
        script = deposit_script_pubkey(bridge.config.bitcoin.policy, user, refund_pubkey_of_evm_key(key))
        await btc.send_to([FAUCET], [(script, DEPOSIT)], 2)
        watcher = delivery.payouts.watcher
        await _mine_until(btc, lambda: _credited(service, user), "the deposit credited")
        await _mine_until(btc, lambda: _swept(watcher), "the deposit swept")

        receipt = await bridge.contract.request_btc_withdrawal(key, WITHDRAW, payee.p2wpkh_script)
        nonce = bridge.contract.events_in(receipt)[0]["requestNonce"]
        op = f"payout:{nonce}"
        await wait_until(lambda: _op(delivery, op).get("state") == "broadcast", timeout=30, what="the payout broadcast")
        first = delivery.payouts.view(op)

        log.info("act: blocks that leave the payout out; after 3 the proposer replaces it at twice the fee")
        await mine_empty(btc, 3)
        await wait_until(lambda: _op(delivery, op).get("bumps") == 1 and _op(delivery, op)["state"] == "broadcast", timeout=30, what="the replacement")
        second = delivery.payouts.view(op)
        assert second["feerate"] == 2 * first["feerate"] and second["txid"] != first["txid"] and second["inputs"] == first["inputs"]
        await _mine_until(btc, lambda: _request_state(service, nonce, "released"), "the replacement confirmed and closed")
        assert await btc.balance([payee.p2wpkh_script]) == WITHDRAW - (first_fee := _fee(watcher, second))
        assert first_fee > 0
        assert [e.name for e in await bridge.contract.events()].count("PaidOut") == 1


def _op(delivery, op_id: str) -> dict:
    try:
        return delivery.payouts.view(op_id)
    except NotFound:  # not planned yet
        return {}


def _fee(watcher, view) -> int:
    paid = Tx.parse(bytes.fromhex(view["raw_tx"]))
    spent = sum(c.amount for c in watcher.coins(unspent=False) if f"{c.txid}:{c.vout}" in view["inputs"].split(","))
    return spent - sum(o.value for o in paid.vout)


async def _all_equal(replicas, want) -> bool:
    return all(r.balances() == want for r in replicas)


async def _credited(replica, user: str) -> bool:
    return replica.balances().get((owner_of(user), "BTC"), (0, 0))[0] > 0


async def _swept(watcher) -> bool:
    return not watcher.coins(kind="deposit") and bool(watcher.coins(kind="custody"))


async def _request_state(replica, nonce: int, state: str) -> bool:
    try:
        return replica.request(nonce=nonce).state == state
    except Exception:  # noqa: BLE001 - not folded yet
        return False
