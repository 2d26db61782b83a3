"""Unit tests of the indexer against a scripted in-memory chain (the adapter is its I/O edge).

The consumer records what it is told in a table of the indexer's database, through
the session the indexer hands it -- the exactly-once contract under test.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import uuid
from typing import Callable
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlmodel import Session

from bridge.core.db import POSTGRES_TEST_URL, make_engine, postgres_available
from bridge.core.errors import ChainUnavailable, Conflict, InputError, NotFound
from bridge.core.retry import RetryPolicy
from bridge.core.testing import wait_until
from chains.base import BlockRef, ChainAdapter, ChainEvent, TxStatus
from chains.cursor_store import Cursor, CursorStore, IndexerBlock, IndexerCursor, create_tables
from chains.indexer import Indexer, OrphanedBlock, ReorgBeyondWindow

# --- a scripted chain ----------------------------------------------------------------------

_ids = itertools.count()


class FakeChain(ChainAdapter):
    """A chain whose blocks and events the test writes; ``reorg`` swaps in a new branch."""

    family = "fake"

    def __init__(self) -> None:
        self.blocks: list[BlockRef] = [BlockRef(0, "g" + "0" * 8, "0" * 9, 0)]
        self.keys: dict[str, list[str]] = {self.blocks[0].hash: []}
        self.fail_next: list[BaseException] = []
        #: Answered once by ``head()`` instead of the real head (a node that moved on between two calls).
        self.stale_head: BlockRef | None = None
        #: Called between the headers read and the events read, to simulate a race.
        self.before_events = None

    @property
    def chain_id(self) -> str:
        return "fake:1"

    def add(self, keys_per_block: list[list[str]]) -> None:
        for keys in keys_per_block:
            parent = self.blocks[-1]
            ref = BlockRef(parent.height + 1, f"b{parent.height + 1}-{next(_ids)}", parent.hash, parent.height + 1)
            self.blocks.append(ref)
            self.keys[ref.hash] = list(keys)

    def reorg(self, depth: int, keys_per_block: list[list[str]]) -> list[str]:
        """Drop the last ``depth`` blocks, append the new branch; return the orphaned keys."""
        orphaned = [k for b in self.blocks[-depth:] for k in self.keys[b.hash]]
        del self.blocks[-depth:]
        self.add(keys_per_block)
        return orphaned

    def canonical_keys(self, up_to: int | None = None) -> list[str]:
        return [k for b in self.blocks[: None if up_to is None else up_to + 1] for k in self.keys[b.hash]]

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    async def head(self) -> BlockRef:
        self._maybe_fail()
        if self.stale_head is not None:
            stale, self.stale_head = self.stale_head, None
            return stale
        return self.blocks[-1]

    async def block_by_height(self, height: int) -> BlockRef:
        self._maybe_fail()
        if not 0 <= height < len(self.blocks):
            raise NotFound(f"no block at height {height}")
        return self.blocks[height]

    async def block_by_hash(self, block_hash: str) -> BlockRef:
        for b in self.blocks:
            if b.hash == block_hash:
                return b
        raise NotFound(f"no block {block_hash}")

    async def events(self, from_height: int, to_height: int, selector: Any = None, blocks: Any = None) -> list[ChainEvent]:
        self._maybe_fail()
        if self.before_events:
            hook, self.before_events = self.before_events, None
            hook()
        out = []
        for b in self.blocks[from_height : to_height + 1]:
            out += [ChainEvent(k, b) for k in self.keys[b.hash] if selector is None or k.startswith(selector)]
        return out

    async def send(self, tx: Any) -> str:
        raise NotImplementedError

    async def tx_status(self, txid: str) -> TxStatus:
        raise NotImplementedError


# --- a consumer that writes in the indexer's transaction -----------------------------------

_meta = MetaData()
seen = Table(
    "test_indexer_seen",
    _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("indexer", String, nullable=False),
    Column("action", String, nullable=False),  # deliver | revert
    Column("event_key", String, nullable=False),
    Column("height", Integer, nullable=False),
)


class Recorder:
    def __init__(self, name: str, fail_at_height: int | None = None) -> None:
        self.name = name
        self.fail_at_height = fail_at_height
        self.revert_calls: list[list[OrphanedBlock]] = []

    async def on_events(self, events: list[ChainEvent], block: BlockRef, *, session: Session) -> None:
        session.execute(
            insert(seen),
            [{"indexer": self.name, "action": "deliver", "event_key": e.key, "height": block.height} for e in events],
        )
        if block.height == self.fail_at_height:
            self.fail_at_height = None
            raise RuntimeError(f"consumer crashed at block {block.height}")

    async def on_revert(self, orphaned: list[OrphanedBlock], *, session: Session) -> None:
        self.revert_calls.append(orphaned)
        session.execute(
            insert(seen),
            [{"indexer": self.name, "action": "revert", "event_key": k, "height": b.height} for b in orphaned for k in b.event_keys],
        )


def recorded(engine, name: str, action: str = "deliver") -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(select(seen.c.event_key).where((seen.c.indexer == name) & (seen.c.action == action)).order_by(seen.c.id))
        return [r.event_key for r in rows]


def net_view(engine, name: str) -> list[str]:
    """Delivered minus reverted, asserting no key is live twice."""
    live: dict[str, int] = {}
    for k in recorded(engine, name):
        live[k] = live.get(k, 0) + 1
    for k in recorded(engine, name, "revert"):
        live[k] -= 1
    assert all(v in (0, 1) for v in live.values()), {k: v for k, v in live.items() if v not in (0, 1)}
    return sorted(k for k, v in live.items() if v == 1)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    if request.param == "postgres":
        reason = postgres_available()
        if reason:
            pytest.skip(reason)
        eng = make_engine(POSTGRES_TEST_URL)
    else:
        eng = make_engine(f"sqlite:///{tmp_path / 'indexer.sqlite'}")
    _meta.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def name() -> str:
    # Unique per test: the PostgreSQL database is shared with parallel runs.
    return f"t-{uuid.uuid4().hex[:12]}"


async def drain(indexer: Indexer, max_steps: int = 1000) -> list:
    results = []
    for _ in range(max_steps):
        r = await indexer.step()
        results.append(r)
        if r.caught_up:
            return results
    raise AssertionError(f"indexer not caught up after {max_steps} steps")


# --- shared by the devnet indexer tests (test_indexer_bitcoin.py, test_indexer_evm.py) -----------


@pytest.fixture
def db(tmp_path):
    """``(url, engine)`` of a SQLite file, for tests that hand the URL to indexer worker processes."""
    url = f"sqlite:///{tmp_path / 'indexer.sqlite'}"
    engine = make_engine(url)
    _meta.create_all(engine)
    yield url, engine
    engine.dispose()


class SlowRecorder(Recorder):
    """Takes its time per block, so the test's SIGKILL lands in the middle of the run."""

    async def on_events(self, events, block, *, session):
        await super().on_events(events, block, session=session)
        await asyncio.sleep(0.05)


