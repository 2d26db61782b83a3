"""Atomic swaps end to end on the real devnets: Anvil and the embedded regtest node.

The LP runs as its daemon on the shared runner (HTTP on a free port); the trader
runs its engine in this process, as ``bridgectl swap start`` does.  A helper task
mines a Bitcoin block whenever the mempool is not empty, like Anvil's automine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from eth_account import Account

from bridge.core.db import make_engine
from bridge.core.errors import InputError, TransactionRejected
from bridge.core.retry import RetryPolicy
from bridge.core.testing import wait_until
from bridge.swaps import models as m
from bridge.swaps.legs import EVM_GAS
from bridge.swaps.models import INITIATOR, PARTICIPANT
from bridge.swaps.party import Party
from bridge.swaps.protocol import LpClient
from bridge.swaps.store import SwapView
from chains.bitcoin import BitcoinAdapter
from chains.btc.primitives import Tx
from chains.evm import EvmAdapter
from devnets.controls import AnvilControls, BitcoinDevnet
from devnets.presets import ONE_BTC, ONE_ETH, TIMELOCK
from devnets.process import free_port
from htlc.evm import Claimed, Erc20, EvmHtlc, SwapStatus
from support.scenario import (
    Keys,
    automine_back_on,
    book,
    fund_btc,
    lp_process,
    module_regtest,
    new_keys,
    node_env,
    party_state,
    stepped_past,
    run_trader,
    running_lp,
    settings_for,
    swap_config,
    trader_party,
)


#: These tests mine hundreds of blocks: a private node for the module.
regtest = module_regtest("swaps")


async def test_btc_to_eth_happy_path(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    lp_settings = settings_for(tmp_path, "lp", regtest, anvil)
    # No polls and no idle re-checks within the test's deadlines: every wait for the other party
    # (its lock, the secret, its claim) must be ended by the indexer's event or the LP's API
    # waking the swap, and every wait for confirmations by the node announcing the block.
    event_driven = {"idle_recheck": 3600, "poll_interval": 3600}
    async with running_lp(lp_settings, swap_config(lp_keys, contracts, **event_driven)) as (lp_url, lp):
        async with await Party.open(
            settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts, **event_driven), LpClient()
        ) as trader:
            trader_btc_before = await btc.balance([trader_keys.btc.p2wpkh_script])
            view = await trader.start_swap(lp_url, "btc:0.5", "eth:7.5")
            done = await run_trader(trader, view.swap.id)
            assert done.state == m.CLAIMED, done.last_error
            # The LP sees the secret on the EVM chain and claims the BTC.
            lp_view = await wait_until(lambda: party_state(lp, view.swap.id, m.CLAIMED), timeout=60, what="LP claimed")
            assert lp_view.swap.secret == done.secret
            gained = await evm.balance(trader_keys.address) - ONE_ETH // 10
            assert 75 * ONE_ETH // 10 - 10**16 < gained < 75 * ONE_ETH // 10  # 7.5 ETH minus the claim's gas
            lp_btc = await btc.balance([lp_keys.btc.p2wpkh_script])
            btc_claim_fee = ONE_BTC // 2 - lp_btc
            assert 0 < btc_claim_fee < 10_000
            assert trader_btc_before - await btc.balance([trader_keys.btc.p2wpkh_script]) > ONE_BTC // 2
            # The claim on the EVM chain carries the very secret whose hash both legs locked to.
            htlc = EvmHtlc(evm, contracts["htlc"])
            claimed = [e for e in await htlc.events(0, swap_id=trader.store.get(view.swap.id).leg(PARTICIPANT).lock_ref) if hasattr(e, "preimage")]
            assert claimed[0].preimage.hex() == done.secret
            # Both parties' books: escrow while locked, posted on claim, ids from swap id + leg.
            eth_wei, sats = 75 * ONE_ETH // 10, ONE_BTC // 2
            trader_btc_id, trader_evm_id = trader_keys.btc.pubkey.hex(), trader_keys.address
            lp_btc_id, lp_evm_id = lp_keys.btc.pubkey.hex(), lp_keys.address
            assert book(trader, trader_evm_id, "user", "ETH").balance == eth_wei
            assert book(trader, trader_btc_id, "external", "BTC").balance == -sats
            # The trader ended only after seeing the LP claim its BTC: both books post both legs.
            trader_escrow = book(trader, f"swap-{view.swap.id}-initiator", "escrow", "BTC")
            assert (trader_escrow.balance, trader_escrow.debits_pending) == (0, 0)
            assert book(trader, lp_btc_id, "user", "BTC").balance == sats
            assert book(lp, lp_btc_id, "user", "BTC").balance == sats
            assert book(lp, lp_evm_id, "external", "ETH").balance == -eth_wei
            assert book(lp, trader_evm_id, "user", "ETH").balance == eth_wei
            for party in (trader, lp):
                assert book(party, f"swap-{view.swap.id}-participant", "escrow", "ETH").balance == 0


async def test_erc20_to_btc_happy_path(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH), await new_keys(evm, ONE_ETH)
    await fund_btc(btc, lp_keys.btc)
    token = Erc20(evm, contracts["tusd"])
    await token.mint(contracts["deployer"], trader_keys.address, 3_000 * 10**6)
    event_driven = {"idle_recheck": 3600, "poll_interval": 3600}  # as in the BTC -> ETH test: events end every wait
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts, **event_driven)) as (lp_url, lp):
        async with await Party.open(
            settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts, **event_driven), LpClient()
        ) as trader:
            lp_btc_before = await btc.balance([lp_keys.btc.p2wpkh_script])
            view = await trader.start_swap(lp_url, "tusd:1200", "btc:0.02")
            done = await run_trader(trader, view.swap.id)
            assert done.state == m.CLAIMED, done.last_error
            await wait_until(lambda: party_state(lp, view.swap.id, m.CLAIMED), timeout=60, what="LP claimed the tokens")
            assert await token.balance(trader_keys.address) == 1_800 * 10**6
            assert await token.balance(lp_keys.address) == 1_200 * 10**6
            trader_btc = await btc.balance([trader_keys.btc.p2wpkh_script])
            assert 2_000_000 - 10_000 < trader_btc < 2_000_000  # 0.02 BTC minus the claim fee
            assert lp_btc_before - await btc.balance([lp_keys.btc.p2wpkh_script]) > 2_000_000
            # The LP's BTC expiry sits at least the safety gap before the trader's EVM expiry.
            lp_view = lp.store.get(view.swap.id)
            btc_expiry, evm_expiry = lp_view.leg(PARTICIPANT).expiry, lp_view.leg(INITIATOR).expiry
            locked_at = next(a.at for a in lp_view.actions if a.to_state == m.PARTICIPANT_LOCK_INTENDED)
            assert btc_expiry is not None and evm_expiry - locked_at >= TIMELOCK["safety_gap"]


async def test_lp_gone_after_accepting_trader_refunds_at_expiry(tmp_path, regtest, anvil, btc, evm, contracts):
    # No automine here: the trader's lock must stay unconfirmed until the LP is gone, or the LP
    # could lock inside the step that follows its acceptance.
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    async with await Party.open(settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts), LpClient()) as trader:
        before = await btc.balance([trader_keys.btc.p2wpkh_script])
        async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
            view = await trader.start_swap(lp_url, "btc:0.3", "eth:4")
            # One step: the LP accepts, the trader records and broadcasts its lock; then the LP vanishes.
            stepped = await trader.engine.step(view.swap.id)
            assert stepped.swap.state == m.INITIATOR_LOCK_INTENDED and stepped.swap.accepted
        task = asyncio.create_task(run_trader(trader, view.swap.id, timeout=120))
        expiry = trader.store.get(view.swap.id).leg(INITIATOR).expiry

        async def lock_confirmed() -> bool:
            if await btc.rpc.call("getrawmempool"):
                await BitcoinDevnet(btc).mine(1)
            return party_state(trader, view.swap.id, m.INITIATOR_LOCKED)

        await wait_until(lock_confirmed, timeout=30, what="trader's lock confirmed")
        with pytest.raises(InputError, match="too early to refund, [0-9]+ blocks to the initiator leg's expiry"):
            await trader.engine.refund(view.swap.id)  # what `bridgectl swap refund ID` says before expiry

        async def mined_to_expiry() -> bool:
            if await btc.height() < expiry:
                await BitcoinDevnet(btc).mine(min(20, expiry - await btc.height()))
            elif await btc.rpc.call("getrawmempool"):
                await BitcoinDevnet(btc).mine(1)  # the refund
            return task.done()

        await wait_until(mined_to_expiry, timeout=120, what="trader refunded")
        done = task.result()
        assert done.state == m.REFUNDED, done.last_error
        refund_fee_and_lock_fee = before - await btc.balance([trader_keys.btc.p2wpkh_script])
        assert 0 < refund_fee_and_lock_fee < 10_000  # only fees lost, the 0.3 BTC came back
        states = [a.to_state for a in trader.store.get(view.swap.id).actions]
        assert m.CLAIM_INTENDED not in states and states[-2:] == [m.REFUND_INTENDED, m.REFUNDED]
        escrow = book(trader, f"swap-{view.swap.id}-initiator", "escrow", "BTC")
        assert (escrow.balance, escrow.debits_pending) == (0, 0)  # reversed on refund
        assert book(trader, trader_keys.btc.pubkey.hex(), "external", "BTC").balance == 0


async def test_lp_refuses_too_short_timelock(tmp_path, regtest, anvil, btc, evm, contracts):
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    hasty = {**TIMELOCK, "safety_gap": 60, "initiator_lock": 1200, "min_participant_lock": 60}  # 20 blocks
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        async with await Party.open(
            settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts, timelock=hasty), LpClient()
        ) as trader:
            view = await trader.start_swap(lp_url, "btc:0.1", "eth:1")
            done = (await trader.engine.step(view.swap.id)).swap
            assert done.state == m.FAILED
            assert "LP refused" in done.last_error and "safety gap" in done.last_error
            assert trader.store.get(view.swap.id).leg(INITIATOR).lock_ref is None  # nothing was locked
            assert lp.store.list() == []


async def _post(url: str, body: dict) -> tuple[int, dict]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def hand_made_btc_lock(btc: BitcoinAdapter, lp_url: str, trader: Keys, sats: int, wei: int, *, lock_sats: int | None = None, wrong_hash: bool = False):
    """Play a trader by hand: agree BTC->ETH terms with the LP, then lock (possibly not as agreed) and report it."""
    import hashlib
    import secrets
    import uuid

    from htlc.bitcoin_script import p2wsh_htlc_script
    from htlc.bitcoin_tx import fund_htlc

    secret = secrets.token_bytes(32)
    hashlock = hashlib.sha256(secret).digest()
    expiry = await btc.height() + 120
    swap_id = uuid.uuid4().hex
    status, answer = await _post(
        f"{lp_url}/swaps",
        {
            "id": swap_id,
            "hashlock": hashlock.hex(),
            "initiator_expiry": expiry,
            "sell": {"asset": "btc", "amount": str(sats)},
            "buy": {"asset": "eth", "amount": str(wei)},
            "trader": {"bitcoin": trader.btc.pubkey.hex(), "evm": trader.address},
        },
    )
    assert status == 200, answer
    locked_hash = hashlib.sha256(b"not the secret").digest() if wrong_hash else hashlock
    script = p2wsh_htlc_script(locked_hash, bytes.fromhex(answer["lp"]["bitcoin"]), trader.btc.pubkey, expiry)
    coin, _ = await fund_htlc(btc, [trader.btc], script, lock_sats or sats, 2)
    status, _ = await _post(f"{lp_url}/swaps/{swap_id}/lock", {"lock_ref": f"{coin.txid}:{coin.vout}", "script": script.hex()})
    assert status == 200
    return swap_id


@pytest.mark.parametrize(
    "tamper, reason",
    [
        ({"lock_sats": 29_000_000}, "wrong amount: the HTLC holds 29000000 sats, agreed 30000000"),
        ({"wrong_hash": True}, "wrong hash"),
    ],
)
async def test_lp_refuses_a_lock_that_differs_from_the_terms(tmp_path, regtest, anvil, btc, evm, contracts, automine, tamper, reason):
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        swap_id = await hand_made_btc_lock(btc, lp_url, trader_keys, 30_000_000, 4 * ONE_ETH, **tamper)
        view = await wait_until(lambda: party_state(lp, swap_id, m.FAILED), timeout=30, what="LP refused the lock")
        assert reason in view.swap.last_error
        assert view.leg(PARTICIPANT).lock_ref is None
        assert await evm.balance(lp_keys.address) == 20 * ONE_ETH  # the LP locked nothing


async def test_lp_waits_for_confirmations_before_locking(tmp_path, regtest, anvil, btc, evm, contracts):
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    config = swap_config(lp_keys, contracts, confirmations={"bitcoin": 2, "evm": 1})
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), config) as (lp_url, lp):
        swap_id = await hand_made_btc_lock(btc, lp_url, trader_keys, 30_000_000, 4 * ONE_ETH)

        def waiting_for(text: str):
            view = lp.store.get(swap_id)
            return view if view.swap.last_error and text in view.swap.last_error else None

        view = await wait_until(lambda: waiting_for("has 0/2 confirmations; not locking"), timeout=30, what="LP waits (mempool)")
        assert view.swap.state == m.CREATED and view.leg(PARTICIPANT).lock_ref is None
        await BitcoinDevnet(btc).mine(1)
        await wait_until(lambda: waiting_for("has 1/2 confirmations"), timeout=30, what="LP waits (1 conf)")
        assert lp.store.get(swap_id).leg(PARTICIPANT).lock_ref is None
        await BitcoinDevnet(btc).mine(1)
        view = await wait_until(lambda: party_state(lp, swap_id, m.PARTICIPANT_LOCKED), timeout=30, what="LP locked after 2 confirmations")
        assert await evm.balance(lp_keys.address) < 16 * ONE_ETH


def _toml(keys: Keys, contracts: dict[str, str], port: int) -> str:
    timelock = "\n".join(f"{k} = {v}" for k, v in TIMELOCK.items())
    return f"""
