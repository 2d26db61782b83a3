"""Swap crash tests: the LP daemon and the traders' processes SIGKILLed at random points, restarted.

Every process is a real ``bridgectl`` (``relayer run lp``, ``swap start``, ``swap status ID
--watch`` to resume) on a private regtest node and Anvil.  Kills are of two kinds, mixed
by a seeded RNG (the seed is printed; rerun with ``SWAP_CRASH_SEED=<seed>``): a SIGKILL
from here after a random delay, and a process killing itself at a named point of the swap
(``swap_harness.CRASH_POINTS``, e.g. after a lock's broadcast, before it is recorded).
A killed process is restarted on the same data dir.  At the end every swap must be
claimed or refunded on both sides (or failed before anything was locked), each leg's fate
on chain must be what both parties recorded, no HTLC may hold coins, and each party's
balances must equal the start plus what its swaps say minus the fees of the transactions
it sent (BTC fees from the transactions, EVM gas x effective gas price from receipts).
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge.core.errors import NotFound
from bridge.swaps import models as m
from bridge.swaps.protocol import LiquidityProvider, LpClient, describe
from bridge.core.testing import WaitTimeout, wait_until
from devnets.anvil import Anvil
from devnets.process import free_port
from swap_harness import (
    CRASH_POINTS,
    NODE_AUTH,
    ONE_BTC,
    ONE_ETH,
    Books,
    Chains,
    Identity,
    Party,
    Snapshot,
    automine,
    bitcoin_node,
    open_party,
    reap,
    reconcile,
    sigkill,
    start_lp,
)
from devnets.controls import AnvilControls, BitcoinDevnet

#: (sell, buy) of each trader slot, cycled: both directions for BTC/ETH and an ERC-20.
TRADES = [("btc:0.05", "eth:0.75"), ("eth:0.3", "btc:0.02"), ("tusd:120", "btc:0.002"), ("btc:0.04", "eth:0.6")]


def phase(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """A private regtest node and Anvil: these tests mine hundreds of blocks and move EVM time."""
    bitcoin = bitcoin_node(tmp_path_factory.mktemp("crash-regtest"))
    bitcoin.start()
    anvil = Anvil(tmp_path_factory.mktemp("crash-anvil"))
    anvil.start()
    yield bitcoin, anvil
    anvil.stop()
    bitcoin.stop()


@pytest.fixture
async def chains(nodes):
    bitcoin, anvil = nodes
    opened = await Chains.open(f"http://{bitcoin.host}:{bitcoin.port}", NODE_AUTH, anvil.url)
    yield opened
    await opened.close()


@dataclass
class Slot:
    """One trader running its swaps one after the other."""

    party: Party
    sell: str
    buy: str
    current: str | None = None  # the swap its process works on; None: start a new one
    known: set[str] = field(default_factory=set)
    starting: bool = False  # the process is `swap start` (the id is read from its database)

    def new_swap_id(self) -> str | None:
        fresh = [v.swap.id for v in self.party.store().list() if v.swap.id not in self.known]
        return fresh[0] if fresh else None


@dataclass
class Chaos:
    rng: random.Random
    lp: Party
    slots: list[Slot]
    kills_wanted: int
    kills: list[str] = field(default_factory=list)
    kill_at: dict[int, float] = field(default_factory=dict)  # pid -> monotonic time of its planned SIGKILL

    def crash_point(self, lp: bool) -> str | None:
        """Half the processes get a named point (the LP at its 1st..3rd hit), half a timed kill."""
        if len(self.kills) >= self.kills_wanted or self.rng.random() < 0.5:
            return None
        point = self.rng.choice(CRASH_POINTS)
        return f"{point}#{self.rng.randint(1, 3)}" if lp else point

    def plan_kill(self, party: Party) -> None:
        if party.proc is not None and party.proc.crash_at is None and len(self.kills) < self.kills_wanted:
            self.kill_at[party.proc.popen.pid] = time.monotonic() + self.rng.uniform(1.0, 6.0)

    def ended(self, party: Party) -> int | None:
        """The exit code of the party's process if it ended (a kill is logged and counted)."""
        proc = party.proc
        if proc is None or proc.returncode is None:
            return None
        self.kill_at.pop(proc.popen.pid, None)
        if proc.returncode == -signal.SIGKILL:
            how = f"at {proc.crash_at}" if proc.crashed_at_point() else f"after {time.monotonic() - proc.started:.1f}s"
            self.kills.append(f"{party.name} {how}")
            phase(f"kill {len(self.kills)}: {party.name} SIGKILLed {how}")
        party.proc = None
        return proc.returncode

    async def restart_lp(self) -> None:
        code = self.ended(self.lp)
        if code is None:
            return
        if code != -signal.SIGKILL:
            raise AssertionError(f"LP exited with {code} without being killed; log {self.lp.log}:\n{self.lp.tail()}")
        await start_lp(self.lp, self.crash_point(lp=True))
        self.plan_kill(self.lp)

    async def tend(self, slot: Slot, more_swaps: bool) -> None:
        party = slot.party
        if party.alive():
            return
        code = self.ended(party)
        if slot.starting:
            slot.current = slot.new_swap_id()  # None: killed before the swap was recorded
            slot.starting = False
        if code in (0, 1, 3) and slot.current is not None:
            state = party.store().get(slot.current).swap.state
            if code == 3 or state not in m.TERMINAL:
                raise AssertionError(f"{party.name} exited {code} with swap {slot.current} {state}; log {party.log}:\n{party.tail()}")
            phase(f"{party.name}: swap {slot.current} {state}")
            slot.known.add(slot.current)
            slot.current = None
        elif code is not None and code != -signal.SIGKILL:
            raise AssertionError(f"{party.name} exited {code}; log {party.log}:\n{party.tail()}")
        if slot.current is not None:
            await party.run(["swap", "status", slot.current, "--watch"], self.crash_point(lp=False))
        elif more_swaps:
            slot.starting = True
            await party.run(["swap", "start", "--sell", slot.sell, "--buy", slot.buy, "--lp", self.lp.url], self.crash_point(lp=False))
        else:
            return
        self.plan_kill(party)

    def fire_due_kills(self) -> None:
        now = time.monotonic()
        for party in [self.lp, *(s.party for s in self.slots)]:
            if party.alive() and self.kill_at.get(party.proc.popen.pid, float("inf")) <= now:
                del self.kill_at[party.proc.popen.pid]
                sigkill(party.proc)

    def busy(self) -> bool:
        return any(s.party.alive() or s.current is not None for s in self.slots)

    def something_to_do(self) -> bool:
        now = time.monotonic()
        return any(
            (p.proc is not None and p.proc.returncode is not None) or self.kill_at.get(p.proc.popen.pid if p.proc else -1, float("inf")) <= now
            for p in [self.lp, *(s.party for s in self.slots)]
        )


