"""The watcher on the real devnets (Anvil and a private embedded regtest node).

Each test builds the two HTLCs of a swap with the HTLC primitives, lets one party
hand its job to a watcher daemon (the shared runner, HTTP on a free port, SQLite in
the test's temp dir) and then go silent, and checks what a user would: balances on
chain, the job's state and actions, the transactions that were mined.  Bitcoin
blocks are mined by the tests themselves, empty ones (``generateblock``) where a
spend must stay unmined.  The last test drives a real swap (the swap engine and the
LP daemon) and hands the trader's side to the watcher as ``bridgectl swap watch`` does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from eth_account import Account

from bridge.core.db import make_engine
from bridge.swaps import models as m
from bridge.swaps.config import SwapConfig
from bridge.core.testing import wait_until
from bridge.watch.actions import Watcher
from bridge.watch.handoff import swap_jobs
from bridge.watch.models import CONFIRMED, SPEND_SENT, SPENT_ELSEWHERE
from bridge.watch.presign import presign_claims, presign_refunds
from bridge.watch.store import WatchStore
from chains.bitcoin import BitcoinAdapter
from chains.bitcoin_wallet import BtcKey
from chains.fee_bump import EvmTxFields
from devnets.process import free_port
from htlc.bitcoin_script import p2wsh_htlc_script
from htlc.bitcoin_tx import build_claim, fund_htlc
from htlc.evm import ETH, Erc20, EvmHtlc
from devnets.controls import AnvilControls, BitcoinDevnet
from devnets.presets import MARKETS, ONE_BTC, ONE_ETH
from support import scenario
from support.scenario import (
    REPO_ROOT,
    Keys,
    automine_back_on,
    evm_account,
    mine_empty,
    module_regtest,
    new_keys,
    node_env,
    running_lp,
    running_watcher,
    settings_for,
    swap_config,
    trader_party,
    watcher_process,
)

HTLC_SATS = 1_000_000
HTLC_WEI = ONE_ETH // 10


#: These tests mine many (some empty) blocks: a private node for the module.
regtest = module_regtest("watcher")


async def fund_btc(btc: BitcoinAdapter, key: BtcKey, sats: int = ONE_BTC) -> None:
    await scenario.fund_btc(btc, key, sats)


@dataclass
class BtcLock:
    coin: Any
    script: bytes
    height: int  # tip before the lock


async def lock_btc(btc: BitcoinAdapter, sender: BtcKey, claimer: BtcKey, hashlock: bytes, blocks: int) -> BtcLock:
    tip = await btc.height()
    script = p2wsh_htlc_script(hashlock, claimer.pubkey, sender.pubkey, tip + blocks)
    coin, _ = await fund_htlc(btc, [sender], script, HTLC_SATS, 2)
    await BitcoinDevnet(btc).mine(1)
    return BtcLock(coin, script, tip)


def btc_job(kind: str, lock: BtcLock, hashlock: bytes, payout: bytes, presigned: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "chain": "bitcoin",
        "hashlock": hashlock.hex(),
        "payout": payout.hex(),
        "htlc": {"script": lock.script.hex(), "outpoint": f"{lock.coin.txid}:{lock.coin.vout}", "amount": lock.coin.amount},
        "presigned": presigned,
        **extra,
    }


def evm_job(kind: str, htlc: EvmHtlc, params: Any, payout: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "chain": "evm",
        "hashlock": params.hashlock.hex(),
        "payout": payout,
        "htlc": {
            "contract": htlc.address,
            "swap": {
                "sender": params.sender,
                "recipient": params.recipient,
                "token": params.token,
                "amount": params.amount,
                "hashlock": params.hashlock.hex(),
                "expiry": params.expiry,
                "nonce": params.nonce,
            },
        },
        **extra,
    }


def new_secret() -> tuple[bytes, bytes]:
    secret = secrets.token_bytes(32)
    return secret, hashlib.sha256(secret).digest()


# --- tests ------------------------------------------------------------------------------------


async def test_watcher_claims_btc_for_offline_lp_and_bumps_the_stuck_claim(btc, evm, htlc, tmp_path):
    """Trader sells BTC for ETH; the LP hands its BTC claim to the watcher and goes offline.
    The trader claims the ETH (revealing the secret); the watcher completes the LP's
    pre-signed claim, which sits unmined through empty blocks until the watcher
    replaces it with the next rung of the ladder (RBF); that one is mined, to the LP."""
    secret, hashlock = new_secret()
    trader_btc, lp_btc = BtcKey.generate(), BtcKey.generate()
    await fund_btc(btc, trader_btc)
    trader_key, trader_addr = await evm_account(evm)
    lp_key, _ = await evm_account(evm)

    lock = await lock_btc(btc, trader_btc, lp_btc, hashlock, 100)
    evm_from = await evm.height()
    swap_id, _ = await htlc.lock(lp_key, trader_addr, ETH, HTLC_WEI, hashlock, (await evm.head()).timestamp + 3600)
    ladder = presign_claims(lock.coin, lp_btc, lp_btc.p2wpkh_script)
    job = btc_job(
        "claim",
        lock,
        hashlock,
        lp_btc.p2wpkh_script,
        ladder,
        reveal={
            "chain": "evm",
            "contract": htlc.address,
            "swap_id": swap_id.hex(),
            "from_height": evm_from,
        },
    )

    async with running_watcher(tmp_path / "w.sqlite", btc, evm, stuck_blocks=2) as w:
        status, body = await w.submit(job)
        assert status == 201, body
        assert (await w.submit(job))[0] == 200  # the same job again: accepted once
        job_id = body["id"]

        trader_before = await evm.balance(trader_addr)
        await htlc.claim(trader_key, swap_id, secret)  # the trader takes its ETH: the secret is public
        assert await evm.balance(trader_addr) > trader_before

        first = await w.state(job_id, SPEND_SENT, level=0)
        assert first["spend_tx"] in await btc.rpc.call("getrawmempool")
        await mine_empty(btc, 2)
        bumped = await w.state(job_id, SPEND_SENT, level=1)
        mempool = await btc.rpc.call("getrawmempool")
        assert bumped["spend_tx"] in mempool and first["spend_tx"] not in mempool, "the bump replaced the first claim"

        await BitcoinDevnet(btc).mine(1)
        done = await w.state(job_id, CONFIRMED)
    assert done["spend_tx"] == bumped["spend_tx"]
    fee_rung1 = HTLC_SATS - next(o for o in _outs(ladder[1]["tx"]))
    assert await btc.balance([lp_btc.p2wpkh_script]) == HTLC_SATS - fee_rung1
    assert (await btc.tx_status(first["spend_tx"])).confirmations == -1
    notes = " | ".join(a["note"] for a in done["actions"])
    assert "bump to 5 sat/vB" in notes


def _outs(tx_hex: str) -> list[int]:
    from chains.btc.primitives import Tx

    return [o.value for o in Tx.from_hex(tx_hex).vout]


async def test_watcher_claims_evm_for_offline_lp_and_bumps_the_stuck_claim(btc, evm, htlc, tmp_path):
    """Trader sells ETH for BTC; the LP hands its ETH claim to the watcher and goes offline.
    The trader claims the LP's BTC (the secret is in the witness); the watcher claims
    the ETH for the LP from its own key.  Its first claim is priced under the base fee
    of the blocks that follow, so it is not mined; the watcher re-signs it with the same
    nonce and higher EIP-1559 fees.  The LP receives the ETH, the watcher paid the gas."""
    secret, hashlock = new_secret()
    trader_btc, lp_btc = BtcKey.generate(), BtcKey.generate()
    await fund_btc(btc, lp_btc)
    trader_key, trader_addr = await evm_account(evm)
    _, lp_addr = await evm_account(evm)
    watcher_key, watcher_addr = await evm_account(evm)

    expiry = (await evm.head()).timestamp + 3600
    swap_id, _ = await htlc.lock(trader_key, lp_addr, ETH, HTLC_WEI, hashlock, expiry)
    params = (await htlc.locked_swap(swap_id)).swap
    lock = await lock_btc(btc, lp_btc, trader_btc, hashlock, 50)
    job = evm_job(
        "claim",
        htlc,
        params,
        lp_addr,
        reveal={
            "chain": "bitcoin",
            "outpoint": f"{lock.coin.txid}:{lock.coin.vout}",
            "from_height": lock.height,
        },
    )
    base_fee = int((await evm.rpc.call("eth_getBlockByNumber", ["latest", False]))["baseFeePerGas"], 16)
    lp_before, watcher_before = await evm.balance(lp_addr), await evm.balance(watcher_addr)

    async with automine_back_on(evm):
        await AnvilControls(evm).set_automine(False)
        async with running_watcher(
            tmp_path / "w.sqlite",
            btc,
            evm,
            watcher_key,
            stuck_blocks=2,
            evm_max_fee=2 * base_fee,
            evm_priority_fee=1,
        ) as w:
            status, body = await w.submit(job)
            assert status == 201, body
            job_id = body["id"]

            claim = build_claim(lock.coin, secret, trader_btc, trader_btc.p2wpkh_script, 2)
            await btc.send(claim.hex)
            await BitcoinDevnet(btc).mine(1)

            first = await w.state(job_id, SPEND_SENT, level=0)
            # The next blocks cost 10x the base fee the first claim was priced for.
            await evm.rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(20 * base_fee)])
            await AnvilControls(evm).mine(2)
            assert await htlc.swap(swap_id) == 1, "the underpriced claim was not mined"
            bumped = await w.state(job_id, SPEND_SENT, level=1)
            await AnvilControls(evm).mine(1)
            done = await w.state(job_id, CONFIRMED)

    assert done["spend_tx"] == bumped["spend_tx"] != first["spend_tx"]
    first_tx = await evm.rpc.call("eth_getTransactionByHash", [first["spend_tx"]])
    assert first_tx is None or first_tx["blockNumber"] is None, "the first claim never made it into a block"
    mined = await evm.rpc.call("eth_getTransactionByHash", [bumped["spend_tx"]])
    assert mined["from"].lower() == watcher_addr.lower()
    assert int(mined["maxFeePerGas"], 16) > 2 * base_fee
    assert await evm.balance(lp_addr) == lp_before + HTLC_WEI
    assert await evm.balance(watcher_addr) < watcher_before


async def test_watcher_broadcasts_the_presigned_refund_at_expiry(btc, evm, tmp_path):
    """A party locked BTC, pre-signed its refund and went offline; nobody claimed.
    The watcher sends nothing before the refund height, then the refund, mined to the party."""
    _, hashlock = new_secret()
    party, counterparty = BtcKey.generate(), BtcKey.generate()
    await fund_btc(btc, party)
    lock = await lock_btc(btc, party, counterparty, hashlock, 6)
    ladder = presign_refunds(lock.coin, party, party.p2wpkh_script)
    before = await btc.balance([party.p2wpkh_script])

    async with running_watcher(tmp_path / "w.sqlite", btc, evm) as w:
        status, body = await w.submit(btc_job("refund", lock, hashlock, party.p2wpkh_script, ladder))
        assert status == 201, body
        job_id = body["id"]
        assert body["expiry"] == lock.height + 6
        while await btc.height() < lock.height + 5:
            await BitcoinDevnet(btc).mine(1)
            assert (await w.get(job_id))["state"] == "watching"
        await BitcoinDevnet(btc).mine(1)  # tip = refund height: the refund is final in the next block
        sent = await w.state(job_id, SPEND_SENT)
        await BitcoinDevnet(btc).mine(1)
        done = await w.state(job_id, CONFIRMED)

        async def metrics() -> bool:
            async with aiohttp.ClientSession() as http, http.get(f"{w.url}/metrics") as resp:
                text = await resp.text()
            assert "bridge_watcher_jobs_confirmed 1\n" in text and "bridge_watcher_jobs_watching 0\n" in text, text
            return True

        await wait_until(metrics, 5, what="the watcher's metrics")
    assert done["spend_tx"] == sent["spend_tx"]
    assert await btc.balance([party.p2wpkh_script]) == before + HTLC_SATS - (HTLC_SATS - _outs(ladder[0]["tx"])[0])


async def test_watcher_refunds_an_evm_lock_at_expiry(btc, evm, htlc, tmp_path):
    """A party's ETH lock expires unclaimed while it is offline: the watcher calls ``refund``
    (paying the gas) once the chain's time reaches the expiry; the ETH is back with the party."""
    _, hashlock = new_secret()
    party_key, party_addr = await evm_account(evm)
    _, counterparty = await evm_account(evm)
    watcher_key, watcher_addr = await evm_account(evm)
    swap_id, _ = await htlc.lock(party_key, counterparty, ETH, HTLC_WEI, hashlock, (await evm.head()).timestamp + 600)
    params = (await htlc.locked_swap(swap_id)).swap
    party_before, watcher_before = await evm.balance(party_addr), await evm.balance(watcher_addr)

    async with running_watcher(tmp_path / "w.sqlite", btc, evm, watcher_key) as w:
        status, body = await w.submit(evm_job("claim", htlc, params, party_addr, secret="00" * 32))
        assert status == 400 and body["field"] == "secret"
        status, body = await w.submit(evm_job("refund", htlc, params, counterparty))
        assert status == 400 and "is not the swap's sender" in body["reason"]
        status, body = await w.submit(evm_job("refund", htlc, params, party_addr))
        assert status == 201, body
        await AnvilControls(evm).mine(3)
        assert (await w.get(body["id"]))["state"] == "watching"
        await evm.rpc.call("evm_increaseTime", [601])
        await AnvilControls(evm).mine(1)
        done = await w.state(body["id"], CONFIRMED)
    assert await evm.balance(party_addr) == party_before + HTLC_WEI
    assert await evm.balance(watcher_addr) < watcher_before
    assert await htlc.swap(swap_id) == 3  # REFUNDED
    assert (await evm.rpc.call("eth_getTransactionByHash", [done["spend_tx"]]))["from"].lower() == watcher_addr.lower()