btc_key = "{keys.btc.secret.hex()}"
evm_key = "{keys.evm}"
htlc = "{contracts["htlc"]}"
btc_feerate = 2
poll_interval = 0.1
[timelock]
{timelock}
[lp]
port = {port}
[lp.markets."eth/btc"]
rate = "1/150000000000"
min_sell = 1000000000000000
max_sell = 100000000000000000000
"""


async def _cli(env: dict[str, str], *argv: str, timeout: float = 90) -> tuple[int, str, str]:
    import os
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *argv,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_eth_to_btc_with_the_lp_daemon_process(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    trader_keys, lp_keys = await new_keys(evm, 3 * ONE_ETH), await new_keys(evm, ONE_ETH // 10)
    await fund_btc(btc, lp_keys.btc)
    lp_port = free_port()
    (tmp_path / "lp.toml").write_text(_toml(lp_keys, contracts, lp_port))
    (tmp_path / "trader.toml").write_text(_toml(trader_keys, contracts, 0))
    lp_env = {**node_env(regtest, anvil), "BRIDGE_DATA_DIR": str(tmp_path / "lp")}
    trader_env = {**node_env(regtest, anvil), "BRIDGE_DATA_DIR": str(tmp_path / "trader")}
    async with lp_process(lp_env, tmp_path / "lp.toml", lp_port, tmp_path / "lp.log") as lp_url:
        code, out, err = await _cli(
            trader_env, "swap", "start", "--sell", "eth:1.5", "--buy", "btc:0.01", "--lp", lp_url, "--swap-config", str(tmp_path / "trader.toml")
        )
        assert code == 0, out + err
        swap_id = out.split()[1].rstrip(":")
        assert "initiator_locked" in out and "claimed" in out  # progress lines, state by state
        code, out, _ = await _cli(trader_env, "swap", "status", swap_id, "--json", "--swap-config", str(tmp_path / "trader.toml"))
        status = json.loads(out)
        assert status["state"] == "claimed" and status["legs"]["participant"]["spend_kind"] == "claim"
        code, out, _ = await _cli(trader_env, "swap", "list")
        assert swap_id in out and "claimed" in out
        assert 1_000_000 - 10_000 < await btc.balance([trader_keys.btc.p2wpkh_script]) < 1_000_000
        await wait_until(lambda: _lp_paid(evm, lp_keys.address), timeout=60, what="LP claimed the ETH")


async def _lp_paid(evm: EvmAdapter, address: str) -> bool:
    return await evm.balance(address) > ONE_ETH // 10 + ONE_ETH


async def test_trader_refuses_to_claim_too_late_and_both_sides_refund(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    trader_keys, lp_keys = await new_keys(evm, 2 * ONE_ETH), await new_keys(evm, ONE_ETH // 10)
    await fund_btc(btc, lp_keys.btc)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        async with await Party.open(settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts), LpClient()) as trader:
            lp_btc_before = await btc.balance([lp_keys.btc.p2wpkh_script])
            view = await trader.start_swap(lp_url, "eth:1", "btc:0.005")
            assert (await stepped_past(trader, view.swap.id, m.INITIATOR_LOCK_INTENDED)).swap.state == m.INITIATOR_LOCKED
            lp_view = await wait_until(lambda: party_state(lp, view.swap.id, m.PARTICIPANT_LOCKED), timeout=30, what="LP locked")
            # The trader was away: the LP's BTC lock now has 4 blocks (~240 s) left, under the 300 s claim margin.
            await BitcoinDevnet(btc).mine(lp_view.leg(PARTICIPANT).expiry - await btc.height() - 4)
            waiting = await trader.engine.step(view.swap.id)
            assert waiting.swap.state == m.PARTICIPANT_LOCKED and "not claiming" in waiting.swap.last_error
            assert waiting.leg(PARTICIPANT).spend_kind is None  # the secret never left the trader
            report = await trader.engine.audit(view.swap.id)  # `bridgectl swap audit ID`
            assert report["initiator"]["ok"] and report["participant"]["ok"], report
            assert "4 blocks to the participant leg's expiry" in report["participant"]["detail"]
            await BitcoinDevnet(btc).mine(4)
            await wait_until(lambda: party_state(lp, view.swap.id, m.REFUNDED), timeout=30, what="LP refunded its BTC")
            assert lp_btc_before - await btc.balance([lp_keys.btc.p2wpkh_script]) < 10_000  # fees only
            # The trader's ETH lock expires later (chain time); then its relayer refunds.
            expiry = trader.store.get(view.swap.id).leg(INITIATOR).expiry
            await evm.rpc.call("evm_setNextBlockTimestamp", [expiry])
            await AnvilControls(evm).mine(1)
            done = await run_trader(trader, view.swap.id)
            assert done.state == m.REFUNDED, done.last_error
            assert 2 * ONE_ETH - await evm.balance(trader_keys.address) < 10**16  # gas only


class _CrashAfterIntent(BaseException):
    """The process dies here (not an ``Exception``: the engine's step does not catch it)."""


async def test_restart_after_recording_a_lock_rebroadcasts_the_same_transaction(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    """A crash between "intended" and the broadcast: the restarted engine sends the stored bytes,
    once, and a swap started meanwhile does not take the coins that stored lock spends."""
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    await fund_btc(btc, trader_keys.btc)  # two coins: one for each swap
    trader_settings = settings_for(tmp_path, "trader", regtest, anvil)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        first = await Party.open(trader_settings, swap_config(trader_keys, contracts), LpClient())
        view = await first.start_swap(lp_url, "btc:0.2", "eth:2")

        async def crash(**_context):
            raise _CrashAfterIntent()

        # The process dies right after the intent committed.
        first.engine.faults.at("lock.before_broadcast", crash, when=lambda leg, **_: leg.chain == "bitcoin")
        with pytest.raises(_CrashAfterIntent):
            await first.engine.step(view.swap.id)
        await first.close()
        async with await Party.open(trader_settings, swap_config(trader_keys, contracts), LpClient()) as second:
            intended = second.store.get(view.swap.id)
            assert intended.swap.state == m.INITIATOR_LOCK_INTENDED
            lock_tx = intended.leg(INITIATOR).lock_tx
            assert lock_tx not in await btc.rpc.call("getrawmempool")  # signed and stored, never sent
            stored_inputs = {(i.prevout.txid_hex, i.prevout.n) for i in Tx.parse(bytes.fromhex(intended.leg(INITIATOR).lock_raw)).vin}
            assert second.store.reserved_inputs() == stored_inputs
            other = await second.start_swap(lp_url, "btc:0.1", "eth:1")
            assert (await run_trader(second, other.swap.id)).state == m.CLAIMED
            other_raw = second.store.get(other.swap.id).leg(INITIATOR).lock_raw
            assert not {(i.prevout.txid_hex, i.prevout.n) for i in Tx.parse(bytes.fromhex(other_raw)).vin} & stored_inputs
            done = await run_trader(second, view.swap.id)
            assert done.state == m.CLAIMED, done.last_error
            assert second.store.get(view.swap.id).leg(INITIATOR).lock_tx == lock_tx
            assert (await btc.tx_status(lock_tx)).confirmations >= 1
            await wait_until(lambda: party_state(lp, view.swap.id, m.CLAIMED), timeout=60, what="LP claimed")


async def test_restart_after_an_evm_lock_was_sent_finds_it_instead_of_locking_again(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    """The ERC-20 approve and lock were recorded, sent and mined, and the process died before
    recording the swap id: the restarted engine re-sends the same bytes (the node knows them),
    reads the swap id from the mined receipt, and nothing is locked twice."""
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH), await new_keys(evm, ONE_ETH)
    await fund_btc(btc, lp_keys.btc)
    token = Erc20(evm, contracts["tusd"])
    await token.mint(contracts["deployer"], trader_keys.address, 1_000 * 10**6)
    trader_settings = settings_for(tmp_path, "trader", regtest, anvil)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        first = await Party.open(trader_settings, swap_config(trader_keys, contracts), LpClient())
        view = await first.start_swap(lp_url, "tusd:600", "btc:0.01")

        async def die(**_context):  # the lock is mined, but the process dies before recording it
            raise _CrashAfterIntent()

        first.engine.faults.at("lock.after_broadcast", die, when=lambda leg, **_: leg.chain == "evm")
        with pytest.raises(_CrashAfterIntent):
            await first.engine.step(view.swap.id)
        await first.close()
        async with await Party.open(trader_settings, swap_config(trader_keys, contracts), LpClient()) as second:
            recorded = second.store.get(view.swap.id).leg(INITIATOR)
            assert recorded.lock_ref is None  # sent and mined, but the swap id never recorded
            # Sent before the crash; Anvil mines it at once, though its receipt can lag under load.
            await wait_until(lambda: _mined(evm, recorded.lock_tx), timeout=30, what="the lock sent before the crash mined")
            lock = json.loads(recorded.lock_evm)
            assert (lock["approve"]["fields"]["nonce"], lock["fields"]["nonce"]) == (0, 1)  # recorded together
            done = await run_trader(second, view.swap.id)
            assert done.state == m.CLAIMED, done.last_error
            hashlock = bytes.fromhex(done.hashlock)
            locks = [e for e in await EvmHtlc(evm, contracts["htlc"]).events(0) if getattr(e, "swap", None) and e.swap.hashlock == hashlock]
            assert len(locks) == 1  # one lock, found again after the restart
            assert second.store.get(view.swap.id).leg(INITIATOR).lock_tx == recorded.lock_tx == locks[0].where.tx_hash
            assert await _sent_count(evm, trader_keys.address) == 2  # the approve and the lock, each once
            receipt = await evm.receipt(recorded.lock_tx)
            assert receipt.gas_used < EVM_GAS["lock_erc20"] // 2  # the fixed limit has headroom
            assert await token.balance(trader_keys.address) == 400 * 10**6
            await wait_until(lambda: party_state(lp, view.swap.id, m.CLAIMED), timeout=60, what="LP claimed")


async def test_concurrent_swaps_against_one_lp(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    """Four traders at once: the LP locks BTC twice and an ERC-20 twice concurrently (its coin
    choice and token approvals must not collide), and everyone ends claimed."""
    lp_keys = await new_keys(evm, ONE_ETH)
    await fund_btc(btc, lp_keys.btc)
    token = Erc20(evm, contracts["tusd"])
    await token.mint(contracts["deployer"], lp_keys.address, 10_000 * 10**6)
    markets = {
        "lp": {
            "markets": {
                "tusd/btc": {"rate": "1/600", "min_sell": 10**6, "max_sell": 10**12},
                "btc/tusd": {"rate": "600/1", "min_sell": 10_000, "max_sell": ONE_BTC},
            }
        }
    }
    trades = [("tusd:300", "btc:0.005"), ("tusd:240", "btc:0.004"), ("btc:0.01", "tusd:6"), ("btc:0.02", "tusd:12")]
    async with (
        running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts, **markets)) as (lp_url, lp),
        contextlib.AsyncExitStack() as parties,
    ):
        traders = []
        for n, (sell, _) in enumerate(trades):
            keys = await new_keys(evm, ONE_ETH // 10)
            if sell.startswith("btc"):
                await fund_btc(btc, keys.btc, ONE_BTC // 10)
            else:
                await token.mint(contracts["deployer"], keys.address, 1_000 * 10**6)
            party = trader_party(settings_for(tmp_path, f"trader{n}", regtest, anvil), swap_config(keys, contracts))
            traders.append((keys, await parties.enter_async_context(party)))
        views = [await party.start_swap(lp_url, sell, buy) for (_, party), (sell, buy) in zip(traders, trades)]
        done = await asyncio.gather(*(run_trader(party, v.swap.id, timeout=120) for (_, party), v in zip(traders, views)))
        assert [d.state for d in done] == [m.CLAIMED] * 4, [d.last_error for d in done]
        for v in views:
            await wait_until(lambda: party_state(lp, v.swap.id, m.CLAIMED), timeout=60, what=f"LP claimed {v.swap.id}")  # noqa: B023
        assert await token.balance(traders[2][0].address) == 6 * 10**6
        assert await token.balance(traders[3][0].address) == 12 * 10**6
        assert await token.balance(lp_keys.address) == 10_000 * 10**6 - 18 * 10**6 + 540 * 10**6
        for keys, sats in ((traders[0][0], 500_000), (traders[1][0], 400_000)):
            assert sats - 10_000 < await btc.balance([keys.btc.p2wpkh_script]) < sats


async def test_two_processes_on_one_trader_database_never_pick_the_same_coin(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    """Two ``swap start`` at once on one trader's database (two engines here, each with its own
    in-process lock): the trader holds a single coin, so without the file lock next to the
    database both would sign a lock spending it and one would be refused.  Both end claimed."""
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc, ONE_BTC // 10)  # one coin
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        settings = settings_for(tmp_path, "trader", regtest, anvil)
        async with (
            trader_party(settings, swap_config(trader_keys, contracts)) as first,
            trader_party(settings, swap_config(trader_keys, contracts)) as second,
        ):
            views = [await first.start_swap(lp_url, "btc:0.01", "eth:0.15"), await second.start_swap(lp_url, "btc:0.02", "eth:0.3")]
            # Both choose their coins at the same moment: their first steps agree the terms and lock.
            await asyncio.gather(first.engine.step(views[0].swap.id), second.engine.step(views[1].swap.id))
            done = await asyncio.gather(run_trader(first, views[0].swap.id), run_trader(second, views[1].swap.id))
            assert [d.state for d in done] == [m.CLAIMED, m.CLAIMED], [d.last_error for d in done]
            locks = [first.store.get(v.swap.id).leg(INITIATOR).lock_raw for v in views]
            spent = [{(i.prevout.txid_hex, i.prevout.n) for i in Tx.parse(bytes.fromhex(raw)).vin} for raw in locks]
            assert not spent[0] & spent[1]  # the second lock spent the first one's change
            gained = await evm.balance(trader_keys.address) - ONE_ETH // 10
            assert 45 * ONE_ETH // 100 - 10**16 < gained < 45 * ONE_ETH // 100


async def test_a_stuck_bitcoin_claim_is_replaced_with_a_higher_fee(tmp_path, regtest, anvil, btc, evm, contracts):
    """No blocks while the trader's BTC claim waits: after ``fee_bump_after`` it is re-signed at a
    higher feerate, recorded, and replaces the first version in the mempool; then it confirms."""
    trader_keys, lp_keys = await new_keys(evm, 2 * ONE_ETH), await new_keys(evm, ONE_ETH // 10)
    await fund_btc(btc, lp_keys.btc)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        async with trader_party(settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts, fee_bump_after=0.5)) as trader:
            view = await trader.start_swap(lp_url, "eth:1", "btc:0.005")
            task = asyncio.create_task(run_trader(trader, view.swap.id, timeout=120))

            async def claim_waiting() -> bool:  # mine only until the trader's claim is in the mempool
                if trader.store.get(view.swap.id).swap.state == m.CLAIM_INTENDED:
                    return True
                if await btc.rpc.call("getrawmempool"):
                    await BitcoinDevnet(btc).mine(1)
                return False

            await wait_until(claim_waiting, timeout=60, what="trader's claim broadcast")
            first = trader.store.get(view.swap.id).leg(PARTICIPANT)
            bumped = await wait_until(lambda: _bumped(trader, view.swap.id, first.spend_tx), timeout=30, what="fee bump")
            assert bumped.spend_feerate > first.spend_feerate == 2 and first.spend_tx in trader.store.get(view.swap.id).spend_versions(PARTICIPANT)[1:]
            mempool = await btc.rpc.call("getrawmempool")
            assert bumped.spend_tx in mempool and first.spend_tx not in mempool  # replaced, not added
            await BitcoinDevnet(btc).mine(1)
            done = await task
            assert done.state == m.CLAIMED, done.last_error

            def fee(leg) -> int:
                return 500_000 - sum(o.value for o in Tx.parse(bytes.fromhex(leg.spend_raw)).vout)

            assert fee(bumped) > fee(first)
            assert await btc.balance([trader_keys.btc.p2wpkh_script]) == 500_000 - fee(bumped)  # the bumped version confirmed
            assert any("fee bump" in a.note for a in trader.store.get(view.swap.id).actions)


async def _sent_count(evm: EvmAdapter, address: str) -> int:
    return int(await evm.rpc.call("eth_getTransactionCount", [address, "latest"]), 16)


class _Killed(BaseException):
    """The process dies here (not an ``Exception``: the engine's step does not catch it)."""


async def _dies_before_sending_its_claim(trader: Party, lp_url: str) -> SwapView:
    """A BTC -> ETH swap whose trader records its ETH claim and dies before broadcasting it."""
    view = await trader.start_swap(lp_url, "btc:0.2", "eth:3")

    async def die(**_context):
        raise _Killed()

    trader.engine.faults.at("spend.before_broadcast", die, when=lambda leg, **_: leg.chain == "evm")
    killed = False
    try:  # the runner's task group hands the death on inside an exception group
        await run_trader(trader, view.swap.id)
    except* _Killed:
        killed = True
    assert killed
    return view


async def test_restart_after_recording_an_evm_claim_sends_the_same_transaction(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    """The trader recorded its ETH claim and died before sending it: the restarted engine sends the
    recorded transaction (same hash, same nonce), once, and the swap ends claimed."""
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    trader_settings = settings_for(tmp_path, "trader", regtest, anvil)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        first = await Party.open(trader_settings, swap_config(trader_keys, contracts), LpClient())
        view = await _dies_before_sending_its_claim(first, lp_url)
        recorded = first.store.get(view.swap.id)
        claim = recorded.leg(PARTICIPANT)
        await first.close()
        assert recorded.swap.state == m.CLAIM_INTENDED and claim.spend_evm
        assert await evm.rpc.call("eth_getTransactionByHash", [claim.spend_tx]) is None  # signed and recorded, never sent
        before = await evm.balance(trader_keys.address)
        async with await Party.open(trader_settings, swap_config(trader_keys, contracts), LpClient()) as second:
            done = await run_trader(second, view.swap.id)
            assert done.state == m.CLAIMED, done.last_error
            leg = second.store.get(view.swap.id).leg(PARTICIPANT)
            assert leg.spend_tx == claim.spend_tx and second.store.get(view.swap.id).spend_versions(PARTICIPANT)[1:] == []
            sent = await evm.rpc.call("eth_getTransactionByHash", [claim.spend_tx])
            assert int(sent["nonce"], 16) == json.loads(claim.spend_evm)["nonce"] == 0  # the trader's first EVM transaction
            assert await _sent_count(evm, trader_keys.address) == 1  # sent once
            claims = [e for e in await EvmHtlc(evm, contracts["htlc"]).events(0, swap_id=leg.lock_ref) if isinstance(e, Claimed)]
            assert [c.where.tx_hash for c in claims] == [claim.spend_tx]
            receipt = await evm.receipt(claim.spend_tx)
            assert await evm.balance(trader_keys.address) == before + 3 * ONE_ETH - receipt.gas_used * receipt.effective_gas_price
            assert receipt.gas_used < EVM_GAS["claim"] // 2
            await wait_until(lambda: party_state(lp, view.swap.id, m.CLAIMED), timeout=60, what="LP claimed")


async def test_a_recorded_evm_claim_whose_nonce_was_taken_is_re_signed_under_a_fresh_one(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    """The trader recorded its ETH claim and died before sending it; meanwhile another transaction
    of its key took the claim's nonce.  The restarted engine re-signs the claim under the next
    nonce, records it (the old hash kept), and sends it: the swap ends claimed, once."""
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    trader_settings = settings_for(tmp_path, "trader", regtest, anvil)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        first = await Party.open(trader_settings, swap_config(trader_keys, contracts), LpClient())
        view = await _dies_before_sending_its_claim(first, lp_url)
        claim = first.store.get(view.swap.id).leg(PARTICIPANT)
        await first.close()
        other = await evm.transact(trader_keys.evm, trader_keys.address, 0, gas=21_000)  # the operator used the key meanwhile
        await evm.wait_for_receipt(other)
        assert json.loads(claim.spend_evm)["nonce"] == 0 == int((await evm.rpc.call("eth_getTransactionByHash", [other]))["nonce"], 16)
        async with await Party.open(trader_settings, swap_config(trader_keys, contracts), LpClient()) as second:
            done = await run_trader(second, view.swap.id)
            assert done.state == m.CLAIMED, done.last_error
            leg = second.store.get(view.swap.id).leg(PARTICIPANT)
            assert leg.spend_tx != claim.spend_tx and second.store.get(view.swap.id).spend_versions(PARTICIPANT)[1:] == [claim.spend_tx]
            assert json.loads(leg.spend_evm)["nonce"] == 1
            claims = [e for e in await EvmHtlc(evm, contracts["htlc"]).events(0, swap_id=leg.lock_ref) if isinstance(e, Claimed)]
            assert [c.where.tx_hash for c in claims] == [leg.spend_tx]
            assert await _sent_count(evm, trader_keys.address) == 2  # the other transaction and one claim
            assert any("was taken by another transaction" in a.note for a in second.store.get(view.swap.id).actions)


async def test_a_stuck_evm_claim_is_replaced_with_a_higher_fee(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    """The trader's ETH claim is priced under the base fee of the blocks that follow, so it is not
    mined: after ``fee_bump_after`` the engine re-signs it with the same nonce and both fees raised,
    records it, and sends it in its place; the replacement is mined and pays the trader."""
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    htlc = EvmHtlc(evm, contracts["htlc"])
    async with (
        running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp),
        trader_party(settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts, fee_bump_after=1.0)) as trader,
    ):
        real_broadcast = trader.legs["evm"].broadcast_spend

        async def broadcast_with_blocks_held(*args):
            await AnvilControls(evm).set_automine(False)  # from the claim on, only this test makes EVM blocks
            await real_broadcast(*args)

        trader.legs["evm"].broadcast_spend = broadcast_with_blocks_held
        async with automine_back_on(evm):
            before = await evm.balance(trader_keys.address)
            view = await trader.start_swap(lp_url, "btc:0.5", "eth:7.5")
            task = asyncio.create_task(run_trader(trader, view.swap.id, timeout=120))
            first = await wait_until(lambda: _claim_sent(trader, view.swap.id), timeout=60, what="trader's claim sent")
            first_fields = json.loads(first.spend_evm)
            # The next blocks cost twice what the first claim may pay: it stays pending.
            await evm.rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(2 * first_fields["max_fee"])])
            await AnvilControls(evm).mine(2)
            assert await htlc.swap(first.lock_ref) == SwapStatus.LOCKED, "the underpriced claim was not mined"
            await wait_until(lambda: _bumped(trader, view.swap.id, first.spend_tx), timeout=30, what="fee bump")

            async def claimed() -> bool:
                await AnvilControls(evm).mine(1)
                return await htlc.swap(first.lock_ref) == SwapStatus.CLAIMED

            await wait_until(claimed, timeout=30, interval=0.5, what="the replacement claim mined")
        done = await task
        assert done.state == m.CLAIMED, done.last_error
        versions = trader.store.get(view.swap.id).spend_versions(PARTICIPANT)
        assert first.spend_tx in versions[1:]
        assert await evm.rpc.call("eth_getTransactionReceipt", [first.spend_tx]) is None  # the first version never mined
        mined = [t for t in versions if await evm.rpc.call("eth_getTransactionReceipt", [t])]
        assert len(mined) == 1 and mined[0] != first.spend_tx
        tx = await evm.rpc.call("eth_getTransactionByHash", [mined[0]])
        assert int(tx["nonce"], 16) == first_fields["nonce"]  # a replacement, not a second claim
        assert int(tx["maxFeePerGas"], 16) > first_fields["max_fee"] and int(tx["maxPriorityFeePerGas"], 16) > first_fields["priority_fee"]
        receipt = await evm.receipt(mined[0])
        assert await evm.balance(trader_keys.address) == before + 75 * ONE_ETH // 10 - receipt.gas_used * receipt.effective_gas_price
        assert any("fee bump" in a.note for a in trader.store.get(view.swap.id).actions)


def _claim_sent(party: Party, swap_id: str):
    view = party.store.get(swap_id)
    leg = view.leg(PARTICIPANT)
    return leg if view.swap.state == m.CLAIM_INTENDED and leg.spend_sent_at is not None else None


def _bumped(party: Party, swap_id: str, first_txid: str):
    leg = party.store.get(swap_id).leg(PARTICIPANT)
    return leg if leg.spend_tx != first_txid else None


async def test_trader_back_after_the_lp_refunded_refunds_its_own_lock(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    """The trader recorded its claim and died before sending it; it returns after the LP took
    its BTC back.  The claim can no longer go through (its input is spent), so the trader
    refunds its ETH at its own expiry instead of retrying forever."""
    trader_keys, lp_keys = await new_keys(evm, 2 * ONE_ETH), await new_keys(evm, ONE_ETH // 10)
    await fund_btc(btc, lp_keys.btc)
    trader_settings = settings_for(tmp_path, "trader", regtest, anvil)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        first = await Party.open(trader_settings, swap_config(trader_keys, contracts), LpClient())
        view = await first.start_swap(lp_url, "eth:1", "btc:0.005")
        assert (await stepped_past(first, view.swap.id, m.INITIATOR_LOCK_INTENDED)).swap.state == m.INITIATOR_LOCKED
        lp_view = await wait_until(lambda: party_state(lp, view.swap.id, m.PARTICIPANT_LOCKED), timeout=30, what="LP locked")

        async def crash(**_context):
            raise _CrashAfterIntent()

        first.engine.faults.at("spend.before_broadcast", crash, when=lambda leg, **_: leg.chain == "bitcoin")
        with pytest.raises(_CrashAfterIntent):
            await first.engine.step(view.swap.id)
        assert first.store.get(view.swap.id).swap.state == m.CLAIM_INTENDED
        await first.close()
        await BitcoinDevnet(btc).mine(lp_view.leg(PARTICIPANT).expiry - await btc.height())
        await wait_until(lambda: party_state(lp, view.swap.id, m.REFUNDED), timeout=30, what="LP refunded")
        async with await Party.open(trader_settings, swap_config(trader_keys, contracts), LpClient()) as second:
            waiting = await second.engine.step(view.swap.id)
            assert waiting.swap.state == m.CLAIM_INTENDED and "claim refused" in waiting.swap.last_error
            await evm.rpc.call("evm_setNextBlockTimestamp", [waiting.leg(INITIATOR).expiry])
            await AnvilControls(evm).mine(1)
            done = await run_trader(second, view.swap.id)
            assert done.state == m.REFUNDED, done.last_error
            assert 2 * ONE_ETH - await evm.balance(trader_keys.address) < 10**16  # gas only
            assert await btc.balance([trader_keys.btc.p2wpkh_script]) == 0


async def test_lp_whose_claim_is_impossible_ends_claim_lost_and_books_the_loss(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    """The trader claims the LP's ETH, but the LP cannot get its BTC claim out before the trader's
    expiry, and the trader refunds its BTC.  The LP must end ``claim_lost`` with the reason (not
    retry forever), and its books show the ETH gone and no BTC received."""
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):
        lp.engine.error_backoff = RetryPolicy(base_delay=0.05, max_delay=0.2, jitter=0.0)

        async def lost_broadcast(*_args):
            raise TransactionRejected("LP's node is unreachable", reason="test: broadcast lost")

        lp.legs["bitcoin"].broadcast_spend = lost_broadcast
        async with await Party.open(settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts), LpClient()) as trader:
            view = await trader.start_swap(lp_url, "btc:0.3", "eth:4")
            task = asyncio.create_task(run_trader(trader, view.swap.id, timeout=120))
            await wait_until(lambda: party_state(lp, view.swap.id, m.CLAIM_INTENDED), timeout=60, what="LP saw the secret")
            ileg = trader.store.get(view.swap.id).leg(INITIATOR)
            await BitcoinDevnet(btc).mine(ileg.expiry - await btc.height())
            done = await task  # its lock unclaimed at its expiry, the trader refunds it and ends claimed
            assert done.state == m.CLAIMED, done.last_error
            assert trader.store.get(view.swap.id).leg(INITIATOR).outcome == "refunded"
            del lp.legs["bitcoin"].broadcast_spend  # the LP's claim now meets the spent HTLC output
            lost = await wait_until(lambda: party_state(lp, view.swap.id, m.CLAIM_LOST), timeout=60, what="LP gave up its claim")
            assert "claim impossible: the trader refunded its lock" in lost.swap.last_error
            assert (await lp.engine.step(view.swap.id)).swap.state == m.CLAIM_LOST  # terminal: nothing more to do
            assert await evm.balance(lp_keys.address) < 16 * ONE_ETH  # 4 ETH gone to the trader
            assert await btc.balance([lp_keys.btc.p2wpkh_script]) == 0
            assert ONE_BTC * 2 - await btc.balance([trader_keys.btc.p2wpkh_script]) < 10_000  # fees only
            trader_btc_id, trader_evm_id = trader_keys.btc.pubkey.hex(), trader_keys.address
            assert book(lp, trader_evm_id, "user", "ETH").balance == 4 * ONE_ETH
            assert book(lp, lp_keys.address, "external", "ETH").balance == -4 * ONE_ETH
            escrow = book(lp, f"swap-{view.swap.id}-initiator", "escrow", "BTC")
            assert (escrow.balance, escrow.debits_pending) == (0, 0)  # the trader's lock reversed
            assert book(lp, trader_btc_id, "external", "BTC").balance == 0
            assert book(lp, lp_keys.btc.pubkey.hex(), "user", "BTC").balance == 0


@pytest.mark.parametrize("who_refunds", ["engine", "operator"])
async def test_trader_refunds_its_own_lock_the_lp_never_claimed_and_ends_claimed(
    tmp_path,
    regtest,
    anvil,
    btc,
    evm,
    contracts,
    automine,
    who_refunds,
):
    """The LP locks, the trader claims, and the LP's engine never runs again (so never claims the
    trader's BTC).  At the trader's expiry the trader takes its BTC back, by itself or on
    ``swap refund`` (a row the older version ended claimed with the lock unclaimed), and the
    swap ends claimed: the trader holds both its BTC and the LP's ETH, its escrow is empty."""
    from bridge.core.errors import Conflict
    from bridge.ledger import Ledger
    from bridge.ledger.queries import balances
    from bridge.swaps.books import SwapBooks
    from bridge.swaps.legs import NotYet

    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), swap_config(lp_keys, contracts)) as (lp_url, lp):

        async def lp_gone(**_context):
            raise NotYet("test: the LP's engine is not running")

        lp.engine.faults.at("handle.participant_locked", lp_gone)  # it locked; it never looks for the secret again
        async with await Party.open(settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts), LpClient()) as trader:
            view = await trader.start_swap(lp_url, "btc:0.3", "eth:4")
            task = asyncio.create_task(run_trader(trader, view.swap.id, timeout=120))
            waiting = await wait_until(
                lambda: _waiting_for(trader, view.swap.id, "waiting for the LP to claim our lock"), timeout=60, what="trader's claim confirmed"
            )
            assert waiting.swap.state == m.CLAIM_INTENDED and waiting.leg(PARTICIPANT).outcome == "claimed"
            assert book(trader, trader_keys.address, "user", "ETH").balance == 4 * ONE_ETH  # booked once confirmed
            with pytest.raises(InputError, match="too early to refund, [0-9]+ blocks to the initiator leg's expiry"):
                await trader.engine.refund(view.swap.id)
            ileg = waiting.leg(INITIATOR)
            if who_refunds == "operator":
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                # What the older version recorded at the expiry: claimed, our lock left escrowed.
                trader.store.transition(view.swap.id, m.CLAIM_INTENDED, m.CLAIMED, legs={PARTICIPANT: {"outcome": None}})
                await BitcoinDevnet(btc).mine(ileg.expiry - await btc.height())
                intended = await trader.engine.refund(view.swap.id)  # `bridgectl swap refund ID`
                assert intended.swap.state == m.REFUND_INTENDED and intended.leg(INITIATOR).spend_kind == "refund"
                task = asyncio.create_task(run_trader(trader, view.swap.id, timeout=60))
            else:
                await BitcoinDevnet(btc).mine(ileg.expiry - await btc.height())
            done = await task
            assert done.state == m.CLAIMED, done.last_error
            final = trader.store.get(view.swap.id)
            assert (final.leg(INITIATOR).outcome, final.leg(PARTICIPANT).outcome) == ("refunded", "claimed")
            states = [a.to_state for a in final.actions]
            assert states[-3:] == [m.CLAIM_INTENDED if who_refunds == "engine" else m.CLAIMED, m.REFUND_INTENDED, m.CLAIMED]
            with pytest.raises(Conflict, match="was refunded on chain, nothing left to refund"):
                await trader.engine.refund(view.swap.id)
            # On chain: the 0.3 BTC came back (fees only) and the LP's 4 ETH arrived.
            assert 2 * ONE_BTC - await btc.balance([trader_keys.btc.p2wpkh_script]) < 10_000
            assert 4 * ONE_ETH < await evm.balance(trader_keys.address) <= 4 * ONE_ETH + ONE_ETH // 10
            escrow = book(trader, f"swap-{view.swap.id}-initiator", "escrow", "BTC")
            assert (escrow.balance, escrow.debits_pending) == (0, 0)
            assert book(trader, trader_keys.btc.pubkey.hex(), "external", "BTC").balance == 0
            assert book(trader, trader_keys.address, "user", "ETH").balance == 4 * ONE_ETH
            # Recording the swap again from scratch, into an empty ledger, gives the same books.
            again = make_engine(f"sqlite:///{tmp_path / 'again.sqlite'}")
            SwapBooks(Ledger(again), await evm.chain_id_int()).record(final)

            def figures(engine):
                return sorted((b.owner, b.kind, b.asset, b.balance, b.debits_pending, b.credits_pending) for b in balances(engine))

            assert figures(again) == figures(trader.store.engine)


async def test_lp_does_not_lock_on_a_trader_lock_that_a_reorg_removed(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    """The trader's ETH lock is mined, then an Anvil reorg replaces its block with one holding a
    conflicting transaction of the same nonce: the lock is gone for good.  The LP, which waits
    for 3 confirmations, must never lock its BTC; the trader loses only the gas it spent."""
    trader_keys, lp_keys = await new_keys(evm, 2 * ONE_ETH), await new_keys(evm, ONE_ETH // 10)
    await fund_btc(btc, lp_keys.btc)
    lp_btc_before = await btc.balance([lp_keys.btc.p2wpkh_script])
    lp_config = swap_config(lp_keys, contracts, confirmations={"bitcoin": 1, "evm": 3})
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), lp_config) as (lp_url, lp):
        async with await Party.open(settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts), LpClient()) as trader:
            view = await trader.start_swap(lp_url, "eth:1", "btc:0.005")
            stepped = await stepped_past(trader, view.swap.id, m.INITIATOR_LOCK_INTENDED)
            assert stepped.swap.state == m.INITIATOR_LOCKED, stepped.swap.last_error
            await wait_until(lambda: _waiting_for(lp, view.swap.id, "confirmations"), timeout=30, what="LP saw the lock, unconfirmed")
            lock = await evm.rpc.call("eth_getTransactionByHash", [stepped.leg(INITIATOR).lock_tx])
            depth = await evm.height() - int(lock["blockNumber"], 16) + 1
            fees = await evm.suggest_fees()
            conflict = Account.from_key(trader_keys.evm).sign_transaction(
                {
                    "type": 2,
                    "chainId": await evm.chain_id_int(),
                    "nonce": int(lock["nonce"], 16),
                    "to": trader_keys.address,
                    "value": 0,
                    "gas": 21_000,
                    "maxFeePerGas": 2 * fees.max_fee,
                    "maxPriorityFeePerGas": fees.priority_fee,
                }
            )
            await AnvilControls(evm).reorg(depth, [(conflict, 0)])
            await AnvilControls(evm).mine(5)  # past the 3 confirmations the lock would have had
            await wait_until(lambda: _waiting_for(lp, view.swap.id, "no Locked event"), timeout=30, what="LP lost sight of the lock")
            assert lp.store.get(view.swap.id).swap.state == m.CREATED
            assert lp.store.get(view.swap.id).leg(PARTICIPANT).lock_ref is None  # the LP never locked
            assert await btc.balance([lp_keys.btc.p2wpkh_script]) == lp_btc_before
            assert 2 * ONE_ETH - await evm.balance(trader_keys.address) < 10**16  # gas only: the 1 ETH never left


