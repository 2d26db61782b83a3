"""Follow a chain at a confirmation depth and hand its events to a consumer exactly once.

The indexer only uses the ``ChainAdapter`` interface, so one implementation serves
every chain family.  Each ``step()`` processes one batch of blocks up to the safe
height (``head - confirmations + 1``):

1. fetch the batch's ``BlockRef``s and check that they chain by parent hash to the
   stored cursor hash;
2. on a mismatch the chain reorganised below the cursor: walk back over the stored
   recent hashes until they agree with the chain (the fork point), call
   ``consumer.on_revert`` with the orphaned blocks and the event keys delivered in
   them (newest first), forget those blocks and move the cursor back to the fork
   point -- all in one database transaction;
3. otherwise fetch the batch's events, call ``consumer.on_events(events, block,
   session=...)`` for every block that has any, in chain order, then record the
   blocks, the delivered keys and the cursor move, and commit -- again in one
   transaction.

When caught up it re-checks that the cursor block is still canonical, so a reorg
that does not lengthen the chain is noticed too.  A batch is read headers first,
then events; every event must come from the header's block at its height and the
headers must chain, else the chain moved mid-read and the step records nothing
(``StepResult.kind == "retry"``).  Adapter reads retry by themselves; ``run()``
backs off on errors that say retrying can help and raises the others.

Crash-safety contract
---------------------
The consumer is handed the indexer's ``session`` (a ``sqlmodel.Session`` whose
transaction is open).  Whatever the consumer writes through that session commits
atomically with the delivery log and the cursor move, or not at all.  Hence:

* A consumer that records its effects through ``session`` sees every canonical
  event exactly once, across crashes (kill -9) and restarts: a crash before the
  commit loses the consumer's writes together with the cursor move, and the batch
  is delivered again; a crash after it finds the cursor already past the batch.
* A consumer whose effects leave the database (a broadcast, an HTTP call) gets
  at-least-once delivery: the same batch may be delivered again after a crash, so
  such effects must be idempotent by ``ChainEvent.key``.
* A consumer that raises aborts the batch: nothing is recorded, and the same
  events are delivered again on the next step.
* ``on_revert`` follows the same rules: its writes commit with the rewind.
* Keep ``on_events`` short: on SQLite the transaction holds the write lock while
  the consumer runs.

Backfill
--------
A consumer whose watch set grows (a newly registered address) may need the blocks the
indexer already passed looked at again for the new part only.  It says so with an optional
``backfill(cursor_height) -> Backfill | None``, asked at the start of every ``step()``: the
indexer reads ``from_height..cursor`` (clamped to where it began) with the backfill's own
selector, in batches of ``batch_blocks`` (progress logged every ``log_every`` seconds), then
hands the blocks that had any event to ``consumer.on_backfill(blocks, token, session=...)``
in one transaction that first checks the cursor did not move and the events' blocks are the
ones it recorded (else nothing is written and the next step asks again).  The consumer records
in that transaction that the backfill is done, so it runs once across crashes; its writes must be
idempotent all the same.

Reorgs deeper than ``keep_blocks`` cannot be rewound exactly and raise
``ReorgBeyondWindow`` (operator action needed); choose ``keep_blocks`` well above
any plausible reorg depth.  Two live instances with the same name are refused by a
compare-and-set on the cursor (``Conflict``).

Over 400 lines on purpose: the cursor, the fetch loop and the reorg rewind are one algorithm.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session

from bridge.core.errors import InputError, NotFound, ReorgDetected
from bridge.core.retry import DEFAULT_RETRY, RetryPolicy, is_retryable
from chains.base import BlockRef, ChainAdapter, ChainEvent
from chains.cursor_store import Cursor, CursorStore, OrphanedBlock, create_tables
from chains.heads import wait_unless

__all__ = ["Backfill", "Indexer", "IndexerConsumer", "OrphanedBlock", "ReorgBeyondWindow", "StepResult"]

log = logging.getLogger("chains.indexer")

#: How many ``block_by_height`` calls run at once when fetching a batch's headers.
_FETCH_CONCURRENCY = 16


class ReorgBeyondWindow(ReorgDetected):
    """The chain changed below the oldest block hash the indexer kept; it cannot rewind exactly."""

    retryable = False


class IndexerConsumer(Protocol):
    async def on_events(self, events: list[ChainEvent], block: BlockRef, *, session: Session) -> None:
        """The canonical events of ``block`` (never empty), in chain order."""

    async def on_revert(self, orphaned: list[OrphanedBlock], *, session: Session) -> None:
        """Blocks whose events were delivered and are no longer canonical, newest first."""


@dataclass(frozen=True)
class Backfill:
    """Blocks already passed that a consumer wants read again for what it newly watches.

    ``selector`` is passed to ``adapter.events`` for each batch of ``from_height..cursor``, or is
    a function of the events found in the earlier batches returning one (on Bitcoin: to follow
    the spends of the outputs found).  ``token`` goes back to ``on_backfill`` unchanged.
    """

    from_height: int
    selector: Any = None
    token: Any = None


@dataclass(frozen=True)
class StepResult:
    """What one ``step()`` did.

    ``kind``: ``indexed`` (blocks processed), ``idle`` (caught up), ``reorg``
    (rewound to ``to_height``, the fork point), ``retry`` (the chain moved while
    the batch was being read; nothing was recorded, step again).
    """

    kind: str
    from_height: int | None = None
    to_height: int | None = None
    blocks: int = 0
    events: int = 0
    reverted_events: int = 0
    head: int | None = None

    @property
    def caught_up(self) -> bool:
        return self.kind == "idle"


class _ChainMoved(Exception):
    """The batch read is inconsistent (the chain changed mid-read); retry the step."""


@dataclass
class _Progress:
    every: float = 5.0
    last_log: float = field(default_factory=time.monotonic)
    blocks_since: int = 0
    events_since: int = 0


class Indexer:
    """One named follower of one chain; its cursor lives in ``engine`` under (name, chain id).

    ``selector`` is passed to ``adapter.events`` (``EvmLogFilter``, ``BitcoinTxFilter``,
    ``None`` for everything), or a function returning one, called for every batch.  ``start_height`` applies only when no cursor exists yet;
    a new instance with the same name and engine resumes from the cursor.
    ``keep_blocks`` is the rewind window.  ``stats`` holds the counters, including
    ``blocks_per_s`` and ``events_per_s`` as of the last progress log line
    (every ``log_every`` seconds).

    Example::

        indexer = Indexer("htlc-evm", adapter, make_engine(settings.db_url), consumer,
                          selector=EvmLogFilter(address=htlc), confirmations=2,
                          start_height=deploy_block, **settings.indexer.model_dump())
        await indexer.run(stop_event)
    """

    def __init__(
        self,
        name: str,
        adapter: ChainAdapter,
        engine: Engine,
        consumer: IndexerConsumer,
        selector: Any = None,
        confirmations: int = 1,
        batch_blocks: int = 500,
        poll_interval: float = 0.5,
        start_height: int = 0,
        keep_blocks: int = 1000,
        retry: RetryPolicy = DEFAULT_RETRY,
        log_every: float = 5.0,
    ) -> None:
        if not name:
            raise InputError("indexer name must not be empty")
        if confirmations < 0:
            raise InputError(f"confirmations must be >= 0, got {confirmations}", confirmations=confirmations)
        if batch_blocks < 1:
            raise InputError(f"batch_blocks must be >= 1, got {batch_blocks}", batch_blocks=batch_blocks)
        if poll_interval <= 0:
            raise InputError(f"poll_interval must be > 0, got {poll_interval}", poll_interval=poll_interval)
        if start_height < 0:
            raise InputError(f"start_height must be >= 0, got {start_height}", start_height=start_height)
        if keep_blocks < 1:
            raise InputError(f"keep_blocks must be >= 1, got {keep_blocks}", keep_blocks=keep_blocks)
        self.name = name
        self.adapter = adapter
        self.engine = engine
        self.consumer = consumer
        self.selector = selector
        # 0 and 1 both mean "up to the head": a block is its own first confirmation.
        self.confirmations = max(confirmations, 1)
        self.batch_blocks = batch_blocks
        self.poll_interval = poll_interval
        #: With block announcements, a caught-up indexer still re-reads the tip this often.
        self.recheck = max(poll_interval, 1.0)
        self.start_height = start_height
        self.keep_blocks = keep_blocks
        self.retry = retry
        self.store = CursorStore(name, adapter.chain_id)
        self.stats: dict[str, Any] = {
            "height": None,
            "head": None,
            "lag": None,
            "blocks": 0,
            "events": 0,
            "batches": 0,
            "reorgs": 0,
            "deepest_reorg": 0,
            "reverted_events": 0,
            "retries": 0,
            "errors": 0,
            "blocks_per_s": 0.0,
            "events_per_s": 0.0,
        }
        self._progress = _Progress(every=log_every)
        self._announced = False  # the last wait ended on an announced block (``step`` reads no head)
        create_tables(engine)

    # --- public -----------------------------------------------------------------

    def cursor(self) -> Cursor | None:
        with Session(self.engine) as session:
            return self.store.load(session)

    async def step(self) -> StepResult:
        # Woken by an announcement, the announced tip is the head to read; a timed recheck (which
        # exists for what announcements miss) asks the node.
        head = (self._announced and self.adapter.announced_head()) or await self.adapter.head()
        self._announced = False
        safe = head.height - self.confirmations + 1
        cursor = self._cursor_or_create()
        await self._backfill(cursor)
        self.stats["head"] = head.height
        self.stats["lag"] = max(safe - cursor.height, 0)
        low = cursor.height + 1
        high = min(safe, low + self.batch_blocks - 1)
        try:
            if low > safe:
                if cursor.height == head.height and cursor.hash == head.hash:
                    return StepResult("idle", head=head.height)  # at the tip we just read: canonical
                if cursor.hash is not None and not await self._canonical(cursor, head):
                    return await self._rewind(cursor, head)
                return StepResult("idle", head=head.height)
            refs = await self._block_refs(low, high, head)
            if cursor.hash is not None and refs[0].parent_hash != cursor.hash:
                return await self._rewind(cursor, head)
            return await self._deliver(cursor, refs, head)
        except _ChainMoved as exc:
            self.stats["retries"] += 1
            log.info("indexer %s: chain moved while reading %d..%d (%s); retrying", self.name, low, high, exc)
            return StepResult("retry", low, high, head=head.height)

    async def run(self, stop_event: asyncio.Event | None = None) -> None:
        """Step until ``stop_event`` is set; sleep ``poll_interval`` only when caught up.

        Errors that say retrying can help (node down, timeouts) are logged and retried
        with the retry policy's backoff; anything else is raised.
        """
        stop = stop_event or asyncio.Event()
        failures = 0
        while not stop.is_set():
            try:
                result = await self.step()
                failures = 0
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                failures += 1
                self.stats["errors"] += 1
                delay = max(self.retry.delay(failures), self.poll_interval)
                log.warning("indexer %s: %s; retrying in %.2fs", self.name, exc, delay)
                await _sleep_unless(stop, delay)
                continue
            # A batch that reached the head it read is caught up too: looking again at once would
            # only read that head back.
            at_tip = result.kind == "indexed" and result.head is not None and result.to_height >= result.head - self.confirmations + 1
            if result.caught_up or at_tip:
                await self._idle(stop, result.head if result.head is not None else -1)

    async def _idle(self, stop: asyncio.Event, height: int) -> None:
        """Wait for a block above ``height``.  Where the node announces blocks, a caught-up indexer
        looks at the chain again only when one is announced, or after ``recheck`` seconds (a tip
        replaced at the same height ends no ``wait_for_block``); elsewhere it polls every ``poll_interval``."""
        since = time.monotonic()
        while not stop.is_set():
            announced = await wait_unless(stop, self.adapter.wait_for_block(height, self.poll_interval))
            if announced is not None and announced != height:
                self._announced = True
                return
            if announced is None or time.monotonic() - since >= self.recheck:
                return

    # --- reading the chain ----------------------------------------------------------

    async def _block_refs(self, low: int, high: int, head: BlockRef) -> list[BlockRef]:
        """Blocks ``low..high``; the head just read is not asked for again (at the tip, most steps
        are one new block: that block)."""
        gate = asyncio.Semaphore(_FETCH_CONCURRENCY)

        async def one(height: int) -> BlockRef:
            async with gate:
                try:
                    return await self.adapter.block_by_height(height)
                except NotFound as exc:  # the chain got shorter since head() was read
                    raise _ChainMoved(exc.message) from exc

        last = high - 1 if high == head.height else high
        refs = list(await asyncio.gather(*(one(h) for h in range(low, last + 1))))
        if last < high:
            refs.append(head)
        for prev, ref in zip(refs, refs[1:]):
            if ref.parent_hash != prev.hash:
                raise _ChainMoved(f"block {ref.height} does not chain to {prev.height}")
        return refs

    async def _canonical(self, cursor: Cursor, head: BlockRef) -> bool:
        if cursor.height > head.height:
            return False
        try:
            ref = await self.adapter.block_by_height(cursor.height)
        except NotFound:
            return False
        return ref.hash == cursor.hash

    # --- delivering -------------------------------------------------------------------

    async def _deliver(self, cursor: Cursor, refs: list[BlockRef], head: BlockRef) -> StepResult:
        low, high = refs[0].height, refs[-1].height
        started = time.monotonic()
        try:
            events = await self.adapter.events(low, high, self._selector(), blocks=refs)
        except ReorgDetected as exc:  # the adapter saw a block vanish while reading
            raise _ChainMoved(exc.message) from exc
        with _gc_paused():
            by_height: dict[int, list[ChainEvent]] = {}
            for ev in events:
                by_height.setdefault(ev.block.height, []).append(ev)
            ref_at = {r.height: r for r in refs}
            for ev in events:
                ref = ref_at.get(ev.block.height)
                if ref is None:
                    raise _ChainMoved(f"events() returned block {ev.block.height}, outside {low}..{high}")
                if ev.block.hash != ref.hash:
                    raise _ChainMoved(f"event {ev.key} comes from block {ev.block.hash}, header {ref.height} is {ref.hash}")
            with Session(self.engine) as session:
                for ref in refs:
                    evs = by_height.get(ref.height)
                    if evs:
                        await self.consumer.on_events(evs, ref, session=session)
                self.store.move(session, cursor, high, refs[-1].hash)
                self.store.record(session, refs, events)
                self.store.prune_below(session, high - self.keep_blocks + 1)
                session.commit()
        self._count(len(refs), len(events), high, time.monotonic() - started)
        return StepResult("indexed", low, high, blocks=len(refs), events=len(events), head=head.height)

    def _selector(self) -> Any:
        # A callable selector is asked at every batch: what a consumer watches can grow while it runs
        # (a swap relayer learns new HTLC outpoints as swaps are made).
        return self.selector() if callable(self.selector) else self.selector

    # --- backfill ------------------------------------------------------------------------

    async def _backfill(self, cursor: Cursor) -> None:
        """What the consumer asks to see again of the blocks up to ``cursor`` (module docstring)."""
        ask = getattr(self.consumer, "backfill", None)
        todo = ask(cursor.height) if ask is not None else None
        if todo is None:
            return
        low, high = max(todo.from_height, cursor.first_height), cursor.height
        found: list[ChainEvent] = []
        started = last_log = time.monotonic()
        try:
            for start in range(low, high + 1, self.batch_blocks):
                stop = min(start + self.batch_blocks - 1, high)
                selector = todo.selector(found) if callable(todo.selector) else todo.selector
                found += await self.adapter.events(start, stop, selector)
                if time.monotonic() - last_log >= self._progress.every and stop < high:
                    last_log = time.monotonic()
                    log.info("indexer %s on %s: backfill %d..%d at %d, %d events so far", self.name, self.store.chain_id, low, high, stop, len(found))
            tip = await self.adapter.block_by_height(high) if high >= low and cursor.hash is not None else None
        except (ReorgDetected, NotFound) as exc:
            log.info("indexer %s: chain moved during the backfill of %d..%d (%s); asking again next step", self.name, low, high, exc)
            return
        with Session(self.engine) as session:
            stored = self.store.stored_hashes(session, low, high)
            moved = self.store.load(session) != cursor or (tip is not None and tip.hash != cursor.hash)
            if moved or any(stored.get(e.block.height, e.block.hash) != e.block.hash for e in found):
                log.info("indexer %s: the chain or the cursor moved during the backfill of %d..%d; asking again next step", self.name, low, high)
                return
            blocks: dict[str, tuple[BlockRef, list[ChainEvent]]] = {}
            for ev in found:
                blocks.setdefault(ev.block.hash, (ev.block, []))[1].append(ev)
            await self.consumer.on_backfill(list(blocks.values()), todo.token, session=session)  # type: ignore[attr-defined]
            session.commit()
        self.stats["backfills"] = self.stats.get("backfills", 0) + 1
        if high >= low:
            log.info(
                "indexer %s on %s: backfilled %d..%d (%d blocks, %d events) in %.2fs",
                self.name,
                self.store.chain_id,
                low,
                high,
                high - low + 1,
                len(found),
                time.monotonic() - started,
            )

    # --- reorgs ---------------------------------------------------------------------------

    async def _rewind(self, cursor: Cursor, head: BlockRef) -> StepResult:
        fork = await self._fork_point(cursor, head)
        if fork == cursor.height:
            # The cursor block is canonical again: the mismatch came from a read mid-switch.
            raise _ChainMoved(f"block {fork} is canonical again")
        with Session(self.engine) as session:
            orphaned = self.store.delivered_above(session, fork)
            reverted = [b for b in orphaned if b.event_keys]
            if reverted:
                await self.consumer.on_revert(reverted, session=session)
            fork_hash = self.store.stored_hashes(session, fork, fork).get(fork)
            self.store.forget_above(session, fork)
            self.store.move(session, cursor, fork, fork_hash)
            session.commit()
        depth = cursor.height - fork
        n_reverted = sum(len(b.event_keys) for b in reverted)
        self.stats["reorgs"] += 1
        self.stats["deepest_reorg"] = max(self.stats["deepest_reorg"], depth)
        self.stats["reverted_events"] += n_reverted
        self.stats["height"] = fork
        log.warning(
            "indexer %s on %s: reorg of depth %d below %d; rewound to %d, reverted %d events",
            self.name,
            self.store.chain_id,
            depth,
            cursor.height,
            fork,
            n_reverted,
        )
        return StepResult("reorg", cursor.height, fork, reverted_events=n_reverted, head=head.height)

    async def _fork_point(self, cursor: Cursor, head: BlockRef) -> int:
        """The highest stored height whose hash the chain still has."""
        window_low = max(cursor.first_height, cursor.height - self.keep_blocks + 1)
        with Session(self.engine) as session:
            stored = self.store.stored_hashes(session, window_low, cursor.height)
        height = cursor.height
        while height >= window_low:
            if height <= head.height and height in stored:
                try:
                    ref = await self.adapter.block_by_height(height)
                except NotFound:  # shorter than head() said: not this height
                    ref = None
                if ref is not None and ref.hash == stored[height]:
                    return height
            height -= 1
        if window_low == cursor.first_height:
            return cursor.first_height - 1
        raise ReorgBeyondWindow(
            f"indexer {self.name!r} on {self.store.chain_id}: the chain differs at every stored block "
            f"{window_low}..{cursor.height}; the reorg is deeper than keep_blocks={self.keep_blocks}",
            indexer=self.name,
            chain_id=self.store.chain_id,
            window_low=window_low,
            cursor=cursor.height,
        )

    # --- bookkeeping -------------------------------------------------------------------------

    def _cursor_or_create(self) -> Cursor:
        with Session(self.engine) as session:
            cursor = self.store.load(session)
            if cursor is None:
                cursor = self.store.create(session, self.start_height)
                session.commit()
                log.info("indexer %s on %s: new cursor, starting at %d", self.name, self.store.chain_id, self.start_height)
            self.stats["height"] = cursor.height
            return cursor

    def _count(self, blocks: int, events: int, height: int, seconds: float) -> None:
        s = self.stats
        s["blocks"] += blocks
        s["events"] += events
        s["batches"] += 1
        s["height"] = height
        s["lag"] = max((s["head"] or height) - self.confirmations + 1 - height, 0)
        s["last_batch_seconds"] = round(seconds, 4)
        p = self._progress
        p.blocks_since += blocks
        p.events_since += events
        now = time.monotonic()
        if now - p.last_log >= p.every:
            elapsed = now - p.last_log
            s["blocks_per_s"] = round(p.blocks_since / elapsed, 1)
            s["events_per_s"] = round(p.events_since / elapsed, 1)
            log.info(
                "indexer %s on %s: height %d (lag %d), %.1f blocks/s, %.1f events/s, %d events total",
                self.name,
                self.store.chain_id,
                height,
                s["lag"],
                s["blocks_per_s"],
                s["events_per_s"],
                s["events"],
            )
            p.last_log, p.blocks_since, p.events_since = now, 0, 0


@contextmanager
def _gc_paused() -> Iterator[None]:
    """A large batch allocates ~10^5 rows while ~10^5 events are alive; without the pause,
    the collector's full passes walk every live event again and again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
