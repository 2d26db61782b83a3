"""The swap engine: the swap state machine's handlers (``bridge.swaps.handlers``) on the runtime
of long operations (``bridge.runtime``), the ledger booking, and the operator commands.

A step reads the swap, looks at the chains, and either records a transition (with
whatever it must remember, e.g. a signed transaction, *before* broadcasting it) or
defers the swap with the reason it waits (shown by ``swap status``).  Handlers are
idempotent: running one twice, or after a crash at any point, repeats only safe
actions (re-broadcast of stored bytes: Bitcoin's and EVM's transactions alike are signed,
recorded, then sent).

Initiator (trader):  created -> initiator_lock_intended -> initiator_locked
    -> participant_locked -> claim_intended -> claimed
    (from initiator_locked/participant_locked at its own expiry: refund_intended -> refunded;
    its claim confirmed but its own lock still unclaimed at its expiry: claim_intended
    -> refund_intended -> claimed, the own leg's outcome "refunded")
Participant (LP):    created -> participant_lock_intended -> participant_locked
    -> claim_intended -> claimed
    (refused lock or no lock in time: failed; own expiry without the secret: refund_intended -> refunded)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable, Protocol

from bridge.core.errors import Conflict, InputError
from bridge.core.faults import Faults
from bridge.core.retry import RetryPolicy
from bridge.runtime import ERROR_BACKOFF, Runtime, Wait
from bridge.swaps import models as m
from bridge.swaps.guard import PrepareGuard
from bridge.swaps.handlers import SwapHandlers, replace_leg, replace_swap
from bridge.swaps.legs import Leg, LockRefused, NotYet
from bridge.swaps.models import INITIATOR, PARTICIPANT, SwapLeg
from bridge.swaps.store import SwapStore, SwapView
from bridge.swaps.timelock import TimelockPolicy

if TYPE_CHECKING:
    from bridge.swaps.books import SwapBooks
    from bridge.swaps.observe import SwapObservers
    from chains.base import BlockRef

log = logging.getLogger("bridge.swaps")

#: Backoff for errors (not for plain waiting, which polls at ``poll_interval``): the runtime's.
__all__ = ["ERROR_BACKOFF", "FAULT_POINTS", "LpPort", "SwapEngine", "replace_leg", "replace_swap"]
#: Where ``SwapEngine.faults`` lets a test step in (``bridge.core.faults``; the names of the crash points of
#: ``tests/swap_harness.py``): around each lock and claim/refund broadcast (context ``view``, ``leg``), and
#: ``handle.<state>`` before the handler of a swap in that state runs (context ``view``).
FAULT_POINTS = ("lock.before_broadcast", "lock.after_broadcast", "spend.before_broadcast", "spend.after_broadcast", "handle.<state>")


class LpPort(Protocol):
    """What the initiator's engine needs from the LP (``protocol.LpClient`` over HTTP)."""

    async def accept(self, view: SwapView) -> dict: ...

    async def notify_locked(self, view: SwapView) -> None: ...

    async def participant_lock(self, view: SwapView) -> dict | None: ...


