"""The swap state machine's step handlers, for both roles, and the loop that runs them.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable, Protocol

from bridge.core.errors import BridgeError, Conflict, ContractReverted, InputError, MissingInputs, TransactionRejected
from bridge.core.retry import RetryPolicy, is_retryable
from bridge.swaps import models as m
from bridge.swaps.guard import PrepareGuard
from bridge.swaps.legs import Leg, LockRefused, NotYet
from bridge.swaps.models import INITIATOR, PARTICIPANT, SwapLeg
from bridge.swaps.store import LockTaken, SwapStore, SwapView
from bridge.swaps.timelock import TimelockPolicy, TimelockRefused
from chains.heads import wait_unless

if TYPE_CHECKING:
    from bridge.swaps.books import SwapBooks
    from bridge.swaps.observe import SwapObservers
    from chains.base import BlockRef

log = logging.getLogger("bridge.swaps")

#: Backoff for errors (not for plain waiting, which polls at ``poll_interval``).
ERROR_BACKOFF = RetryPolicy(base_delay=0.5, max_delay=30.0, jitter=0.2)


class LpPort(Protocol):
    """What the initiator's engine needs from the LP (``protocol.LpClient`` over HTTP)."""

    async def accept(self, view: SwapView) -> dict: ...

    async def notify_locked(self, view: SwapView) -> None: ...

    async def participant_lock(self, view: SwapView) -> dict | None: ...


