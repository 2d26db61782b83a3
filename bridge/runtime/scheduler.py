"""The one scheduler of long operations: due times, wake-ups, bounded concurrency, backoff.

A domain (swaps, watch jobs, and later deliveries, payouts, snapshot publications) implements
``Operations`` over its store (``bridge.runtime.store``) and its step handlers; ``Runtime`` runs
them.  What the runtime does:

* steps every due operation, the longest waiting first, up to ``max_concurrency`` at once and
  each operation in one step at a time, so one slow chain call does not hold up the others;
* a step that waits raises ``Wait``: the operation is deferred by ``poll_interval`` (or
  ``idle_recheck`` when observers deliver the event it waits for), and, waiting for a block of a
  chain, is made due again as soon as that chain's node announces one;
* a step that fails is recorded on the operation (its retry counter, the error) and retried
  after a backoff of the one ``RetryPolicy``;
* ``nudge(ids)`` (an event, an API call) looks again at once; an operation whose step is under
  way is made due again when that step ends, as the step may have looked before the news;
* observers (indexers) and block followers run under the same task group; an observer that
  fails surfaces from ``run`` (after the steps in flight finished), one that returns means
  nobody delivers events any more and waiting operations are polled;
* ``stop``: the steps in flight finish (each ends in a recorded state) before ``run`` returns;
  cancelling ``run`` cancels them, which is as safe as a crash.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Collection, Iterable, Protocol

from bridge.core.errors import BridgeError
from bridge.core.retry import RetryPolicy, is_retryable
from chains.base import BlockRef
from chains.heads import wait_unless

log = logging.getLogger("bridge.runtime")

#: Backoff for errors (not for plain waiting, which polls at ``poll_interval``).
ERROR_BACKOFF = RetryPolicy(base_delay=0.5, max_delay=30.0, jitter=0.2)


class Wait(Exception):
    """What a step raises when the operation waits for something (not an error).

    ``on_event``: observers deliver it (the runtime re-checks only every ``idle_recheck``).
    ``on_block``: it can only change with a new block of this chain.  ``delay``: an explicit
    time to look again instead."""

    def __init__(self, message: str, *, on_event: bool = False, on_block: str | None = None, delay: float | None = None) -> None:
        super().__init__(message)
        self.message, self.on_event, self.on_block, self.delay = message, on_event, on_block, delay


class Operations(Protocol):
    """What a domain gives the runtime (``OpStore`` provides all but ``step``)."""

    def due(self, *, limit: int, among: Collection[str] | None) -> list[str]:
        """Ids due now, the longest waiting first, at most ``limit``, only ``among`` these if given."""

    async def step(self, op_id: str) -> None:
        """Take the operation as far as it goes now; raise ``Wait`` if it waits, anything else if it failed."""

    def defer(self, op_id: str, reason: str, delay: float, count_retry: bool = True) -> None: ...

    def wake(self, op_ids: Iterable[str]) -> None:
        """Make these due now."""

    def retries(self, op_id: str) -> int:
        """Failed attempts in the operation's current state."""

    def finished(self, op_ids: Collection[str]) -> bool:
        """Whether all of these are in a final state (``run(only=...)`` returns then)."""


class BlockSource(Protocol):
    """A chain as the runtime follows it (``chains.base.ChainAdapter`` is one)."""

    async def height(self) -> int: ...

    async def wait_for_block(self, height: int, timeout: float) -> int | None: ...

    def announced_head(self) -> BlockRef | None: ...


#: An observer runs until the event it is given is set; ``Runtime.nudge`` is how it wakes operations.
Observer = Callable[[asyncio.Event], Awaitable[None]]


