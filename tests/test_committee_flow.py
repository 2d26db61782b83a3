"""The committee end to end on the devnet: deposits credited as margin in every replica,
withdrawals released by a quorum, what the margin does not cover refused by the chain and never
held or released.

Each test deploys a bridge of its own (``tests/support/committee.py``) on the session Anvil,
runs three of the four attesters and a deliverer in this process, acts as users would, and
asserts on what a user checks: balances on chain, rows in each replica, the delivery's history.
"""

from __future__ import annotations

import logging

from bridge.committee.config import ETH_ADDRESS
from bridge.committee.replica import owner_of
from bridge.core.testing import wait_until
from devnets.presets import ONE_ETH
from support.committee import TUSD, attesters, chain_refuses, deliverer, own_bridge

log = logging.getLogger("test.committee")


async def test_deposits_credit_every_replica_and_a_quorum_releases_a_withdrawal(evm, tmp_path):
    log.info("declare: a bridge with a 3-of-4 committee; attesters 0, 1, 2 and a deliverer run")
    bridge = await own_bridge(evm, tmp_path / "bridge")
    settings = bridge.settings(tmp_path / "service")
    user, key = await bridge.user()
    token = bridge.config.assets["TUSD"][0]
    async with attesters(bridge, settings, [0, 1, 2]) as running, deliverer(bridge, settings) as delivery:
        replicas = [d.attester.replica for d in running] + [delivery.deliverer.replica]

        log.info("act: deposit 2 ETH and 5,000 TUSD")
        await bridge.contract.deposit_eth(key, 2 * ONE_ETH)
        await bridge.contract.deposit_erc20(key, token, 5_000 * TUSD)
        eth_code, tusd_code = (bridge.config.ledger_asset(s).code for s in ("ETH", "TUSD"))
        want = {(owner_of(user), eth_code): (2 * ONE_ETH, 0), (owner_of(user), tusd_code): (5_000 * TUSD, 0)}
        await wait_until(lambda: all(r.balances() == want for r in replicas), timeout=20, what="both deposits in every replica")

        log.info("act: withdraw 0.5 ETH; the quorum's release pays it")
        before = await evm.balance(user)
        receipt = await bridge.contract.request_withdrawal(key, ETH_ADDRESS, ONE_ETH // 2)
        gas = receipt.gas_used * receipt.effective_gas_price
        await wait_until(lambda: _paid(evm, user, before - gas + ONE_ETH // 2), timeout=20, what="the release paid on chain")
        want[(owner_of(user), eth_code)] = (2 * ONE_ETH - ONE_ETH // 2, 0)
        await wait_until(lambda: all(r.balances() == want for r in replicas), timeout=20, what="the release posted in every replica")
        request = replicas[-1].requests(account=user)[0]
        assert request.state == "released"
        view = delivery.deliverer.view(request.message_id.hex())
        assert view.state == "delivered"
        assert [h["to_state"] for h in view.history] == ["waiting_quorum", "submitting", "submitted", "delivered"]
        assert len(view.signers) == 3

        log.info("act: ask for more than the margin: the chain refuses it, so nothing is held anywhere and nothing released")
        assert await bridge.contract.balance_of(user, ETH_ADDRESS) == 2 * ONE_ETH - ONE_ETH // 2
        before = [r.requests() for r in replicas]
        refusal = await chain_refuses(bridge, bridge.contract.request_withdrawal(key, ETH_ADDRESS, 10 * ONE_ETH))
        assert "InsufficientMargin" in str(refusal)
        await bridge.contract.deposit_eth(key, ONE_ETH // 10)  # a later block every replica folds
        want[(owner_of(user), eth_code)] = (2 * ONE_ETH - ONE_ETH // 2 + ONE_ETH // 10, 0)
        await wait_until(lambda: all(r.balances() == want for r in replicas), timeout=20, what="the later deposit in every replica")
        for r, requests in zip(replicas, before):
            assert r.requests() == requests and len(requests) == 1, "no request row for the refused request"
        assert await bridge.contract.balance_of(user, ETH_ADDRESS) == 2 * ONE_ETH - ONE_ETH // 2 + ONE_ETH // 10
        assert delivery.deliverer.counts() == {"delivered": 1}


async def _paid(evm, address: str, expected: int) -> bool:
    return await evm.balance(address) == expected
