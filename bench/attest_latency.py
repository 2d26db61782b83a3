"""Committee latency end to end: a deposit's credit in every replica, a withdrawal paid on chain.

    python bench/attest_latency.py [--deposits 50] [--withdrawals 20]

Starts its own Anvil (free port, temp dir; automine) and deploys a bridge with a 3-of-4 committee,
then runs the committee's daemons in this process, as ``bridgectl relayer run`` assembles them
(``relayers.committee``): four attesters, each with its own replica (its own SQLite file), and a
deliverer with the service's replica, all on the default settings (blocks pushed over the
websocket, ``evm.confirmations`` 1, the store polled every ``committee.poll_interval``).

* **Deposit -> credit in every replica**: from the moment the deposit's block is there (confirmation
  depth 1: the block's arrival, seen as the transaction's receipt appearing) until the credit is in
  all five replicas.  A thread looks every 5 ms, first for the receipt (JSON-RPC), then at the
  replicas' SQLite files (read-only, WAL: readers never hold up the folds), and stamps both.
  Deposits are sequential, one fresh account each, so each figure is one deposit's latency, not a
  queue's.
* **Withdrawal request -> paid on chain**: from the request's block (its receipt) until the
  account's ETH balance shows the payment (the quorum's release mined), polled the same way.

Each figure is printed beside its goal: a deposit credited everywhere within 1 s at the median.
``measure(deposits, withdrawals)`` returns the figures for ``bench/attest.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from eth_account import Account

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script, this folder would shadow the ``htlc`` package with htlc.py

from sqlalchemy import text  # noqa: E402

from bridge.committee.config import ETH_ADDRESS, BridgeConfig  # noqa: E402
from bridge.committee.contract import CollateralBridge  # noqa: E402
from bridge.committee.crypto import address_of, keccak256  # noqa: E402
from bridge.committee.messages import Committee  # noqa: E402
from bridge.committee.replica import owner_of  # noqa: E402
from bridge.core.db import make_engine  # noqa: E402
from bridge.core.settings import CommitteeSettings, EvmSettings, Settings  # noqa: E402
from chains.evm import EvmAdapter  # noqa: E402
from devnets.anvil import Anvil, rpc  # noqa: E402
from devnets.controls import AnvilControls  # noqa: E402

ONE_ETH = 10**18
DEPOSIT_P50_GOAL = 1.0  # seconds: a deposit's credit in every replica
POLL = 0.005  # seconds between two looks of the probe thread
TIMEOUT = 60.0  # seconds a single deposit or withdrawal may take before the bench gives up
N, M = 4, 3


class Probe:
    """A thread that checks one condition every ``POLL`` seconds and stamps when it first holds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._check: Callable[[], bool] | None = None
        self._done: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-probe", daemon=True)
        self._thread.start()

    async def until(self, check: Callable[[], bool]) -> float:
        """Wait until ``check()`` holds; the ``time.perf_counter()`` at which the thread saw it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._lock:
            self._check, self._done = check, (loop, future)
        try:
            return await asyncio.wait_for(future, TIMEOUT)
        finally:
            with self._lock:
                self._check = self._done = None

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                check, done = self._check, self._done
            if check is not None and done is not None:
                try:
                    ok = check()
                except Exception:  # noqa: BLE001 - a replica mid-creation: look again
                    ok = False
                if ok:
                    seen = time.perf_counter()
                    with self._lock:
                        if self._done is done:
                            self._check = self._done = None
                            loop, future = done
                            loop.call_soon_threadsafe(lambda f=future, t=seen: f.done() or f.set_result(t))
            time.sleep(POLL)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Stamped:
    """A check in two stages: the transaction's block exists (its receipt is there: the clock
    starts), then ``then(receipt)`` holds (the clock stops).  Both stamped by the probe thread."""

    def __init__(self, url: str, tx_hash: str, then: Callable[[dict], bool]) -> None:
        self.url, self.tx_hash, self.then = url, tx_hash, then
        self.receipt: dict | None = None
        self.block_seen: float | None = None

    def __call__(self) -> bool:
        if self.receipt is None:
            self.receipt = rpc(self.url, "eth_getTransactionReceipt", [self.tx_hash])
            if self.receipt is None:
                return False
            self.block_seen = time.perf_counter()
        return self.then(self.receipt)


def _credited_everywhere(engines: list, owner: str, amount: int) -> Callable[[dict], bool]:
    sql = text(
        "SELECT b.credits_posted - b.debits_posted FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id "
        "WHERE a.owner = :o AND a.kind = 'user' AND a.asset = 'ETH'"
    )
    pending = list(engines)

    def check(_receipt: dict) -> bool:
        for engine in list(pending):
            with engine.connect() as conn:
                value = conn.execute(sql, {"o": owner}).scalar()
            if value is None or int(value) < amount:
                return False
            pending.remove(engine)
        return True

    return check


def _paid(url: str, address: str, before: int, amount: int) -> Callable[[dict], bool]:
    """The account's balance shows ``amount`` paid, net of the request's own gas."""

    def check(receipt: dict) -> bool:
        gas = int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)
        return int(rpc(url, "eth_getBalance", [address, "latest"]), 16) >= before - gas + amount

    return check


def _percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"n": len(values), "p50": _percentile(values, 50), "p90": _percentile(values, 90), "max": max(values), "min": min(values)}


async def _deploy(evm: EvmAdapter, where: Path) -> tuple[BridgeConfig, list[bytes], str]:
    """A bridge with a fresh 3-of-4 committee listing ETH; its committee.json in ``where``."""
    controls = AnvilControls(evm)
    deployer, relayer = Account.create(), Account.create()
    for acct in (deployer, relayer):
        await controls.set_balance(acct.address, 1_000 * ONE_ETH)
    keys = sorted((keccak256(f"latency-bench-attester-{i}".encode()) for i in range(N)), key=address_of)
    committee = Committee(0, tuple(address_of(k) for k in keys), M)
    contract = await CollateralBridge.deploy(evm, deployer.key.to_0x_hex(), committee, [deployer.address], {ETH_ADDRESS: 10**6 * ONE_ETH})
    config = BridgeConfig(await evm.chain_id_int(), contract.address, await evm.height(), committee, 3600, 3600, {"ETH": (ETH_ADDRESS, 18)})
    (where / "committee.json").write_text(json.dumps(config.to_json(), indent=2))
    return config, keys, relayer.key.to_0x_hex()


async def measure(deposits: int = 50, withdrawals: int = 20) -> dict[str, Any]:
    """Start Anvil and the daemons, time ``deposits`` deposits and ``withdrawals`` withdrawals
    (seconds); ``{"deposit_credit": {...}, "withdrawal_paid": {...}, "settings": {...}}``."""
    from relayers.committee import AttesterDaemon, DelivererDaemon

    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        root = Path(tmp)
        node = Anvil(root / "anvil")
        node.start()
        evm = await EvmAdapter.connect(node.url)
        probe = Probe()
        stop = asyncio.Event()
        tasks: list[asyncio.Task] = []
        try:
            service = root / "service"
            service.mkdir()
            config, keys, relayer_key = await _deploy(evm, service)
            settings = Settings(
                data_dir=str(service),
                evm=EvmSettings(url=node.url, confirmations=1),
                committee=CommitteeSettings(config=str(service / "committee.json")),
            )
            urls = [f"sqlite:///{service / f'attester-{i}.sqlite'}" for i in range(N)]
            daemons = [await AttesterDaemon.from_settings(settings, key, db_url=url) for key, url in zip(keys, urls)]
            daemons.append(await DelivererDaemon.from_settings(settings, relayer_key))
            tasks = [asyncio.create_task(d.run(stop), name=d.name) for d in daemons]
            engines = [make_engine(url) for url in [*urls, settings.db_url]]
            contract = CollateralBridge(evm, config.bridge)
            controls = AnvilControls(evm)

            async def deposit(amount: int) -> tuple[str, str, float]:
                acct = Account.create()
                await controls.set_balance(acct.address, amount + ONE_ETH)  # no block: Anvil sets state
                tx = await evm.transact(acct.key.to_0x_hex(), contract.address, amount, _call(contract, "depositETH"))
                stamped = Stamped(node.url, tx, _credited_everywhere(engines, owner_of(acct.address), amount))
                credited = await probe.until(stamped)
                return acct.address, acct.key.to_0x_hex(), credited - stamped.block_seen

            deposit_times: list[float] = []
            accounts: list[tuple[str, str]] = []
            await deposit(ONE_ETH)  # warm-up: every replica opens its accounts and caches
            for i in range(deposits):
                address, key, seconds = await deposit(ONE_ETH + i)
                deposit_times.append(seconds)
                accounts.append((address, key))
            while len(accounts) < withdrawals:
                address, key, _ = await deposit(ONE_ETH)
                accounts.append((address, key))

            withdrawal_times: list[float] = []
            for address, key in accounts[:withdrawals]:
                amount = ONE_ETH // 2
                before = await evm.balance(address)
                tx = await evm.transact(key, contract.address, 0, _call(contract, "requestWithdrawal", ETH_ADDRESS, amount))
                stamped = Stamped(node.url, tx, _paid(node.url, address, before, amount))
                paid = await probe.until(stamped)
                withdrawal_times.append(paid - stamped.block_seen)
            return {
                "deposit_credit": _summary(deposit_times),
                "withdrawal_paid": _summary(withdrawal_times),
                "settings": {
                    "replicas": len(engines),
                    "committee": f"{M}-of-{N}",
                    "confirmations": settings.evm.confirmations,
                    "indexer_poll_interval": settings.indexer.poll_interval,
                    "store_poll_interval": settings.committee.poll_interval,
                    "push_blocks": settings.evm.push_blocks,
                },
            }
        finally:
            stop.set()
            if tasks:
                done, pending = await asyncio.wait(tasks, timeout=15)
                for t in pending:
                    t.cancel()
                for t in done:
                    if not t.cancelled() and t.exception() is not None:
                        print(f"daemon {t.get_name()} failed: {t.exception()!r}", file=sys.stderr)
            probe.close()
            with contextlib.suppress(Exception):
                await evm.close()
            node.stop()


def _call(contract: CollateralBridge, name: str, *args: Any) -> bytes:
    from htlc.evm import encode_call

    return encode_call(contract.abi, name, *args)


def report(figures: dict[str, Any]) -> None:
    s = figures["settings"]
    print(
        f"Committee latency: {s['committee']} committee, {s['replicas']} replicas (4 attesters + the service), "
        f"confirmations {s['confirmations']}, blocks pushed: {s['push_blocks']}, "
        f"indexer poll {s['indexer_poll_interval']} s, store poll {s['store_poll_interval']} s"
    )
    dep = figures["deposit_credit"]
    if dep:
        verdict = "ok" if dep["p50"] <= DEPOSIT_P50_GOAL else "OVER"
        print(f"  deposit -> credit in every replica, n        {dep['n']:>8}")
        print(f"  deposit -> credit in every replica, p50      {dep['p50'] * 1000:>8.0f} ms  goal <= {DEPOSIT_P50_GOAL * 1000:.0f} ms: {verdict}")
        print(f"  deposit -> credit in every replica, p90      {dep['p90'] * 1000:>8.0f} ms")
        print(f"  deposit -> credit in every replica, max      {dep['max'] * 1000:>8.0f} ms")
    wd = figures["withdrawal_paid"]
    if wd:
        print(f"  withdrawal request -> paid on chain, n       {wd['n']:>8}")
        print(f"  withdrawal request -> paid on chain, p50     {wd['p50'] * 1000:>8.0f} ms")
        print(f"  withdrawal request -> paid on chain, p90     {wd['p90'] * 1000:>8.0f} ms")
        print(f"  withdrawal request -> paid on chain, max     {wd['max'] * 1000:>8.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deposits", type=int, default=50, help="deposits timed (default 50)")
    parser.add_argument("--withdrawals", type=int, default=20, help="withdrawals timed (default 20)")
    args = parser.parse_args(argv)
    if args.deposits < 0 or args.withdrawals < 0:
        parser.error("counts must be >= 0")
    report(asyncio.run(measure(args.deposits, args.withdrawals)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