async def test_job_refused_when_a_presigned_tx_does_not_pay_the_party(btc, evm, tmp_path):
    _, hashlock = new_secret()
    party, counterparty, thief = BtcKey.generate(), BtcKey.generate(), BtcKey.generate()
    await fund_btc(btc, party)
    lock = await lock_btc(btc, party, counterparty, hashlock, 20)
    honest = presign_refunds(lock.coin, party, party.p2wpkh_script)
    elsewhere = presign_refunds(lock.coin, party, thief.p2wpkh_script)
    forged = presign_refunds(lock.coin, thief, party.p2wpkh_script)

    async with running_watcher(tmp_path / "w.sqlite", btc, evm) as w:
        status, body = await w.submit(btc_job("refund", lock, hashlock, party.p2wpkh_script, [honest[0], elsewhere[1]]))
        assert status == 400
        assert "presigned[1] (refund) does not pay the party" in body["reason"]
        status, body = await w.submit(btc_job("refund", lock, hashlock, party.p2wpkh_script, forged))
        assert status == 400
        assert "signature is not a valid SIGHASH_ALL signature by the script's refund key" in body["reason"]
        status, body = await w.submit(btc_job("claim", lock, hashlock, party.p2wpkh_script, honest, secret="00" * 32))
        assert status == 400 and body["field"] == "secret"
        assert w.store.all() == []


