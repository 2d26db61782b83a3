"""Named fault-injection points, for tests: a long operation calls ``await faults.hit(point, **context)``
at each named moment (the swap engine's points are ``bridge.swaps.engine.FAULT_POINTS``, the same names
``tests/swap_harness.py`` kills processes at); a test registers what happens there instead of patching
private methods.  With nothing registered a hit is one dict look-up.

    engine.faults.at("lock.before_broadcast", crash, when=lambda leg, **_: leg.chain == "bitcoin", times=1)
"""

from __future__ import annotations

import inspect
from typing import Any, Callable


class Faults:
    def __init__(self) -> None:
        self._at: dict[str, list[list[Any]]] = {}

    def at(self, point: str, action: Callable[..., Any], *, when: Callable[..., bool] | None = None, times: int | None = None) -> Callable[[], None]:
        """Run ``action(**context)`` (sync or async; it may raise) each time ``point`` is hit and
        ``when(**context)`` holds, at most ``times`` times.  Returns a function that removes it."""
        entry = [action, when, times]
        self._at.setdefault(point, []).append(entry)

        def remove() -> None:
            entries = self._at.get(point, [])
            entries[:] = [e for e in entries if e is not entry]

        return remove

    def clear(self) -> None:
        self._at.clear()

    async def hit(self, point: str, **context: Any) -> None:
        entries = self._at.get(point)
        if not entries:
            return
        for entry in list(entries):
            action, when, times = entry
            if when is not None and not when(**context):
                continue
            if times is not None:
                entry[2] = times - 1
                if entry[2] <= 0:
                    entries[:] = [e for e in entries if e is not entry]
            result = action(**context)
            if inspect.isawaitable(result):
                await result

    def __bool__(self) -> bool:
        return any(self._at.values())
