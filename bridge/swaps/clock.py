"""A chain's tip as a ``ChainTime``, shared by every swap of a party that asks within a few ms."""

from __future__ import annotations

import time

from bridge.swaps.timelock import ChainTime
from chains.base import BlockRef, ChainAdapter


class ChainClock:
    """The chain's tip as a ``ChainTime``, read at most once per ``ttl`` seconds: hundreds of
    waiting swaps checking their expiry in one pass share one read.  Timelock decisions allow
    minutes of margin, so a tip a few tens of milliseconds old changes none of them.  Where the
    node announces blocks (``adapter.heads``), a read stays good until the next one is
    announced (up to ``announced_ttl``), and the announced tip replaces it, so most steps ask
    the node nothing."""

    def __init__(self, adapter: ChainAdapter, ttl: float = 0.02, announced_ttl: float = 1.0) -> None:
        self.adapter = adapter
        self.ttl = ttl
        self.announced_ttl = announced_ttl
        self._read: tuple[float, ChainTime] | None = None

    def forget(self, announced: BlockRef | None = None) -> None:
        """A new block came: the next read is that block where its announcement carried it
        (``ChainAdapter.announced_head``), else the node's answer."""
        if announced is not None and (self._read is None or announced.height >= self._read[1].height):
            self._read = (time.monotonic(), ChainTime(announced.height, announced.timestamp))
        else:
            self._read = None

    def _fresh(self, at: float) -> bool:
        if self._read is None:
            return False
        age, value = at - self._read[0], self._read[1]
        if age < self.ttl:
            return True
        heads = self.adapter.heads
        return heads is not None and heads.live and heads.height == value.height and age < self.announced_ttl

    async def now(self) -> ChainTime:
        at = time.monotonic()
        if self._fresh(at):
            return self._read[1]  # type: ignore[index]
        head = await self.adapter.head()
        value = ChainTime(head.height, head.timestamp)
        self._read = (at, value)
        return value