async def kill_mid_run_and_resume(engine, name: str, expected: list[str], at_least: int, worker: Callable[[str], subprocess.Popen]) -> list[str]:
    """Start ``worker(log_name)`` (an indexer process storing with a ``SlowRecorder``), SIGKILL it once
    ``at_least`` events are stored, start it again: the deliveries must be ``expected`` exactly, in
    chain order, each once.  Returns what was stored at the kill."""
    first = worker("worker1.log")
    try:
        await wait_until(lambda: len(recorded(engine, name)) >= at_least, timeout=60, what="first worker's deliveries")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    at_kill = recorded(engine, name)
    assert at_least <= len(at_kill) < len(expected), "the kill must land mid-run"
    assert at_kill == expected[: len(at_kill)]  # nothing but a prefix: no gap

    second = worker("worker2.log")
    try:
        await wait_until(lambda: len(recorded(engine, name)) >= len(expected), timeout=60, what="second worker catching up")
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait(10)
    assert recorded(engine, name) == expected  # each event once, in chain order, across the kill
    return at_kill


def chain_with_events(blocks: int, per_block: int = 2) -> FakeChain:
    chain = FakeChain()
    chain.add([[f"e{h}.{i}" for i in range(per_block if h % 3 else 0)] for h in range(1, blocks + 1)])
    return chain