async def make_parties(tmp_path: Path, chains: Chains, traders: int) -> tuple[Party, list[Slot]]:
    from htlc.evm import Erc20

    lp = Party("lp", Identity.new(), tmp_path / "lp", chains, port=free_port())
    slots = [Slot(Party(f"trader{i}", Identity.new(), tmp_path / f"trader{i}", chains), *TRADES[i % len(TRADES)]) for i in range(traders)]
    payments = [(lp.who.btc.p2wpkh_script, 5 * ONE_BTC)]
    await AnvilControls(chains.evm).set_balance(lp.who.address, 500 * ONE_ETH)
    token = Erc20(chains.evm, chains.tusd)
    for slot in slots:
        asset = slot.sell.split(":")[0]
        await AnvilControls(chains.evm).set_balance(slot.party.who.address, 50 * ONE_ETH if asset == "eth" else ONE_ETH // 2)
        if asset == "btc":
            payments.append((slot.party.who.btc.p2wpkh_script, 3 * ONE_BTC))
        if asset == "tusd":
            await token.mint(chains.deployer, slot.party.who.address, 100_000 * 10**6)
    await chains.fund_btc(payments)
    return lp, slots


def seed() -> int:
    return int(os.environ.get("SWAP_CRASH_SEED") or random.SystemRandom().randrange(10**9))


async def run_chaos(tmp_path: Path, chains: Chains, kills_wanted: int, traders: int, budget: float) -> dict:
    chosen = seed()
    phase(f"seed {chosen} (rerun with SWAP_CRASH_SEED={chosen}); data dirs and logs under {tmp_path}")
    lp, slots = await make_parties(tmp_path, chains, traders)
    books = Books(chains, [lp, *(s.party for s in slots)])
    start = await books.snapshot()
    chaos = Chaos(random.Random(chosen), lp, slots, kills_wanted)
    deadline = time.monotonic() + budget
    async with automine(chains.btc):
        try:
            phase("LP daemon starting")
            await start_lp(lp, chaos.crash_point(lp=True))
            chaos.plan_kill(lp)
            while True:
                if time.monotonic() > deadline:
                    raise AssertionError(f"chaos did not finish in {budget}s ({len(chaos.kills)} kills); data under {tmp_path}")
                chaos.fire_due_kills()
                await chaos.restart_lp()
                more = len(chaos.kills) < kills_wanted
                for slot in slots:
                    await chaos.tend(slot, more)
                if not more and not chaos.busy():
                    break
                await _tick(chaos)
            phase(f"traders done after {len(chaos.kills)} kills; waiting for the LP to settle its side")
            await wait_until(lambda: _lp_settled(chaos), timeout=180, interval=0.2, what=f"LP swaps all finished (log {lp.log})")
        finally:
            await _stop(lp, *(s.party for s in slots))
        # Let any last transaction of the settle phase be mined before reading balances.
        await wait_until(lambda: _mempool_empty(chains), timeout=30, what="bitcoin mempool empty")
    phase("reconciling the chains with both parties' records")
    report = await reconcile(books, start, lp, [s.party for s in slots])
    report["kills"] = chaos.kills
    phase(f"{len(chaos.kills)} kills; outcomes {report['outcomes']}; lost {report['lost']}")
    return report


async def _tick(chaos: Chaos) -> None:
    try:
        await wait_until(chaos.something_to_do, timeout=0.5, interval=0.05)
    except WaitTimeout:
        pass  # nothing happened in half a second: look again (and re-check the deadline)


async def _lp_settled(chaos: Chaos) -> bool:
    await chaos.restart_lp()
    views = chaos.lp.store().list()
    return all(v.swap.state in m.TERMINAL for v in views)


async def _mempool_empty(chains: Chains) -> bool:
    return not await chains.btc.rpc.call("getrawmempool")


def _assert_books(report: dict, kills_wanted: int) -> None:
    assert len(report["kills"]) >= kills_wanted, report["kills"]
    assert report["lost"] == {"btc": 0, "eth": 0, "tusd": 0}
    assert report["btc_fees"] > 0 and report["eth_fees"] > 0  # the fee accounting saw the swaps' transactions
    unfinished = {k: v for k, v in report["outcomes"].items() if k.split("/")[0] not in m.TERMINAL}
    assert not unfinished, report["outcomes"]


async def test_swaps_survive_sigkill_at_random_points(tmp_path, chains):
    report = await run_chaos(tmp_path, chains, kills_wanted=20, traders=4, budget=420)
    _assert_books(report, 20)


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_swaps_survive_sigkill_soak(tmp_path, chains):
    report = await run_chaos(tmp_path, chains, kills_wanted=200, traders=4, budget=3600)
    _assert_books(report, 200)


async def _lp_and_trader(tmp_path: Path, chains: Chains) -> tuple[Party, Party, Books, Snapshot]:
    """An LP with 10 ETH and a trader with 1 BTC (and gas), and the chains' balances before they trade."""
    lp = Party("lp", Identity.new(), tmp_path / "lp", chains, port=free_port())
    trader = Party("trader", Identity.new(), tmp_path / "trader", chains)
    await AnvilControls(chains.evm).set_balance(lp.who.address, 10 * ONE_ETH)
    await AnvilControls(chains.evm).set_balance(trader.who.address, ONE_ETH // 10)
    await chains.fund_btc([(trader.who.btc.p2wpkh_script, ONE_BTC)])
    books = Books(chains, [lp, trader])
    return lp, trader, books, await books.snapshot()


async def _stop(*parties: Party) -> None:
    """SIGTERM each party's process still running and wait for it to exit."""
    for party in parties:
        if party.alive():
            os.kill(party.proc.popen.pid, signal.SIGTERM)
            await reap(party.proc)


async def _run_until_exit(party: Party, args: list[str], crash_at: str | None = None, timeout: float = 120) -> int:
    proc = await party.run(args, crash_at)
    code = await reap(proc, timeout)
    if crash_at is not None:
        assert proc.crashed_at_point(), f"{party.name} did not die at {crash_at} (exit {code}); log {party.log}:\n{party.tail()}"
        phase(f"{party.name} SIGKILLed itself at {crash_at}")
    return code


async def _mine_to(chains: Chains, height: int) -> bool:
    if await chains.btc.height() < height:
        await BitcoinDevnet(chains.btc).mine(min(25, height - await chains.btc.height()))
    return await chains.btc.height() >= height


def _state_is(party: Party, swap_id: str, state: str):
    try:
        view = party.store().get(swap_id)
    except NotFound:
        return None
    return view if view.swap.state == state else None


async def test_trader_killed_before_telling_the_lp_refunds_after_expiry(tmp_path, chains):
    """Killed right after broadcasting its lock (it tells the LP once the lock is out), the trader
    never tells the LP; the LP gives up, the restarted trader refunds at expiry (killed once more
    just after broadcasting the refund)."""
    phase(f"data dirs and logs under {tmp_path}")
    lp, trader, books, start = await _lp_and_trader(tmp_path, chains)
    async with automine(chains.btc):
        await start_lp(lp)
        try:
            await _run_until_exit(trader, ["swap", "start", "--sell", "btc:0.05", "--buy", "eth:0.75", "--lp", lp.url], "lock.after_broadcast")
            (view,) = trader.store().list()
            assert view.swap.state == m.INITIATOR_LOCK_INTENDED and not view.swap.lp_notified
            phase(f"mining to the trader's expiry, height {view.leg(m.INITIATOR).expiry}")
            await wait_until(lambda: _mine_to(chains, view.leg(m.INITIATOR).expiry), timeout=120, what="BTC expiry height")
            failed = await wait_until(lambda: _state_is(lp, view.swap.id, m.FAILED), timeout=60, what="LP gave up on the swap")
            assert "did not lock in time" in failed.swap.last_error
            await _run_until_exit(trader, ["swap", "status", view.swap.id, "--watch"], "spend.after_broadcast")
            assert await _run_until_exit(trader, ["swap", "status", view.swap.id, "--watch"]) == 0, trader.tail()
        finally:
            os.kill(lp.proc.popen.pid, signal.SIGTERM)
            await reap(lp.proc)
        await wait_until(lambda: _mempool_empty(chains), timeout=30, what="bitcoin mempool empty")
    report = await reconcile(books, start, lp, [trader])
    assert report["outcomes"] == {"refunded/failed": 1} and report["lost"] == {"btc": 0, "eth": 0, "tusd": 0}
    # The books are exact: one satoshi more at the start is a difference they name.
    skewed = Snapshot(start.btc_height, start.evm_block, {**start.balances, "trader": {**start.balances["trader"], "btc": start.balances["trader"]["btc"] + 1}})
    with pytest.raises(AssertionError, match="trader btc: balance moved by"):
        await reconcile(books, skewed, lp, [trader])
    assert [a.to_state for a in trader.store().get(view.swap.id).actions][-2:] == [m.REFUND_INTENDED, m.REFUNDED]


async def test_both_refund_when_the_trader_stays_down_past_the_lps_expiry(tmp_path, chains):
    """Killed after auditing the LP's lock (before claiming), the trader stays down past the LP's
    expiry: the LP refunds (killed mid-way and restarted), and the restarted trader must not claim
    too late but refund its own lock at its expiry."""
    phase(f"data dirs and logs under {tmp_path}")
    lp, trader, books, start = await _lp_and_trader(tmp_path, chains)
    async with automine(chains.btc):
        await start_lp(lp, "spend.before_broadcast")
        try:
            await _run_until_exit(trader, ["swap", "start", "--sell", "btc:0.05", "--buy", "eth:0.75", "--lp", lp.url], "recorded.participant_locked")
            (view,) = trader.store().list()
            lp_leg = view.leg(m.PARTICIPANT)
            assert view.swap.state == m.PARTICIPANT_LOCKED and lp_leg.lock_ref
            now = (await chains.evm.head()).timestamp
            phase(f"moving EVM time {lp_leg.expiry - now + 1}s to the LP's expiry")
            await chains.increase_evm_time(lp_leg.expiry - now + 1)
            assert await reap(lp.proc, 60) == -signal.SIGKILL and lp.proc.crashed_at_point()
            phase("LP SIGKILLed itself before broadcasting its refund; restarting it")
            await start_lp(lp)
            await wait_until(lambda: _state_is(lp, view.swap.id, m.REFUNDED), timeout=60, what="LP refunded")
            resumed = await trader.run(["swap", "status", view.swap.id, "--watch"])
            phase(f"mining to the trader's expiry, height {view.leg(m.INITIATOR).expiry}")
            await wait_until(lambda: _mine_to(chains, view.leg(m.INITIATOR).expiry), timeout=120, what="BTC expiry height")
            assert await reap(resumed, 120) == 0, trader.tail()
        finally:
            await _stop(lp, trader)
        await wait_until(lambda: _mempool_empty(chains), timeout=30, what="bitcoin mempool empty")
    report = await reconcile(books, start, lp, [trader])
    assert report["outcomes"] == {"refunded/refunded": 1} and report["lost"] == {"btc": 0, "eth": 0, "tusd": 0}
    assert m.CLAIM_INTENDED not in [a.to_state for a in trader.store().get(view.swap.id).actions]


async def test_trader_refunds_the_lock_the_lp_never_claimed_and_the_lp_ends_claim_lost(tmp_path, chains):
    """The LP dies right after recording its claim of the trader's BTC (the secret seen) and stays
    down past the trader's expiry: the trader, its claim of the LP's ETH confirmed, refunds its own
    lock and ends claimed; the LP, back, finds its claim impossible and ends claim_lost."""
    phase(f"data dirs and logs under {tmp_path}")
    lp, trader, books, start = await _lp_and_trader(tmp_path, chains)
    async with automine(chains.btc):
        await start_lp(lp, "recorded.claim_intended")
        try:
            started = await trader.run(["swap", "start", "--sell", "btc:0.05", "--buy", "eth:0.75", "--lp", lp.url])
            assert await reap(lp.proc, 60) == -signal.SIGKILL and lp.proc.crashed_at_point()
            (view,) = trader.store().list()
            phase(f"LP SIGKILLed itself after recording its claim; mining to the trader's expiry, height {view.leg(m.INITIATOR).expiry}")
            await wait_until(lambda: _mine_to(chains, view.leg(m.INITIATOR).expiry), timeout=120, what="BTC expiry height")
            assert await reap(started, 120) == 0, trader.tail()
            await start_lp(lp)
            await wait_until(lambda: _state_is(lp, view.swap.id, m.CLAIM_LOST), timeout=60, what="LP gave up its claim")
        finally:
            await _stop(lp, trader)
        await wait_until(lambda: _mempool_empty(chains), timeout=30, what="bitcoin mempool empty")
    report = await reconcile(books, start, lp, [trader])
    assert report["outcomes"] == {"claimed/claim_lost": 1} and report["lost"] == {"btc": 0, "eth": 0, "tusd": 0}
    final = trader.store().get(view.swap.id)
    assert [a.to_state for a in final.actions][-2:] == [m.REFUND_INTENDED, m.CLAIMED]
    assert (final.leg(m.INITIATOR).outcome, final.leg(m.PARTICIPANT).outcome) == ("refunded", "claimed")


class InProcessLp(LpClient):
    """The trader's LP port answered by a ``LiquidityProvider`` in this process, so the test
    decides when the LP's engine steps (the HTTP hop is all it skips)."""

    def __init__(self, provider: LiquidityProvider) -> None:
        super().__init__()
        self.provider = provider

    async def _call(self, method: str, url: str, body: dict | None = None) -> dict:
        parts = url.split("://", 1)[1].split("/")[1:]
        if method == "POST" and parts == ["swaps"]:
            return await self.provider.accept(body or {})
        if method == "POST" and parts[-1] == "lock":
            return self.provider.lock_notice(parts[1], body or {})
        return describe(self.provider.store.get(parts[1]))


async def test_a_recorded_btc_lock_keeps_its_coins_when_its_broadcast_is_lost(tmp_path, chains):
    """The LP records swap A's signed BTC lock, its broadcast is lost (a crash or a dropped reply
    leaves the same state), then it locks for swap B: A's lock must still go out."""
    from bridge.core.errors import ChainUnavailable

    lp_who, a_who, b_who = Identity.new(), Identity.new(), Identity.new()
    await chains.fund_btc([(lp_who.btc.p2wpkh_script, ONE_BTC)])  # one coin: what the locks compete for
    for who in (lp_who, a_who, b_who):
        await AnvilControls(chains.evm).set_balance(who.address, 10 * ONE_ETH)
    lp = await open_party(tmp_path / "lp", chains, lp_who)
    provider = LiquidityProvider(lp.store, lp.legs, lp.assets, lp.config.markets(), lp.config.policy())
    traders = [await open_party(tmp_path / name, chains, who, InProcessLp(provider)) for name, who in (("a", a_who), ("b", b_who))]
    try:
        async with automine(chains.btc):
            ids = []
            for trader in traders:
                view = await trader.start_swap("http://lp.invalid/", "eth:0.3", "btc:0.02")
                await wait_until(lambda: _notified(trader, view.swap.id), timeout=30, what="trader locked and told the LP")  # noqa: B023
                ids.append(view.swap.id)
            lost = []

            async def first_broadcast_lost(view, leg):
                lost.append(view.swap.id)
                raise ChainUnavailable("reply lost (injected)")

            lp.engine.faults.at("lock.before_broadcast", first_broadcast_lost, when=lambda leg, **_: leg.chain == "bitcoin", times=1)
            assert (await lp.engine.step(ids[0])).swap.state == m.PARTICIPANT_LOCK_INTENDED and lost == [ids[0]]
            await lp.engine.step(ids[1])

            async def a_locked() -> bool:
                lp.store.wake(ids[0])
                return (await lp.engine.step(ids[0])).swap.state == m.PARTICIPANT_LOCKED

            await wait_until(a_locked, timeout=20, what=f"swap A's recorded lock broadcast ({lp.store.get(ids[0]).swap.last_error})")
    finally:
        for party in (lp, *traders):
            await party.close()


async def _notified(trader, swap_id: str) -> bool:
    view = await trader.engine.step(swap_id)
    return view.swap.lp_notified
