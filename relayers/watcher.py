"""The watcher daemon: finishes swaps for parties that are offline.

    bridgectl relayer run watcher [--port N] [--evm-key-env VAR] [--stuck-blocks N]

HTTP (on the shared ``relayers.runner``, beside /health and /metrics):

* ``POST /jobs``: a watch job (``bridge.watch.jobs``); audited on chain before it is
  stored.  201 with the job when new, 200 when the same job was already there, 400
  with ``reason`` when refused, 409 for another job on the same HTLC.
* ``GET /jobs/{id}``: the job, its state and every action it took.

The jobs step on the runtime (``bridge.runtime``, ``bridge.watch.operations``): each as it
comes due, again on every new block of its chain, a new job at once, every ``poll_interval``
at the latest while it waits; a failing step is retried with a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aiohttp import web

from bridge.core.db import make_engine
from bridge.core.errors import NotFound
from bridge.core.retry import RetryPolicy
from bridge.core.settings import Settings
from bridge.runtime import Runtime
from bridge.watch.actions import WatchPolicy, Watcher, describe
from bridge.watch.models import WatchJob
from bridge.watch.operations import WatchOperations
from bridge.watch.store import WatchStore
from chains.bitcoin import BitcoinAdapter
from chains.evm import EvmAdapter
from relayers.runner import Metrics, Runner, json_body, json_handler

log = logging.getLogger("relayers.watcher")

#: The watcher's HTTP port unless told otherwise.
DEFAULT_PORT = 8700

#: A job id as ``bridge.watch.jobs.JobSpec.id`` makes it.
JOB_ID = re.compile(r"[0-9a-f]{32}")


class WatcherDaemon:
    name = "watcher"

    def __init__(self, watcher: Watcher, poll_interval: float = 0.5) -> None:
        self.watcher = watcher
        self.poll_interval = poll_interval
        self.metrics = Metrics("bridge_watcher")
        chains = {name: adapter for name, adapter in (("bitcoin", watcher.btc), ("evm", watcher.evm)) if adapter is not None}
        # One job at a time (``bridge.watch.operations``); a failing job is retried from one poll
        # interval up to ten, as it was never held up longer than a poll before.
        self.runtime = Runtime(
            WatchOperations(watcher),
            "watch job",
            chains=chains,
            poll_interval=poll_interval,
            max_concurrency=1,
            backoff=RetryPolicy(base_delay=poll_interval, max_delay=10 * poll_interval, jitter=0.2),
            after_step=lambda job_id: self._gauges(),
        )

    @classmethod
    async def from_settings(
        cls, settings: Settings, evm_key: str | None = None, stuck_blocks: int | None = None, poll_interval: float = 0.5
    ) -> "WatcherDaemon":
        """The watcher over the configured chains and database; its adapters close when it stops."""
        btc, evm = BitcoinAdapter.from_settings(settings), EvmAdapter.from_settings(settings.evm)
        try:
            await evm.chain_id_int()
        except BaseException:
            await btc.close()
            await evm.close()
            raise
        confirmations = max(settings.bitcoin.confirmations, settings.evm.confirmations, 1)
        policy = WatchPolicy(confirmations=confirmations) if stuck_blocks is None else WatchPolicy(stuck_blocks=stuck_blocks, confirmations=confirmations)
        return cls(Watcher(WatchStore(make_engine(settings.db_url)), btc, evm, evm_key, policy), poll_interval)

    async def run(self, stop: asyncio.Event) -> None:
        self._gauges()
        try:
            await self.runtime.run(stop)
        finally:
            for adapter in (self.watcher.btc, self.watcher.evm):
                if adapter is not None:
                    await adapter.close()

    def _gauges(self) -> None:
        for state, n in self.watcher.store.counts().items():
            self.metrics.set(f"jobs_{state}", n)

    # --- HTTP ------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/jobs", self._submit), web.get("/jobs/{id}", json_handler(self._get))]

    async def _submit(self, req: web.Request) -> web.Response:
        created: list[bool] = []

        async def handler(r: web.Request) -> dict[str, Any]:
            job, new = await self.watcher.submit(await json_body(r))
            created.append(new)
            if new:
                self.metrics.inc("jobs_accepted")
                log.info("accepted %s job %s on %s", job.kind, job.id, job.chain)
                self.runtime.nudge([job.id])  # stored due now: look at it at once
            return self._view(job)

        response = await json_handler(handler)(req)
        if created == [True]:
            response.set_status(201)
        elif response.status in (400, 413):
            self.metrics.inc("jobs_refused")
        return response

    async def _get(self, req: web.Request) -> dict[str, Any]:
        job_id = req.match_info["id"]
        if not JOB_ID.fullmatch(job_id):  # not an id we could have made: no database round trip
            raise NotFound(f"no watch job {job_id[:40].encode('unicode_escape').decode()!r}")
        return self._view(self.watcher.store.get(job_id))

    def _view(self, job: WatchJob) -> dict[str, Any]:
        return describe(job, self.watcher.store.actions(job.id), self.watcher.store.spend_versions(job.id))


async def run(
    settings: Settings,
    *,
    evm_key: str | None = None,
    stuck_blocks: int | None = None,
    poll_interval: float = 0.5,
    host: str | None = None,
    port: int | None = None,
) -> int:
    """``bridgectl relayer run watcher``: the daemon on the one runner until SIGTERM/SIGINT."""
    daemon = await WatcherDaemon.from_settings(settings, evm_key, stuck_blocks, poll_interval)
    runner = Runner(daemon, settings, http_host=host or "127.0.0.1", http_port=port or DEFAULT_PORT, extra_routes=daemon.routes())
    return await runner.run()
