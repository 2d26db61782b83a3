"""The periodic price jobs, as APScheduler 3.x jobs on an ``AsyncIOScheduler``.

* ``ReporterJob``: one attester's reports (``bridge.committee.prices.Reporter``), run at the start
  of every reporting slot (plus ``offset`` seconds) so every attester signs the same slot.
* ``PosterJob``: any relayer's posts (``bridge.committee.prices.Poster``), run in the middle of
  every slot, when the attesters have signed.

Both run at once when started, then on an interval trigger aligned to the slots.  A missed run
does not matter (the next slot brings a new report, and a poster posts the newest slot anyway),
so the jobs live in the scheduler's memory store, not a persistent one: ``coalesce`` folds a
backlog after a stall into one run, ``max_instances=1`` keeps a slow node from overlapping runs,
and ``misfire_grace_time`` of one slot lets a late run still act within its slot.  A run that
fails is logged and counted; the next slot tries again.

    job = ReporterJob(key, store, feeds, 60, domain=config.domain, committee=attester.signing_committee, chain=evm)
    await job.run(stop)                     # or job.start(stop) ... job.shutdown()

Several jobs may share one scheduler (``scheduler=``); a job's ``shutdown`` then only removes its
own job, and the scheduler's owner shuts it down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.interval import IntervalTrigger

from bridge.committee.crypto import address_of
from bridge.committee.messages import Committee, Domain
from bridge.committee.oracle import PriceOracle
from bridge.committee.prices import Aggregator, Poster, PostOutcome, ReportOutcome, Reporter
from bridge.committee.store import AttestationStore
from bridge.core.errors import InputError
from bridge.core.retry import is_retryable
from chains.evm import EvmAdapter
from relayers.runner import Metrics

__all__ = ["PosterJob", "ReporterJob", "SlotJob"]

log = logging.getLogger("relayers.prices")


class SlotJob:
    """One job run once per slot of ``interval`` seconds, ``offset`` seconds into the slot."""

    name = "slot-job"

    def __init__(self, interval: int, offset: float, *, scheduler: AsyncIOScheduler | None = None, job_id: str | None = None) -> None:
        if type(interval) is not int or interval < 1:
            raise InputError(f"a job interval is a positive number of seconds, got {interval!r}", field="interval")
        if not 0 <= offset < interval:
            raise InputError(f"a job offset is within its interval (0..{interval}), got {offset!r}", field="offset")
        self.interval, self.offset = interval, offset
        self.own_scheduler = scheduler is None
        self.scheduler = scheduler if scheduler is not None else AsyncIOScheduler(timezone=timezone.utc)
        self.job_id = job_id or f"{self.name}-{id(self):x}"
        self.metrics = Metrics(f"bridge_{self.name.replace('-', '_')}")
        self.runs = 0
        self.last_error: str | None = None
        self._watch: asyncio.Task[None] | None = None
        self._current: asyncio.Task[Any] | None = None

    async def tick(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    async def _run_once(self) -> None:
        self._current = asyncio.current_task()
        try:
            result = await self.tick()
        except asyncio.CancelledError:  # the scheduler shut down mid-run: the next start runs again
            log.info("%s: a run was cancelled at shutdown", self.name)
            return
        except Exception as exc:  # one failed slot must not stop the job
            self.last_error = str(exc)
            self.metrics.inc("failures")
            if is_retryable(exc):
                log.warning("%s: %s; trying again next slot", self.name, exc)
            else:
                log.exception("%s failed; trying again next slot", self.name)
            return
        finally:
            self._current = None
        self.runs += 1
        self.last_error = None
        self.metrics.inc("runs")
        self._record(result)

    def _record(self, result: Any) -> None:
        pass

    def start(self, stop: asyncio.Event | None = None) -> None:
        """Add the job (first run now) and start the scheduler if this job owns it; with ``stop``,
        ``shutdown`` follows when it is set.  Call from the event loop the jobs run on."""
        first_slot = (int(time.time()) // self.interval + 1) * self.interval
        trigger = IntervalTrigger(seconds=self.interval, start_date=datetime.fromtimestamp(first_slot + self.offset, timezone.utc), timezone=timezone.utc)
        self.scheduler.add_job(
            self._run_once,
            trigger,
            id=self.job_id,
            name=self.name,
            next_run_time=datetime.now(timezone.utc),
            coalesce=True,
            max_instances=1,
            misfire_grace_time=self.interval,
            replace_existing=True,
        )
        if self.scheduler.state == STATE_STOPPED:
            self.scheduler.start()
        if stop is not None:
            self._watch = asyncio.get_running_loop().create_task(self._stop_when(stop))

    async def _stop_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._remove()
        await self.drain()
        self.shutdown()

    def shutdown(self) -> None:
        """Remove the job; shut the scheduler down if this job owns it (a run in progress is
        cancelled: ``run`` lets it finish first)."""
        self._remove()
        if self.own_scheduler and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        watch, self._watch = self._watch, None
        if watch is not None and watch is not asyncio.current_task() and not watch.done():
            watch.cancel()

    def _remove(self) -> None:
        if self.scheduler.get_job(self.job_id) is not None:
            self.scheduler.remove_job(self.job_id)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait (at most ``timeout`` seconds) for a run in progress to end."""
        current = self._current
        if current is not None and not current.done():
            await asyncio.wait({current}, timeout=timeout)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (the shape of a daemon's task); a run in progress then
        finishes (a post on its way is seen through) before the scheduler stops."""
        self.start()
        try:
            await stop.wait()
        finally:
            self._remove()
            await self.drain()
            self.shutdown()
            await asyncio.sleep(0)  # let the scheduler's shutdown (scheduled on the loop) run


class ReporterJob(SlotJob):
    """An attester's price reports: every asset's feed signed for each slot, into the store."""

    name = "price-reporter"

    def __init__(
        self,
        key: bytes,
        store: AttestationStore,
        aggregators: Mapping[bytes, Aggregator],
        interval: int,
        *,
        domain: Domain,
        committee: Committee | Callable[[int], Committee | None],
        max_age: int = 300,
        source_max_age: int = 86_400,
        chain: EvmAdapter | None = None,
        clock: Callable[[], float] = time.time,
        offset: float | None = None,
        scheduler: AsyncIOScheduler | None = None,
    ) -> None:
        super().__init__(interval, _offset(interval, 0.05) if offset is None else offset, scheduler=scheduler, job_id=f"price-reporter-{address_of(key).hex()}")
        self.reporter = Reporter(
            store,
            key,
            domain,
            aggregators,
            committee=committee,
            interval=interval,
            max_age=max_age,
            source_max_age=source_max_age,
            chain=chain,
            clock=clock,
        )

    async def tick(self) -> list[ReportOutcome]:
        return await self.reporter.report()

    def _record(self, result: list[ReportOutcome]) -> None:
        for outcome in result:
            self.metrics.inc(f"reports_{outcome.state}")
            if outcome.state == "signed":
                log.info("signed the price of 0x%s for slot %d: %s", outcome.asset.hex(), outcome.slot, outcome.price)


class PosterJob(SlotJob):
    """Posts every asset's newest agreeing quorum of reports to the oracle."""

    name = "price-poster"

    def __init__(
        self,
        store: AttestationStore,
        oracle: PriceOracle,
        domain: Domain,
        key: str | None,
        assets: Sequence[bytes],
        interval: int,
        *,
        committees: Committee | Callable[[int], Sequence[Committee]],
        max_age: int,
        max_spread_bps: int,
        clock: Callable[[], float] = time.time,
        offset: float | None = None,
        scheduler: AsyncIOScheduler | None = None,
    ) -> None:
        super().__init__(interval, _offset(interval, 0.5) if offset is None else offset, scheduler=scheduler, job_id=f"price-poster-{oracle.address.lower()}")
        self.poster = Poster(store, oracle, domain, key, assets, committees=committees, max_age=max_age, max_spread_bps=max_spread_bps, clock=clock)

    async def tick(self) -> list[PostOutcome]:
        return await self.poster.post()

    def _record(self, result: list[PostOutcome]) -> None:
        for outcome in result:
            self.metrics.inc(f"posts_{outcome.state}")
            if outcome.state in ("posted", "tripped"):
                log.info("price of 0x%s for slot %s: %s (%s)", outcome.asset.hex(), outcome.slot, outcome.state, outcome.tx_hash)


def _offset(interval: int, fraction: float) -> float:
    """``fraction`` of the slot, at most 30 s in (a long slot still reports and posts early)."""
    return min(interval * fraction, 30.0) if interval > 1 else 0.0