@dataclass
class Runtime:
    ops: Operations
    #: How the log names one operation ("swap", "watch job").
    name: str = "operation"
    #: The chains whose new blocks wake operations waiting for one, by name.
    chains: dict[str, BlockSource] = field(default_factory=dict)
    #: Told of each new block of a chain after the operations waiting for it were woken (expiry checks).
    on_block: Callable[[str, BlockRef | None], Awaitable[None]] | None = None
    observers: list[Observer] = field(default_factory=list)
    poll_interval: float = 0.5
    idle_recheck: float = 5.0
    max_concurrency: int = 16
    backoff: RetryPolicy = ERROR_BACKOFF
    #: Called once each step ended, its outcome recorded (the swaps book their ledger entries then).
    after_step: Callable[[str], None] | None = None
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _running: dict[str, asyncio.Task[None]] = field(default_factory=dict, repr=False)
    #: Operations woken while a step of theirs was under way: made due again once it ends.
    _rerun: set[str] = field(default_factory=set, repr=False)
    _observing: int = field(default=0, repr=False)
    #: Per chain: blocks announced since this runtime started, and the operations waiting for the next one.
    _blocks: dict[str, int] = field(default_factory=dict, repr=False)
    _block_waiters: dict[str, set[str]] = field(default_factory=dict, repr=False)
    _failure: BaseException | None = field(default=None, repr=False)

    @property
    def observing(self) -> bool:
        """Whether observers deliver events (else operations waiting for one are polled)."""
        return self._observing > 0

    @property
    def running(self) -> Collection[str]:
        """Ids of the operations whose step is under way."""
        return self._running.keys()

    # --- one step ----------------------------------------------------------------------

    async def step(self, op_id: str) -> None:
        """Step one operation and record how it ended (a wait, an error); never raises for the step's own failure."""
        blocks = dict(self._blocks)
        try:
            try:
                await self.ops.step(op_id)
            except Wait as wait:
                self._defer_wait(op_id, wait, blocks)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded on the operation and retried
                attempt = self.ops.retries(op_id) + 1
                delay = self.backoff.delay(min(attempt, 10))
                text = exc.message if isinstance(exc, BridgeError) else f"{type(exc).__name__}: {exc}"
                kind = "retrying" if is_retryable(exc) else "error (retrying)"
                log.log(logging.INFO if is_retryable(exc) else logging.WARNING, "%s %s %s: %s", self.name, op_id, kind, text)
                self.ops.defer(op_id, f"{kind}: {text}", delay)
        finally:
            if self.after_step is not None:
                self.after_step(op_id)

    def _defer_wait(self, op_id: str, wait: Wait, blocks: dict[str, int]) -> None:
        if wait.delay is not None:
            delay = wait.delay
        else:
            delay = self.idle_recheck if wait.on_event and self.observing else self.poll_interval
        if wait.on_block is not None:
            if self._blocks.get(wait.on_block, 0) != blocks.get(wait.on_block, 0):
                delay = 0.0  # the block came while this step looked: look again now
            else:
                self._block_waiters.setdefault(wait.on_block, set()).add(op_id)
        self.ops.defer(op_id, f"waiting: {wait.message}", delay, count_retry=False)

    # --- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, only: Collection[str] | None = None) -> None:
        """Step every due operation until ``stop`` is set (``only``: just these, and return once
        they are all finished).  An operation is due when its retry time comes, when it is
        nudged, or when a block it waits for comes."""
        self._failure = None
        halt = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            # The due steps start before the observers and block followers, whose start-up reads
            # would otherwise go first (a swap's first step waits on nothing else).
            self._schedule(group, only)
            for n, observer in enumerate(self.observers):
                self._observing += 1
                group.create_task(self._observe(observer, halt), name=f"{self.name} observer {n}")
            for chain in self.chains:
                group.create_task(self._follow_blocks(chain, halt), name=f"{self.name} blocks {chain}")
            try:
                while not stop.is_set() and self._failure is None:
                    self._wakeup.clear()
                    self._schedule(group, only)
                    if only is not None and not self._running and self.ops.finished(only):
                        break
                    await _first(stop.wait(), self._wakeup.wait(), timeout=self.poll_interval)
            except Exception as exc:  # noqa: BLE001 - e.g. the database: raised from run as it is, once the steps ended
                self._failure = self._failure or exc
            # Let steps in flight finish (each ends in a recorded state).
            while self._running:
                await asyncio.wait(list(self._running.values()))
            halt.set()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _schedule(self, group: asyncio.TaskGroup, only: Collection[str] | None) -> None:
        free = self.max_concurrency - len(self._running)
        if free <= 0:
            return
        # ``only``: filtered in the query, or other due operations could fill the limit forever.
        for op_id in self.ops.due(limit=free + len(self._running), among=only):
            if len(self._running) >= self.max_concurrency:
                break
            if op_id not in self._running:
                self._running[op_id] = group.create_task(self._supervised_step(op_id), name=f"{self.name} {op_id}")

    async def _supervised_step(self, op_id: str) -> None:
        try:
            await self.step(op_id)
            if op_id in self._rerun:
                self._rerun.discard(op_id)
                self.ops.wake([op_id])
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - not a step's failure (recording it failed, or a crash): raised by run as it is
            log.error("%s %s: step ended without a recorded outcome: %r", self.name, op_id, exc)
            self._failure = self._failure or exc
        finally:
            self._running.pop(op_id, None)
            self._wakeup.set()

    async def _observe(self, observer: Observer, halt: asyncio.Event) -> None:
        try:
            await observer(halt)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - an observer failed for good: surfaced by run
            self._failure = self._failure or exc
        finally:
            # Returned: they stepped aside (another process follows the chains); operations are polled from now on.
            self._observing -= 1
            self._wakeup.set()

    def nudge(self, op_ids: Iterable[str] = ()) -> None:
        """News arrived for these operations (which the caller made due): look now.  One whose
        step is under way is made due again when that step ends."""
        self._rerun |= set(op_ids) & self._running.keys()
        self._wakeup.set()

    # --- blocks ------------------------------------------------------------------------

    async def _follow_blocks(self, chain: str, halt: asyncio.Event) -> None:
        """Act on each new block of ``chain`` as soon as the node announces it
        (``wait_for_block``; where it cannot, at most a poll interval late)."""
        adapter = self.chains[chain]
        height: int | None = None
        while not halt.is_set():
            try:
                if height is None:
                    height = await adapter.height()
                    await self.new_block(chain)  # what expired while we were away
                announced = await wait_unless(halt, adapter.wait_for_block(height, self.poll_interval))
                if halt.is_set():
                    return
                new = announced if announced is not None else await adapter.height()
                if new != height:
                    height = new
                    await self.new_block(chain, adapter.announced_head() if announced is not None else None)
            except Exception as exc:  # noqa: BLE001 - a node hiccup: operations are polled meanwhile
                log.debug("following %s blocks: %s", chain, exc)
                await asyncio.sleep(self.poll_interval)

    async def new_block(self, chain: str, announced: BlockRef | None = None) -> None:
        """A block of ``chain`` came: step the operations waiting for one, then tell ``on_block``."""
        self._blocks[chain] = self._blocks.get(chain, 0) + 1
        waiting = self._block_waiters.pop(chain, set())
        if waiting:
            self.ops.wake(waiting)
        self.nudge(waiting)  # they step while on_block below may wait for the node
        if self.on_block is not None:
            await self.on_block(chain, announced)


async def _first(*waits: Awaitable[object], timeout: float) -> None:
    """Wait until one of ``waits`` ends or ``timeout`` passes; cancel the others."""
    futures = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in futures:
            f.cancel()
