"""The declared scenario of the devnet tests: nodes, keys, parties and their settings, in one place.

A devnet test reads as a story: declare the parties (``new_keys``, ``fund_btc``, ``settings_for``,
``swap_config``), run them as async context managers (``running_lp``: the LP daemon on the shared
runner; ``trader_party``: a trader's party; ``running_watcher``: the watcher daemon; ``lp_process`` and
``watcher_process``: the daemons as OS processes), act, mine explicitly (``devnets.controls``,
``mine_empty``, ``automine_back_on``), and assert on chain state.  Each context manager stops
what it started, whatever the test did, so no test needs a ``try``/``finally`` of its own.

The fixtures here (``htlc``) are registered through ``tests/conftest.py``.  Modules that mine
hundreds of blocks take a private node of their own: ``regtest = module_regtest("name")`` at
module level.  Node data stays in pytest's temporary directories, kept after a failed run (the
session devnet of ``devnets/pytest_plugin.py`` is kept on failure too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from eth_account import Account

from bridge.core.db import make_engine
from bridge.core.settings import BitcoinSettings, EvmSettings, Settings
from bridge.core.testing import wait_until
from bridge.swaps import models as m
from bridge.swaps.config import SwapConfig
from bridge.swaps.party import Party
from bridge.swaps.protocol import LpClient
from bridge.watch.actions import WatchPolicy, Watcher
from bridge.watch.store import WatchStore
from chains.bitcoin import COINBASE_MATURITY, BitcoinAdapter
from chains.bitcoin_wallet import BtcKey
from chains.evm import EvmAdapter
from devnets.controls import AnvilControls, BitcoinDevnet
from devnets.presets import MARKETS, ONE_BTC, ONE_ETH, TIMELOCK
from devnets.process import free_port
from htlc.evm import EvmHtlc
from relayers.lp import LpDaemon
from relayers.runner import Runner
from relayers.watcher import WatcherDaemon

REPO_ROOT = Path(__file__).resolve().parents[2]

# --- nodes and contracts ------------------------------------------------------------------------


def module_regtest(name: str):
    """A private regtest node for one test module (``regtest = module_regtest("swaps")``): modules
    that mine hundreds of blocks would run a shared node's subsidy dry (it halves every 150
    blocks on regtest).  Its data lives in pytest's temporary directories."""

    @pytest.fixture(scope="module", name="regtest")
    def regtest(tmp_path_factory):
        from devnets.bitcoin_node import BitcoinNode

        node = BitcoinNode(tmp_path_factory.mktemp(f"{name}-regtest"))
        node.start()
        yield node
        node.stop()

    return regtest


@pytest.fixture
async def htlc(evm) -> EvmHtlc:
    """An HTLC contract of the test's own, deployed on the session's Anvil."""
    deployer = Account.create()
    await AnvilControls(evm).set_balance(deployer.address, ONE_ETH)
    return await EvmHtlc.deploy(evm, deployer.key.to_0x_hex())


# --- keys and coins -------------------------------------------------------------------------------

#: Mines early (50 BTC) coinbases on a module's node and pays every test's keys from them.
FAUCET = BtcKey.generate()


async def fund_btc(btc: BitcoinAdapter, key: BtcKey, sats: int = 2 * ONE_BTC) -> None:
    """Pay ``sats`` to ``key``'s P2WPKH address and mine it."""
    while await btc.balance([FAUCET.p2wpkh_script]) < sats + ONE_BTC:
        await BitcoinDevnet(btc).mine(5, FAUCET.p2wpkh_address())
        await BitcoinDevnet(btc).mine(COINBASE_MATURITY)
    await btc.send_to([FAUCET], [(key.p2wpkh_script, sats)], 2)
    await BitcoinDevnet(btc).mine(1)


@dataclass
class Keys:
    btc: BtcKey
    evm: str
    address: str


async def new_keys(evm: EvmAdapter, wei: int = 0) -> Keys:
    """A new party's keys: a Bitcoin key and an EVM account holding ``wei``."""
    acct = Account.create()
    await AnvilControls(evm).set_balance(acct.address, wei)
    return Keys(BtcKey.generate(), acct.key.to_0x_hex(), acct.address)


async def evm_account(evm: EvmAdapter, wei: int = ONE_ETH) -> tuple[str, str]:
    """``(key, address)`` of a new EVM account holding ``wei``."""
    keys = await new_keys(evm, wei)
    return keys.evm, keys.address


async def mine_empty(btc: BitcoinAdapter, blocks: int) -> None:
    """Blocks without the mempool's transactions: a spend sent to the mempool stays unmined."""
    for _ in range(blocks):
        await btc.rpc.call("generateblock", BtcKey.generate().p2wpkh_address(), [])


