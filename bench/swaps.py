"""Swap timings on the devnets: end-to-end vs the floor, relayer reaction, concurrency, CPU.

    python bench/swaps.py [--swaps 50] [--concurrent 1000] [--cap 300]

Starts its own regtest node and Anvil (free ports, a temp dir) and the LP as its daemon
process (``bridgectl relayer run lp``); traders run their engines in this process, as
``bridgectl swap start`` does.  Every swap is BTC -> ETH.  Prints, asserts nothing.

Mining: Anvil automines.  For the floor and the sequential swaps the regtest node does too
(``devnetautomine``): each transaction is mined as it is sent, the same for both.  With
``--btc-mining poll`` (and always for the concurrent swaps, whose transactions should share
blocks) a task here mines a block whenever the mempool holds a transaction, polled every 5 ms.

- end-to-end: from ``start_swap`` to the LP's claim recorded confirmed (both legs settled);
- floor: the same four transactions (BTC lock, EVM lock, EVM claim, BTC claim) sent one after
  the other directly with the adapters, each mined at once;
- reaction: from the moment this process first sees the EVM block holding the trader's claim
  (announced by Anvil's websocket) to the LP recording its BTC claim, which it broadcasts right
  after, and to this process seeing that claim: in the block automine made of it (announced by
  the node's long poll), or with ``--btc-mining poll`` in the node's mempool;
- concurrency: N swaps started at once by 20 traders; all must end claimed on both sides;
- CPU: the LP daemon's user+system time (``/proc/<pid>/stat``) over a phase, per swap.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as `python bench/swaps.py`, this folder is first on sys.path and bench/htlc.py would
# shadow the `htlc` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from bridge.swaps import models as m  # noqa: E402
from bridge.swaps.models import Swap  # noqa: E402
from bridge.swaps.protocol import LpClient  # noqa: E402
from bridge.core.testing import WaitTimeout, wait_until  # noqa: E402
from devnets.anvil import Anvil  # noqa: E402
from sqlmodel import Session, select  # noqa: E402
from devnets.process import free_port  # noqa: E402
from htlc.bitcoin_script import p2wsh_htlc_script  # noqa: E402
from htlc.bitcoin_tx import build_claim, fund_htlc  # noqa: E402
from htlc.evm import ETH, Claimed, EvmHtlc  # noqa: E402
import swap_harness  # noqa: E402
from swap_harness import NODE_AUTH, ONE_BTC, ONE_ETH, Chains, bitcoin_node, Identity, Party, open_party, reap, start_lp  # noqa: E402
from devnets.controls import AnvilControls, BitcoinDevnet  # noqa: E402

SELL, BUY = "btc:0.0002", "eth:0.003"  # 20,000 sats at the LP's 1.5e11 wei/sat
SELL_SATS = 20_000
TRADERS = 20
POLL = 0.1  # both parties' engine poll interval (the swap config's poll_interval)
FLOOR_SAMPLES = 15


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def floor_once(chains: Chains, trader: Identity, lp: Identity, automine: bool) -> float:
    """The four transactions of a swap, back to back, each mined as soon as it is sent (by the
    node's automine, or here right after the send)."""
    htlc = EvmHtlc(chains.evm, chains.htlc)
    secret = secrets.token_bytes(32)
    hashlock = hashlib.sha256(secret).digest()
    started = time.perf_counter()
    expiry = await chains.btc.height() + 120
    script = p2wsh_htlc_script(hashlock, lp.btc.pubkey, trader.btc.pubkey, expiry)
    coin, _ = await fund_htlc(chains.btc, [trader.btc], script, SELL_SATS, 2)
    if not automine:
        await BitcoinDevnet(chains.btc).mine(1)
    evm_expiry = (await chains.evm.head()).timestamp + 3600
    swap_id, _ = await htlc.lock(lp.evm_key, trader.address, ETH, 3 * 10**15, hashlock, evm_expiry)
    await htlc.claim(trader.evm_key, swap_id, secret)
    claim = build_claim(coin, secret, lp.btc, lp.btc.p2wpkh_script, 2, network=chains.btc.network)
    await chains.btc.send(claim.hex)
    if not automine:
        await BitcoinDevnet(chains.btc).mine(1)
    return time.perf_counter() - started


class HeadWatch:
    """How Bitcoin blocks are mined in a phase, and when this process first saw each EVM and
    Bitcoin block (announced by Anvil's websocket and the node's long poll) and, when it polls
    the mempool to mine, each Bitcoin mempool transaction (Anvil automines by itself)."""

    def __init__(self, chains: Chains, automine: bool) -> None:
        self.chains = chains
        self.automine = automine
        self.seen: dict[int, float] = {}  # EVM
        self.btc_seen: dict[int, float] = {}
        self.in_mempool: dict[str, float] = {}

    @staticmethod
    async def _blocks(adapter: Any, seen: dict[int, float]) -> None:
        height = await adapter.height()
        while True:
            announced = await adapter.wait_for_block(height, 1.0)
            now = time.time()
            new = announced if announced is not None else await adapter.height()
            for n in range(height + 1, new + 1):
                seen.setdefault(n, now)
            height = max(height, new)

    async def _mine(self) -> bool:
        waiting = await self.chains.btc.rpc.call("getrawmempool")
        for txid in waiting:
            self.in_mempool.setdefault(txid, time.time())
        if waiting:
            await BitcoinDevnet(self.chains.btc).mine(1)
        return False

    @contextlib.asynccontextmanager
    async def running(self):
        await BitcoinDevnet(self.chains.btc).set_automine(self.automine)

        async def both() -> None:
            await asyncio.gather(
                self._blocks(self.chains.evm, self.seen),
                self._blocks(self.chains.btc, self.btc_seen),
                *([] if self.automine else [wait_until(self._mine, timeout=10**9, interval=0.005)]),
            )

        task = asyncio.create_task(both())
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def lp_state(lp: Party, swap_id: str, state: str) -> float | None:
    try:
        view = lp.store().get(swap_id)
    except Exception:  # noqa: BLE001 - not accepted yet
        return None
    return next((a.at for a in view.actions if a.to_state == state), None) if view.swap.state == state else None


def unfinished(trader: Any) -> int:
    with Session(trader.store.engine) as session:
        return len(session.exec(select(Swap.id).where(Swap.state.not_in(list(m.TERMINAL)))).all())


def lp_claimed(lp: Party) -> set[str]:
    """Ids of the swaps the LP has claimed, in one query (polled while 1,000 swaps run)."""
    with Session(lp.store().engine) as session:
        return set(session.exec(select(Swap.id).where(Swap.state == m.CLAIMED)))


async def sequential(
    chains: Chains, trader: Any, lp: Party, count: int, watch: HeadWatch, timeline: list[list[tuple[str, str, float]]] | None = None
) -> tuple[list[float], list[float], list[float], float]:
    htlc = EvmHtlc(chains.evm, chains.htlc)
    e2e, reaction, to_mempool = [], [], []
    cpu0 = cpu_seconds(lp.proc.popen.pid)
    for _ in range(count):
        started = time.time()
        view = await trader.start_swap(lp.url, SELL, BUY)
        await trader.engine.run(asyncio.Event(), only={view.swap.id})
        done = trader.store.get(view.swap.id)
        if done.swap.state != m.CLAIMED:
            raise SystemExit(f"swap {view.swap.id} ended {done.swap.state}: {done.swap.last_error}")
        claimed_at = await wait_until(lambda: lp_state(lp, view.swap.id, m.CLAIMED), timeout=60, what="LP claimed")  # noqa: B023 - awaited here
        e2e.append(claimed_at - started)
        lp_view = lp.store().get(view.swap.id)
        if timeline is not None:
            steps = [(a.at, "trader", a.to_state) for a in done.actions] + [(a.at, "lp", a.to_state) for a in lp_view.actions]
            timeline.append([(who, state, at - started) for at, who, state in sorted(steps)])
        intended = next(a.at for a in lp_view.actions if a.to_state == m.CLAIM_INTENDED)
        lp_leg = lp_view.leg(m.PARTICIPANT)
        (claim,) = [e for e in await htlc.events(lp_leg.watch_from or 0, swap_id=lp_leg.lock_ref) if isinstance(e, Claimed)]
        revealed = watch.seen[claim.where.block_number]
        reaction.append(intended - revealed)
        claim_tx = lp_view.leg(m.INITIATOR).spend_tx
        if watch.automine:
            out = await chains.btc.rpc.call("gettxout", claim_tx, 0, False)  # the LP's, unspent
            height = await chains.btc.height() - out["confirmations"] + 1 if out else None
            if height in watch.btc_seen:
                to_mempool.append(watch.btc_seen[height] - revealed)
        elif claim_tx in watch.in_mempool:
            to_mempool.append(watch.in_mempool[claim_tx] - revealed)
    return e2e, reaction, to_mempool, (cpu_seconds(lp.proc.popen.pid) - cpu0) / count


def print_timeline(runs: list[list[tuple[str, str, float]]]) -> None:
    """Median time since ``start_swap`` of each recorded state change, both parties merged."""
    shapes = collections.Counter(tuple((who, state) for who, state, _ in run) for run in runs)
    shape = list(shapes.most_common(1)[0][0])  # the parties' steps may interleave either way
    same = [run for run in runs if [(who, state) for who, state, _ in run] == shape]
    print(f"timeline, median over the {len(same)} of {len(runs)} swaps whose steps came in the usual order:")
    previous = 0.0
    for n, (who, state) in enumerate(shape):
        at = statistics.median(run[n][2] for run in same)
        print(f"  {at * 1000:7.1f} ms  (+{(at - previous) * 1000:5.1f})  {who:<6} {state}")
        previous = at


async def concurrent(chains: Chains, traders: list[Any], lp: Party, count: int, cap: float) -> tuple[float, int, int, float, float]:
    """Start ``count`` swaps at once across the traders; returns (seconds, claimed both sides,
    unfinished, LP CPU s/swap, this process's CPU s/swap)."""
    cpu0, own0 = cpu_seconds(lp.proc.popen.pid), time.process_time()
    started = time.perf_counter()
    ids: list[list[str]] = [[] for _ in traders]
    for n in range(count):
        view = await traders[n % len(traders)].start_swap(lp.url, SELL, BUY)
        ids[n % len(traders)].append(view.swap.id)
    stop = asyncio.Event()
    # Each trader's engine steps all its swaps, as the LP's does (``only=`` re-reads every listed
    # swap on each pass, which is meant for one swap in `swap start`).
    runs = [asyncio.create_task(t.engine.run(stop)) for t in traders]

    wanted = {i for group in ids for i in group}

    def lp_done() -> bool:
        return wanted <= lp_claimed(lp)

    try:
        await wait_until(lambda: all(not unfinished(t) for t in traders) and lp_done(), timeout=cap, interval=0.5, what="all swaps settled")
    except WaitTimeout:
        pass
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*runs, return_exceptions=True)
    lp_side = lp_claimed(lp)
    both = sum(1 for t, group in zip(traders, ids) for i in group if t.store.get(i).swap.state == m.CLAIMED and i in lp_side)
    lp_cpu = (cpu_seconds(lp.proc.popen.pid) - cpu0) / count
    return elapsed, both, count - both, lp_cpu, (time.process_time() - own0) / count