@dataclass
class SwapEngine:
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
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _running: dict[str, asyncio.Task] = field(default_factory=dict, repr=False)
    #: Swaps woken while a step of theirs was under way: made due again once it ends.
    _rerun: set[str] = field(default_factory=set, repr=False)
    _observing: bool = field(default=False, repr=False)
    #: Per chain: blocks announced since this engine started, and the swaps waiting for the next one.
    _blocks: dict[str, int] = field(default_factory=dict, repr=False)
    _block_waiters: dict[str, set[str]] = field(default_factory=dict, repr=False)
    #: Transitions recorded but not booked yet (``_book_soon``), the latest view of each swap.
    _unbooked: dict[str, SwapView] = field(default_factory=dict, repr=False)

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

    async def run(self, stop: asyncio.Event, only: set[str] | None = None) -> None:
        """Step every due swap until ``stop`` is set (``only``: just these swaps, and return
        once they are all finished).  Up to ``max_concurrency`` swaps step at once, each
        swap in one step at a time, so one slow chain call does not hold up the others.
        A swap is due when its retry time comes, when the observers saw an event of it, or
        when a new block brings one of its expiries within reach."""
        self.catch_up()
        # Re-send recorded locks first: until they are out, the coins they spend are reserved.
        for view in self.store.list([m.INITIATOR_LOCK_INTENDED, m.PARTICIPANT_LOCK_INTENDED]):
            if only is None or view.swap.id in only:
                await self._step(view.swap.id)
        running: dict[str, asyncio.Task[None]] = {}
        self._running = running

        def schedule() -> None:
            free = self.max_concurrency - len(running)
            # ``only``: filtered in the query, or other due swaps could fill the limit forever.
            for swap_id in self.store.due(limit=free + len(running), among=only) if free > 0 else []:
                if len(running) >= self.max_concurrency:
                    break
                if swap_id not in running:
                    running[swap_id] = asyncio.create_task(self._step(swap_id), name=f"swap {swap_id}")

        # The due swaps' steps start before the observers and block followers, whose start-up
        # reads would otherwise go first (`swap start`: the LP's accept waits behind them).
        schedule()
        halt = asyncio.Event()
        observing = None
        if self.observers is not None:
            self.observers.on_wake = self.nudge
            observing = asyncio.create_task(self.observers.run(halt), name="swap observers")
            self._observing = True
        woken = self.observers.woken if self.observers is not None else self._wakeup
        followers = [asyncio.create_task(self._follow_blocks(chain, halt), name=f"blocks {chain}") for chain in self.legs]
        try:
            while not stop.is_set():
                if observing is not None and observing.done():
                    observing.result()  # an indexer failed for good: surface it
                    # They stepped aside for another process: waiting swaps are polled from now on.
                    observing, self._observing, woken = None, False, self._wakeup
                woken.clear()
                schedule()
                if only is not None and not running and all(self.store.get(i, with_actions=False).swap.state in m.TERMINAL for i in only):
                    return
                waiters: set[asyncio.Future] = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(woken.wait()), *running.values()}
                await asyncio.wait(waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    if waiter not in running.values() and not waiter.done():
                        waiter.cancel()
                for swap_id in [i for i, t in running.items() if t.done()]:
                    running.pop(swap_id).result()
                    if swap_id in self._rerun:
                        self._rerun.discard(swap_id)
                        self.store.wake(swap_id)
        finally:
            # Let steps in flight finish (each ends in a recorded state); a hard stop cancels
            # them, which is as safe as a crash.
            if running:
                await asyncio.gather(*running.values(), return_exceptions=True)
            halt.set()
            self._observing = False
            await asyncio.gather(*followers, return_exceptions=True)
            if observing is not None:
                await asyncio.gather(observing, return_exceptions=True)

    def nudge(self, swap_ids: Iterable[str] = ()) -> None:
        """News arrived for these swaps (an event, an API call) and they were made due: look now.
        A swap whose step is under way is made due again when that step ends, as the step may
        have looked before the news and would defer the swap past it."""
        self._rerun |= set(swap_ids) & self._running.keys()
        self._wakeup.set()
        if self.observers is not None:
            self.observers.woken.set()

    async def _follow_blocks(self, chain: str, halt: asyncio.Event) -> None:
        """Act on each new block of ``chain`` as soon as the node announces it
        (``ChainAdapter.wait_for_block``; where it cannot, at most a poll interval late)."""
        adapter = self.legs[chain].adapter
        height: int | None = None
        while not halt.is_set():
            try:
                if height is None:
                    height = await adapter.height()
                    await self._new_block(chain)  # what expired while we were away
                announced = await wait_unless(halt, adapter.wait_for_block(height, self.poll_interval))
                if halt.is_set():
                    return
                new = announced if announced is not None else await adapter.height()
                if new != height:
                    height = new
                    await self._new_block(chain, adapter.announced_head() if announced is not None else None)
            except Exception as exc:  # noqa: BLE001 - a node hiccup: swaps are polled meanwhile
                log.debug("following %s blocks: %s", chain, exc)
                await asyncio.sleep(self.poll_interval)

    async def _new_block(self, chain: str, announced: BlockRef | None = None) -> None:
        """Step the swaps waiting for a block of ``chain``, and those with an expiry on it that the
        timelock rules now act on (refund, refuse to lock, refuse to claim): no event announces those."""
        self._blocks[chain] = self._blocks.get(chain, 0) + 1
        ops = self.legs[chain]
        ops.clock.forget(announced)
        waiting = self._block_waiters.pop(chain, set())
        if waiting:
            self.store.wake_all(waiting)
        self.nudge(waiting)  # they step while the expiry check below waits for the node
        if self._observing:  # without observers every waiting swap is polled anyway
            now = await ops.now()
            # The LP refuses to lock once the trader's lock has less than this left (``_participant_created``).
            lock_reach = self.policy.safety_gap + self.policy.min_participant_lock
            if self.store.wake_expiring(chain, self.policy.expired_through(chain, now),
                                        self.policy.expiry_after(chain, lock_reach, now) + (1 if chain == "bitcoin" else 0)):
                self.nudge()

    async def step(self, swap_id: str) -> SwapView:
        """Take one swap as far as it can go now; returns it as recorded after."""
        await self._step(swap_id)
        return self.store.get(swap_id)

    async def _step(self, swap_id: str) -> None:
        try:
            await self._handle(swap_id)
        finally:
            self._book_pending()

    async def _handle(self, swap_id: str) -> None:
        view = self.store.get(swap_id, with_actions=False)
        handler = self._handlers().get((view.swap.role, view.swap.state))
        if handler is None:
            return
        blocks = dict(self._blocks)
        try:
            await handler(view)
        except NotYet as exc:
            delay = self.idle_recheck if exc.on_event and self._observing else self.poll_interval
            if exc.on_block is not None:
                if self._blocks.get(exc.on_block, 0) != blocks.get(exc.on_block, 0):
                    delay = 0.0  # the block came while this step looked: look again now
                else:
                    self._block_waiters.setdefault(exc.on_block, set()).add(swap_id)
            self.store.defer(swap_id, f"waiting: {exc.message}", delay, count_retry=False)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the swap and retried
            attempt = view.swap.retries + 1
            delay = self.error_backoff.delay(min(attempt, 10))
            text = exc.message if isinstance(exc, BridgeError) else f"{type(exc).__name__}: {exc}"
            kind = "retrying" if is_retryable(exc) else "error (retrying)"
            log.log(logging.INFO if is_retryable(exc) else logging.WARNING, "swap %s %s: %s", swap_id, kind, text)
            self.store.defer(swap_id, f"{kind}: {text}", delay)

    def _handlers(self) -> dict[tuple[str, str], Callable[[SwapView], Awaitable[None]]]:
        return {
            (INITIATOR, m.CREATED): self._initiator_created,
            (INITIATOR, m.INITIATOR_LOCK_INTENDED): self._lock_intended,
            (INITIATOR, m.INITIATOR_LOCKED): self._initiator_locked,
            (INITIATOR, m.PARTICIPANT_LOCKED): self._initiator_participant_locked,
            (PARTICIPANT, m.CREATED): self._participant_created,
            (PARTICIPANT, m.PARTICIPANT_LOCK_INTENDED): self._lock_intended,
            (PARTICIPANT, m.PARTICIPANT_LOCKED): self._participant_locked,
            (INITIATOR, m.CLAIM_INTENDED): self._spend_intended,
            (PARTICIPANT, m.CLAIM_INTENDED): self._spend_intended,
            (INITIATOR, m.REFUND_INTENDED): self._spend_intended,
            (PARTICIPANT, m.REFUND_INTENDED): self._spend_intended,
        }

    async def _move(self, view: SwapView, to: str, note: str = "", swap_fields: dict | None = None, legs: dict | None = None) -> SwapView:
        new = self.store.transition(view.swap.id, view.swap.state, to, note, swap_fields, legs)
        log.info("swap %s: %s -> %s %s", new.swap.id, view.swap.state, to, note)
        self._book_soon(new)
        if self.on_transition is not None:
            result = self.on_transition(new)
            if asyncio.iscoroutine(result):
                await result
        return new

    async def _record_spend(
        self, view: SwapView, leg: SwapLeg, kind: str, to: str, note: str, *, secret: bytes | None = None,
        swap_fields: dict | None = None, legs: dict | None = None,
    ) -> SwapView:
        """Sign our claim or refund of ``leg`` and record it (before any broadcast) with the move to
        ``to``, under the chain's prepare guard: its coins or nonce are chosen and reserved at once.
        A claim's secret is the swap's unless given (the participant's, just found on chain)."""
        if kind == "claim" and secret is None:
            secret = bytes.fromhex(view.swap.secret)
        signing_view = view if secret is None or view.swap.secret == secret.hex() else SwapView(
            replace_swap(view, secret=secret.hex()), view.legs, view.actions)
        async with self._prepare_guard(leg.chain):
            fields = await self._ops(leg).prepare_spend(signing_view, leg, kind, secret)
            return await self._move(view, to, note, swap_fields, {**(legs or {}), leg.leg: fields})

    def _prepare_guard(self, chain: str) -> PrepareGuard:
        if chain not in self._prepare_guards:
            self._prepare_guards[chain] = PrepareGuard(self.lock_file(chain))
        return self._prepare_guards[chain]

    def _ops(self, leg: SwapLeg) -> Leg:
        return self.legs[leg.chain]

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
                raise Conflict(f"swap {swap_id} is {view.swap.state}; our lock {leg.lock_ref} was {ended} on chain, nothing left to refund",
                               swap_id=swap_id)
        elif view.swap.state in m.TERMINAL or view.swap.state == m.CLAIM_INTENDED:
            raise Conflict(f"swap {swap_id} is {view.swap.state}; nothing to refund", swap_id=swap_id)
        if not leg.lock_ref:
            raise InputError(f"swap {swap_id} has no lock of ours to refund", swap_id=swap_id)
        if view.swap.role == PARTICIPANT and await ops.find_secret(view, leg) is not None:
            raise Conflict(f"swap {swap_id}: the secret is revealed; claim instead of refunding", swap_id=swap_id)
        if not self.policy.expired(leg.chain, leg.expiry, await ops.now()):
            raise InputError(f"swap {swap_id}: too early to refund, {await self._time_left_text(leg)}", swap_id=swap_id)
        return await self._record_spend(view, leg, "refund", m.REFUND_INTENDED, "refund asked by the operator; recorded before broadcast",
                                        legs={PARTICIPANT: {"outcome": "claimed"}} if after_claim else None)

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
                    entry.update(ok=True, confirmations=seen.confirmations, detail=f"matches the terms, {seen.confirmations} confirmations; {await self._time_left_text(leg)}")
                except (LockRefused, NotYet) as exc:
                    entry.update(ok=False, detail=exc.message)
            report[name] = entry
        return report

    # --- initiator ------------------------------------------------------------------

    async def _initiator_created(self, view: SwapView) -> None:
        ileg = view.leg(INITIATOR)
        ops = self._ops(ileg)
        if not view.swap.accepted:
            if self.lp is None:
                raise NotYet("no LP connection to agree the terms with")
            try:
                terms = await self.lp.accept(view)
            except BridgeError as exc:
                if exc.retryable:
                    raise
                await self._move(view, m.FAILED, f"LP refused: {exc.message}", {"last_error": f"LP refused: {exc.message}"})
                return
            view = await self._move(view, m.CREATED, "LP accepted", {"accepted": True}, {
                INITIATOR: {"recipient": terms["lp"][ileg.chain]},
                PARTICIPANT: {"sender": terms["lp"][view.leg(PARTICIPANT).chain]},
            })
            ileg = view.leg(INITIATOR)
        try:
            self.policy.check_initiator_lock(ileg.chain, ileg.expiry, await ops.now())
        except TimelockRefused as exc:
            await self._move(view, m.FAILED, f"not locking: {exc.reason}", {"last_error": exc.reason})
            return
        async with self._prepare_guard(ileg.chain):
            fields = await ops.prepare_lock(view, ileg)
            view = await self._move(view, m.INITIATOR_LOCK_INTENDED, "lock recorded before broadcast", legs={INITIATOR: fields})
            view = await self._send_lock(view, fresh=True)
        await self._lock_intended(view, sent=True)

    async def _send_lock(self, view: SwapView, fresh: bool = False) -> SwapView:
        """Broadcast our recorded lock (again: idempotent) and record what the chain gave back.
        Called inside the prepare guard right after recording, so the next swap's coin choice
        sees this lock's inputs spent and its change in the mempool.  ``fresh``: signed in this
        step, so no earlier send of it can have been mined (nothing to look for first)."""
        leg = self._own_leg(view)
        fields = await self._ops(leg).broadcast_lock(view, leg, fresh)
        if fields and any(getattr(leg, k) != v for k, v in fields.items()):
            view = self.store.transition(view.swap.id, view.swap.state, view.swap.state, "lock broadcast", legs={leg.leg: fields})
        return view

    async def _renew(self, view: SwapView, leg: SwapLeg, what: str) -> SwapView:
        """A recorded EVM transaction ("lock" or "spend") whose nonce another transaction of the key
        took is re-signed under a fresh nonce, recorded before it is sent (the old hash kept)."""
        ops = self._ops(leg)
        if not await ops.stale(view, leg, what):
            return view
        async with self._prepare_guard(leg.chain):
            renewed = await ops.renew(view, leg, what)  # looks again, inside the guard
            if renewed is None:
                return view
            fields, note = renewed
            log.warning("swap %s: %s", view.swap.id, note)
            return self.store.transition(view.swap.id, view.swap.state, view.swap.state, note, legs={leg.leg: fields})

    async def _lock_intended(self, view: SwapView, sent: bool = False) -> None:
        """``sent``: this step recorded and sent the lock just now: nothing to renew, and no need to
        send it again unless its mined copy was not found yet (an EVM receipt can lag the send)."""
        if not sent:
            view = await self._renew(view, self._own_leg(view), "lock")
        if not sent or not self._own_leg(view).lock_ref:
            view = await self._send_lock(view)
        if view.swap.role == INITIATOR:
            view = await self._tell_lp_early(view)
        leg = self._own_leg(view)
        ops = self._ops(leg)
        confirmations = await ops.lock_confirmations(view, leg)
        need = self.confirmations[leg.chain]
        if confirmations < need:
            raise NotYet(f"our lock {leg.lock_ref} has {max(confirmations, 0)}/{need} confirmations", on_block=leg.chain)
        to = m.INITIATOR_LOCKED if view.swap.role == INITIATOR else m.PARTICIPANT_LOCKED
        view = await self._move(view, to, f"lock {leg.lock_ref} confirmed")
        await self._handlers()[(view.swap.role, to)](view)

    async def _tell_lp_early(self, view: SwapView) -> SwapView:
        """Tell the LP where our lock is as soon as it is out, before it confirms.  The LP audits
        it at once and waits for the confirmations itself (it never locks before them), so it
        locks on the block that confirms ours instead of one round trip after we saw that block.
        A failure here costs nothing: ``_initiator_locked`` tells it again once the lock confirmed."""
        if view.swap.lp_notified or self.lp is None or not self._own_leg(view).lock_ref:
            return view
        try:
            return await self._notify_lp(view)
        except BridgeError as exc:
            log.info("swap %s: could not tell the LP of our lock yet: %s", view.swap.id, exc.message)
            return view

    async def _notify_lp(self, view: SwapView) -> SwapView:
        """Tell the LP where our lock is, and remember that we did."""
        await self.lp.notify_locked(view)
        return self.store.transition(view.swap.id, view.swap.state, view.swap.state, swap_fields={"lp_notified": True})

    async def _refund_if_expired(self, view: SwapView, after_claim: bool = False) -> bool:
        """Record and send the refund of our lock once it expired.  ``after_claim``: the trader's
        claim confirmed and the LP let its chance to claim our lock pass; the refund that follows
        still ends the swap claimed (``_spent``), as the trader got what it bought."""
        leg = self._own_leg(view)
        ops = self._ops(leg)
        if not self.policy.expired(leg.chain, leg.expiry, await ops.now()):
            return False
        if after_claim:
            note, legs = f"our claim confirmed; our lock {leg.lock_ref} still unclaimed at its expiry, refund recorded before broadcast", {
                PARTICIPANT: {"outcome": "claimed"}}
        else:
            note, legs = "own lock expired; refund recorded before broadcast", None
        view = await self._record_spend(view, leg, "refund", m.REFUND_INTENDED, note, legs=legs)
        await self._spend_intended(view, fresh=True)
        return True

    async def _initiator_locked(self, view: SwapView) -> None:
        if await self._refund_if_expired(view):
            return
        if self.lp is None:
            raise NotYet("no LP connection to report the lock to")
        pleg = view.leg(PARTICIPANT)
        ops = self._ops(pleg)
        try:
            if not view.swap.lp_notified:
                view = await self._notify_lp(view)
            # Seen on chain (the index) needs no round trip to the LP; audited like any report.
            lock = await ops.find_lock(view, pleg) or await self.lp.participant_lock(view)
        except BridgeError as exc:
            # An unreachable or confused LP is a wait like any other: our refund at expiry is what protects us.
            raise NotYet(f"LP: {exc.message}; {await self._time_left_text(view.leg(INITIATOR))}") from None
        if not lock or not lock.get("lock_ref"):
            # An EVM lock is found by our indexer; a Bitcoin one only the LP can tell us of (its script
            # commits to an expiry only the LP knows): ask again when a block could have confirmed it.
            raise NotYet(f"the LP has not locked yet; {await self._time_left_text(view.leg(INITIATOR))}",
                         on_event=pleg.chain == "evm", on_block=None if pleg.chain == "evm" else pleg.chain)
        try:
            seen = await ops.audit_lock(view, pleg, lock["lock_ref"], lock.get("script"))
        except LockRefused as exc:
            # Never claim a bad lock; keep watching (the LP may still lock correctly) and refund at expiry.
            raise NotYet(f"LP's lock refused: {exc.reason}") from None
        need = self.confirmations[pleg.chain]
        if seen.confirmations < need:
            raise NotYet(f"LP's lock {seen.ref} has {seen.confirmations}/{need} confirmations", on_block=pleg.chain)
        try:
            view = await self._move(view, m.PARTICIPANT_LOCKED, f"LP's lock {seen.ref} audited", legs={PARTICIPANT: {
                "lock_ref": seen.ref, "lock_tx": seen.tx, "expiry": seen.expiry, "script": lock.get("script"),
            }})
        except LockTaken as exc:
            # A lock another of our swaps consumed pays that swap, not this one: refund at expiry.
            raise NotYet(f"LP's lock refused: {exc.message}") from None
        await self._initiator_participant_locked(view)

    async def _initiator_participant_locked(self, view: SwapView) -> None:
        pleg = view.leg(PARTICIPANT)
        ops = self._ops(pleg)
        try:
            self.policy.check_claim(pleg.chain, pleg.expiry, await ops.now())
        except TimelockRefused as exc:
            if await self._refund_if_expired(view):
                return
            raise NotYet(f"not claiming: {exc.reason}; {await self._time_left_text(view.leg(INITIATOR))}") from None
        view = await self._record_spend(view, pleg, "claim", m.CLAIM_INTENDED, "claim recorded before broadcast")
        await self._spend_intended(view, fresh=True)

    # --- participant -----------------------------------------------------------------

    async def _participant_created(self, view: SwapView) -> None:
        ileg, pleg = view.leg(INITIATOR), view.leg(PARTICIPANT)
        iops, pops = self._ops(ileg), self._ops(pleg)
        inow = await iops.now()
        # Accepting reserves inventory; a reservation no lock backs ends after the window.
        lapsed = ileg.lock_tx is None and time.time() - view.swap.created_at > self.lock_window
        if not ileg.lock_ref:
            if self.policy.seconds_left(ileg.chain, ileg.expiry, inow) < self.policy.safety_gap + self.policy.min_participant_lock:
                await self._fail(view, "the trader did not lock in time")
                return
            if lapsed:
                await self._fail(view, f"the trader reported no lock within {self.lock_window:.0f}s of acceptance")
                return
            raise NotYet("the trader has not reported a lock yet", on_event=True)
        try:
            seen = await iops.audit_lock(view, ileg, ileg.lock_ref, ileg.script)
        except LockRefused as exc:
            await self._fail(view, f"trader's lock refused: {exc.reason}")
            return
        except NotYet:
            if lapsed:
                await self._fail(view, f"the trader's lock {ileg.lock_ref} was not seen on chain within {self.lock_window:.0f}s of acceptance")
                return
            raise
        if ileg.lock_tx is None:
            # First sighting: the lock is this swap's from now on, and no other swap's (``SwapLock``).
            try:
                view = self.store.transition(view.swap.id, m.CREATED, m.CREATED, f"trader's lock {seen.ref} seen on chain",
                                             legs={INITIATOR: {"lock_ref": seen.ref, "lock_tx": seen.tx}})
            except LockTaken as exc:
                await self._fail(view, f"trader's lock refused: {exc.message}")
                return
            ileg = view.leg(INITIATOR)
        need = self.confirmations[ileg.chain]
        if seen.confirmations < need:
            raise NotYet(f"trader's lock {seen.ref} has {seen.confirmations}/{need} confirmations; not locking before {need}", on_block=ileg.chain)
        pnow = await pops.now()
        try:
            expiry = self.policy.participant_expiry(pleg.chain, ileg.chain, ileg.expiry, pnow, inow)
        except TimelockRefused as exc:
            await self._fail(view, f"trader's lock refused: {exc.reason}")
            return
        planned = replace_leg(pleg, expiry=expiry)
        async with self._prepare_guard(pleg.chain):
            balance = await pops.balance(pleg.token)
            if balance < pleg.value:
                if await pops.balance(pleg.token, include_reserved=True) >= pleg.value:
                    # Coins held for another recorded lock that is about to be re-sent (after a restart).
                    raise NotYet(f"{pleg.asset} coins are reserved by a lock not yet re-sent")
                await self._fail(view, f"not enough {pleg.asset} to lock: have {balance}, need {pleg.value}")
                return
            fields = await pops.prepare_lock(view, planned)
            view = await self._move(view, m.PARTICIPANT_LOCK_INTENDED, f"trader's lock {seen.ref} audited; lock recorded before broadcast", legs={
                PARTICIPANT: {"expiry": expiry, **fields},
            })
            view = await self._send_lock(view, fresh=True)
        await self._lock_intended(view, sent=True)

    async def _fail(self, view: SwapView, reason: str) -> None:
        await self._move(view, m.FAILED, reason, {"last_error": reason})

    async def _participant_locked(self, view: SwapView) -> None:
        pleg, ileg = view.leg(PARTICIPANT), view.leg(INITIATOR)
        secret = await self._ops(pleg).find_secret(view, pleg)
        if secret is not None:
            view = await self._record_spend(view, ileg, "claim", m.CLAIM_INTENDED, "secret revealed; claim recorded before broadcast",
                                            secret=secret, swap_fields={"secret": secret.hex()})
            await self._spend_intended(view, fresh=True)
            return
        if await self._refund_if_expired(view):
            return
        raise NotYet(f"waiting for the secret; {await self._time_left_text(pleg)}", on_event=True)

    # --- claim and refund (both roles) --------------------------------------------------

    async def _spend_intended(self, view: SwapView, fresh: bool = False) -> None:
        """``fresh``: this step signed and recorded the spend just now, against a lock it just
        looked at: nothing can have taken its nonce or settled the lock yet, so it is sent
        without looking first."""
        kind = "claim" if view.swap.state == m.CLAIM_INTENDED else "refund"
        leg = next(l for l in view.legs.values() if l.spend_kind == kind)
        ops = self._ops(leg)
        try:
            # Look before sending again: after a fee bump, the older version may be the one that
            # confirmed.  A first send needs no look (a copy already mined is detected by the send).
            if (leg.spend_sent_at is not None or leg.spend_history) and await ops.spend_confirmations(view, leg) >= 1:
                await self._spent(view, leg, kind)
                return
            if not fresh:
                view = await self._renew(view, leg, "spend")
                leg = view.leg(leg.leg)
            await ops.broadcast_spend(view, leg, fresh)
        except TransactionRejected as exc:
            if "non-final" in (exc.reason or "") or "locktime" in (exc.reason or ""):
                raise NotYet(f"{kind} not final yet: {exc.reason}", on_block=leg.chain) from None
            if not await self._claim_failed(view, kind, exc):
                raise
            return
        except (ContractReverted, LockRefused) as exc:
            if not await self._claim_failed(view, kind, exc):
                raise
            return
        if leg.spend_sent_at is None:
            view = self.store.transition(view.swap.id, view.swap.state, view.swap.state, legs={leg.leg: {"spend_sent_at": time.time()}})
            leg = view.leg(leg.leg)
        confirmations = await ops.spend_confirmations(view, leg)
        if confirmations >= 1:
            await self._spent(view, leg, kind)
            return
        if time.time() - leg.spend_sent_at >= self.bump_after:
            await self._bump(view, leg, kind)
        raise NotYet(f"our {kind} {leg.spend_tx} of {leg.lock_ref} has 0/1 confirmations", on_block=leg.chain)

    async def _bump(self, view: SwapView, leg: SwapLeg, kind: str) -> None:
        """Replace a claim/refund stuck unconfirmed with a higher fee (Bitcoin: a higher feerate,
        BIP125/full RBF; EVM: the same nonce with both EIP-1559 fees raised); the new version is
        recorded before it is sent, the old hashes are kept as possible outcomes."""
        secret = bytes.fromhex(view.swap.secret) if kind == "claim" else None
        try:
            fields, note = await self._ops(leg).prepare_bump(view, leg, kind, secret)
        except InputError as exc:  # the fee would pass the builders' caps: keep waiting on this version
            log.warning("swap %s: not bumping the %s fee: %s", view.swap.id, kind, exc.message)
            return
        view = self.store.transition(
            view.swap.id, view.swap.state, view.swap.state, f"{note}, replaces {leg.spend_tx}",
            legs={leg.leg: {**fields, "spend_history": leg.history_when_replaced(), "spend_sent_at": time.time()}},
        )
        await self._ops(leg).broadcast_spend(view, view.leg(leg.leg))

    async def _spent(self, view: SwapView, leg: SwapLeg, kind: str) -> None:
        """Our claim/refund confirmed; each leg whose end we now know gets its ``outcome``.
        The trader, whose claim reveals the secret, stays until it knows how its own lock ended
        (the LP claims it with that secret), so its books post that leg instead of keeping it
        escrowed; past its expiry, the lock still unclaimed, it refunds it (the LP lost its
        chance) and ends claimed once that refund confirms."""
        note = f"{kind} of {leg.lock_ref} confirmed"
        to = m.CLAIMED if kind == "claim" else m.REFUNDED
        legs: dict[str, dict] = {leg.leg: {"outcome": "claimed" if kind == "claim" else "refunded"}}
        if kind == "claim" and view.swap.role == PARTICIPANT:
            legs[PARTICIPANT] = {"outcome": "claimed"}  # the trader's claim of it gave us the secret
        elif kind == "claim":
            own = view.leg(INITIATOR)
            ops = self._ops(own)
            outcome = await ops.settled(view, own)
            if outcome is None:
                if await self._refund_if_expired(view, after_claim=True):
                    return
                if view.leg(PARTICIPANT).outcome is None:  # a confirmed fact: book it while we wait
                    self.record(self.store.transition(view.swap.id, view.swap.state, view.swap.state, legs=legs))
                raise NotYet(f"our claim confirmed; waiting for the LP to claim our lock {own.lock_ref}; {await self._time_left_text(own)}", on_event=True)
            legs[INITIATOR] = {"outcome": outcome}
            if outcome == "claimed":
                legs[INITIATOR]["spend_kind"] = "claim"  # claimed by the LP (what rows without an outcome were judged by)
            note += f"; our lock {own.lock_ref} was {outcome} on chain"
        elif view.swap.role == INITIATOR and view.leg(PARTICIPANT).outcome == "claimed":
            to = m.CLAIMED  # we got what we bought, and our lock back as the LP never claimed it
            note += "; our claim had confirmed: the swap is done"
        await self._move(view, to, note, legs=legs)

    async def _claim_failed(self, view: SwapView, kind: str, exc: BridgeError) -> bool:
        """A claim was refused.  The LP's claim of the trader's lock is lost for good once the chain
        shows that lock refunded: the swap ends with the reason instead of retrying forever.  For
        the initiator (e.g. the LP's lock expired or was refunded in between) its own lock is then
        what it can still get back, at its expiry."""
        if kind == "claim" and view.swap.role == PARTICIPANT:
            ileg = view.leg(INITIATOR)
            if await self._ops(ileg).settled(view, ileg) != "refunded":
                return False  # maybe a reorg or a slow node: retried
            reason = f"claim impossible: the trader refunded its lock {ileg.lock_ref} first ({exc.message})"
            log.error("swap %s: %s", view.swap.id, reason)
            await self._move(view, m.CLAIM_LOST, reason, {"last_error": reason},
                             {INITIATOR: {"outcome": "refunded"}, PARTICIPANT: {"outcome": "claimed"}})
            return True
        if kind == "refund" and view.swap.role == INITIATOR and view.leg(PARTICIPANT).outcome == "claimed":
            # Our refund after a confirmed claim raced the LP's late claim of our lock, and lost.
            own = view.leg(INITIATOR)
            if await self._ops(own).settled(view, own) != "claimed":
                return False
            await self._move(view, m.CLAIMED, f"our lock {own.lock_ref} was claimed by the LP before our refund ({exc.message})",
                             legs={INITIATOR: {"outcome": "claimed"}})
            return True
        # MissingInputs: the HTLC output we claim is gone (the LP refunded it, or a reorg dropped
        # its lock); the claim may still go through if it comes back, so it is retried until then.
        # MissingInputs: the HTLC output we claim is gone (the LP refunded it, or a reorg dropped
        # its lock); the claim may still go through if it comes back, so it is retried until then.
        if kind != "claim" or view.swap.role != INITIATOR or (exc.retryable and not isinstance(exc, MissingInputs)):
            return False
        log.warning("swap %s: claim refused (%s); falling back to refunding our lock at its expiry", view.swap.id, exc.message)
        if await self._refund_if_expired(view):
            return True
        raise NotYet(f"claim refused ({exc.message}); refunding at {await self._time_left_text(self._own_leg(view))}")

    async def _time_left_text(self, leg: SwapLeg) -> str:
        if leg.expiry is None:
            return "expiry not set"
        now = await self._ops(leg).now()
        if leg.chain == "bitcoin":
            return f"{leg.expiry - now.height} blocks to the {leg.leg} leg's expiry (height {leg.expiry})"
        return f"{leg.expiry - now.timestamp}s to the {leg.leg} leg's expiry"


def replace_leg(leg: SwapLeg, **changes: object) -> SwapLeg:
    copy = SwapLeg.model_validate(leg.model_dump())
    for k, v in changes.items():
        setattr(copy, k, v)
    return copy


def replace_swap(view: SwapView, **changes: object) -> m.Swap:
    copy = m.Swap.model_validate(view.swap.model_dump())
    for k, v in changes.items():
        setattr(copy, k, v)
    return copy