@contextlib.asynccontextmanager
async def automine_back_on(evm: EvmAdapter) -> AsyncIterator[None]:
    """Anvil mines only when the test says so inside the block (whoever turned automine off), and
    as it sends transactions again after it."""
    try:
        yield
    finally:
        await AnvilControls(evm).set_automine(True)


# --- parties' settings ----------------------------------------------------------------------------


def node_env(regtest, anvil) -> dict[str, str]:
    """The ``BRIDGE_*`` environment pointing a ``bridgectl`` process at both nodes."""
    user, password = regtest.rpc_auth
    host, port = regtest.rpc_url.removeprefix("http://").rstrip("/").split(":")
    return {
        "BRIDGE_BITCOIN__RPC_HOST": host,
        "BRIDGE_BITCOIN__RPC_PORT": port,
        "BRIDGE_BITCOIN__RPC_USER": user,
        "BRIDGE_BITCOIN__RPC_PASSWORD": password,
        "BRIDGE_EVM__URL": anvil.url,
    }


def settings_for(tmp_path, name: str, regtest, anvil) -> Settings:
    """A party's settings: its data dir and database under ``tmp_path / name``, both nodes."""
    user, password = regtest.rpc_auth
    host, port = regtest.rpc_url.removeprefix("http://").rstrip("/").split(":")
    return Settings(
        data_dir=str(tmp_path / name),
        database_url=f"sqlite:///{tmp_path / name / 'swaps.sqlite'}",
        bitcoin=BitcoinSettings(rpc_host=host, rpc_port=int(port), rpc_user=user, rpc_password=password),
        evm=EvmSettings(url=anvil.url),
    )


def swap_config(keys: Keys, contracts: dict[str, str], **extra) -> SwapConfig:
    """A party's swap config: its keys, the ``contracts`` (``htlc``, and ``tusd`` if deployed), the
    presets' timelocks and markets; ``extra`` overrides any key."""
    tokens = {"tokens": {"tusd": {"address": contracts["tusd"], "decimals": 6}}} if "tusd" in contracts else {}
    return SwapConfig.model_validate(
        {
            "btc_key": keys.btc.secret.hex(),
            "evm_key": keys.evm,
            "htlc": contracts["htlc"],
            "btc_feerate": 2,
            "poll_interval": 0.05,
            **tokens,
            "timelock": TIMELOCK,
            "lp": {"markets": MARKETS},
            **extra,
        }
    )


# --- parties ------------------------------------------------------------------------------------------


