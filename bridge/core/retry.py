"""One typed retry policy for everything that talks to a chain or a database.

Only errors whose class says ``retryable = True`` are retried; everything else is
raised at once.  Callers mark an operation as safe to repeat by going through
``RetryPolicy.run``; broadcasting is *not* wrapped blindly: a failed broadcast is
first checked against the chain (see the chain adapters' ``send``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

from bridge.core.errors import BridgeError

T = TypeVar("T")
log = logging.getLogger("bridge.core.retry")


#: Database errors that say "another writer was first; the same transaction again can succeed":
#: SQLite's busy/locked, PostgreSQL's serialization failure, deadlock and lock timeout.
_TRANSIENT_DB = ("database is locked", "database table is locked", "database is busy")
_TRANSIENT_PGCODES = {"40001", "40P01", "55P03"}


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, BridgeError):
        return exc.retryable
    if _is_transient_db(exc):
        return True
    # Transport failures below our own error mapping (aiohttp, sockets) are transient.
    return isinstance(exc, (ConnectionError, asyncio.TimeoutError, TimeoutError))


def _is_transient_db(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)  # SQLAlchemy wraps the driver's error
    if getattr(orig, "pgcode", None) in _TRANSIENT_PGCODES:
        return True
    return type(orig).__name__ == "OperationalError" and any(t in str(orig).lower() for t in _TRANSIENT_DB)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.05
    max_delay: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.1
    retry_on: Callable[[BaseException], bool] = field(default=is_retryable)

    def delay(self, attempt: int) -> float:
        """Backoff before attempt ``attempt + 1`` (attempt counts from 1)."""
        d = min(self.max_delay, self.base_delay * self.multiplier ** (attempt - 1))
        return d * (1 + random.uniform(-self.jitter, self.jitter))

    async def run(self, fn: Callable[[], Awaitable[T]], *, what: str = "call") -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await fn()
            except BaseException as exc:  # noqa: BLE001 - filtered right below
                if isinstance(exc, asyncio.CancelledError) or not self.retry_on(exc) or attempt >= self.attempts:
                    raise
                wait = self.delay(attempt)
                log.debug("retrying %s after %s (attempt %d/%d, %.2fs)", what, exc, attempt, self.attempts, wait)
                await asyncio.sleep(wait)

    def run_sync(self, fn: Callable[[], T], *, what: str = "call") -> T:
        """``run`` for blocking callers (database work done in a worker thread or a CLI)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - filtered right below
                if not self.retry_on(exc) or attempt >= self.attempts:
                    raise
                wait = self.delay(attempt)
                log.debug("retrying %s after %s (attempt %d/%d, %.2fs)", what, exc, attempt, self.attempts, wait)
                time.sleep(wait)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)