# --- tests -------------------------------------------------------------------------------------


async def test_straight_run_delivers_each_event_once_in_order(engine, name):
    chain = chain_with_events(40)
    consumer = Recorder(name)
    indexer = Indexer(name, chain, engine, consumer, batch_blocks=7)

    results = await drain(indexer)

    assert recorded(engine, name) == chain.canonical_keys()
    assert [r.kind for r in results].count("indexed") == 6  # blocks 0..40 in batches of 7
    assert indexer.cursor().height == 40 and indexer.cursor().hash == chain.blocks[40].hash
    assert indexer.stats["events"] == len(chain.canonical_keys()) and indexer.stats["blocks"] == 41


async def test_confirmations_hold_back_the_last_blocks(engine, name):
    chain = chain_with_events(20)
    indexer = Indexer(name, chain, engine, Recorder(name), confirmations=6)

    await drain(indexer)

    assert indexer.cursor().height == 15  # head 20 has 6 confirmations at 15
    assert recorded(engine, name) == chain.canonical_keys(up_to=15)


async def test_selector_is_passed_to_the_adapter(engine, name):
    chain = FakeChain()
    chain.add([["a1", "b1"], ["b2"], ["a3"]])
    indexer = Indexer(name, chain, engine, Recorder(name), selector="a")

    await drain(indexer)

    assert recorded(engine, name) == ["a1", "a3"]


@pytest.mark.parametrize("depth", [1, 3])
async def test_reorg_reverts_orphaned_events_and_delivers_the_new_branch_once(engine, name, depth):
    chain = chain_with_events(14)
    consumer = Recorder(name)
    indexer = Indexer(name, chain, engine, consumer, batch_blocks=5)
    await drain(indexer)
    fork = chain.blocks[-depth - 1].height
    orphaned_keys = chain.reorg(depth, [[f"new{depth}.{i}"] for i in range(depth + 1)])

    results = await drain(indexer)

    assert results[0].kind == "reorg" and results[0].to_height == fork
    assert sorted(recorded(engine, name, "revert")) == sorted(orphaned_keys)
    assert net_view(engine, name) == sorted(chain.canonical_keys())
    # Only blocks that had events are reverted, newest first (every third block is empty).
    assert [b.height for b in consumer.revert_calls[0]] == [h for h in range(14, fork, -1) if h % 3]
    assert indexer.stats["reorgs"] == 1 and indexer.stats["deepest_reorg"] == depth
    assert indexer.cursor().hash == chain.blocks[-1].hash


async def test_reorg_keeping_the_chain_length_is_noticed_while_idle(engine, name):
    chain = chain_with_events(6)
    indexer = Indexer(name, chain, engine, Recorder(name))
    await drain(indexer)
    orphaned = chain.reorg(2, [["x5"], ["x6"]])  # same height: no new block to trigger the parent check

    await drain(indexer)

    assert sorted(recorded(engine, name, "revert")) == sorted(orphaned)
    assert net_view(engine, name) == sorted(chain.canonical_keys())


async def test_reorg_to_a_shorter_chain_rewinds(engine, name):
    chain = chain_with_events(8)
    indexer = Indexer(name, chain, engine, Recorder(name))
    await drain(indexer)
    chain.reorg(3, [["s6"]])  # the head drops from 8 to 6

    await drain(indexer)

    assert indexer.cursor().height == 6
    assert net_view(engine, name) == sorted(chain.canonical_keys())


async def test_event_remined_on_the_new_branch_is_live_exactly_once(engine, name):
    chain = FakeChain()
    chain.add([["a"], ["tx-moves"], ["c"]])
    indexer = Indexer(name, chain, engine, Recorder(name))
    await drain(indexer)
    chain.reorg(2, [[], ["c"], ["tx-moves"]])

    await drain(indexer)

    assert net_view(engine, name) == ["a", "c", "tx-moves"]
    blocks = IndexerBlock.__table__
    with Session(engine) as s:
        rows = s.execute(select(blocks.c.height, blocks.c.hash, blocks.c.event_keys).where(blocks.c.name == name)).all()
    assert sorted(rows) == [(b.height, b.hash, chain.keys[b.hash]) for b in chain.blocks]  # the delivery log