async def test_watcher_killed_and_restarted_resumes_its_jobs(regtest, anvil, btc, evm, htlc, tmp_path):
    """``bridgectl relayer run watcher`` takes a BTC refund job and an EVM claim job, is
    SIGKILLed, and while it is down the refund height passes and the secret is revealed.
    Restarted on the same database it refunds the one and claims the other, once each."""
    secret, hashlock = new_secret()
    party, counterparty = BtcKey.generate(), BtcKey.generate()
    await fund_btc(btc, party)
    lock = await lock_btc(btc, party, counterparty, hashlock, 4)
    ladder = presign_refunds(lock.coin, party, party.p2wpkh_script)
    sender_key, _ = await evm_account(evm)
    _, party_addr = await evm_account(evm)
    watcher_key, _ = await evm_account(evm)
    swap_id, _ = await htlc.lock(sender_key, party_addr, ETH, HTLC_WEI, hashlock, (await evm.head()).timestamp + 3600)
    params = (await htlc.locked_swap(swap_id)).swap
    claim_job = evm_job("claim", htlc, params, party_addr, secret=secret.hex())
    party_before, party_sats = await evm.balance(party_addr), await btc.balance([party.p2wpkh_script])
    port = free_port()

    async with watcher_process(regtest, anvil, tmp_path, port, watcher_key, kill=True) as w:
        # The claim can be made at once: the kill lands somewhere in the watcher's first passes.
        status, refund = await w.submit(btc_job("refund", lock, hashlock, party.p2wpkh_script, ladder))
        assert status == 201, refund
        status, claim = await w.submit(claim_job)
        assert status == 201, claim
    while await btc.height() < lock.height + 4:
        await BitcoinDevnet(btc).mine(1)

    async with watcher_process(regtest, anvil, tmp_path, port, watcher_key) as w:  # restarted on the same database
        await w.state(refund["id"], SPEND_SENT)
        await BitcoinDevnet(btc).mine(1)
        refunded = await w.state(refund["id"], CONFIRMED)
        claimed = await w.state(claim["id"], CONFIRMED)
    assert len(refunded["spend_history"]) == 1 and len(claimed["spend_history"]) == 1
    assert await evm.balance(party_addr) == party_before + HTLC_WEI
    assert await btc.balance([party.p2wpkh_script]) == party_sats + _outs(ladder[0]["tx"])[0]