async def main(args: argparse.Namespace) -> None:
    # The miner here makes a block whenever a transaction waits, so a long run mines many
    # hundreds: count a block as 10 s (720 blocks for the trader's BTC lock) so no swap of the
    # 1,000 runs out of time by block count alone.
    swap_harness.TIMELOCK = {**swap_harness.TIMELOCK, "btc_seconds_per_block": 10}
    with tempfile.TemporaryDirectory(prefix="bench-swaps-") as tmp:
        root = Path(tmp)
        regtest, anvil = bitcoin_node(root / "regtest"), Anvil(root / "anvil")
        regtest.start()
        anvil.start()
        chains = await Chains.open(f"http://{regtest.host}:{regtest.port}", NODE_AUTH, anvil.url)
        lp = Party("lp", Identity.new(), root / "lp", chains, port=free_port())
        trader_ids = [Identity.new() for _ in range(TRADERS)]
        per_trader = -(-(args.start_concurrent + args.concurrent) // TRADERS) + 5
        try:
            await AnvilControls(chains.evm).set_balance(lp.who.address, 10_000 * ONE_ETH)
            for who in trader_ids:
                await AnvilControls(chains.evm).set_balance(who.address, 10 * ONE_ETH)
            payments = [(lp.who.btc.p2wpkh_script, ONE_BTC)]
            payments += [(who.btc.p2wpkh_script, 2 * SELL_SATS) for who in trader_ids for _ in range(per_trader)]
            payments += [(trader_ids[0].btc.p2wpkh_script, ONE_BTC // 10)]
            for start in range(0, len(payments), 500):  # keep each funding transaction standard-sized
                await chains.fund_btc(payments[start : start + 500])
            # The floor varies by 2x run to run (20-40 ms): its median over many samples keeps the ratio
            # from following one noisy figure.
            automine = args.btc_mining == "automine"
            await BitcoinDevnet(chains.btc).set_automine(automine)
            floors = [await floor_once(chains, trader_ids[0], lp.who, automine) for _ in range(FLOOR_SAMPLES)]
            async with HeadWatch(chains, automine).running() as watch:
                await start_lp(lp)
                traders = [await open_party(root / f"trader{i}", chains, who, LpClient(), POLL) for i, who in enumerate(trader_ids)]
                timeline: list[list[tuple[str, str, float]]] = []
                e2e, reaction, to_mempool, lp_cpu_seq = await sequential(chains, traders[0], lp, args.swaps, watch, timeline)
                floor = statistics.median(floors)
                print(
                    f"end-to-end over {args.swaps} sequential BTC->ETH swaps: median {statistics.median(e2e) * 1000:.0f} ms, "
                    f"p95 {pct(e2e, 95) * 1000:.0f} ms; floor (4 txs + mining, median of {FLOOR_SAMPLES}) {floor * 1000:.0f} ms "
                    f"(range {min(floors) * 1000:.0f}-{max(floors) * 1000:.0f}); "
                    f"ratio {statistics.median(e2e) / floor:.2f}x   [goal <= 3x floor]"
                )
                print(
                    f"relayer reaction (reveal block seen -> LP claim recorded, then broadcast): median "
                    f"{statistics.median(reaction) * 1000:.0f} ms, p95 {pct(reaction, 95) * 1000:.0f} ms, "
                    f"max {max(reaction) * 1000:.0f} ms   [goal <= poll {POLL * 1000:.0f} ms + 50 ms]"
                )
                if to_mempool:
                    where = "mined (automine)" if automine else "seen in the node's mempool"
                    print(
                        f"  ... to the LP's claim {where}: median {statistics.median(to_mempool) * 1000:.0f} ms, "
                        f"p95 {pct(to_mempool, 95) * 1000:.0f} ms, max {max(to_mempool) * 1000:.0f} ms "
                        f"({len(to_mempool)}/{len(reaction)} claims {'timed' if automine else 'caught before they were mined'})"
                    )
                print(f"LP CPU per swap (sequential): {lp_cpu_seq * 1000:.0f} ms")
                if args.timeline:
                    print_timeline(timeline)
            # Concurrent swaps' transactions share blocks: mined by polling the mempool.
            async with HeadWatch(chains, automine=False).running():
                size, best = min(args.start_concurrent, args.concurrent), 0
                while size:  # a warm-up level, then the goal
                    elapsed, both, left, lp_cpu, own_cpu = await concurrent(chains, traders, lp, size, args.cap)
                    verdict = "all finished" if left == 0 else f"{left} NOT finished within the {args.cap:.0f} s cap"
                    print(
                        f"{size} concurrent swaps ({TRADERS} traders, one LP): {elapsed:.1f} s, {both} claimed on both sides, "
                        f"{verdict}; LP CPU {lp_cpu * 1000:.0f} ms/swap, trader engines + bench {own_cpu * 1000:.0f} ms/swap",
                        flush=True,
                    )
                    if left:
                        break
                    best = size
                    if size >= args.concurrent:
                        break
                    size = args.concurrent
                if args.concurrent:
                    print(f"largest concurrency that all finished within the {args.cap:.0f} s cap: {best}   [goal: {args.concurrent} all finish, none lost]")
            for trader in traders:
                await trader.close()
        finally:
            if lp.alive():
                lp.proc.popen.terminate()
                await reap(lp.proc)
            await chains.close()
            anvil.stop()
            regtest.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--swaps", type=int, default=50, help="sequential swaps for end-to-end and reaction")
    parser.add_argument("--concurrent", type=int, default=1000, help="the concurrency goal")
    parser.add_argument("--start-concurrent", type=int, default=100, help="warm-up concurrency level run before the goal")
    parser.add_argument("--timeline", action="store_true", help="print the median time of each state change of a sequential swap")
    parser.add_argument(
        "--btc-mining", choices=["automine", "poll"], default="automine", help="how Bitcoin blocks are mined for the floor and the sequential swaps (see above)"
    )
    parser.add_argument("--cap", type=float, default=1200.0, help="seconds allowed for one concurrency level")
    asyncio.run(main(parser.parse_args()))