async def test_reorg_below_the_first_indexed_block_rewinds_everything(engine, name):
    chain = chain_with_events(10)
    indexer = Indexer(name, chain, engine, Recorder(name), start_height=5)
    await drain(indexer)
    chain.reorg(7, [[f"z{i}"] for i in range(8)])  # fork at 3, below start_height 5

    await drain(indexer)

    assert net_view(engine, name) == sorted(chain.canonical_keys()[len(chain.canonical_keys(up_to=4)) :])
    assert indexer.cursor().height == 11


async def test_reorg_deeper_than_the_window_is_refused(engine, name):
    chain = chain_with_events(30)
    indexer = Indexer(name, chain, engine, Recorder(name), keep_blocks=5)
    await drain(indexer)
    chain.reorg(10, [[f"deep{i}"] for i in range(11)])

    with pytest.raises(ReorgBeyondWindow, match="deeper than keep_blocks=5"):
        await indexer.step()
    assert indexer.cursor().height == 30  # nothing changed
    with Session(engine) as s:
        heights = s.execute(select(IndexerBlock.__table__.c.height).where(IndexerBlock.__table__.c.name == name)).scalars().all()
    assert sorted(heights) == [26, 27, 28, 29, 30]  # pruned to the window


async def test_cursor_persists_across_instances(engine, name):
    chain = chain_with_events(30)
    first = Indexer(name, chain, engine, Recorder(name), batch_blocks=10)
    await first.step()
    await first.step()
    assert first.cursor().height == 19

    second = Indexer(name, chain, engine, Recorder(name), batch_blocks=10, start_height=25)
    result = await second.step()

    assert (result.from_height, result.to_height) == (20, 29)  # start_height applies to a new cursor only
    await drain(second)
    assert recorded(engine, name) == chain.canonical_keys()


async def test_consumer_crash_before_commit_redelivers_and_loses_nothing(engine, name):
    chain = chain_with_events(20)
    consumer = Recorder(name, fail_at_height=14)
    indexer = Indexer(name, chain, engine, consumer, batch_blocks=5)
    await indexer.step()
    await indexer.step()

    with pytest.raises(RuntimeError, match="consumer crashed at block 14"):
        await indexer.step()
    assert indexer.cursor().height == 9  # the failed batch 10..14 left no trace
    assert recorded(engine, name) == chain.canonical_keys(up_to=9)

    await drain(indexer)
    assert recorded(engine, name) == chain.canonical_keys()


async def test_chain_moving_between_headers_and_events_records_nothing(engine, name):
    chain = chain_with_events(6)
    indexer = Indexer(name, chain, engine, Recorder(name))
    chain.before_events = lambda: chain.reorg(2, [["r5"], ["r6"]])

    result = await indexer.step()

    assert result.kind == "retry"
    assert indexer.cursor().height == -1 and recorded(engine, name) == []
    await drain(indexer)
    assert recorded(engine, name) == chain.canonical_keys()


async def test_chain_shrinking_between_head_and_headers_records_nothing(engine, name):
    chain = chain_with_events(6)
    indexer = Indexer(name, chain, engine, Recorder(name))
    await drain(indexer)
    chain.stale_head = BlockRef(9, "gone", "gone-parent", 9)  # head() says 9, blocks stop at 6

    result = await indexer.step()

    assert result.kind == "retry" and indexer.cursor().height == 6
    await drain(indexer)
    assert recorded(engine, name) == chain.canonical_keys()


