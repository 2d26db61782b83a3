"""What the swap engine asks of a leg, whatever its chain: the ``Leg`` protocol, its typed
results, and the two answers a leg gives besides its results (``LockRefused``, ``NotYet``).

Field dicts (``dict[str, Any]``) returned by ``prepare_*``/``broadcast_*``/``renew`` are
``SwapLeg`` columns to record, written by the engine in the same transition as the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from bridge.core.dbapi import Db
from bridge.core.errors import BridgeError, InputError
from bridge.swaps.clock import ChainClock
from bridge.swaps.models import SwapLeg
from bridge.swaps.store import SwapView
from bridge.swaps.timelock import ChainTime
from chains.base import ChainAdapter

if TYPE_CHECKING:
    from bridge.swaps.observe import ChainIndex


class LockRefused(InputError):
    """The counterparty's lock is not what was agreed; ``reason`` names the difference."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(f"lock refused: {reason}", reason=reason, **details)
        self.reason = reason


class NotYet(BridgeError):
    """Something the step waits for is not there yet (a lock, confirmations, a pending tx).

    ``on_event``: what it waits for arrives as an event the indexer or the LP's API wakes the
    swap for, so the engine need not poll for it (it re-checks now and then all the same).
    ``on_block``: it can only change with a new block on this chain (confirmations, a timelock):
    the engine steps the swap again when the node announces one.
    """

    retryable = True

    def __init__(self, message: str, *, on_event: bool = False, on_block: str | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.on_event = on_event
        self.on_block = on_block


@dataclass(frozen=True)
class LockSeen:
    ref: str
    tx: str
    amount: int
    expiry: int
    confirmations: int


class Leg(Protocol):
    """One swap leg's chain work; ``bitcoin.BitcoinLeg`` and ``evm.EvmLeg`` implement it.

    Every broadcast is safe to repeat: transactions are signed once (``prepare_*``), stored by
    the engine with the intent, and re-sent byte for byte (the adapters' ``send`` is
    idempotent), so a restart never locks or claims twice.  A stuck claim/refund is replaced
    by a version with a higher fee (``prepare_bump``); every version is kept, any may be mined.
    """

    #: The chain family (``chains.base.BITCOIN`` or ``EVM``): the key of the engine's ``legs``.
    chain: str
    adapter: ChainAdapter
    clock: ChainClock
    #: What the indexer keeps for our swaps on this chain (``observe.SwapObservers``); None: the leg
    #: reads the chain itself.
    index: "ChainIndex | None"
    #: Whether the indexer finds the counterparty's lock on this chain before it is reported
    #: (``find_lock``); if not, only the counterparty can report it, and a new block may confirm it.
    finds_locks: bool

    @property
    def identity(self) -> str:
        """What the counterparty names us by on this chain (a pubkey, an address)."""
        ...

    def observer(self, db: Db, wake: Callable[[set[str]], None]) -> tuple[Any, Any]:
        """``(consumer, selector)`` of this chain's indexer (``observe.SwapObservers``): the consumer
        (``chains.indexer.IndexerConsumer``) keeps what concerns our swaps in ``db`` and tells ``wake``
        which swaps that made due; the selector (``adapter.events``' filter, or a callable returning
        one per batch) says where to look."""
        ...

    async def now(self) -> ChainTime: ...

    def time_left_text(self, leg: SwapLeg, now: ChainTime) -> str:
        """How long until ``leg``'s expiry (set), in this chain's units, for a status note."""
        ...

    async def balance(self, token: str | None, include_reserved: bool = False) -> int: ...

    # --- our lock
    async def prepare_lock(self, view: SwapView, leg: SwapLeg) -> dict[str, Any]: ...

    async def broadcast_lock(self, view: SwapView, leg: SwapLeg, fresh: bool = False) -> dict[str, Any]: ...

    async def lock_confirmations(self, view: SwapView, leg: SwapLeg) -> int: ...

    # --- the counterparty's lock
    async def audit_lock(self, view: SwapView, leg: SwapLeg, ref: str, script_hex: str | None) -> LockSeen: ...

    async def find_lock(self, view: SwapView, leg: SwapLeg) -> dict[str, Any] | None: ...

    # --- secret and spends
    async def find_secret(self, view: SwapView, leg: SwapLeg) -> bytes | None: ...

    async def settled(self, view: SwapView, leg: SwapLeg) -> str | None:
        """ "claimed", "refunded", or None while the chain has not settled the HTLC for good."""
        ...

    async def prepare_spend(self, view: SwapView, leg: SwapLeg, kind: str, secret: bytes | None, feerate: int | None = None) -> dict[str, Any]: ...

    async def prepare_bump(self, view: SwapView, leg: SwapLeg, kind: str, secret: bytes | None) -> tuple[dict[str, Any], str]: ...

    async def broadcast_spend(self, view: SwapView, leg: SwapLeg, fresh: bool = False) -> None: ...

    async def spend_confirmations(self, view: SwapView, leg: SwapLeg) -> int: ...

    # --- recorded transactions another one made invalid (EVM nonces)
    async def stale(self, view: SwapView, leg: SwapLeg, what: str) -> bool: ...

    async def renew(self, view: SwapView, leg: SwapLeg, what: str) -> tuple[dict[str, Any], str] | None: ...
