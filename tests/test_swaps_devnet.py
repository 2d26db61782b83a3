"""Atomic swaps end to end on the real devnets: Anvil and the embedded regtest node.

The LP runs as its daemon on the shared runner (HTTP on a free port); the trader
runs its engine in this process, as ``bridgectl swap start`` does.  A helper task
mines a Bitcoin block whenever the mempool is not empty, like Anvil's automine.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import pytest
from eth_account import Account

from bridge.settings import BitcoinSettings, EvmSettings, Settings
from bridge.swaps import models as m
from bridge.swaps.config import SwapConfig
from bridge.swaps.models import INITIATOR, PARTICIPANT
from bridge.swaps.party import Party
from bridge.swaps.protocol import LpClient
from bridge.testing import wait_until
from chains.bitcoin import COINBASE_MATURITY, BitcoinAdapter
from chains.bitcoin_rpc import BitcoinRpc
from chains.bitcoin_wallet import BtcKey
from chains.evm import EvmAdapter
from devnets.process import free_port
from htlc.evm import Erc20, EvmHtlc
from relayers.lp import LpDaemon
from relayers.runner import Runner

ONE_ETH = 10**18
ONE_BTC = 100_000_000
TIMELOCK = {
    "safety_gap": 1800, "initiator_lock": 7200, "participant_lock": 3600,
    "min_participant_lock": 600, "claim_margin": 300, "btc_seconds_per_block": 60,
}


@pytest.fixture(scope="module")
def contracts(anvil) -> dict[str, str]:
    async def deploy() -> dict[str, str]:
        chain = await EvmAdapter.connect(anvil.url)
        deployer = Account.create()
        await chain.set_balance(deployer.address, 10 * ONE_ETH)
        key = deployer.key.to_0x_hex()
        try:
            htlc = await EvmHtlc.deploy(chain, key)
            token = await Erc20.deploy(chain, key, "TestToken", "Test USD", "TUSD", 6)
            return {"htlc": htlc.address, "tusd": token.address, "deployer": key}
        finally:
            await chain.close()

    return asyncio.run(deploy())


@pytest.fixture
async def btc(regtest):
    user, password = regtest.rpc_auth
    adapter = BitcoinAdapter(BitcoinRpc(regtest.rpc_url, user=user, password=password))
    yield adapter
    await adapter.close()


@pytest.fixture
async def evm(anvil):
    adapter = await EvmAdapter.connect(anvil.url)
    yield adapter
    await adapter.close()


@pytest.fixture
async def automine(btc):
    """Mine a block whenever a transaction waits in the mempool (Anvil does this by itself)."""

    async def loop() -> None:
        while True:
            if await btc.rpc.call("getrawmempool"):
                await btc.mine(1)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def fund_btc(btc: BitcoinAdapter, key: BtcKey, blocks: int = 1) -> None:
    await btc.mine(blocks, key.p2wpkh_address())
    await btc.mine(COINBASE_MATURITY)


@dataclass
class Keys:
    btc: BtcKey
    evm: str
    address: str


async def new_keys(evm: EvmAdapter, wei: int = 0) -> Keys:
    acct = Account.create()
    await evm.set_balance(acct.address, wei)
    return Keys(BtcKey.generate(), acct.key.to_0x_hex(), acct.address)


def settings_for(tmp_path, name: str, regtest, anvil) -> Settings:
    user, password = regtest.rpc_auth
    host, port = regtest.rpc_url.removeprefix("http://").rstrip("/").split(":")
    return Settings(
        data_dir=str(tmp_path / name),
        database_url=f"sqlite:///{tmp_path / name / 'swaps.sqlite'}",
        bitcoin=BitcoinSettings(rpc_host=host, rpc_port=int(port), rpc_user=user, rpc_password=password),
        evm=EvmSettings(url=anvil.url),
    )


def swap_config(keys: Keys, contracts: dict[str, str], **extra) -> SwapConfig:
    return SwapConfig.model_validate({
        "btc_key": keys.btc.secret.hex(),
        "evm_key": keys.evm, "htlc": contracts["htlc"], "btc_feerate": 2, "poll_interval": 0.05,
        "tokens": {"tusd": {"address": contracts["tusd"], "decimals": 6}},
        "timelock": TIMELOCK,
        "lp": {"markets": {
            "btc/eth": {"rate": "150000000000/1", "min_sell": 10_000, "max_sell": 10 * ONE_BTC},
            "eth/btc": {"rate": "1/150000000000", "min_sell": 10**15, "max_sell": 100 * ONE_ETH},
            "tusd/btc": {"rate": "1/600", "min_sell": 10**6, "max_sell": 10**12},
        }},
        **extra,
    })


@contextlib.asynccontextmanager
async def running_lp(settings: Settings, config: SwapConfig):
    party = await Party.open(settings, config)
    daemon = LpDaemon(party)
    port = free_port()
    runner = Runner(daemon, settings, http_port=port, extra_routes=daemon.routes(), shutdown_grace=2)
    task = asyncio.create_task(runner.run())
    url = f"http://127.0.0.1:{port}"
    await wait_until(lambda: _health(url), timeout=10, what="LP http up")
    try:
        yield url, party
    finally:
        runner_stop(task)
        with contextlib.suppress(asyncio.CancelledError):
            await task


def runner_stop(task: asyncio.Task) -> None:
    task.cancel()


async def _health(url: str) -> bool:
    import aiohttp

    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/health") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def run_trader(trader: Party, swap_id: str, timeout: float = 60) -> m.Swap:
    stop = asyncio.Event()
    await asyncio.wait_for(trader.engine.run(stop, only={swap_id}), timeout)
    return trader.store.get(swap_id).swap


async def test_btc_to_eth_happy_path(tmp_path, regtest, anvil, btc, evm, contracts, automine):
    trader_keys, lp_keys = await new_keys(evm, ONE_ETH // 10), await new_keys(evm, 20 * ONE_ETH)
    await fund_btc(btc, trader_keys.btc)
    lp_settings = settings_for(tmp_path, "lp", regtest, anvil)
    async with running_lp(lp_settings, swap_config(lp_keys, contracts)) as (lp_url, lp):
        trader = await Party.open(settings_for(tmp_path, "trader", regtest, anvil), swap_config(trader_keys, contracts), LpClient())
        try:
            trader_btc_before = await btc.balance([trader_keys.btc.p2wpkh_script])
            view = await trader.start_swap(lp_url, "btc:0.5", "eth:7.5")
            done = await run_trader(trader, view.swap.id)
            assert done.state == m.CLAIMED, done.last_error
            # The LP sees the secret on the EVM chain and claims the BTC.
            lp_view = await wait_until(lambda: _state(lp, view.swap.id, m.CLAIMED), timeout=60, what="LP claimed")
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
        finally:
            await trader.close()


def _state(party: Party, swap_id: str, state: str):
    view = party.store.get(swap_id)
    return view if view.swap.state == state else None
