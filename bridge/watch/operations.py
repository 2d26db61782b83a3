"""Watch jobs as the runtime steps them (``bridge.runtime``): the store's scheduling, the
watcher's handlers (``actions.Watcher.step``).

A step that leaves the job in its state waits: for the secret, the expiry, confirmations, or a
stuck spend's bump, all of which change only with a new block of a chain (or, for a Bitcoin
reveal, the mempool): the job is looked at again on the next block of its chains, or after
``poll_interval`` at the latest.  Jobs step one at a time (``max_concurrency=1`` in the
daemon): an EVM spend's nonce is chosen from the jobs' recorded spends, and the spends
recorded but not sent go first (``due``), as they hold the nonce a new spend would take.
"""

from __future__ import annotations

from typing import Collection, Iterable

from bridge.runtime import Wait
from bridge.watch.actions import Watcher
from bridge.watch.models import SPEND_INTENDED, TERMINAL


class WatchOperations:
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.store = watcher.store

    def due(self, *, limit: int, among: Collection[str] | None) -> list[str]:
        return self.store.due(limit=limit, among=among, first=SPEND_INTENDED)

    async def step(self, job_id: str) -> None:
        job = self.store.get(job_id)
        await self.watcher.step(job)
        state = self.store.state(job_id)
        if state == job.state and state not in TERMINAL:
            raise Wait(f"{job.kind} job {state}: nothing to do before the next block", on_block=job.chain)

    def defer(self, job_id: str, reason: str, delay: float, count_retry: bool = True) -> None:
        self.store.defer(job_id, reason, delay, count_retry)

    def wake(self, job_ids: Iterable[str]) -> None:
        self.store.wake(job_ids)

    def retries(self, job_id: str) -> int:
        return self.store.retries(job_id)

    def finished(self, job_ids: Collection[str]) -> bool:
        return self.store.finished(job_ids)