@dataclass
class SwapEngine(SwapHandlers):
    store: SwapStore
    legs: dict[str, Leg]  # by chain: "bitcoin", "evm"
    policy: TimelockPolicy = field(default_factory=TimelockPolicy)
    confirmations: dict[str, int] = field(default_factory=lambda: {"bitcoin": 1, "evm": 1})
    lp: LpPort | None = None
    poll_interval: float = 0.5
    error_backoff: RetryPolicy = ERROR_BACKOFF
    max_concurrency: int = 16
    #: A claim/refund unconfirmed this long (seconds) is replaced with a higher fee.
    bump_after: float = 600.0
    #: Per chain: choosing coins (Bitcoin) or a nonce (EVM) for a transaction and recording it
    #: are one critical section, so two swaps stepping at once never pick the same coins or
    #: nonce (recorded ones are reserved).
    _prepare_guards: dict[str, PrepareGuard] = field(default_factory=dict, repr=False)
    #: Per chain, a file to lock as well, for processes sharing this swap database (``guard.py``).
    lock_file: Callable[[str], Path | None] = field(default=lambda chain: None, repr=False)
    #: Records each transition's facts in the ledger (``books.SwapBooks``).
    books: "SwapBooks | None" = None
    #: Called after every transition (metrics, progress output).
    on_transition: Callable[[SwapView], Awaitable[None] | None] | None = None
    #: The indexers that wake swaps on their chain events (``observe.SwapObservers``); without
    #: them every waiting swap is polled at ``poll_interval``.
    observers: "SwapObservers | None" = None
    #: A swap waiting for an event the observers deliver is re-checked this often regardless.
    idle_recheck: float = 5.0
    #: LP side: seconds after acceptance by which the trader's lock must have been seen on chain,
    #: else the swap fails and its inventory reservation ends (``protocol.LpLimits``).
    lock_window: float = 600.0
    #: The scheduler the swaps step on (``bridge.runtime``), over the store and ``_handle``.
    runtime: Runtime = field(init=False, repr=False)
    #: Transitions recorded but not booked yet (``_book_soon``), the latest view of each swap.
    _unbooked: dict[str, SwapView] = field(default_factory=dict, repr=False)
    #: Named fault-injection points for tests (``FAULT_POINTS``); empty in production.
    faults: Faults = field(default_factory=Faults, repr=False)

    # --- running ----------------------------------------------------------------

    def record(self, view: SwapView) -> None:
        """Book the swap's facts; a failure is logged and redone by the next ``catch_up``."""
        if self.books is None:
            return
        try:
            self.books.record(view)
        except Exception:  # noqa: BLE001 - the swap must go on; the books are idempotent and caught up later
            log.exception("swap %s: ledger recording failed", view.swap.id)
            return
        self.store.mark_booked(view.swap.id, view.swap.updated_at)

    def _book_soon(self, view: SwapView) -> None:
        """Book a transition when the step ends, after the chain actions it leads to: only the
        swap row must be written before acting on chain; the books follow from it, and
        ``catch_up`` redoes any a crash cut off.  (Booked at once, the ledger write sat between
        every intent and its broadcast.)"""
        self._unbooked[view.swap.id] = view

    def _book_pending(self) -> None:
        pending, self._unbooked = self._unbooked, {}
        for view in pending.values():
            self.record(view)

    def catch_up(self) -> None:
        """Re-record the swaps changed since their books were written (a crash between a transition
        and its ledger write, or a ledger failure); recording is idempotent."""
        for swap_id in self.store.unbooked():
            self.record(self.store.get(swap_id, with_actions=False))

    def __post_init__(self) -> None:
        self.runtime = Runtime(_SwapOperations(self), "swap", after_step=lambda swap_id: self._book_pending())

    def _configured(self) -> Runtime:
        """The runtime with this engine's settings as they are now (a party sets them after construction)."""
        rt = self.runtime
        rt.poll_interval, rt.idle_recheck, rt.max_concurrency, rt.backoff = (self.poll_interval, self.idle_recheck, self.max_concurrency, self.error_backoff)
        return rt

    async def run(self, stop: asyncio.Event, only: set[str] | None = None) -> None:
        """Step every due swap until ``stop`` is set (``only``: just these swaps, and return
        once they are all finished), on the runtime: up to ``max_concurrency`` swaps at once,
        each in one step at a time.  A swap is due when its retry time comes, when the observers
        saw an event of it, or when a new block brings one of its expiries within reach."""
        self.catch_up()
        # Re-send recorded locks first: until they are out, the coins they spend are reserved.
        for view in self.store.list([m.INITIATOR_LOCK_INTENDED, m.PARTICIPANT_LOCK_INTENDED]):
            if only is None or view.swap.id in only:
                await self._step(view.swap.id)
        rt = self._configured()
        rt.chains = {chain: leg.adapter for chain, leg in self.legs.items()}
        rt.on_block = self._on_block
        rt.observers = []
        if self.observers is not None:
            self.observers.on_wake = self.nudge
            rt.observers.append(self.observers.run)
        await rt.run(stop, only)

    def nudge(self, swap_ids: Iterable[str] = ()) -> None:
        """News arrived for these swaps (an event, an API call) and they were made due: look now.
        A swap whose step is under way is made due again when that step ends, as the step may
        have looked before the news and would defer the swap past it."""
        self.runtime.nudge(swap_ids)

    async def _on_block(self, chain: str, announced: BlockRef | None = None) -> None:
        """A new block of ``chain`` (the swaps waiting for one were woken by the runtime): step those
        with an expiry on it that the timelock rules now act on (refund, refuse to lock, refuse to
        claim): no event announces those."""
        ops = self.legs[chain]
        ops.clock.forget(announced)
        if self.runtime.observing:  # without observers every waiting swap is polled anyway
            now = await ops.now()
            # The LP refuses to lock against a trader's lock this close to expiry (``_participant_created``).
            if self.store.wake_expiring(chain, self.policy.expired_through(chain, now), self.policy.too_late_to_lock_through(chain, now)):
                self.nudge()

    async def step(self, swap_id: str) -> SwapView:
        """Take one swap as far as it can go now; returns it as recorded after."""
        await self._step(swap_id)
        return self.store.get(swap_id)

    async def _step(self, swap_id: str) -> None:
        """One step on the runtime: a wait or a failure is recorded on the swap, the books follow."""
        await self._configured().step(swap_id)

    async def _handle(self, swap_id: str) -> None:
        view = self.store.get(swap_id, with_actions=False)
        handler = self._handlers().get((view.swap.role, view.swap.state))
        if handler is None:
            return
        try:
            await handler(view)
        except NotYet as exc:
            raise Wait(exc.message, on_event=exc.on_event, on_block=exc.on_block) from None

    @staticmethod
    def _own_leg(view: SwapView) -> SwapLeg:
        return view.leg(view.swap.role)

    # --- operator commands --------------------------------------------------------------

    async def refund(self, swap_id: str) -> SwapView:
        """Record the refund of this party's lock now (``swap refund``); refused before expiry."""
        try:
            return await self._refund(swap_id)
        finally:
            self._book_pending()

    async def _refund(self, swap_id: str) -> SwapView:
        view = self.store.get(swap_id)
        leg = self._own_leg(view)
        if view.swap.state == m.REFUND_INTENDED:
            return view
        ops = self._ops(leg)
        ops.clock.forget()  # an operator's command reads the chain as it is now
        # A trader whose claim confirmed may still take back its own lock if the LP never claimed it.
        after_claim = bool(leg.lock_ref) and await self._claim_confirmed(view)
        if after_claim:
            ended = leg.outcome or ("claimed" if leg.spend_kind == "claim" else None) or await ops.settled(view, leg)
            if ended is not None:
                raise Conflict(f"swap {swap_id} is {view.swap.state}; our lock {leg.lock_ref} was {ended} on chain, nothing left to refund", swap_id=swap_id)
        elif view.swap.state in m.TERMINAL or view.swap.state == m.CLAIM_INTENDED:
            raise Conflict(f"swap {swap_id} is {view.swap.state}; nothing to refund", swap_id=swap_id)
        if not leg.lock_ref:
            raise InputError(f"swap {swap_id} has no lock of ours to refund", swap_id=swap_id)
        if view.swap.role == PARTICIPANT and await ops.find_secret(view, leg) is not None:
            raise Conflict(f"swap {swap_id}: the secret is revealed; claim instead of refunding", swap_id=swap_id)
        if not self.policy.expired(leg.chain, leg.expiry, await ops.now()):
            raise InputError(f"swap {swap_id}: too early to refund, {await self._time_left_text(leg)}", swap_id=swap_id)
        return await self._record_spend(
            view,
            leg,
            "refund",
            m.REFUND_INTENDED,
            "refund asked by the operator; recorded before broadcast",
            legs={PARTICIPANT: {"outcome": "claimed"}} if after_claim else None,
        )

    async def _claim_confirmed(self, view: SwapView) -> bool:
        """Has the trader's claim of the LP's lock confirmed (so the swap is bought, whatever its own lock's fate)?"""
        if view.swap.role != INITIATOR or view.swap.state not in (m.CLAIM_INTENDED, m.CLAIMED):
            return False
        pleg = view.leg(PARTICIPANT)
        if pleg.outcome is not None or view.swap.state == m.CLAIMED:
            # Rows from before the outcome column: a trader ends claimed only once its claim confirmed.
            return pleg.outcome == "claimed" or (pleg.outcome is None and pleg.spend_kind == "claim")
        try:
            return pleg.spend_kind == "claim" and await self._ops(pleg).spend_confirmations(view, pleg) >= 1
        except LockRefused:  # the LP refunded it
            return False

    async def audit(self, swap_id: str) -> dict[str, dict]:
        """Both legs as the chains show them now, checked against the recorded terms."""
        view = self.store.get(swap_id)
        report: dict[str, dict] = {}
        for name, leg in view.legs.items():
            ops = self._ops(leg)
            entry: dict = {"chain": leg.chain, "asset": leg.asset, "amount": leg.amount, "lock_ref": leg.lock_ref}
            if not leg.lock_ref:
                entry.update(ok=False, detail="not locked (or not reported) yet")
            elif name == view.swap.role:
                confirmations = await ops.lock_confirmations(view, leg)
                entry.update(ok=True, confirmations=confirmations, detail=f"our lock, {confirmations} confirmations; {await self._time_left_text(leg)}")
            else:
                try:
                    seen = await ops.audit_lock(view, leg, leg.lock_ref, leg.script)
                    left = await self._time_left_text(leg)
                    entry.update(ok=True, confirmations=seen.confirmations, detail=f"matches the terms, {seen.confirmations} confirmations; {left}")
                except (LockRefused, NotYet) as exc:
                    entry.update(ok=False, detail=exc.message)
            report[name] = entry
        return report


class _SwapOperations:
    """The swaps as the runtime steps them: the store's scheduling and the engine's handlers."""

    def __init__(self, engine: SwapEngine) -> None:
        self.engine, store = engine, engine.store
        self.due, self.defer, self.retries, self.finished = store.due, store.defer, store.retries, store.finished
        self.wake = store.wake_all
        self.step = engine._handle
