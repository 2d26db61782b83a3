"""An EVM withdrawal whose release expired unused gives the margin back: the deliverer cancels it
on chain (the contract lets anyone, from the request's expiry on) and every replica voids the
hold when it folds the cancellation.  A release after that is refused.  The contract is the
record: a cancel sent twice, or before the expiry, changes nothing."""

from __future__ import annotations

import logging

import pytest

from bridge.committee.config import ETH_ADDRESS
from bridge.committee.crypto import sign
from bridge.committee.replica import owner_of
from bridge.core.errors import ContractReverted
from bridge.core.testing import wait_until
from devnets.controls import AnvilControls
from devnets.presets import ONE_ETH
from support.committee import deliverer, own_bridge

log = logging.getLogger("test.committee.cancel")


async def test_an_expired_request_is_cancelled_by_the_deliverer_and_its_margin_comes_back(evm, tmp_path):
    log.info("declare: a bridge whose releases live 60 s; a deliverer runs, no attester (no quorum ever forms)")
    bridge = await own_bridge(evm, tmp_path / "bridge", release_ttl=60)
    settings = bridge.settings(tmp_path / "service")
    user, key = await bridge.user()
    eth_code = bridge.config.ledger_asset("ETH").code

    log.info("act: deposit 1 ETH, request 0.4 ETH: the contract takes it from the margin at once")
    await bridge.contract.deposit_eth(key, ONE_ETH)
    receipt = await bridge.contract.request_withdrawal(key, ETH_ADDRESS, 4 * ONE_ETH // 10)
    (event,) = [e for e in bridge.contract.events_in(receipt) if e.name == "WithdrawalRequested"]
    nonce = event["requestNonce"]
    assert await bridge.contract.balance_of(user, ETH_ADDRESS) == 6 * ONE_ETH // 10

    log.info("check: before the expiry nobody can cancel it")
    with pytest.raises(ContractReverted) as caught:
        await bridge.contract.cancel_withdrawal(bridge.relayer_key, nonce, user, ETH_ADDRESS, 4 * ONE_ETH // 10)
    assert caught.value.reason == "NotExpired"

    async with deliverer(bridge, settings) as delivery:
        replica = delivery.deliverer.replica
        await wait_until(lambda: replica.requests(state="held"), timeout=20, what="the request held in the service replica")
        assert replica.balances() == {(owner_of(user), eth_code): (ONE_ETH, 4 * ONE_ETH // 10)}

        log.info("act: the chain's clock passes the expiry (one block); the deliverer cancels the request")
        await AnvilControls(evm).increase_time(61)
        await AnvilControls(evm).mine(1)
        await wait_until(lambda: replica.request(nonce=nonce).state == "expired", timeout=30, what="the cancellation folded")

    log.info("check: the margin is back on chain and in the replica; the request is closed")
    assert await bridge.contract.balance_of(user, ETH_ADDRESS) == ONE_ETH
    assert replica.balances() == {(owner_of(user), eth_code): (ONE_ETH, 0)}
    assert not await bridge.contract.request_open(nonce)
    assert await bridge.contract.cancelled(nonce) and not await bridge.contract.released(nonce)
    cancelled = [e for e in await bridge.contract.events() if e.name == "WithdrawalCancelled"]
    assert [(e["requestNonce"], e["amount"]) for e in cancelled] == [(nonce, 4 * ONE_ETH // 10)]
    with pytest.raises(ContractReverted) as caught:
        await bridge.contract.cancel_withdrawal(bridge.relayer_key, nonce, user, ETH_ADDRESS, 4 * ONE_ETH // 10)
    assert caught.value.reason == "AlreadyConsumed"
    request = replica.request(nonce=nonce)
    assert request.message is not None
    log.info("check: the quorum's release of the cancelled request is refused (the request is closed)")
    signers = [0, 1, 2]
    signatures = [sign(request.message_id, bridge.keys[i]) for i in signers]
    with pytest.raises(ContractReverted) as caught:
        await bridge.contract.release(bridge.relayer_key, request.message, bridge.committee, signers, signatures)
    assert caught.value.reason in ("MessageExpired", "AlreadyConsumed")
