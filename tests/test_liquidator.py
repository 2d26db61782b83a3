"""Liquidation on the real Anvil: the liquidator daemon (``relayers/liquidator.py``, its operations in
``bridge/committee/liquidation.py``) and the commands ``bridgectl ledger health`` (the bridge's
view) and ``bridgectl liquidate``.

Each test deploys a bridge of its own with a price oracle (``own_bridge(prices=...)``); prices
reach the oracle only as a quorum's signed reports (``Prices``), BTC margin only as a quorum's
DEPOSIT_CREDIT (``credit_btc``).  Accounts borrow TUSD against ETH or BTC, the collateral's price
drops by a step within the oracle's 20 % breaker, and the account is liquidated exactly once:
its positions move on chain to the liquidator, a restarted or second liquidator sends nothing
more, a healthy account is never touched, and a price that does not count (a tripped breaker) is
said and waited out, never a crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from eth_account import Account
from eth_utils import keccak, to_canonical_address

from bridge.committee.crypto import sign
from bridge.committee.liquidation import Liquidator
from bridge.committee.messages import BTC_ASSET, Kind, Message, digest
from bridge.committee.oracle import PriceOracle
from bridge.committee.prices import price_report
from bridge.committee.replica import Replica
from bridge.core.db import make_engine
from bridge.core.testing import wait_until
from devnets.controls import AnvilControls
from devnets.presets import ONE_ETH
from relayers.committee import ReplicaFollower
from relayers.liquidator import LiquidatorDaemon
from support.committee import REPO_ROOT, TUSD, _running, daemon_env, own_bridge

if TYPE_CHECKING:
    from support.committee import TestBridge

log = logging.getLogger("test.liquidator")

USD = 10**8
PRICES = {"BTC": 95_000, "ETH": 3_500, "TUSD": 1}
ETH = "0x" + "00" * 20


class Prices:
    """Prices posted to the bridge's oracle as a quorum of the committee signs them."""

    def __init__(self, bridge: TestBridge) -> None:
        self.bridge = bridge
        self.oracle = PriceOracle(bridge.evm, bridge.config.oracle.address)
        self.last: dict[str, int] = {}

    async def post(self, symbol: str, usd: int) -> list[str]:
        """Post ``usd`` (whole dollars) for ``symbol``; the oracle's events (PriceUpdated or BreakerTripped)."""
        b = self.bridge
        asset = b.config.oracle.feeds[symbol].asset
        observed = await self._after(self.last.get(symbol, 0))
        m = price_report(b.config.domain, asset, usd * USD, observed, observed + 300, interval=1)
        mid = digest(b.config.domain, m)
        indices = list(range(b.committee.threshold))
        receipt = await self.oracle.post_prices(b.relayer_key, asset, [m] * len(indices), b.committee, indices, [sign(mid, b.keys[i]) for i in indices])
        self.last[symbol] = observed
        return [e.name for e in self.oracle.events_in(receipt)]

    async def _after(self, last: int) -> int:
        """A block time after ``last`` (each report of an asset must be newer than its price)."""

        async def newer() -> int | None:
            head = await self.bridge.evm.head()
            if head.timestamp > last:
                return head.timestamp
            await AnvilControls(self.bridge.evm).mine(1)
            return None

        return await wait_until(newer, timeout=10, interval=0.2, what="a block newer than the last report")


async def credit_btc(bridge: TestBridge, account: str, sats: int) -> None:
    """BTC margin for ``account``: a quorum's DEPOSIT_CREDIT (of a Bitcoin output never made)."""
    head = await bridge.evm.head()
    source = keccak(b"liquidator test deposit " + account.lower().encode())
    m = Message(
        1, Kind.DEPOSIT_CREDIT, 0, source, 0, bridge.config.chain_id, to_canonical_address(account), BTC_ASSET, sats, 0, head.timestamp + 3600, bytes(32)
    )
    mid = digest(bridge.config.domain, m)
    indices = list(range(bridge.committee.threshold))
    await bridge.contract.credit_deposit(bridge.relayer_key, m, bridge.committee, indices, [sign(mid, bridge.keys[i]) for i in indices])