async def health(url: str) -> bool:
    """Whether a daemon at ``url`` answers ``/health``."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/health") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def stop_runner(task: asyncio.Task, daemon_name: str | None = None) -> None:
    """Cancel a ``Runner.run`` task (and, named, its daemon's task: cancelling the runner alone
    leaves the daemon's loop running, the runner stops it only on SIGTERM/SIGINT)."""
    daemons = [t for t in asyncio.all_tasks() if daemon_name is not None and t.get_name() == daemon_name]
    for t in [task, *daemons]:
        t.cancel()
    for t in [task, *daemons]:
        with contextlib.suppress(asyncio.CancelledError):
            await t


@dataclass
class RunningLp:
    url: str
    party: Party
    task: asyncio.Task

    async def stop(self) -> None:
        """The LP goes offline (its party stays open for the test to read)."""
        await stop_runner(self.task, "lp")

    def __iter__(self):  # ``async with running_lp(...) as (url, party)``
        return iter((self.url, self.party))


@contextlib.asynccontextmanager
async def running_lp(settings: Settings, config: SwapConfig, daemon_stop: bool = False) -> AsyncIterator[RunningLp]:
    """The LP daemon on the shared runner, HTTP on a free port, up when entered; stopped on exit
    (``daemon_stop``: its daemon's loop too, for a test that stops it midway with ``.stop()``)."""
    party = await Party.open(settings, config)  # the daemon closes it when it stops
    daemon = LpDaemon(party)
    port = free_port()
    runner = Runner(daemon, settings, http_port=port, extra_routes=daemon.routes(), shutdown_grace=2)
    lp = RunningLp(f"http://127.0.0.1:{port}", party, asyncio.create_task(runner.run()))
    try:
        await wait_until(lambda: health(lp.url), timeout=10, what="LP http up")
        yield lp
    finally:
        await (lp.stop() if daemon_stop else stop_runner(lp.task))


@contextlib.asynccontextmanager
async def trader_party(settings: Settings, config: SwapConfig) -> AsyncIterator[Party]:
    """A trader's party (with its client of the LP's API) open for the block, closed after it."""
    async with await Party.open(settings, config, LpClient()) as party:
        yield party


async def run_trader(trader: Party, swap_id: str, timeout: float = 60) -> m.Swap:
    """Run the trader's engine on one swap to its end (``bridgectl swap start`` does this)."""
    stop = asyncio.Event()
    await asyncio.wait_for(trader.engine.run(stop, only={swap_id}), timeout)
    return trader.store.get(swap_id).swap


def book(party: Party, owner: str, kind: str, asset: str):
    """A party's ledger account ``owner/kind/asset``."""
    from bridge.ledger.queries import balances

    found = [b for b in balances(party.store.engine, owner=owner) if b.kind == kind and b.asset == asset]
    assert found, f"no ledger account {owner}/{kind}/{asset}"
    return found[0]


async def stepped_past(party: Party, swap_id: str, state: str, timeout: float = 30.0):
    """Step the swap until it leaves ``state``; the view it reached.  A lock recorded and sent in
    one step is usually seen mined in that step, but a node's receipt may lag the send under load,
    and then the next step finds it: this waits for the outcome, not for one step's luck."""

    async def step():
        view = await party.engine.step(swap_id)
        return view if view.swap.state != state else None

    return await wait_until(step, timeout=timeout, interval=0.05, what=f"swap {swap_id} past {state}")


def party_state(party: Party, swap_id: str, state: str):
    """The party's view of ``swap_id`` once it is in ``state`` (for ``wait_until``), else None."""
    if swap_id not in {v.swap.id for v in party.store.list()}:
        return None  # not agreed with the LP yet
    view = party.store.get(swap_id)
    return view if view.swap.state == state else None


@dataclass
class RunningWatcher:
    """A watcher daemon as its HTTP API shows it (``watcher`` None when it is another process)."""

    url: str
    watcher: Watcher | None = None

    @property
    def store(self) -> WatchStore:
        return self.watcher.store

    async def submit(self, job: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.post(f"{self.url}/jobs", json=job) as resp:
            return resp.status, await resp.json()

    async def get(self, job_id: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/jobs/{job_id}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def state(self, job_id: str, state: str, level: int | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """The job once it is in ``state`` (and at fee ``level``, if given)."""

        async def reached() -> dict[str, Any]:
            job = await self.get(job_id)
            assert job["state"] == state and (level is None or job["spend_level"] == level), (
                f"{job['state']} level {job['spend_level']}, last error {job['last_error']}, last note {job['actions'][-1]['note']}"
            )
            return job

        return await wait_until(reached, timeout, what=f"job {job_id} in {state} (level {level})")


@contextlib.asynccontextmanager
async def running_watcher(db: Path, btc: BitcoinAdapter, evm: EvmAdapter, evm_key: str | None = None, **policy: Any) -> AsyncIterator[RunningWatcher]:
    """The watcher daemon on the shared runner over the database file ``db``, up when entered."""
    watcher = Watcher(WatchStore(make_engine(f"sqlite:///{db}")), btc, evm, evm_key, WatchPolicy(**policy))
    daemon = WatcherDaemon(watcher, poll_interval=0.05)
    port = free_port()
    runner = Runner(daemon, Settings(), http_port=port, extra_routes=daemon.routes(), shutdown_grace=1)
    task = asyncio.create_task(runner.run())
    running = RunningWatcher(f"http://127.0.0.1:{port}", watcher)
    try:
        await wait_until(lambda: health(running.url), 10, what="watcher http up")
        yield running
    finally:
        await stop_runner(task, "watcher")


@contextlib.asynccontextmanager
async def watcher_process(regtest, anvil, data_dir: Path, port: int, evm_key: str, kill: bool = False) -> AsyncIterator[RunningWatcher]:
    """``bridgectl relayer run watcher`` as its own OS process, up when entered; SIGKILLed on exit
    if ``kill`` (a crash), else terminated.  Its log is ``data_dir/watcher-<port>.log``."""
    env = {**os.environ, **node_env(regtest, anvil), "BRIDGE_DATA_DIR": str(data_dir), "WATCHER_EVM_KEY": evm_key, "PYTHONPATH": str(REPO_ROOT)}
    argv = [sys.executable, "-m", "bridge", "relayer", "run", "watcher", "--port", str(port), "--poll-interval", "0.05"]
    with open(data_dir / f"watcher-{port}.log", "ab") as log:
        proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    running = RunningWatcher(f"http://127.0.0.1:{port}")
    try:
        await wait_until(lambda: health(running.url), 60, what="watcher process up")
        yield running
    finally:
        proc.send_signal(signal.SIGKILL) if kill else proc.terminate()
        proc.wait(10)


@contextlib.asynccontextmanager
async def lp_process(env: dict[str, str], config: Path, port: int, log: Path) -> AsyncIterator[str]:
    """``bridgectl relayer run lp`` as its own OS process, its URL once up; on exit SIGTERM, and
    it must stop cleanly (exit 0; the tail of its ``log`` otherwise)."""
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "relayer",
            "run",
            "lp",
            "--swap-config",
            str(config),
            env={**os.environ, **env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: health(url), timeout=30, what="LP daemon up")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0, log.read_text()[-3000:]
