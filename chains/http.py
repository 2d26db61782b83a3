"""One keep-alive aiohttp session per event loop, for the JSON-RPC and HTTP clients.

A session is bound to the loop it was made in; a client reused from another loop (pytest
gives each test its own) gets a fresh session instead of failing.
"""

from __future__ import annotations

import asyncio

import aiohttp


class LoopSession:
    def __init__(self, timeout: float, max_connections: int = 100) -> None:
        self.timeout = timeout
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._loop = loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def close(self) -> None:
        """Close this loop's session; one made in another loop is left to that loop."""
        if self._session is not None and not self._session.closed and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None