async def test_two_live_instances_cannot_both_move_the_cursor(engine, name):
    chain = chain_with_events(10)
    a = Indexer(name, chain, engine, Recorder(name), batch_blocks=5)
    b = Indexer(name, chain, engine, Recorder(name), batch_blocks=5)
    await a.step()
    cursor = b.cursor()
    await a.step()

    with pytest.raises(Conflict, match="another instance"):
        await b._deliver(cursor, [chain.blocks[h] for h in range(5, 10)], chain.blocks[-1])
    assert recorded(engine, name) == chain.canonical_keys(up_to=9)  # a's deliveries only


def test_cursor_store_statements_on_the_dbapi(engine, name):
    """Every CursorStore statement, on each backend (they bypass SQLAlchemy's dialects)."""
    create_tables(engine)
    store = CursorStore(name, "fake:1")
    blocks = [BlockRef(h, f"h{h}", f"h{h - 1}", h) for h in range(1, 6)]
    with Session(engine) as session:
        assert store.load(session) is None
        start = store.create(session, 1)
        session.commit()
    with Session(engine) as session:
        assert store.load(session) == start == Cursor(0, None, 1)
        moved = store.move(session, start, 5, "h5")
        store.record(session, blocks, [ChainEvent("a", blocks[1]), ChainEvent("b", blocks[1]), ChainEvent("c", blocks[3])])
        session.commit()
    with Session(engine) as session:
        assert store.load(session) == moved == Cursor(5, "h5", 1)
        for stale in (start, Cursor(5, "other", 1)):
            with pytest.raises(Conflict, match="another instance"):
                store.move(session, stale, 6, "h6")
        assert store.stored_hashes(session, 2, 4) == {2: "h2", 3: "h3", 4: "h4"}
        assert store.delivered_above(session, 3) == [OrphanedBlock(5, "h5", []), OrphanedBlock(4, "h4", ["c"])]
        store.forget_above(session, 3)
        store.prune_below(session, 2)
        session.commit()
    with Session(engine) as session:
        assert store.delivered_above(session, 0) == [OrphanedBlock(3, "h3", []), OrphanedBlock(2, "h2", ["a", "b"])]
        assert store.load(session) == moved
        assert session.get(IndexerCursor, (name, "fake:1")).updated_at is not None  # readable by the ORM


async def test_run_follows_new_blocks_and_retries_a_node_outage(engine, name):
    chain = chain_with_events(5)
    quick = RetryPolicy(base_delay=0.01, max_delay=0.05)
    indexer = Indexer(name, chain, engine, Recorder(name), poll_interval=0.01, retry=quick)
    stop = asyncio.Event()
    task = asyncio.create_task(indexer.run(stop))
    await wait_until(lambda: recorded(engine, name) == chain.canonical_keys(), timeout=10, what="first blocks")

    chain.fail_next = [ChainUnavailable("node restarting")] * 8  # more than the retry policy's attempts
    chain.add([["late1"], ["late2"]])
    await wait_until(lambda: recorded(engine, name) == chain.canonical_keys(), timeout=10, what="blocks after the outage")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert indexer.stats["errors"] >= 1


async def test_adapter_repeating_an_event_key_is_refused(engine, name):
    chain = FakeChain()
    chain.add([["k"], ["k"]])
    indexer = Indexer(name, chain, engine, Recorder(name))

    with pytest.raises(Conflict, match="event key 'k' appears twice \\(again in block 2\\)"):
        await drain(indexer)
    assert recorded(engine, name) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": ""}, "name must not be empty"),
        ({"batch_blocks": 0}, "batch_blocks must be >= 1"),
        ({"confirmations": -1}, "confirmations must be >= 0"),
        ({"start_height": -2}, "start_height must be >= 0"),
        ({"keep_blocks": 0}, "keep_blocks must be >= 1"),
        ({"poll_interval": 0}, "poll_interval must be > 0"),
    ],
)
def test_bad_settings_are_refused(tmp_path, kwargs, message):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    args = {"name": "n", "adapter": FakeChain(), "engine": engine, "consumer": Recorder("n"), **kwargs}
    with pytest.raises(InputError, match=message):
        Indexer(**args)
    with engine.connect() as conn:
        assert not engine.dialect.has_table(conn, IndexerCursor.__tablename__)
