"""The initiator's (trader's) handlers: agree the terms with the LP, lock, tell the LP, audit its
lock, claim it.  (The claim and refund themselves are ``spend``'s.)"""

from __future__ import annotations

import logging

from bridge.core.errors import BridgeError
from bridge.swaps import models as m
from bridge.swaps.legs import LockRefused, NotYet
from bridge.swaps.models import INITIATOR, PARTICIPANT
from bridge.swaps.store import LockTaken, SwapView
from bridge.swaps.timelock import TimelockRefused

log = logging.getLogger("bridge.swaps")


class InitiatorHandlers:
    """Mixed into ``SwapEngine``."""

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
            view = await self._move(
                view,
                m.CREATED,
                "LP accepted",
                {"accepted": True},
                {
                    INITIATOR: {"recipient": terms["lp"][ileg.chain]},
                    PARTICIPANT: {"sender": terms["lp"][view.leg(PARTICIPANT).chain]},
                },
            )
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
            raise NotYet(
                f"the LP has not locked yet; {await self._time_left_text(view.leg(INITIATOR))}",
                on_event=ops.finds_locks,
                on_block=None if ops.finds_locks else pleg.chain,
            )
        try:
            seen = await ops.audit_lock(view, pleg, lock["lock_ref"], lock.get("script"))
        except LockRefused as exc:
            # Never claim a bad lock; keep watching (the LP may still lock correctly) and refund at expiry.
            raise NotYet(f"LP's lock refused: {exc.reason}") from None
        need = self.confirmations[pleg.chain]
        if seen.confirmations < need:
            raise NotYet(f"LP's lock {seen.ref} has {seen.confirmations}/{need} confirmations", on_block=pleg.chain)
        try:
            view = await self._move(
                view,
                m.PARTICIPANT_LOCKED,
                f"LP's lock {seen.ref} audited",
                legs={
                    PARTICIPANT: {
                        "lock_ref": seen.ref,
                        "lock_tx": seen.tx,
                        "expiry": seen.expiry,
                        "script": lock.get("script"),
                    }
                },
            )
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
