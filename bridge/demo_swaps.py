"""The demo's swap act: an LP daemon and a trader, as real processes, on the devnets.

Everything goes through the commands a user runs (`bridgectl relayer run lp`,
`bridgectl swap start|status`, `bridgectl ledger balances`), each party with
its own settings, keys and database, as on two different machines.  Bitcoin
blocks are mined by the demo whenever a transaction waits (what Anvil does by
itself), so swaps confirm in seconds.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bridge.core.errors import DevnetError
from bridge.core.testing import wait_until
from devnets.deploy import TOKEN_DECIMALS, TOKEN_SYMBOL
from devnets.presets import DEMO_MARKETS as MARKETS
from devnets.presets import TIMELOCK
from devnets.process import free_port


def _toml(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class PartyDir:
    name: str
    path: Path
    btc_key: dict
    evm_account: dict

    @property
    def config(self) -> Path:
        return self.path / "bridge.toml"

    def write(self, descriptor: dict, lp_port: int | None = None) -> None:
        """Settings and swap config for this party, from the devnet descriptor."""
        self.path.mkdir(parents=True, exist_ok=True)
        btc, evm = descriptor["bitcoin"], descriptor["evm"]
        lines = [f"data_dir = {_toml(str(self.path))}", "[bitcoin]", f"rpc_port = {btc['port']}"]
        if btc.get("cookie_file"):
            lines.append(f"cookie_file = {_toml(btc['cookie_file'])}")
        else:
            lines += [f"rpc_user = {_toml(btc['rpc_user'])}", f"rpc_password = {_toml(btc['rpc_password'])}"]
        lines += ["[evm]", f"url = {_toml(evm['rpc_url'])}"]
        self.config.write_text("\n".join(lines) + "\n")

        token = descriptor["contracts"]["tokens"][TOKEN_SYMBOL]
        swaps = [
            f"btc_key = {_toml(self.btc_key['private_key'])}",
            f"evm_key = {_toml(self.evm_account['private_key'])}",
            f"htlc = {_toml(descriptor['contracts']['htlc'])}",
            "btc_feerate = 2",
            "poll_interval = 0.2",
            f"[tokens.{TOKEN_SYMBOL.lower()}]",
            f"address = {_toml(token['address'])}",
            f"decimals = {TOKEN_DECIMALS}",
            "[timelock]",
            *(f"{k} = {v}" for k, v in TIMELOCK.items()),
        ]
        if lp_port is not None:
            swaps += ["[lp]", f"port = {lp_port}"]
            for market, terms in MARKETS.items():
                swaps.append(f'[lp.markets."{market}"]')
                swaps += [f"{k} = {_toml(v)}" for k, v in terms.items()]
        (self.path / "swaps.toml").write_text("\n".join(swaps) + "\n")

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bridge", "--config", str(self.config), "--log-level", "WARNING", *args]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise DevnetError(f"{self.name}: bridgectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc


class Miner:
    """Mines a regtest block whenever the mempool holds a transaction."""

    def __init__(self, rpc: Callable) -> None:
        self.rpc = rpc
        self.address = None
        self.paused = False
        self._task: asyncio.Task | None = None

    async def _loop(self) -> None:
        while True:
            mempool = [] if self.paused else await asyncio.to_thread(self.rpc, "getrawmempool")
            if mempool:
                await asyncio.to_thread(self.rpc, "generatetoaddress", 1, self.address)
            await asyncio.sleep(0.2)

    def start(self, address: str) -> None:
        self.address = address
        self._task = asyncio.create_task(self._loop())

    async def mine(self, blocks: int) -> None:
        await asyncio.to_thread(self.rpc, "generatetoaddress", blocks, self.address)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class LpProcess:
    def __init__(self, party: PartyDir, port: int) -> None:
        self.party, self.port = party, port
        self.proc: subprocess.Popen | None = None
        self.log = party.path / "lp.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.party.argv("relayer", "run", "lp", "--port", str(self.port)), stdout=log, stderr=subprocess.STDOUT)

        def answers() -> bool:
            import urllib.request

            if self.proc.poll() is not None:
                raise DevnetError(f"the LP daemon exited ({self.proc.returncode}); see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return True
            except OSError:
                return False

        await wait_until(answers, timeout=60, what="the LP daemon to answer /health")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def stream(party: PartyDir, *args: str, timeout: float = 300) -> list[str]:
    """Run a bridgectl command, echoing its output as it comes (long waits show progress)."""
    proc = subprocess.Popen(party.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line.rstrip())
        print(f"    {party.name:6} | {line.rstrip()}", flush=True)
        if time.monotonic() > deadline:
            proc.kill()
    proc.wait()
    return lines


def swap_state(party: PartyDir, swap_id: str) -> str:
    from bridge.core.db import make_engine
    from bridge.core.settings import load_settings
    from bridge.swaps.store import SwapStore

    engine = make_engine(load_settings(party.config, environ={}).db_url)
    try:
        return SwapStore(engine).get(swap_id).swap.state
    finally:
        engine.dispose()


def _started_swap(party: PartyDir) -> str | None:
    """The id of the party's newest swap, once its row exists."""
    from bridge.core.db import make_engine
    from bridge.core.settings import load_settings
    from bridge.swaps.store import SwapStore

    engine = make_engine(load_settings(party.config, environ={}).db_url)
    try:
        views = [v for v in SwapStore(engine).list() if v.swap.state not in ("claimed", "refunded", "failed")]
        return views[-1].swap.id if views else None
    except Exception:  # noqa: BLE001 - the database may not exist yet
        return None
    finally:
        engine.dispose()