async def borrower(bridge: TestBridge, eth: int = 0, btc: int = 0, borrow_tusd: int = 0) -> tuple[str, str]:
    """A fresh account with ``eth`` wei and ``btc`` sats of margin that borrowed ``borrow_tusd`` TUSD base units."""
    address, key = await bridge.user(wei=eth + ONE_ETH, tusd=0)
    if eth:
        await bridge.contract.deposit_eth(key, eth)
    if btc:
        await credit_btc(bridge, address, btc)
    if borrow_tusd:
        await bridge.contract.request_withdrawal(key, bridge.token.address, borrow_tusd)
    return address, key


async def positions(bridge: TestBridge, account: str) -> dict[str, int]:
    """The contract's positions of ``account``, by symbol (zeros included)."""
    assets = {"ETH": ETH, "TUSD": bridge.token.address, "BTC": BTC_ASSET}
    return {sym: await bridge.contract.balance_of(account, address) for sym, address in assets.items()}


# --- the daemon ---------------------------------------------------------------------------------


async def test_daemon_liquidates_once_restarts_send_nothing_and_halted_prices_wait(evm, tmp_path):
    log.info("declare: a bridge with an oracle; ETH 3,500, TUSD 1; an account that borrowed 2,500 TUSD on 1 ETH (12,600 bps) and a healthy one")
    bridge = await own_bridge(evm, tmp_path / "bridge", prices=PRICES)
    prices = Prices(bridge)
    for symbol in ("ETH", "TUSD"):
        assert await prices.post(symbol, PRICES[symbol]) == ["PriceUpdated"]
    weak, _ = await borrower(bridge, eth=ONE_ETH, borrow_tusd=2_500 * TUSD)
    healthy, _ = await borrower(bridge, eth=ONE_ETH, borrow_tusd=1_000 * TUSD)
    assert (await bridge.contract.health(weak))[2] == 12_600
    liquidator, liquidator_key = await bridge.user(wei=10 * ONE_ETH, tusd=0)
    await bridge.contract.deposit_eth(liquidator_key, 5 * ONE_ETH)  # its margin absorbs the positions it takes
    key = bytes.fromhex(liquidator_key[2:])

    settings = bridge.settings(tmp_path / "liquidator")
    db = f"sqlite:///{tmp_path / 'liquidator' / 'replica.sqlite'}"
    async with _running([await LiquidatorDaemon.from_settings(settings, key, db_url=db)]) as (daemon,):
        log.info("act: the liquidator follows the bridge; both borrowers are watched, neither is below 11,000 bps")
        await wait_until(lambda: daemon.metrics.gauges.get("accounts_watched") == 2, timeout=20, what="both borrowers watched")
        scans = daemon.metrics.counters["scans"]
        await AnvilControls(evm).mine(1)  # a scan reads the chain once per block
        await wait_until(lambda: daemon.metrics.counters["scans"] > scans, timeout=10, what="a scan of the new block")
        assert daemon.liquidator.list() == []

        log.info("act: ETH drops to 3,000 (-14 %, within the breaker): the weak account is at 10,800 bps")
        assert await prices.post("ETH", 3_000) == ["PriceUpdated"]
        done = await wait_until(lambda: daemon.liquidator.list(state="done"), timeout=20, what="the liquidation done")

    log.info("check: one liquidation, planned before it was sent; every position moved on chain; the healthy account untouched")
    (op,) = done
    assert (op["account"], op["outcome"], op["liquidator"], op["planned_bps"]) == (weak.lower(), "liquidated", liquidator.lower(), "10800")
    assert [(h["from_state"], h["to_state"]) for h in op["history"]] == [(None, "planned"), ("planned", "submitted"), ("submitted", "done")]
    assert op["seized"] == {ETH: str(ONE_ETH), bridge.token.address.lower(): str(-2_500 * TUSD)}
    assert await positions(bridge, weak) == {"ETH": 0, "TUSD": 0, "BTC": 0}
    assert await positions(bridge, liquidator) == {"ETH": 6 * ONE_ETH, "TUSD": -2_500 * TUSD, "BTC": 0}
    assert await positions(bridge, healthy) == {"ETH": ONE_ETH, "TUSD": -1_000 * TUSD, "BTC": 0}
    events = [e for e in await bridge.contract.events(bridge.config.deploy_block) if e.name == "Liquidated"]
    assert [(e["account"], e["liquidator"], e["healthBps"]) for e in events] == [(weak, liquidator, 10_800)]
    assert (await evm.receipt(op["tx_hash"])).block_number == events[0].where.block_number
    assert daemon.metrics.counters["liquidations_sent"] == 1 and daemon.metrics.counters["liquidations_done"] == 1
    nonce = await evm.nonce(liquidator)

    log.info("act: as if it crashed after a send it never recorded: an open intent for the liquidated account, then a restart")
    crashed = Liquidator(make_engine(db), bridge.contract, liquidator_key, 11_000).plan(weak, op["planned_height"] - 1, 10_800)
    assert crashed is not None
    twin = bridge.settings(tmp_path / "twin")
    restarted = await LiquidatorDaemon.from_settings(settings, key, db_url=db)
    second = await LiquidatorDaemon.from_settings(twin, key, db_url=f"sqlite:///{tmp_path / 'twin' / 'replica.sqlite'}")  # no memory at all
    async with _running([restarted, second]):
        head = await evm.height()

        def caught_up() -> bool:
            return all((d.follower.height or -1) >= head and d.metrics.counters["scans"] >= 1 for d in (restarted, second))

        await wait_until(caught_up, timeout=20, what="both liquidators folded the chain and scanned it")
        view = await wait_until(lambda: restarted.liquidator.view(crashed)["state"] == "done" and restarted.liquidator.view(crashed), timeout=20)
        assert (view["outcome"], view["tx_hash"]) == ("liquidated", op["tx_hash"])
        assert "liquidated by this key" in view["history"][-1]["note"]
        # The healthy account is watched (the key's own never).
        await wait_until(lambda: second.metrics.gauges.get("accounts_watched") == 1, timeout=10, what="the twin watching one account")
        assert second.liquidator.list() == [] and len(restarted.liquidator.list()) == 2

        log.info("act: ETH's breaker trips (3,000 -> 2,000): the healthy account cannot be judged; both daemons say so and keep running")
        assert await prices.post("ETH", 2_000) == ["BreakerTripped"]
        await wait_until(lambda: all(d.metrics.counters["price_refusals"] >= 1 for d in (restarted, second)), timeout=20, what="price refusals seen")
        assert second.liquidator.refusals == {healthy.lower(): "the ETH price does not count: halted (its circuit breaker tripped; a quorum must clear it)"}
        scans = second.metrics.counters["scans"]
        await AnvilControls(evm).mine(1)
        await wait_until(lambda: second.metrics.counters["scans"] > scans, timeout=10, what="a scan of the new block")
    assert await evm.nonce(liquidator) == nonce, "a restart or a second liquidator sent nothing"
    assert await positions(bridge, healthy) == {"ETH": ONE_ETH, "TUSD": -1_000 * TUSD, "BTC": 0}
    assert second.metrics.counters["liquidations_sent"] == restarted.metrics.counters["liquidations_sent"] == 0


