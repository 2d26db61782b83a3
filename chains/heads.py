"""New blocks pushed by the node, so that waiting for one costs no polling.

A chain adapter that can be told of new blocks (bitcoind's ``waitforblockheight`` long poll, an
EVM node's ``eth_subscribe("newHeads")``) runs one ``HeadFollower``: a task that keeps the latest
block the node announced, reconnecting with backoff when the source fails.  Any number of
callers wait on it through ``ChainAdapter.wait_for_block`` without each asking the node.

It only ever makes a wait end sooner: every caller gives a timeout (its poll interval) and
re-reads the chain itself after waking, so a source that is down or slow changes nothing but
latency.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from bridge.core.errors import Unsupported

if TYPE_CHECKING:
    from chains.base import BlockRef

log = logging.getLogger(__name__)

#: ``follow(publish)``: talk to the node until it fails, calling ``publish(head)`` with every tip.
Follow = Callable[[Callable[["BlockRef"], None]], Awaitable[None]]


class HeadFollower:
    def __init__(self, name: str, follow: Follow, max_backoff: float = 10.0) -> None:
        self.name = name
        self._follow = follow
        self.max_backoff = max_backoff
        #: The tip as last announced (``ChainAdapter.announced_head``); None before the source answered.
        self.head: BlockRef | None = None
        #: False while the source is down (or the node does not offer it): waits then just time out.
        self.live = False
        self.unsupported: str | None = None
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def height(self) -> int:
        """The announced tip's height; -1 before the source first answered."""
        return self.head.height if self.head is not None else -1

    def publish(self, head: BlockRef) -> None:
        self.live = True
        if self.head is None or head.hash != self.head.hash:  # a new tip, or one replaced at its height
            self.head = head
            if self._changed is not None:
                self._changed.set()
                self._changed = asyncio.Event()

    async def wait(self, height: int, timeout: float) -> int | None:
        """Return once the node announced a block above ``height``, or after ``timeout`` seconds:
        the announced height, or None while the source is down."""
        self._ensure_running()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self.live and self.height > height):
            left = deadline - loop.time()
            if left <= 0:
                break
            assert self._changed is not None
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                break
        return self.height if self.live else None

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        if self.unsupported is not None:
            if self._changed is None or self._task is None or self._task.get_loop() is not loop:
                self._changed = asyncio.Event()
            return
        # A new event loop (each test has its own) needs its own event and task.
        self._changed, self.live, self.head = asyncio.Event(), False, None
        self._task = loop.create_task(self._run(), name=f"head follower {self.name}")

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._follow(self.publish)
                failures = 0  # the source ended cleanly (closed by the node): reconnect at once
            except asyncio.CancelledError:
                raise
            except Unsupported as exc:
                self.live, self.unsupported = False, exc.message
                log.info("%s: no block notifications (%s); waits poll instead", self.name, exc.message)
                return
            except Exception as exc:  # noqa: BLE001 - any failure just means "poll until it is back"
                failures += 1
                delay = min(0.25 * 2 ** min(failures, 8), self.max_backoff)
                log.log(
                    logging.INFO if failures == 1 else logging.DEBUG,
                    "%s: block notifications interrupted (%s: %s); retrying in %.1f s",
                    self.name,
                    type(exc).__name__,
                    exc,
                    delay,
                )
            self.live, self.head = False, None
            await asyncio.sleep(delay if failures else 0)

    async def close(self) -> None:
        task, self._task = self._task, None
        self.live, self.head = False, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def wait_unless(stop: asyncio.Event, waiting: Awaitable[Any]) -> Any:
    """What ``waiting`` (a ``wait_for_block``) returns, unless ``stop`` is set first (then None)."""
    wait, stopped = asyncio.ensure_future(waiting), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({wait, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (wait, stopped):
            task.cancel()
        await asyncio.gather(wait, stopped, return_exceptions=True)
    return wait.result() if wait.done() and not wait.cancelled() and wait.exception() is None else None
