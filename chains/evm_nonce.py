"""Nonces for local keys, safe under many concurrent senders in one process.

One ``asyncio.Lock`` per sender is held from picking the nonce until the node has
answered the broadcast.  That costs one round trip of serialisation per sender,
and buys the property that matters: the next nonce is only taken once the node
has the previous one, so there is never a gap or a clash, and a nonce whose
broadcast was refused is simply handed out again.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

from bridge.core.errors import ContractReverted, InsufficientFunds, RpcError


class NonceManager:
    def __init__(self, pending_count: Callable[[str], Awaitable[int]]) -> None:
        #: Reads ``eth_getTransactionCount(address, "pending")``.
        self._pending_count = pending_count
        self._locks: dict[str, asyncio.Lock] = {}
        self._next: dict[str, int] = {}

    def _lock(self, address: str) -> asyncio.Lock:
        key = address.lower()
        if key not in self._locks:
            self._locks[key] = asyncio.Lock()
        return self._locks[key]

    @asynccontextmanager
    async def reserve(self, address: str) -> AsyncIterator[int]:
        """Yield the next nonce for ``address``; it counts as used only if the block exits cleanly.

        On ``NonceConflict`` (someone else used it) or an unknown outcome (the node
        went away mid-broadcast) the local counter is dropped, so the next
        reservation re-reads the node's pending count.  On any other refusal the
        node did not take the transaction, and the same nonce is reserved next.
        """
        key = address.lower()
        async with self._lock(key):
            if key not in self._next:
                self._next[key] = await self._pending_count(address)
            nonce = self._next[key]
            try:
                yield nonce
            except (RpcError, InsufficientFunds, ContractReverted):
                raise  # the node refused this transaction: the nonce is still free
            except BaseException:
                # A nonce conflict, or the node went away / we were cancelled
                # mid-broadcast: whether the node took it is unknown, so ask again.
                self._next.pop(key, None)
                raise
            self._next[key] = nonce + 1

    def forget(self, address: str) -> None:
        """Drop what is known about ``address`` (after an outside sender used the key)."""
        self._next.pop(address.lower(), None)

    def forget_all(self) -> None:
        """Drop every counter (after the chain was rewound: snapshot revert, reorg)."""
        self._next.clear()