# --- a real swap: the engine and the LP daemon, the trader offline ----------------------------------


def btc_eth_config(keys: Keys, htlc: EvmHtlc) -> SwapConfig:
    """A party's swap config on the one BTC/ETH market."""
    return swap_config(keys, {"htlc": htlc.address}, lp={"markets": {"btc/eth": MARKETS["btc/eth"]}})


async def bridgectl_swap_watch(
    home: Path,
    regtest,
    anvil,
    btc_key: BtcKey,
    evm_key: str,
    htlc_address: str,
    swap_id: str,
    watcher_url: str,
) -> list[dict[str, Any]]:
    """``bridgectl swap watch ID --watcher URL --json`` as the trader runs it, on the trader's data dir and database."""
    (home / "swaps.toml").write_text(f'btc_key = "{btc_key.secret.hex()}"\nevm_key = "{evm_key}"\nhtlc = "{htlc_address}"\n')
    env = {
        **os.environ,
        **node_env(regtest, anvil),
        "BRIDGE_DATA_DIR": str(home),
        "BRIDGE_DATABASE_URL": f"sqlite:///{home / 'swaps.sqlite'}",
        "PYTHONPATH": str(REPO_ROOT),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "swap",
        "watch",
        swap_id,
        "--watcher",
        watcher_url,
        "--json",
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(out)


async def test_trader_offline_after_lp_locked_watcher_claims_for_it(
    tmp_path,
    regtest,
    anvil,
    btc,
    evm,
    htlc,
    automine,
):
    """BTC -> ETH with the swap engine and the LP daemon.  The trader (no ETH for gas, so its
    own claim cannot go out) runs until the LP has locked, hands its jobs to the watcher
    with ``bridgectl swap watch ID --watcher URL`` and is never run again.  The watcher
    claims the ETH for the trader with the trader's secret, paying the gas; the LP, online,
    learns the secret from that claim and takes the BTC, which ends the trader's refund job."""
    trader_keys, lp_keys = await new_keys(evm, 0), await new_keys(evm, 10 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    watcher_key, watcher_addr = await evm_account(evm)

    async with (
        running_lp(settings_for(tmp_path, "lp", regtest, anvil), btc_eth_config(lp_keys, htlc), daemon_stop=True) as (lp_url, lp),
        trader_party(settings_for(tmp_path, "trader", regtest, anvil), btc_eth_config(trader_keys, htlc)) as trader,
    ):
        view = await trader.start_swap(lp_url, "btc:0.01", "eth:0.15")
        swap_id = view.swap.id

        async def lp_locked() -> bool:
            # With no ETH for gas the trader's own claim cannot go out: it stops at the claim.
            swap = (await trader.engine.step(swap_id)).swap
            assert swap.state in (m.PARTICIPANT_LOCKED, m.CLAIM_INTENDED), f"trader in {swap.state}: {swap.last_error}"
            return True

        await wait_until(lp_locked, 60, interval=0.1, what="the LP's lock, audited by the trader")
        jobs = await swap_jobs(trader.store.get(swap_id), trader_keys.btc, trader.legs["evm"].htlc, "regtest")
        assert [(j["kind"], j["chain"], "secret" in j) for j in jobs] == [("claim", "evm", True), ("refund", "bitcoin", False)]
        # The trader goes offline here: its engine is never stepped again.
        trader_eth = await evm.balance(trader_keys.address)
        watcher_eth = await evm.balance(watcher_addr)

        async with running_watcher(tmp_path / "watcher.sqlite", btc, evm, watcher_key) as w:
            answers = await bridgectl_swap_watch(tmp_path / "trader", regtest, anvil, trader_keys.btc, trader_keys.evm, htlc.address, swap_id, w.url)
            assert [(a["kind"], a["chain"], a["state"]) for a in answers] == [("claim", "evm", "watching"), ("refund", "bitcoin", "watching")]
            ids = [a["id"] for a in answers]
            claim = await w.state(ids[0], CONFIRMED, timeout=60)
            await wait_until(lambda: lp.store.get(swap_id).swap.state == m.CLAIMED, 60, what="the LP claimed the BTC")
            await w.state(ids[1], SPENT_ELSEWHERE, timeout=60)
        assert await evm.balance(trader_keys.address) == trader_eth + 15 * ONE_ETH // 100  # the trader paid no gas
        assert await evm.balance(watcher_addr) < watcher_eth
        mined = await evm.rpc.call("eth_getTransactionByHash", [claim["spend_tx"]])
        assert mined["from"].lower() == watcher_addr.lower()
        assert trader.store.get(swap_id).swap.state in (m.PARTICIPANT_LOCKED, m.CLAIM_INTENDED)  # the trader did nothing


async def test_lp_offline_after_locking_watcher_claims_its_btc_once_the_trader_reveals(
    tmp_path,
    regtest,
    anvil,
    btc,
    evm,
    htlc,
    automine,
):
    """BTC -> ETH with the swap engine.  The LP locks its ETH, hands its jobs to the watcher
    (a pre-signed BTC claim pointed at its own ETH lock for the secret, and the refund of
    that lock) and shuts down.  The trader claims the ETH, revealing the secret; the watcher
    completes the LP's BTC claim, and ends the LP's refund job as the ETH was claimed."""
    trader_keys, lp_keys = await new_keys(evm, 0), await new_keys(evm, 10 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)

    async with (
        running_lp(settings_for(tmp_path, "lp", regtest, anvil), btc_eth_config(lp_keys, htlc), daemon_stop=True) as lp_daemon,
        trader_party(settings_for(tmp_path, "trader", regtest, anvil), btc_eth_config(trader_keys, htlc)) as trader,
    ):
        lp_url, lp = lp_daemon
        view = await trader.start_swap(lp_url, "btc:0.01", "eth:0.15")
        swap_id = view.swap.id

        async def lp_locked() -> bool:
            # The trader learns of the LP's lock from the LP; with no ETH for gas it cannot claim yet.
            swap = (await trader.engine.step(swap_id)).swap
            assert swap.state in (m.PARTICIPANT_LOCKED, m.CLAIM_INTENDED), f"trader in {swap.state}: {swap.last_error}"
            return True

        await wait_until(lp_locked, 60, interval=0.1, what="the LP's lock, audited by the trader")
        await wait_until(lambda: lp.store.get(swap_id).swap.state == m.PARTICIPANT_LOCKED, 60, what="the LP's lock recorded")
        jobs = await swap_jobs(lp.store.get(swap_id), lp_keys.btc, EvmHtlc(evm, htlc.address), "regtest")
        assert [(j["kind"], j["chain"], j.get("reveal", {}).get("chain")) for j in jobs] == [("claim", "bitcoin", "evm"), ("refund", "evm", None)]
        await lp_daemon.stop()  # the LP goes offline
        await AnvilControls(evm).set_balance(trader_keys.address, ONE_ETH // 100)  # the trader can pay for its claim now

        async with running_watcher(tmp_path / "watcher.sqlite", btc, evm, Account.create().key.to_0x_hex()) as w:
            ids = []
            for job in jobs:
                status, body = await w.submit(job)
                assert status == 201, body
                ids.append(body["id"])

            async def trader_claimed() -> bool:
                swap = (await trader.engine.step(swap_id)).swap
                assert swap.state == m.CLAIMED, f"trader in {swap.state}: {swap.last_error}"
                return True

            await wait_until(trader_claimed, 60, interval=0.1, what="the trader's claim of the ETH")
            claim = await w.state(ids[0], CONFIRMED, timeout=60)
            await w.state(ids[1], SPENT_ELSEWHERE, timeout=60)
        assert await btc.balance([lp_keys.btc.p2wpkh_script]) == _outs(jobs[0]["presigned"][0]["tx"])[0]  # 0.01 BTC less the 2 sat/vB fee
        assert claim["spend_level"] == 0 and claim["secret_known"]
        assert lp.store.get(swap_id).swap.state == m.PARTICIPANT_LOCKED  # the LP did nothing meanwhile


async def test_spend_recorded_before_broadcast_is_sent_once_after_a_crash_either_side_of_the_send(btc, evm, htlc, tmp_path):
    """The two crash windows of a spend, made exact by stepping the watcher by hand:
    recorded but never sent (a new watcher sends the stored bytes), and sent but not
    recorded as sent (a new watcher sends them again, harmlessly).  Each chain ends
    with exactly the one recorded transaction: same txid, same EVM nonce."""
    secret, hashlock = new_secret()
    party, counterparty = BtcKey.generate(), BtcKey.generate()
    await fund_btc(btc, party)
    lock = await lock_btc(btc, party, counterparty, hashlock, 2)
    sender_key, _ = await evm_account(evm)
    _, party_addr = await evm_account(evm)
    watcher_key, watcher_addr = await evm_account(evm)
    swap_id, _ = await htlc.lock(sender_key, party_addr, ETH, HTLC_WEI, hashlock, (await evm.head()).timestamp + 3600)
    params = (await htlc.locked_swap(swap_id)).swap
    while await btc.height() < lock.height + 2:
        await BitcoinDevnet(btc).mine(1)
    db = f"sqlite:///{tmp_path / 'w.sqlite'}"

    def fresh_watcher() -> Watcher:  # what a restarted process builds from the same database
        return Watcher(WatchStore(make_engine(db)), btc, evm, watcher_key)

    first = fresh_watcher()
    refund, _ = await first.submit(btc_job("refund", lock, hashlock, party.p2wpkh_script, presign_refunds(lock.coin, party, party.p2wpkh_script)))
    claim, _ = await first.submit(evm_job("claim", htlc, params, party_addr, secret=secret.hex()))
    for job in (refund, claim):
        await first.step(first.store.get(job.id))
    refund, claim = first.store.get(refund.id), first.store.get(claim.id)
    assert refund.state == claim.state == "spend_intended"
    assert await btc.rpc.call("getrawmempool") == []
    assert int(await evm.rpc.call("eth_getTransactionCount", [watcher_addr, "pending"]), 16) == 0

    # Window 1 for the refund (nothing sent); window 2 for the claim (sent, the crash before recording it).
    await evm.send(claim.spend_raw)
    second = fresh_watcher()
    await second.step_all()
    assert second.store.get(refund.id).state == second.store.get(claim.id).state == SPEND_SENT
    assert await btc.rpc.call("getrawmempool") == [refund.spend_tx]
    await BitcoinDevnet(btc).mine(1)
    await wait_until(lambda: _stepped_to(second, [refund.id, claim.id], CONFIRMED), 20, what="both spends confirmed")
    assert int(await evm.rpc.call("eth_getTransactionCount", [watcher_addr, "latest"]), 16) == 1
    mined = await evm.rpc.call("eth_getTransactionByHash", [claim.spend_tx])
    assert mined["blockNumber"] is not None and int(mined["nonce"], 16) == 0
    assert [second.store.spend_versions(i) for i in (refund.id, claim.id)] == [[refund.spend_tx], [claim.spend_tx]]
    assert await evm.balance(party_addr) == ONE_ETH + HTLC_WEI


async def _stepped_to(watcher: Watcher, ids: list[str], state: str) -> bool:
    await watcher.step_all()
    return all(watcher.store.get(i).state == state for i in ids)


async def test_watcher_claims_an_erc20_leg(btc, evm, htlc, tmp_path):
    """The same claim for a token lock: the contract pays the party the tokens, the watcher the gas."""
    secret, hashlock = new_secret()
    deployer_key, _ = await evm_account(evm)
    sender_key, sender_addr = await evm_account(evm)
    _, party_addr = await evm_account(evm, 0)
    watcher_key, _ = await evm_account(evm)
    token = await Erc20.deploy(evm, deployer_key, "TestToken", "Test USD", "TUSD", 6)
    await token.mint(deployer_key, sender_addr, 500 * 10**6)
    await token.approve(sender_key, htlc.address, 500 * 10**6)
    swap_id, _ = await htlc.lock(sender_key, party_addr, token.address, 500 * 10**6, hashlock, (await evm.head()).timestamp + 3600)
    params = (await htlc.locked_swap(swap_id)).swap
    async with running_watcher(tmp_path / "w.sqlite", btc, evm, watcher_key) as w:
        status, body = await w.submit(evm_job("claim", htlc, params, party_addr, secret=secret.hex()))
        assert status == 201, body
        await w.state(body["id"], CONFIRMED)
    assert await token.balance(party_addr) == 500 * 10**6
    assert await evm.balance(party_addr) == 0  # the party spent nothing on gas


async def test_evm_nonces_stay_with_the_watchers_dropped_spends(btc, evm, htlc, tmp_path):
    """A claim priced under the next blocks' base fee is dropped by Anvil.  A second job must
    not sign with the nonce the dropped claim still holds.  Then the key's owner spends that
    nonce by hand: the dropped claim goes out again under a fresh nonce.  Both swaps end claimed."""
    hashlocks = [new_secret() for _ in range(2)]
    sender_key, _ = await evm_account(evm)
    _, party_addr = await evm_account(evm, 0)
    watcher_key, watcher_addr = await evm_account(evm)
    expiry = (await evm.head()).timestamp + 3600
    params = []
    for _, hashlock in hashlocks:
        swap_id, _ = await htlc.lock(sender_key, party_addr, ETH, HTLC_WEI, hashlock, expiry)
        params.append((await htlc.locked_swap(swap_id)).swap)
    base_fee = int((await evm.rpc.call("eth_getBlockByNumber", ["latest", False]))["baseFeePerGas"], 16)
    db = tmp_path / "w.sqlite"

    async def nonce_of(tx_hash: str) -> int:
        return int((await evm.rpc.call("eth_getTransactionByHash", [tx_hash]))["nonce"], 16)

    async with automine_back_on(evm):
        await AnvilControls(evm).set_automine(False)
        async with running_watcher(db, btc, evm, watcher_key, stuck_blocks=3, evm_max_fee=2 * base_fee, evm_priority_fee=1) as w:
            _, a = await w.submit(evm_job("claim", htlc, params[0], party_addr, secret=hashlocks[0][0].hex()))
            sent_a = await w.state(a["id"], SPEND_SENT)
            assert await nonce_of(sent_a["spend_tx"]) == 0
            await evm.rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(20 * base_fee)])
            await AnvilControls(evm).mine(1)
            assert await evm.rpc.call("eth_getTransactionByHash", [sent_a["spend_tx"]]) is None, "Anvil dropped it"

        async with running_watcher(db, btc, evm, watcher_key, stuck_blocks=3) as w:  # node-suggested fees from here
            _, b = await w.submit(evm_job("claim", htlc, params[1], party_addr, secret=hashlocks[1][0].hex()))
            sent_b = await w.state(b["id"], SPEND_SENT)
            assert await nonce_of(sent_b["spend_tx"]) == 1, "nonce 0 still belongs to the dropped claim"

            # The owner uses the key by hand and nonce 0 is mined in a transfer (B, nonce 1, with it).
            fees = await evm.suggest_fees()
            by_hand = EvmTxFields(await evm.chain_id_int(), 0, watcher_addr, "0x", 21_000, fees.max_fee, fees.priority_fee)
            await evm.send(by_hand.sign(evm, watcher_key)[0])
            await AnvilControls(evm).mine(1)
            await w.state(b["id"], CONFIRMED)
            await AnvilControls(evm).mine(1)
            resent = await w.state(a["id"], SPEND_SENT, level=1)
            assert await nonce_of(resent["spend_tx"]) == 2
            assert "the old one was taken" in resent["actions"][-2]["note"]
            await AnvilControls(evm).mine(1)
            await w.state(a["id"], CONFIRMED)
    assert await evm.balance(party_addr) == 2 * HTLC_WEI