def _swap_id(lines: list[str]) -> str:
    for line in lines:
        if line.startswith("swap ") and ": secret stored" in line:
            return line.split()[1].rstrip(":")
    raise DevnetError("the trader did not report a swap id:\n" + "\n".join(lines))


async def swap_to_end(trader: PartyDir, sell: str, buy: str, lp: LpProcess, say) -> str:
    say(f"trader: bridgectl swap start --sell {sell} --buy {buy} --lp {lp.url}")
    t0 = time.monotonic()
    lines = await asyncio.to_thread(stream, trader, "swap", "start", "--sell", sell, "--buy", buy, "--lp", lp.url, "--timeout", "240")
    swap_id = _swap_id(lines)
    say(f"trader: swap {swap_id[:12]}… ended {swap_state(trader, swap_id)} in {time.monotonic() - t0:.1f}s")
    return swap_id


def timeline(party: PartyDir, swap_id: str) -> str:
    return party.run("swap", "status", swap_id).stdout.rstrip()


async def run_swaps(descriptor: dict, data_dir: Path, say, btc_rpc: Callable) -> dict:
    """The three swaps of the demo; returns what happened for the summary."""
    btc_keys, evm_accounts = descriptor["bitcoin"]["keys"], descriptor["evm"]["accounts"]
    lp_party = PartyDir("lp", data_dir / "lp", btc_keys[2], evm_accounts[2])
    trader = PartyDir("trader", data_dir / "trader", btc_keys[3], evm_accounts[3])
    lp_port = free_port()
    lp_party.write(descriptor, lp_port=lp_port)
    trader.write(descriptor)
    miner = Miner(btc_rpc)
    miner.start(btc_keys[0]["address"])
    lp = LpProcess(lp_party, lp_port)
    results: dict = {}
    try:
        await lp.start()
        say(f"LP daemon up at {lp.url} (BTC key 2, EVM account 2); trader uses BTC key 3, EVM account 3")

        one = await swap_to_end(trader, "btc:0.5", "eth:7.5", lp, say)
        two = await swap_to_end(trader, "tusd:6000", "btc:0.1", lp, say)

        say("trader: a third swap, btc:0.2 for eth:3; the LP accepts it, then disappears (SIGKILL)")
        # Hold the miner so the trader's lock stays unconfirmed: the LP (which locks only on a
        # confirmed counterparty lock) cannot lock before it is killed.
        miner.paused = True
        third = asyncio.create_task(
            asyncio.to_thread(stream, trader, "swap", "start", "--sell", "btc:0.2", "--buy", "eth:3", "--lp", lp.url, "--timeout", "240")
        )
        three_id = await wait_until(lambda: _started_swap(trader), timeout=60, interval=0.2, what="the third swap to be recorded")
        await wait_until(
            lambda: swap_state(trader, three_id) == "initiator_lock_intended", timeout=60, what="the LP to accept and the trader to broadcast its lock"
        )
        lp.kill()
        miner.paused = False
        say("LP: killed after accepting. The trader's lock confirms; the LP never locks")
        await wait_until(lambda: swap_state(trader, three_id) == "initiator_locked", timeout=60, what="the trader's lock")
        blocks = TIMELOCK["initiator_lock"] // TIMELOCK["btc_seconds_per_block"] + 1
        say(f"devnet: mining {blocks} blocks to reach the trader's refund height")
        await miner.mine(blocks)
        await third
        say(f"trader: swap {three_id[:12]}… ended {swap_state(trader, three_id)}")
        results["swaps"] = {}
        for swap_id in (one, two, three_id):
            results["swaps"][swap_id] = {"state": swap_state(trader, swap_id), "timeline": timeline(trader, swap_id)}
        results["balances"] = {p.name: p.run("ledger", "balances").stdout.rstrip() for p in (trader, lp_party)}
        return results
    finally:
        await miner.stop()
        lp.stop()
