"""The participant's (LP's) handlers: audit the trader's lock, lock against it within the
timelock rules and the inventory, then wait for the secret to claim with."""

from __future__ import annotations

import logging
import time

from bridge.swaps import models as m
from bridge.swaps.handlers.common import replace_leg
from bridge.swaps.legs import LockRefused, NotYet
from bridge.swaps.models import INITIATOR, PARTICIPANT
from bridge.swaps.store import LockTaken, SwapView
from bridge.swaps.timelock import TimelockRefused

log = logging.getLogger("bridge.swaps")


class ParticipantHandlers:
    """Mixed into ``SwapEngine``."""

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
                view = self.store.transition(
                    view.swap.id, m.CREATED, m.CREATED, f"trader's lock {seen.ref} seen on chain", legs={INITIATOR: {"lock_ref": seen.ref, "lock_tx": seen.tx}}
                )
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
            view = await self._move(
                view,
                m.PARTICIPANT_LOCK_INTENDED,
                f"trader's lock {seen.ref} audited; lock recorded before broadcast",
                legs={
                    PARTICIPANT: {"expiry": expiry, **fields},
                },
            )
            view = await self._send_lock(view, fresh=True)
        await self._lock_intended(view, sent=True)

    async def _fail(self, view: SwapView, reason: str) -> None:
        await self._move(view, m.FAILED, reason, {"last_error": reason})

    async def _participant_locked(self, view: SwapView) -> None:
        pleg, ileg = view.leg(PARTICIPANT), view.leg(INITIATOR)
        secret = await self._ops(pleg).find_secret(view, pleg)
        if secret is not None:
            view = await self._record_spend(
                view, ileg, "claim", m.CLAIM_INTENDED, "secret revealed; claim recorded before broadcast", secret=secret, swap_fields={"secret": secret.hex()}
            )
            await self._spend_intended(view, fresh=True)
            return
        if await self._refund_if_expired(view):
            return
        raise NotYet(f"waiting for the secret; {await self._time_left_text(pleg)}", on_event=True)
