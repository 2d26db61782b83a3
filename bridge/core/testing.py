"""Helpers for integration tests across the devnets (ours, and those of bridge users).

``wait_until`` is the only way tests wait: on a condition, with a deadline, and
with a message that says what never happened.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable


class WaitTimeout(AssertionError):
    pass


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str | None = None,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last_exc = None
        except AssertionError as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            desc = what or getattr(predicate, "__name__", "condition")
            msg = f"timed out after {timeout:.1f}s waiting for {desc}"
            if last_exc is not None:
                msg += f" (last failure: {last_exc})"
            raise WaitTimeout(msg)
        await asyncio.sleep(interval)


def wait_until_sync(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what or getattr(predicate, '__name__', 'condition')}")
        time.sleep(interval)
