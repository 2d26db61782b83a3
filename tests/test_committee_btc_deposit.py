"""Bitcoin deposits become EVM margin: a deposit to an account's own address, seen at depth by
every attester, is credited once by a quorum message; dust and deposits below the minimum are
refused visibly and never credited.

A bridge of the test's own (``tests/support/committee.py``) with its committee's custody keys,
three of four attesters and a deliverer in this process, the session's regtest node and Anvil.
"""

from __future__ import annotations

import logging

from bridge.committee.messages import bitcoin_source
from bridge.committee.replica import owner_of
from bridge.core.testing import wait_until
from bridge.custody.scripts import deposit_script_pubkey, refund_pubkey_of_evm_key
from devnets.controls import BitcoinDevnet
from support.committee import attesters, deliverer, own_bridge
from support.scenario import FAUCET, fund_btc

log = logging.getLogger("test.committee.btc")


async def test_a_btc_deposit_at_depth_is_credited_once_and_dust_is_refused(evm, btc, regtest, tmp_path):
    log.info("declare: a bridge with BTC custody (3 of 4), attesters 0-2 and a deliverer; Bitcoin depth 2")
    bridge = await own_bridge(evm, tmp_path / "bridge", btc_start=await btc.height(), min_deposit=20_000)
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=2)
    user, key = await bridge.user(tusd=0)
    await fund_btc(btc, FAUCET, 2 * 10**8)
    async with attesters(bridge, settings, [0, 1, 2]) as running, deliverer(bridge, settings) as delivery:
        replicas = [d.attester.replica for d in running] + [delivery.deliverer.replica]
        log.info("act: the user registers its key; every replica sees it")
        await bridge.contract.register_btc_key(key)
        await wait_until(lambda: all(r.btc_keys(user) for r in replicas), timeout=20, what="the key in every replica")

        log.info("act: pay 0.5 BTC and 15,000 sats (below the 20,000 minimum) to the user's deposit address")
        script = deposit_script_pubkey(bridge.config.bitcoin.policy, user, refund_pubkey_of_evm_key(key))
        paid = await btc.send_to([FAUCET], [(script, 50_000_000), (script, 15_000)], 2)
        txid = paid.txid
        await BitcoinDevnet(btc).mine(1)
        source_tx, _ = bitcoin_source(txid, 0)
        assert not await bridge.contract.credited_output(source_tx, 0)

        log.info("act: mine to depth 2; the deposit is credited on chain and in every replica")
        await BitcoinDevnet(btc).mine(1)
        credit = 50_000_000 - bridge.config.bitcoin.sweep_allowance  # kept to sweep it into custody
        want = {(owner_of(user), "BTC"): (credit, 0)}
        await wait_until(lambda: all(r.balances() == want for r in replicas), timeout=30, what="the BTC credit in every replica")
        assert await bridge.contract.credited_output(source_tx, 0)
        for d in running:
            small = [x for x in d.attester.btc.deposits(account=user) if x.amount == 15_000]
            assert len(small) == 1 and small[0].state == "refused" and "below the minimum" in small[0].reason

        log.info("assert: more blocks and restarts change nothing: credited once")
        await BitcoinDevnet(btc).mine(3)
    async with attesters(bridge, settings, [0, 1, 3]) as running, deliverer(bridge, settings) as delivery:
        await BitcoinDevnet(btc).mine(1)
        await wait_until(lambda: delivery.deliverer.counts().get("delivered", 0) >= 1, timeout=20, what="the delivery recorded")
        replicas = [d.attester.replica for d in running] + [delivery.deliverer.replica]
        await wait_until(lambda: all(r.balances() == want for r in replicas), timeout=30, what="every replica, a fresh one too")
        credits = [e for e in await bridge.contract.events() if e.name == "Credited"]
        assert len(credits) == 1 and credits[0]["amount"] == credit
