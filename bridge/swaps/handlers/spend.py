"""Claim and refund, for both roles: sign and record before sending, send, follow to confirmation,
bump a stuck one's fee, and judge what a refused claim means."""

from __future__ import annotations

import logging
import time

from bridge.core.errors import BridgeError, ContractReverted, InputError, MissingInputs, TransactionRejected
from bridge.swaps import models as m
from bridge.swaps.handlers.common import replace_swap
from bridge.swaps.legs import LockRefused, NotYet
from bridge.swaps.models import INITIATOR, PARTICIPANT, SwapLeg
from bridge.swaps.store import SwapView

log = logging.getLogger("bridge.swaps")


class SpendHandlers:
    """Mixed into ``SwapEngine``."""

    async def _record_spend(
        self,
        view: SwapView,
        leg: SwapLeg,
        kind: str,
        to: str,
        note: str,
        *,
        secret: bytes | None = None,
        swap_fields: dict | None = None,
        legs: dict | None = None,
    ) -> SwapView:
        """Sign our claim or refund of ``leg`` and record it (before any broadcast) with the move to
        ``to``, under the chain's prepare guard: its coins or nonce are chosen and reserved at once.
        A claim's secret is the swap's unless given (the participant's, just found on chain)."""
        if kind == "claim" and secret is None:
            secret = bytes.fromhex(view.swap.secret)
        signing_view = view
        if secret is not None and view.swap.secret != secret.hex():
            signing_view = SwapView(replace_swap(view, secret=secret.hex()), view.legs, view.actions, view.spends)
        async with self._prepare_guard(leg.chain):
            fields = await self._ops(leg).prepare_spend(signing_view, leg, kind, secret)
            return await self._move(view, to, note, swap_fields, {**(legs or {}), leg.leg: fields})

    async def _refund_if_expired(self, view: SwapView, after_claim: bool = False) -> bool:
        """Record and send the refund of our lock once it expired.  ``after_claim``: the trader's
        claim confirmed and the LP let its chance to claim our lock pass; the refund that follows
        still ends the swap claimed (``_spent``), as the trader got what it bought."""
        leg = self._own_leg(view)
        ops = self._ops(leg)
        if not self.policy.expired(leg.chain, leg.expiry, await ops.now()):
            return False
        if after_claim:
            note, legs = (
                f"our claim confirmed; our lock {leg.lock_ref} still unclaimed at its expiry, refund recorded before broadcast",
                {PARTICIPANT: {"outcome": "claimed"}},
            )
        else:
            note, legs = "own lock expired; refund recorded before broadcast", None
        view = await self._record_spend(view, leg, "refund", m.REFUND_INTENDED, note, legs=legs)
        await self._spend_intended(view, fresh=True)
        return True

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
            if (leg.spend_sent_at is not None or len(view.spend_versions(leg)) > 1) and await ops.spend_confirmations(view, leg) >= 1:
                await self._spent(view, leg, kind)
                return
            if not fresh:
                view = await self._renew(view, leg, "spend")
                leg = view.leg(leg.leg)
            await self.faults.hit("spend.before_broadcast", view=view, leg=leg)
            await ops.broadcast_spend(view, leg, fresh)
            await self.faults.hit("spend.after_broadcast", view=view, leg=leg)
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
        recorded before it is sent, the old ones stay possible outcomes (``SwapView.spend_versions``)."""
        secret = bytes.fromhex(view.swap.secret) if kind == "claim" else None
        try:
            fields, note = await self._ops(leg).prepare_bump(view, leg, kind, secret)
        except InputError as exc:  # the fee would pass the builders' caps: keep waiting on this version
            log.warning("swap %s: not bumping the %s fee: %s", view.swap.id, kind, exc.message)
            return
        view = self.store.transition(
            view.swap.id,
            view.swap.state,
            view.swap.state,
            f"{note}, replaces {leg.spend_tx}",
            legs={leg.leg: {**fields, "spend_sent_at": time.time()}},  # the old version stays in spend_versions
        )
        await self.faults.hit("spend.before_broadcast", view=view, leg=view.leg(leg.leg))
        await self._ops(leg).broadcast_spend(view, view.leg(leg.leg))
        await self.faults.hit("spend.after_broadcast", view=view, leg=view.leg(leg.leg))

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
            await self._move(view, m.CLAIM_LOST, reason, {"last_error": reason}, {INITIATOR: {"outcome": "refunded"}, PARTICIPANT: {"outcome": "claimed"}})
            return True
        if kind == "refund" and view.swap.role == INITIATOR and view.leg(PARTICIPANT).outcome == "claimed":
            # Our refund after a confirmed claim raced the LP's late claim of our lock, and lost.
            own = view.leg(INITIATOR)
            if await self._ops(own).settled(view, own) != "claimed":
                return False
            await self._move(
                view, m.CLAIMED, f"our lock {own.lock_ref} was claimed by the LP before our refund ({exc.message})", legs={INITIATOR: {"outcome": "claimed"}}
            )
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
