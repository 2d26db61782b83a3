"""What every handler of the swap state machine shares: the table of handlers by role and state,
recording a move (booked and reported when the step ends), the per-chain prepare guard, our own
lock's broadcast and confirmation (both roles), and the time left before an expiry."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from bridge.swaps import models as m
from bridge.swaps.guard import PrepareGuard
from bridge.swaps.legs import Leg, NotYet
from bridge.swaps.models import INITIATOR, PARTICIPANT, SwapLeg
from bridge.swaps.store import SwapView

log = logging.getLogger("bridge.swaps")


class CommonHandlers:
    """Mixed into ``SwapEngine`` (``bridge.swaps.engine``), whose fields the handlers read."""

    def _handlers(self) -> dict[tuple[str, str], Callable[[SwapView], Awaitable[None]]]:
        handlers = self._state_handlers()
        if not self.faults:
            return handlers

        def faulted(state: str, handler: Callable[[SwapView], Awaitable[None]]) -> Callable[[SwapView], Awaitable[None]]:
            async def run(view: SwapView) -> None:
                await self.faults.hit(f"handle.{state}", view=view)
                await handler(view)

            return run

        return {key: faulted(key[1], handler) for key, handler in handlers.items()}

    def _state_handlers(self) -> dict[tuple[str, str], Callable[[SwapView], Awaitable[None]]]:
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

    def _prepare_guard(self, chain: str) -> PrepareGuard:
        if chain not in self._prepare_guards:
            self._prepare_guards[chain] = PrepareGuard(self.lock_file(chain))
        return self._prepare_guards[chain]

    def _ops(self, leg: SwapLeg) -> Leg:
        return self.legs[leg.chain]

    async def _send_lock(self, view: SwapView, fresh: bool = False) -> SwapView:
        """Broadcast our recorded lock (again: idempotent) and record what the chain gave back.
        Called inside the prepare guard right after recording, so the next swap's coin choice
        sees this lock's inputs spent and its change in the mempool.  ``fresh``: signed in this
        step, so no earlier send of it can have been mined (nothing to look for first)."""
        leg = self._own_leg(view)
        await self.faults.hit("lock.before_broadcast", view=view, leg=leg)
        fields = await self._ops(leg).broadcast_lock(view, leg, fresh)
        await self.faults.hit("lock.after_broadcast", view=view, leg=leg)
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

    async def _time_left_text(self, leg: SwapLeg) -> str:
        if leg.expiry is None:
            return "expiry not set"
        ops = self._ops(leg)
        return ops.time_left_text(leg, await ops.now())


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
