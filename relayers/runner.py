"""The one runner every relayer daemon sits on.

A daemon is a class with ``name`` and ``async def run(self, stop: asyncio.Event)``;
the runner gives it settings, logging, metrics, an HTTP endpoint for
``/health`` and ``/metrics`` (Prometheus text format), SIGTERM/SIGINT handling,
and a graceful shutdown: ``stop`` is set, the daemon gets ``shutdown_grace``
seconds to finish its current step, then it is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web

from bridge.core import jsonsafe
from bridge.core.errors import BridgeError, Conflict, InputError, NotFound
from bridge.core.jsonsafe import MAX_BODY, JsonRefused
from bridge.core.settings import Settings

log = logging.getLogger("relayers.runner")


class Metrics:
    """Counters and gauges, labelled by name only; enough for operators and tests."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.counters: dict[str, int] = defaultdict(int)
        self.gauges: dict[str, float] = {}
        self.started = time.time()

    def inc(self, name: str, by: int = 1) -> None:
        self.counters[name] += by

    def set(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def render(self) -> str:
        lines = [f"{self.prefix}_uptime_seconds {time.time() - self.started:.3f}"]
        lines += [f"{self.prefix}_{k}_total {v}" for k, v in sorted(self.counters.items())]
        lines += [f"{self.prefix}_{k} {v}" for k, v in sorted(self.gauges.items())]
        return "\n".join(lines) + "\n"


# --- HTTP endpoints of the daemons ------------------------------------------------


async def json_body(req: web.Request) -> dict[str, Any]:
    """The request's JSON object, parsed with ``bridge.core.jsonsafe`` bounds; a ``JsonRefused``
    (400, or 413 for a body over ``MAX_BODY``) or an ``InputError`` (400) when it is not one."""
    body = jsonsafe.loads(await jsonsafe.read_capped(req, what="request body"))
    if not isinstance(body, dict):
        raise InputError("request body must be a JSON object")
    return body


def error_status(exc: BridgeError) -> int:
    """The HTTP status of a refusal: 4xx for anything the caller sent, 503 when retrying may help."""
    if isinstance(exc, JsonRefused):
        return exc.status
    declared = getattr(exc, "http_status", None)  # a refusal that names its own (e.g. 429 Too Many Requests)
    if isinstance(declared, int) and 400 <= declared < 600:
        return declared
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    return 503 if exc.retryable else 400


def error_response(error: str, message: str, status: int, headers: Any = None) -> web.Response:
    """The one error shape every daemon answers: ``{"error": ..., "message": ...}``."""
    return web.json_response({"error": error, "message": message}, status=status, headers=headers)


def json_handler(handler: Callable[[web.Request], Awaitable[dict[str, Any]]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Answer JSON; a refusal is a 4xx whose body names the reason, anything else a 500."""

    async def wrapped(req: web.Request) -> web.Response:
        try:
            return web.json_response(await handler(req))
        except BridgeError as exc:
            return web.json_response(exc.to_dict(), status=error_status(exc))
        except web.HTTPException:
            raise  # aiohttp's own answers (413 of client_max_size...): made JSON by ``json_errors``
        except Exception as exc:  # noqa: BLE001 - the client gets a 500, the log the trace
            log.exception("%s %s failed", req.method, req.path)
            return error_response(type(exc).__name__, str(exc)[:1000], 500)

    return wrapped


#: aiohttp's own refusals, named like ours.
_HTTP_ERRORS = {400: "InputError", 404: "NotFound", 405: "MethodNotAllowed", 413: "TooLarge"}


@web.middleware
async def json_errors(req: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every error a daemon answers is JSON: aiohttp's own (unknown route 404, 405, the 413 of
    ``client_max_size``) included, and a bug escaping a handler is a JSON 500."""
    try:
        return await handler(req)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        message = f"{exc.reason}: {req.method} {req.path}" if exc.status in (404, 405) else (exc.text or exc.reason)
        return error_response(_HTTP_ERRORS.get(exc.status, type(exc).__name__.removeprefix("HTTP")), message, exc.status, headers)
    except BridgeError as exc:
        return web.json_response(exc.to_dict(), status=error_status(exc))
    except Exception as exc:  # noqa: BLE001 - the client gets a 500, the log the trace
        log.exception("%s %s failed", req.method, req.path)
        return error_response(type(exc).__name__, str(exc)[:1000], 500)


class Daemon(Protocol):
    name: str
    metrics: Metrics

    async def run(self, stop: asyncio.Event) -> None: ...


@dataclass
class Runner:
    daemon: Daemon
    settings: Settings
    http_host: str = "127.0.0.1"
    http_port: int | None = None  # None: no HTTP endpoint
    shutdown_grace: float = 10.0
    extra_routes: list[web.RouteDef] = field(default_factory=list)

    async def _serve_http(self) -> web.AppRunner | None:
        if self.http_port is None:
            return None
        app = web.Application(middlewares=[json_errors], client_max_size=MAX_BODY)

        async def health(_req: web.Request) -> web.Response:
            return web.json_response({"daemon": self.daemon.name, "ok": True})

        async def metrics(_req: web.Request) -> web.Response:
            return web.Response(text=self.daemon.metrics.render(), content_type="text/plain")

        app.add_routes([web.get("/health", health), web.get("/metrics", metrics), *self.extra_routes])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.http_host, self.http_port)
        await site.start()
        log.info("%s serving http on %s:%s", self.daemon.name, self.http_host, self.http_port)
        return runner

    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread / not POSIX
                pass
        http = await self._serve_http()
        task = asyncio.create_task(self.daemon.run(stop), name=self.daemon.name)
        log.info("%s started", self.daemon.name)
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()  # a daemon that returns or raises on its own ends the process
                return 0
            log.info("%s stopping (grace %.1fs)", self.daemon.name, self.shutdown_grace)
            try:
                await asyncio.wait_for(asyncio.shield(task), self.shutdown_grace)
            except asyncio.TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            return 0
        finally:
            stopper.cancel()
            if not task.done():
                # Cancelled from outside (an embedding program or a test): the daemon must not
                # outlive its runner.
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if http is not None:
                await http.cleanup()
            log.info("%s stopped", self.daemon.name)


def run_daemon(daemon: Daemon, settings: Settings, **kwargs) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(Runner(daemon, settings, **kwargs).run())
