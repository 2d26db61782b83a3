"""The liquidity provider's daemon: quotes and swap requests over HTTP, and its swap engine.

    bridgectl relayer run lp [--swap-config swaps.toml]

Runs on the shared ``relayers.runner`` (health, metrics, graceful SIGTERM); the
engine steps every unfinished LP swap: audit the trader's lock, lock, claim once
the secret is revealed, refund at expiry.  Restart-safe: the state is in the database.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from bridge.swaps.limits import check_swap_id
from bridge.core.settings import Settings
from bridge.swaps.config import SwapConfig
from bridge.swaps.party import Party
from bridge.swaps.protocol import LiquidityProvider, base_units, describe
from bridge.swaps.store import SwapView
from relayers.runner import Metrics, Runner, json_body, json_handler

log = logging.getLogger("relayers.lp")


class LpDaemon:
    name = "lp"

    def __init__(self, party: Party) -> None:
        self.party = party
        self.metrics = Metrics("bridge_lp")
        self.provider = LiquidityProvider(party.store, party.legs, party.assets, party.config.markets(), party.config.policy(), party.config.lp.limits())
        party.engine.on_transition = self._count

    def _count(self, view: SwapView) -> None:
        self.metrics.inc(f"swaps_{view.swap.state}")

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.party.engine.run(stop)
        finally:
            await self.party.close()

    # --- HTTP ------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/quote", json_handler(self._quote)),
            web.post("/swaps", json_handler(self._accept)),
            web.get("/swaps/{id}", json_handler(self._status)),
            web.post("/swaps/{id}/lock", json_handler(self._lock_notice)),
        ]

    async def _quote(self, req: web.Request) -> dict[str, Any]:
        q = req.query
        return self.provider.quote(q.get("sell", ""), q.get("buy", ""), base_units(q.get("amount", ""), "amount"))

    async def _accept(self, req: web.Request) -> dict[str, Any]:
        answer = await self.provider.accept(await json_body(req), client=req.remote or "unknown")
        self.metrics.inc("swaps_accepted")
        self.party.engine.nudge()
        return answer

    async def _status(self, req: web.Request) -> dict[str, Any]:
        return describe(self.party.store.get(check_swap_id(req.match_info["id"])))

    async def _lock_notice(self, req: web.Request) -> dict[str, Any]:
        answer = self.provider.lock_notice(req.match_info["id"], await json_body(req))
        self.party.engine.nudge([req.match_info["id"]])
        return answer


async def run(settings: Settings, config: SwapConfig, *, host: str | None = None, port: int | None = None) -> int:
    """``bridgectl relayer run lp``: the LP daemon on the one runner until SIGTERM/SIGINT."""
    daemon = LpDaemon(await Party.open(settings, config))
    runner = Runner(daemon, settings, http_host=host or config.lp.host, http_port=port or config.lp.port, extra_routes=daemon.routes())
    return await runner.run()