def _waiting_for(party: Party, swap_id: str, text: str):
    view = party.store.get(swap_id) if swap_id in {v.swap.id for v in party.store.list()} else None
    return view if view is not None and text in (view.swap.last_error or "") else None


async def test_lp_does_not_lock_on_a_bitcoin_lock_that_a_reorg_removed(tmp_path, regtest, anvil, btc, evm, contracts):
    """The trader's BTC lock confirms once, ``devnetreorg`` sends it back to the mempool, and a
    double-spend of its input (higher fee) confirms instead: the lock is gone for good.  The LP,
    which waits for 3 confirmations, never locks its ETH; the trader keeps its BTC but fees."""
    from htlc.bitcoin_tx import build_funding

    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    [coin] = await btc.utxos([trader_keys.btc.p2wpkh_script])
    lp_config = swap_config(lp_keys, contracts, confirmations={"bitcoin": 3, "evm": 1})
    async with running_lp(settings_for(tmp_path, "lp", regtest, anvil), lp_config) as (lp_url, lp):
        async with await Party.open(settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts), LpClient()) as trader:
            view = await trader.start_swap(lp_url, "btc:0.3", "eth:4")
            stepped = await trader.engine.step(view.swap.id)
            assert stepped.swap.state == m.INITIATOR_LOCK_INTENDED, stepped.swap.last_error
            await BitcoinDevnet(btc).mine(1)
            stepped = await trader.engine.step(view.swap.id)  # confirmed (the LP was told when it was sent)
            assert stepped.swap.state == m.INITIATOR_LOCKED, stepped.swap.last_error
            await wait_until(lambda: _waiting_for(lp, view.swap.id, "1/3 confirmations"), timeout=30, what="LP saw the lock, unconfirmed")
            reorg = await BitcoinDevnet(btc).reorg(1)
            assert stepped.leg(INITIATOR).lock_tx in await btc.rpc.call("getrawmempool")  # back to the mempool
            conflict = build_funding([coin], [trader_keys.btc], trader_keys.btc.p2wpkh_script, ONE_BTC, 20, network=btc.network)
            await btc.send(conflict.raw_hex)  # replaces the lock in the mempool
            await BitcoinDevnet(btc).mine(5)
            assert (await btc.tx_status(conflict.txid)).confirmations == 5 and reorg["disconnected"]
            await wait_until(lambda: _waiting_for(lp, view.swap.id, "no longer"), timeout=30, what="LP lost sight of the lock")
            lp_view = lp.store.get(view.swap.id)
            assert lp_view.swap.state == m.CREATED and lp_view.leg(PARTICIPANT).lock_ref is None  # the LP never locked
            assert await evm.balance(lp_keys.address) == 20 * ONE_ETH
            assert 2 * ONE_BTC - await btc.balance([trader_keys.btc.p2wpkh_script]) < 10_000  # fees only


async def _mined(evm, tx_hash: str) -> bool:
    return (await evm.tx_status(tx_hash)).confirmations >= 1
