"""The critical section around choosing coins or a nonce and recording what was chosen.

Two swaps must never pick the same Bitcoin coins or the same EVM nonce: choosing and
recording (the recorded transaction then reserves what it spends) happen under one lock per
chain.  Within a process that is an ``asyncio.Lock``; across processes sharing one SQLite
swap database (two ``swap start`` at once) it is also an advisory lock on a file next to the
database, so the second process chooses only after the first has recorded.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from bridge.core.errors import BridgeError


class GuardBusy(BridgeError):
    """Another process held the prepare lock for longer than we wait; the step is retried."""

    retryable = True


class PrepareGuard:
    def __init__(self, lock_file: Path | None = None, wait: float = 30.0) -> None:
        self.lock_file = lock_file
        self.wait = wait
        self._local = asyncio.Lock()
        self._fd: int | None = None

    async def __aenter__(self) -> "PrepareGuard":
        await self._local.acquire()
        try:
            if self.lock_file is not None:
                self._fd = await self._lock_file()
        except BaseException:
            self._local.release()
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
        finally:
            self._local.release()

    async def _lock_file(self) -> int:
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.wait
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise GuardBusy(f"another process has held {self.lock_file} for over {self.wait:.0f}s") from None
                # flock has no awaitable form: poll, backing off, without blocking the event loop.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
            except BaseException:
                os.close(fd)
                raise


def sqlite_lock_file(db_url: str, chain: str) -> Path | None:
    """The lock file for ``chain`` next to a SQLite database file; None for other databases
    (a server database is shared across hosts, where one process per party is the rule)."""
    if not db_url.startswith("sqlite:///"):
        return None
    path = db_url.removeprefix("sqlite:///")
    if not path or path == ":memory:":
        return None
    db = Path(path)
    return db.with_name(f"{db.name}.{chain}.lock")
