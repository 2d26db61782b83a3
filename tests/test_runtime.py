"""The runtime of long operations over fakes: no chain, no daemon (as ``test_indexer.py`` drives the
indexer over a fake chain).  Due ordering, bounded concurrency, backoff on errors, wake-ups by a
nudge and by a block, graceful stop, supervision, and the store pattern's history with attempts."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from bridge.core.testing import wait_until
from sqlalchemy import inspect, text

from bridge.core.db import make_engine
from bridge.core.dbapi import Db
from bridge.core.errors import Conflict, NotFound, RpcError
from bridge.core.retry import RetryPolicy
from bridge.runtime import OpStore, OpTable, Runtime, Wait, record, transition

QUICK = RetryPolicy(base_delay=0.01, max_delay=0.04, multiplier=2.0, jitter=0.0)


@dataclass
class FakeOps:
    """Operations in memory: a due time per id; ``behave[id]`` decides what each step does."""

    due_at: dict[str, float] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    retries_of: dict[str, int] = field(default_factory=dict)
    behave: dict[str, object] = field(default_factory=dict)
    stepped: list[str] = field(default_factory=list)
    deferred: list[tuple[str, str, float, bool]] = field(default_factory=list)
    in_flight: set[str] = field(default_factory=set)
    most_in_flight: int = 0
    overlapped: bool = False
    #: How often the runtime asked what is due (each pass of its loop asks once).
    due_calls: int = 0

    def add(self, op_id: str, due_in: float = 0.0, behave: object = None) -> None:
        self.due_at[op_id] = time.time() + due_in
        self.behave[op_id] = behave

    def due(self, *, limit: int, among=None) -> list[str]:
        self.due_calls += 1
        now = time.time()
        ids = sorted((t, i) for i, t in self.due_at.items() if t <= now and i not in self.done and (among is None or i in among))
        return [i for _, i in ids][:limit]

    async def step(self, op_id: str) -> None:
        if op_id in self.in_flight:
            self.overlapped = True
        self.in_flight.add(op_id)
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        self.stepped.append(op_id)
        # Stepping makes it not due (a real step records a transition or is deferred).
        self.due_at[op_id] = time.time() + 3600
        try:
            behave = self.behave.get(op_id)
            if callable(behave):
                result = behave(op_id)
                if asyncio.iscoroutine(result):
                    await result
            else:
                self.done.add(op_id)
        finally:
            self.in_flight.discard(op_id)

    def defer(self, op_id: str, reason: str, delay: float, count_retry: bool = True) -> None:
        self.deferred.append((op_id, reason, delay, count_retry))
        if count_retry:
            self.retries_of[op_id] = self.retries_of.get(op_id, 0) + 1
        self.due_at[op_id] = time.time() + delay

    def wake(self, op_ids) -> None:
        for i in op_ids:
            if i not in self.done:
                self.due_at[i] = 0.0

    def retries(self, op_id: str) -> int:
        return self.retries_of.get(op_id, 0)

    def finished(self, op_ids) -> bool:
        return all(i in self.done for i in op_ids)


class FakeChain:
    """A chain whose node announces blocks (``mine``)."""

    def __init__(self) -> None:
        self.tip = 100
        self._new = asyncio.Event()

    async def height(self) -> int:
        return self.tip

    async def wait_for_block(self, height: int, timeout: float) -> int | None:
        if self.tip == height:
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), timeout)
            except asyncio.TimeoutError:
                return None
        return self.tip

    def announced_head(self):
        return None

    def mine(self) -> None:
        self.tip += 1
        self._new.set()


async def until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    await wait_until(predicate, timeout=timeout, interval=0.005, what=what)


async def run_until_finished(rt: Runtime, ids, timeout: float = 5.0) -> None:
    await asyncio.wait_for(rt.run(asyncio.Event(), only=set(ids)), timeout)


# --- scheduling ------------------------------------------------------------------------------


async def test_due_operations_step_longest_waiting_first_and_not_before_due():
    ops = FakeOps()
    ops.add("c", due_in=-1.0)
    ops.add("a", due_in=-3.0)
    ops.add("b", due_in=-2.0)
    ops.add("later", due_in=0.3)
    rt = Runtime(ops, max_concurrency=1, poll_interval=0.02)
    started = time.time()
    await run_until_finished(rt, ["a", "b", "c", "later"])
    assert ops.stepped == ["a", "b", "c", "later"]
    assert time.time() - started >= 0.25  # "later" waited for its due time


async def test_concurrency_is_bounded_and_one_operation_steps_once_at_a_time():
    ops = FakeOps()

    async def slow(op_id: str) -> None:
        await asyncio.sleep(0.03)
        if ops.stepped.count(op_id) >= 2:
            ops.done.add(op_id)
        else:
            ops.wake([op_id])  # due again at once, while its first step still runs

    for n in range(10):
        ops.add(f"op{n}", behave=slow)
    rt = Runtime(ops, max_concurrency=3, poll_interval=0.01)
    await run_until_finished(rt, [f"op{n}" for n in range(10)])
    assert ops.most_in_flight == 3 and not ops.overlapped
    assert sorted(ops.stepped) == sorted([f"op{n}" for n in range(10)] * 2)


async def test_errors_are_recorded_and_retried_with_the_retry_policys_backoff():
    ops = FakeOps()
    failures = {"n": 0}

    def flaky(op_id: str) -> None:
        if failures["n"] < 3:
            failures["n"] += 1
            raise RpcError("node hiccup") if failures["n"] != 2 else ValueError("bad answer")
        ops.done.add(op_id)

    ops.add("x", behave=flaky)
    rt = Runtime(ops, backoff=QUICK, poll_interval=0.01)
    await run_until_finished(rt, ["x"])
    assert [(d[2], d[3]) for d in ops.deferred] == [(0.01, True), (0.02, True), (0.04, True)]
    reasons = [d[1] for d in ops.deferred]
    assert reasons[1] == "error (retrying): ValueError: bad answer" and "node hiccup" in reasons[0]
    assert ops.retries("x") == 3 and "x" in ops.done


async def test_a_wait_defers_by_the_poll_interval_without_counting_a_retry():
    ops = FakeOps()

    def waits(op_id: str) -> None:
        raise Wait("0/1 confirmations")

    ops.add("w", behave=waits)
    rt = Runtime(ops, poll_interval=5.0, idle_recheck=60.0)
    await rt.step("w")
    assert ops.deferred == [("w", "waiting: 0/1 confirmations", 5.0, False)] and ops.retries("w") == 0

    def on_event(op_id: str) -> None:
        raise Wait("the secret", on_event=True)

    ops.behave["w"] = on_event
    await rt.step("w")
    assert ops.deferred[-1][2] == 5.0  # no observer delivers events: polled
    rt._observing = 1
    await rt.step("w")
    assert ops.deferred[-1][2] == 60.0  # an observer will wake it: only re-checked now and then


async def test_a_nudge_wakes_a_waiting_operation_and_reruns_one_whose_step_was_under_way():
    ops = FakeOps()
    gate = asyncio.Event()
    calls = {"n": 0}

    async def waits_for_news(op_id: str) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            await gate.wait()  # looked before the news came
            raise Wait("nothing yet", delay=3600)
        ops.done.add(op_id)

    ops.add("n", behave=waits_for_news)
    rt = Runtime(ops, poll_interval=3600)
    task = asyncio.create_task(rt.run(asyncio.Event(), only={"n"}))
    await until(lambda: "n" in rt.running, what="the first step")
    rt.nudge(["n"])  # the news, during the step
    gate.set()
    await asyncio.wait_for(task, 5)
    assert ops.stepped == ["n", "n"]


async def test_a_nudge_wakes_the_loop_at_once():
    ops = FakeOps()
    rt = Runtime(ops, poll_interval=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(rt.run(stop))
    await until(lambda: ops.due_calls >= 2, 2, "the loop's first pass, now idle for an hour")
    ops.add("new")
    rt.nudge(["new"])
    await until(lambda: ops.stepped == ["new"], 2, "the nudged step")
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_a_new_block_wakes_the_operations_waiting_for_one():
    ops = FakeOps()
    chain = FakeChain()
    blocks: list[str] = []

    async def on_block(name: str, announced) -> None:
        blocks.append(name)

    def confirmations(op_id: str) -> None:
        if chain.tip < 102:
            raise Wait(f"height {chain.tip}", on_block="x")
        ops.done.add(op_id)

    ops.add("b", behave=confirmations)
    rt = Runtime(ops, chains={"x": chain}, on_block=on_block, poll_interval=3600)
    task = asyncio.create_task(rt.run(asyncio.Event(), only={"b"}))
    # The follower's start-up look ("what happened while we were away") counts as a block.
    await until(lambda: blocks == ["x"] and ops.stepped and len(ops.deferred) == len(ops.stepped), what="the first wait")
    await asyncio.sleep(0.05)
    seen = len(ops.stepped)
    for n in (seen + 1, seen + 2):
        chain.mine()
        await until(lambda n=n: len(ops.stepped) == n, 2, f"step {n}, woken by the block")
    await asyncio.wait_for(task, 2)
    assert "b" in ops.done and blocks == ["x", "x", "x"]


async def test_a_block_during_the_step_makes_the_wait_end_at_once():
    ops = FakeOps()
    rt = Runtime(ops, poll_interval=3600)

    async def block_comes_meanwhile(op_id: str) -> None:
        await rt.new_block("x")
        raise Wait("confirmations", on_block="x")

    ops.add("r", behave=block_comes_meanwhile)
    await rt.step("r")
    assert ops.deferred[-1][2] == 0.0 and "r" not in rt._block_waiters.get("x", set())


async def test_stop_lets_the_steps_in_flight_finish():
    ops = FakeOps()
    stop = asyncio.Event()
    finished: list[str] = []

    async def long_step(op_id: str) -> None:
        stop.set()  # asked to stop while this step runs
        await asyncio.sleep(0.1)
        finished.append(op_id)
        ops.done.add(op_id)

    ops.add("s", behave=long_step)
    ops.add("t", due_in=0.0, behave=long_step)
    rt = Runtime(ops, max_concurrency=1, poll_interval=0.01)
    await asyncio.wait_for(rt.run(stop), 5)
    assert finished == ["s"] and not rt.running  # finished, and nothing new started after the stop


async def test_cancelling_run_cancels_the_steps_like_a_crash():
    ops = FakeOps()
    ended: list[str] = []

    async def forever(op_id: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append(op_id)

    ops.add("f", behave=forever)
    rt = Runtime(ops, poll_interval=0.01)
    task = asyncio.create_task(rt.run(asyncio.Event()))
    await until(lambda: "f" in rt.running, what="the step")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended == ["f"]


async def test_a_failing_observer_surfaces_after_the_steps_in_flight_end():
    ops = FakeOps()
    finished: list[str] = []

    async def step(op_id: str) -> None:
        await asyncio.sleep(0.1)
        finished.append(op_id)
        ops.done.add(op_id)

    async def observer(halt: asyncio.Event) -> None:
        await asyncio.sleep(0.02)
        raise Conflict("the indexer failed for good")

    ops.add("o", behave=step)
    rt = Runtime(ops, observers=[observer], poll_interval=0.01)
    with pytest.raises(Conflict, match="failed for good"):
        await asyncio.wait_for(rt.run(asyncio.Event()), 5)
    assert finished == ["o"] and not rt.observing


async def test_an_observer_that_steps_aside_leaves_the_operations_polled():
    ops = FakeOps()

    async def observer(halt: asyncio.Event) -> None:
        return  # another process follows the chains

    rt = Runtime(ops, observers=[observer], poll_interval=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(rt.run(stop))
    await asyncio.sleep(0.05)
    assert not rt.observing and not task.done()
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_a_step_that_crashes_the_process_is_raised_by_run_as_it_is():
    class Killed(BaseException):
        pass

    ops = FakeOps()

    def crash(op_id: str) -> None:
        raise Killed()

    ops.add("k", behave=crash)
    after: list[str] = []
    rt = Runtime(ops, poll_interval=0.01, after_step=after.append)
    with pytest.raises(Killed):
        await asyncio.wait_for(rt.run(asyncio.Event()), 5)
    assert after == ["k"] and ops.deferred == []


# --- the store pattern -------------------------------------------------------------------------

JOBS = OpTable("job", "job", "job_history", "job_id", ("new", "sent", "done"), frozenset({"done"}))


@pytest.fixture
def op_store(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'ops.sqlite'}")
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE job (id TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL, retries INTEGER DEFAULT 0, "
                "last_error TEXT, next_attempt_at REAL DEFAULT 0, payload TEXT)"
            )
        )
        conn.execute(
            text("CREATE TABLE job_history (seq INTEGER PRIMARY KEY, job_id TEXT, at REAL, from_state TEXT, to_state TEXT, note TEXT, attempt INTEGER)")
        )
    store = OpStore(Db(engine), JOBS)
    yield store
    engine.dispose()


def add_job(store: OpStore, op_id: str) -> None:
    with store.db.transaction() as tx:
        tx.execute("INSERT INTO job (id, state, updated_at) VALUES (:id, 'new', 0)", {"id": op_id})
        record(tx, JOBS, op_id, None, "new", "created")


def move(store: OpStore, op_id: str, expect, to: str, note: str = "", **fields):
    with store.db.transaction() as tx:
        return transition(tx, JOBS, op_id, expect, to, note, fields)


def test_transitions_are_compare_and_set_and_the_history_keeps_time_reason_and_attempt(op_store):
    add_job(op_store, "j")
    store = op_store
    store.defer("j", "error (retrying): node down", 0.0)
    store.defer("j", "error (retrying): node down", 0.0)
    store.defer("j", "waiting: confirmations", 0.0, count_retry=False)
    assert store.retries("j") == 2
    before = time.time()
    moved = move(store, "j", "new", "sent", "sent tx1", payload="tx1")
    assert moved.previous == "new" and moved.changed and moved.at >= before
    assert store.retries("j") == 0  # a new state starts its attempts again
    move(store, "j", "sent", "sent", "")  # data only: no history row
    move(store, "j", "sent", "sent", "bumped to tx2", payload="tx2")
    with pytest.raises(Conflict, match="job j is sent, not new"):
        move(store, "j", "new", "done")
    with pytest.raises(NotFound):
        move(store, "nope", "new", "done")
    move(store, "j", ["sent", "new"], "done", "confirmed")
    rows = store.history("j")
    assert [(r["from_state"], r["to_state"], r["note"], r["attempt"]) for r in rows] == [
        (None, "new", "created", 1),
        ("new", "sent", "sent tx1", 3),
        ("sent", "sent", "bumped to tx2", 1),
        ("sent", "done", "confirmed", 1),
    ]
    assert all(r["at"] >= before for r in rows[1:])
    with store.db.transaction() as tx:
        assert tx.one("SELECT payload, last_error FROM job WHERE id = 'j'") == {"payload": "tx2", "last_error": None}


def test_due_wake_and_finished(op_store):
    store = op_store
    for op_id in ("a", "b", "c"):
        add_job(store, op_id)
    store.defer("a", "waiting", 3600, count_retry=False)
    store.defer("b", "waiting", -10, count_retry=False)
    store.defer("c", "waiting", -5, count_retry=False)
    assert store.due() == ["b", "c"] and store.due(limit=1) == ["b"] and store.due(among=["c"]) == ["c"]
    move(store, "c", "new", "sent")
    assert store.due(first="sent") == ["c", "b"]
    store.wake(["a"])
    assert set(store.due()) == {"a", "b", "c"}
    move(store, "a", "new", "done")
    assert store.due(among=["a"]) == [] and store.finished(["a"]) and not store.finished(["a", "b"])


async def test_the_runtime_runs_operations_of_a_real_store(op_store):
    """An ``Operations`` made of an ``OpStore`` and a step function: errors and waits land in the
    table, transitions in the history with the attempt that made them."""
    store = op_store
    add_job(store, "r")
    tries = {"n": 0}

    class Ops:
        due, defer, wake, retries, finished = store.due, store.defer, store.wake, store.retries, store.finished

        async def step(self, op_id: str) -> None:
            tries["n"] += 1
            if tries["n"] <= 2:
                raise RpcError("node down")
            with store.db.transaction() as tx:
                state = tx.column("SELECT state FROM job WHERE id = :id", {"id": op_id})[0]
            if state == "new":
                move(store, op_id, "new", "sent", "sent")
                raise Wait("0/1 confirmations", delay=0.0)
            move(store, op_id, "sent", "done", "confirmed")

    rt = Runtime(Ops(), "job", backoff=QUICK, poll_interval=0.01)
    await run_until_finished(rt, ["r"])
    assert [(r["to_state"], r["attempt"]) for r in store.history("r")] == [("new", 1), ("sent", 3), ("done", 1)]


def test_old_databases_get_the_attempt_column_and_their_history_still_reads(tmp_path):
    """A swap database written before attempts were kept: ``init_db`` adds the column, the old rows read."""
    from bridge.swaps.store import SwapStore

    engine = make_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    store = SwapStore(engine)
    with engine.begin() as conn:  # the table as an older version made it
        conn.execute(text("DROP TABLE swap_action"))
        conn.execute(
            text(
                "CREATE TABLE swap_action (seq INTEGER PRIMARY KEY, swap_id VARCHAR NOT NULL, at FLOAT NOT NULL, "
                "from_state VARCHAR, to_state VARCHAR NOT NULL, note VARCHAR NOT NULL)"
            )
        )
        conn.execute(text("INSERT INTO swap_action (swap_id, at, from_state, to_state, note) VALUES ('old', 1.0, NULL, 'created', 'made')"))
    engine.dispose()
    engine = make_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    store = SwapStore(engine)
    assert "attempt" in {c["name"] for c in inspect(engine).get_columns("swap_action")}
    assert [(r["to_state"], r["attempt"]) for r in store.history("old")] == [("created", None)]
    engine.dispose()