# --- the commands -------------------------------------------------------------------------------


async def bridgectl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``python -m bridge ARGS`` as its own process, as a user runs it."""
    cmd = [sys.executable, "-m", "bridge", "--log-level", "WARNING", *args]
    proc = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    log.info("bridgectl %s -> %s\n%s%s", " ".join(args), proc.returncode, proc.stdout, proc.stderr)
    return proc


async def in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """The same command through ``bridge.cli.main`` in a thread (its own event loop), with the
    environment the test set: a process start costs seconds, so only the main commands pay it."""
    from bridge.cli import main

    capsys.readouterr()
    code = await asyncio.to_thread(main, ["--log-level", "WARNING", *args])
    out = capsys.readouterr()
    log.info("bridgectl %s -> %s (in process)\n%s%s", " ".join(args), code, out.out, out.err)
    return subprocess.CompletedProcess(args, code, out.out, out.err)


async def test_ledger_health_shows_chain_and_replica_and_liquidate_by_hand(evm, tmp_path, capsys, monkeypatch):
    log.info("declare: 30,000 TUSD borrowed against 0.5 BTC (BTC 95,000, 20 % haircut: $ 38,000 of collateral); a healthy ETH borrower")
    bridge = await own_bridge(evm, tmp_path / "bridge", prices=PRICES)
    prices = Prices(bridge)
    for symbol, usd in PRICES.items():
        await prices.post(symbol, usd)
    weak, _ = await borrower(bridge, btc=50_000_000, borrow_tusd=30_000 * TUSD)
    healthy, _ = await borrower(bridge, eth=ONE_ETH, borrow_tusd=1_000 * TUSD)
    liquidator, liquidator_key = await bridge.user(wei=10 * ONE_ETH, tusd=0)
    key_file = tmp_path / "liquidator.key"
    key_file.write_text(liquidator_key + "\n")
    settings = bridge.settings(tmp_path / "service")
    env = daemon_env(settings)
    for name, value in env.items():
        if name.startswith("BRIDGE_"):
            monkeypatch.setenv(name, value)
    replica = Replica(make_engine(settings.db_url), bridge.config.replica_config())
    follower = ReplicaFollower(f"replica-{bridge.config.bridge.lower()}", evm, replica, bridge.config, settings)
    stop = asyncio.Event()
    folding = asyncio.create_task(follower.run(stop))

    async def folded() -> None:
        head = await evm.height()
        await wait_until(lambda: (follower.height or -1) >= head, timeout=20, what=f"the service replica at block {head}")

    try:
        log.info("act: BTC drops to 80,000 (-16 %): the BTC borrower is at 10,666 bps")
        assert await prices.post("BTC", 80_000) == ["PriceUpdated"]
        await folded()
        shown = await bridgectl(env, "ledger", "health")
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        assert "liquidation below 11,000 bps, borrowing up to 12,500 bps" in text
        assert f"{weak}  LIQUIDATABLE: health 10,666 bps < 11,000" in text
        assert f"{healthy}  healthy: 31,500 bps >= 11,000" in text
        block = text.split(f"{weak}  ")[1].split("\n\n")[0]
        assert "health        10,666 bps            10,666 bps" in block
        assert "collateral    $ 32,000.00           $ 32,000.00" in block
        assert "liabilities   $ 30,000.00           $ 30,000.00" in block
        assert "TUSD          -30000                -30000" in block and "BTC           0.5                   0.5" in block

        shown = await in_process(capsys, "ledger", "health", weak, "--json")
        assert shown.returncode == 0, shown.stderr
        (row,) = json.loads(shown.stdout)["accounts"]
        assert row["liquidatable"] is True
        assert row["chain"] == row["replica"] == {"collateral": "3200000000000", "liabilities": "3000000000000", "health_bps": 10_666}
        assert {p["asset"]: (p["chain"], p["replica"]) for p in row["positions"]} == {"TUSD": ("-30000000000",) * 2, "BTC": ("50000000",) * 2}

        log.info("act: liquidate by hand: the healthy account is refused, and so is the weak one while the key has no margin of its own")
        nonce = await evm.nonce(liquidator)
        refused = await in_process(capsys, "liquidate", healthy, "--key", str(key_file))
        assert refused.returncode == 1 and "error: not liquidatable: health 31,500 bps >= 11,000" in refused.stderr
        refused = await in_process(capsys, "liquidate", weak, "--key", str(key_file))
        assert refused.returncode == 1 and "refused by the contract: InsufficientMargin" in refused.stderr
        assert "deposit collateral into it first" in refused.stderr
        assert await evm.nonce(liquidator) == nonce, "a refused liquidation sends nothing"

        log.info("act: the key deposits 2 ETH of margin, then liquidates the BTC borrower")
        await bridge.contract.deposit_eth(liquidator_key, 2 * ONE_ETH)
        done = await bridgectl(env, "liquidate", weak, "--key", str(key_file))
        assert done.returncode == 0, done.stderr
        assert f"liquidated {weak} (health 10,666 bps < 11,000): tx 0x" in done.stdout
        assert "  TUSD     -30000" in done.stdout and "  BTC      0.5" in done.stdout
        assert f"health of {liquidator} after: 12,766 bps (collateral $ 38,300.00, liabilities $ 30,000.00)" in done.stdout
        assert await positions(bridge, weak) == {"ETH": 0, "TUSD": 0, "BTC": 0}
        assert await positions(bridge, liquidator) == {"ETH": 2 * ONE_ETH, "TUSD": -30_000 * TUSD, "BTC": 50_000_000}
        again = await in_process(capsys, "liquidate", weak, "--key", str(key_file))
        assert again.returncode == 1 and f"not liquidatable: {weak} owes nothing" in again.stderr

        log.info("act: ETH's breaker trips (3,500 -> 2,000): the liquidator's health cannot be judged, on chain nor in the replica")
        assert await prices.post("ETH", 2_000) == ["BreakerTripped"]
        await folded()
        shown = await in_process(capsys, "ledger", "health", liquidator)
        assert shown.returncode == 0, shown.stderr
        halted = "the ETH price does not count: halted (its circuit breaker tripped; a quorum must clear it)"
        assert f"{liquidator}  cannot be judged now: {halted}" in shown.stdout
        assert f"! chain: {halted}" in shown.stdout and f"! service replica: {halted}" in shown.stdout
        assert "ETH           2                     2" in shown.stdout
    finally:
        stop.set()
        await asyncio.wait_for(folding, 15)
        replica.engine.dispose()


async def test_relayer_run_liquidator_serves_metrics_and_stops_on_sigterm(evm, tmp_path):
    import aiohttp

    from support.committee import _free_port, start_process, stop_process

    bridge = await own_bridge(evm, tmp_path / "bridge", prices=PRICES)
    prices = Prices(bridge)
    for symbol in ("ETH", "TUSD"):
        await prices.post(symbol, PRICES[symbol])
    await borrower(bridge, eth=ONE_ETH, borrow_tusd=100 * TUSD)
    _address, key = await bridge.user(wei=ONE_ETH, tusd=0)
    key_file = tmp_path / "liquidator.key"
    key_file.write_text(key[2:] + "\n")  # 0x optional
    settings = bridge.settings(tmp_path / "liquidator")
    port = _free_port()
    proc = start_process(["relayer", "run", "liquidator", "--key", str(key_file), "--port", str(port)], daemon_env(settings), tmp_path / "liquidator.log")
    try:

        async def watching() -> bool:
            assert proc.poll() is None, (tmp_path / "liquidator.log").read_text()[-3000:]
            try:
                async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    return "bridge_liquidator_accounts_watched 1" in await resp.text()
            except aiohttp.ClientError:
                return False

        await wait_until(watching, timeout=60, interval=0.2, what="the liquidator process watching the borrower")
    finally:
        code = stop_process(proc)
    assert code == 0, (tmp_path / "liquidator.log").read_text()[-3000:]
    assert "liquidator stopped" in (tmp_path / "liquidator.log").read_text()
    assert Path(settings.data_dir, f"liquidator-{_address[2:10].lower()}.sqlite").exists()  # its own replica, by default


def test_relayer_run_liquidator_refuses_bad_options(tmp_path, capsys):
    from bridge.cli import main

    key = tmp_path / "k.key"
    key.write_text("0x" + "11" * 32)
    cases = [
        (["relayer", "run", "liquidator"], "needs --key KEYFILE"),
        (["relayer", "run", "liquidator", "--key", str(tmp_path / "missing.key")], "cannot read key file"),
        (["relayer", "run", "liquidator", "--key", str(key), "--rotate-to", "x.json"], "--rotate-to applies to `relayer run attester` only"),
        (["relayer", "run", "deliverer", "--db", "sqlite:///x"], "--db applies to `relayer run attester` only"),
        (["liquidate", "0x1234", "--key", str(key)], "an account is an EVM address"),
        (["liquidate", Account.from_key(bytes(31) + b"\x11").address, "--key", str(tmp_path / "missing.key")], "cannot read key file"),
    ]
    for argv, expected in cases:
        capsys.readouterr()
        assert main(["--data-dir", str(tmp_path / "nothing"), *argv]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err, (argv, err)


def test_ledger_health_without_a_bridge_is_the_standalone_view(tmp_path, capsys):
    from bridge.cli import main

    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    assert main(["--data-dir", str(tmp_path), "ledger", "health", "--db", url]) == 0
    assert capsys.readouterr().out.strip() == "no positions"
    # Asked for, the bridge view says what it misses.
    assert main(["--data-dir", str(tmp_path), "ledger", "health", "--bridge", "--db", url]) == 1
    assert "committee.json" in capsys.readouterr().err
    assert Path(tmp_path / "committee.json").exists() is False
    assert main(["--data-dir", str(tmp_path), "ledger", "health", "--bridge", "--scan"]) == 1
    assert "--scan: options of the standalone view, not of --bridge" in capsys.readouterr().err
