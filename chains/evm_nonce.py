"""The one EVM nonce allocator: every EVM sender of ours, in every process kind, asks it.

Two ways to use it, one rule (``next_nonce``):

* ``next_free(address, held)``: for senders that record a signed transaction before sending it
  (swap legs, the watcher).  The next nonce is past both the node's pending count and every
  nonce ``held`` by a recorded, still intended transaction at or above the mined count: a
  transaction recorded before a crash keeps its nonce until it is sent, and a held nonce
  below the mined count is spent (by that transaction or another), not ours to skip.  The
  caller serialises its own choices (the swap engine's per-chain prepare guard, the watcher's
  one unsent spend at a time).
* ``reserve(address)``: for sign-and-send at once (``EvmAdapter.transact``).  One
  ``asyncio.Lock`` per sender is held from picking the nonce until the node has answered the
  broadcast.  That costs one round trip of serialisation per sender, and buys the property
  that matters: the next nonce is only taken once the node has the previous one, so there is
  never a gap or a clash, and a nonce whose broadcast was refused is simply handed out again.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable, Iterable

from bridge.core.errors import ContractReverted, InsufficientFunds, RpcError


def next_nonce(mined: int, pending: int, held: Iterable[int]) -> int:
    """The rule: past the node's pending count and every held nonce at or above the mined count."""
    return max([pending, *(n + 1 for n in held if n >= mined)])


class NonceManager:
    def __init__(self, pending_count: Callable[[str], Awaitable[int]], mined_count: Callable[[str], Awaitable[int]] | None = None) -> None:
        #: Read ``eth_getTransactionCount(address, "pending")`` and ``(address, "latest")``.
        self._pending_count = pending_count
        self._mined_count = mined_count
        self._locks: dict[str, asyncio.Lock] = {}
        self._next: dict[str, int] = {}

    async def next_free(self, address: str, held: Iterable[int] = ()) -> int:
        """The nonce for ``address``'s next transaction (see the module docstring).  The mined count
        matters only beside held nonces: without any, the pending count alone is asked."""
        held = list(held)
        if not held or self._mined_count is None:
            return next_nonce(0, await self._pending_count(address), held)
        mined, pending = await asyncio.gather(self._mined_count(address), self._pending_count(address))
        return next_nonce(mined, pending, held)

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
                self._next[key] = await self.next_free(address)
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
