"""Swap persistence: every state change and the data it depends on commit together.

A handler computes what it wants to record (a signed transaction, a lock
reference) and calls ``transition``; the row's current state is checked inside
the same transaction, so two runners racing on one swap cannot both move it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy.engine import Engine
from sqlalchemy import update
from sqlmodel import Session, select

from bridge.db import init_db
from bridge.errors import Conflict, InputError, NotFound
from bridge.swaps.models import (
    CLAIM_INTENDED, CREATED, INITIATOR, INITIATOR_LOCK_INTENDED, LEGS, PARTICIPANT, PARTICIPANT_LOCK_INTENDED,
    REFUND_INTENDED, STATES, TERMINAL, Swap, SwapAction, SwapLeg,
)
from chains.btc.primitives import Tx


@dataclass(frozen=True)
class SwapView:
    """A detached snapshot of one swap: its row, both legs and its log."""

    swap: Swap
    legs: dict[str, SwapLeg]
    actions: list[SwapAction]

    def leg(self, name: str) -> SwapLeg:
        return self.legs[name]


class SwapStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        init_db(engine)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def create(self, swap: Swap, legs: Iterable[SwapLeg], note: str = "") -> SwapView:
        """Insert a new swap; the same id with the same content again is a no-op (idempotent accept)."""
        legs = list(legs)
        if sorted(l.leg for l in legs) != sorted(LEGS):
            raise InputError("a swap has exactly one initiator and one participant leg")
        with self._session() as s, s.begin():
            existing = s.get(Swap, swap.id)
            if existing is not None:
                old = {l.leg: l for l in s.exec(select(SwapLeg).where(SwapLeg.swap_id == swap.id))}
                same = existing.hashlock == swap.hashlock and existing.role == swap.role and all(
                    (old[l.leg].chain, old[l.leg].asset, old[l.leg].amount) == (l.chain, l.asset, l.amount) for l in legs
                )
                if not same:
                    raise Conflict(f"swap {swap.id} already exists with other terms", swap_id=swap.id)
            else:
                s.add(swap)
                s.flush()
                for leg in legs:
                    s.add(leg)
                s.add(SwapAction(swap_id=swap.id, at=swap.created_at, from_state=None, to_state=swap.state, note=note))
        return self.get(swap.id)

    def get(self, swap_id: str, with_actions: bool = True) -> SwapView:
        """The swap, its legs and (unless ``with_actions`` is false: the engine's steps do not
        read the log, which grows with the swap) its action log."""
        with self._session() as s:
            swap = s.get(Swap, swap_id)
            if swap is None:
                raise NotFound(f"no swap {swap_id}", swap_id=swap_id)
            legs = {l.leg: l for l in s.exec(select(SwapLeg).where(SwapLeg.swap_id == swap_id))}
            actions = list(s.exec(select(SwapAction).where(SwapAction.swap_id == swap_id).order_by(SwapAction.seq))) if with_actions else []
            return SwapView(swap, legs, actions)

    def list(self, states: Iterable[str] | None = None) -> list[SwapView]:
        with self._session() as s:
            q = select(Swap.id).order_by(Swap.created_at)
            if states is not None:
                q = q.where(Swap.state.in_(list(states)))
            ids = list(s.exec(q))
        return [self.get(i) for i in ids]

    def committed(self, role: str, states: Iterable[str], asset: str) -> int:
        """What ``role``'s own legs in ``states`` hold of ``asset`` (one query, not a swap at a time)."""
        with self._session() as s:
            amounts = s.exec(
                select(SwapLeg.amount).join(Swap, Swap.id == SwapLeg.swap_id).where(
                    Swap.role == role, SwapLeg.leg == role, Swap.state.in_(list(states)), SwapLeg.asset == asset,
                )
            ).all()
        return sum(int(a) for a in amounts)

    def unbooked(self) -> list[str]:
        """Ids of swaps changed since the ledger last recorded them."""
        with self._session() as s:
            q = select(Swap.id).where((Swap.booked_at.is_(None)) | (Swap.booked_at < Swap.updated_at)).order_by(Swap.created_at)
            return list(s.exec(q))

    def mark_booked(self, swap_id: str, updated_at: float) -> None:
        """The ledger holds the facts of the swap as of ``updated_at``."""
        with self._session() as s, s.begin():
            s.exec(update(Swap).where(Swap.id == swap_id).values(booked_at=updated_at))

    def due(self, now: float | None = None, limit: int | None = None, among: Iterable[str] | None = None) -> list[str]:
        """Ids of unfinished swaps (``among`` these, if given) whose next attempt is due, the longest
        waiting first."""
        now = time.time() if now is None else now
        with self._session() as s:
            q = select(Swap.id).where(Swap.state.not_in(list(TERMINAL)), Swap.next_attempt_at <= now).order_by(Swap.next_attempt_at)
            if among is not None:
                q = q.where(Swap.id.in_(list(among)))
            if limit is not None:
                q = q.limit(limit)
            return list(s.exec(q))

    def wake_expiring(self, chain: str, expired: int, lock_deadline: int) -> int:
        """Make due the unfinished swaps whose own lock on ``chain`` has expired (expiry at or before
        ``expired``: refund), and the LP's swaps still waiting for a trader lock that expires at or
        before ``lock_deadline`` (too late to lock against).  Values are heights or timestamps, as
        the chain's expiries are.  Returns how many swaps were waiting."""
        now = time.time()
        own_expired = select(SwapLeg.swap_id).join(Swap, Swap.id == SwapLeg.swap_id).where(
            SwapLeg.chain == chain, SwapLeg.leg == Swap.role, SwapLeg.expiry.is_not(None), SwapLeg.expiry <= expired,
        )
        too_late = select(SwapLeg.swap_id).join(Swap, Swap.id == SwapLeg.swap_id).where(
            SwapLeg.chain == chain, SwapLeg.leg == INITIATOR, Swap.role == PARTICIPANT, Swap.state == CREATED,
            SwapLeg.expiry.is_not(None), SwapLeg.expiry <= lock_deadline,
        )
        with self._session() as s, s.begin():
            result = s.exec(
                update(Swap).where(
                    Swap.id.in_(own_expired.union(too_late)), Swap.state.not_in(list(TERMINAL)), Swap.next_attempt_at > now,
                ).values(next_attempt_at=now)
            )
            return result.rowcount or 0

    def transition(
        self,
        swap_id: str,
        expect: str | Iterable[str],
        to: str,
        note: str = "",
        swap_fields: dict[str, Any] | None = None,
        legs: dict[str, dict[str, Any]] | None = None,
    ) -> SwapView:
        """Move ``swap_id`` from ``expect`` to ``to`` and write the given fields, atomically.

        ``to == expect`` records data without a state change (no log line unless ``note``).
        Raises ``Conflict`` when the swap is no longer in ``expect`` (someone else moved it).
        Returns the swap and legs as written, without the action log (``get`` reads it).
        """
        if to not in STATES:
            raise InputError(f"unknown swap state {to!r}", field="state")
        expected = {expect} if isinstance(expect, str) else set(expect)
        unknown = [n for n in (swap_fields or {}) if n not in Swap.model_fields] + [
            f"{leg}.{n}" for leg, fields in (legs or {}).items() for n in fields if leg not in LEGS or n not in SwapLeg.model_fields
        ]
        if unknown:
            raise InputError(f"not swap fields: {', '.join(unknown)}", fields=unknown)
        now = time.time()
        with self._session() as s, s.begin():
            swap = s.get(Swap, swap_id)
            if swap is None:
                raise NotFound(f"no swap {swap_id}", swap_id=swap_id)
            if swap.state not in expected:
                raise Conflict(f"swap {swap_id} is {swap.state}, not {'/'.join(sorted(expected))}", swap_id=swap_id, state=swap.state)
            previous = swap.state
            changed = previous != to
            if changed:
                swap.retries, swap.last_error, swap.next_attempt_at = 0, None, now
            for name, value in (swap_fields or {}).items():
                setattr(swap, name, value)
            rows = {l.leg: l for l in s.exec(select(SwapLeg).where(SwapLeg.swap_id == swap_id))}
            for leg_name, fields in (legs or {}).items():
                leg = rows[leg_name]
                for name, value in fields.items():
                    setattr(leg, name, value)
                s.add(leg)
            swap.state, swap.updated_at = to, now
            s.add(swap)
            if changed or note:
                s.add(SwapAction(swap_id=swap_id, at=now, from_state=previous, to_state=to, note=note))
        return SwapView(swap, rows, [])

    def reserved_inputs(self) -> set[tuple[str, int]]:
        """Outpoints spent by Bitcoin locks recorded as intended and not yet seen confirmed."""
        with self._session() as s:
            rows = s.exec(
                select(SwapLeg.lock_raw).join(Swap, Swap.id == SwapLeg.swap_id).where(
                    Swap.state.in_([INITIATOR_LOCK_INTENDED, PARTICIPANT_LOCK_INTENDED]),
                    SwapLeg.leg == Swap.role, SwapLeg.chain == "bitcoin", SwapLeg.lock_raw.is_not(None),
                )
            ).all()
        return {(i.prevout.txid_hex, i.prevout.n) for raw in rows for i in Tx.parse(bytes.fromhex(raw)).vin}

    def evm_nonces(self) -> list[int]:
        """Nonces of the EVM transactions this store's swaps still intend to get mined: the lock
        (and its approve) of a swap whose lock is intended, the claim/refund of one whose spend
        is.  A recorded transaction owns its nonce even before it is sent (a crash in between);
        one the swap no longer intends (a claim given up for a refund) frees it.  One store
        holds one party, whose swaps all sign with its one EVM key."""
        with self._session() as s:
            rows = s.exec(
                select(Swap.state, Swap.role, SwapLeg.leg, SwapLeg.spend_kind, SwapLeg.lock_evm, SwapLeg.spend_evm)
                .join(Swap, Swap.id == SwapLeg.swap_id)
                .where(Swap.state.in_([INITIATOR_LOCK_INTENDED, PARTICIPANT_LOCK_INTENDED, CLAIM_INTENDED, REFUND_INTENDED]),
                       SwapLeg.chain == "evm")
            ).all()
        out: list[int] = []
        for state, role, leg, spend_kind, lock_evm, spend_evm in rows:
            if state in (INITIATOR_LOCK_INTENDED, PARTICIPANT_LOCK_INTENDED) and leg == role and lock_evm:
                lock = json.loads(lock_evm)
                out.append(lock["fields"]["nonce"])
                if lock.get("approve"):
                    out.append(lock["approve"]["fields"]["nonce"])
            elif spend_evm and spend_kind == ("claim" if state == CLAIM_INTENDED else "refund"):
                out.append(json.loads(spend_evm)["nonce"])
        return out

    def defer(self, swap_id: str, reason: str, delay: float, count_retry: bool = True) -> None:
        """Try again after ``delay`` seconds, remembering why (a wait or an error)."""
        with self._session() as s, s.begin():
            swap = s.get(Swap, swap_id)
            if swap is None:
                raise NotFound(f"no swap {swap_id}", swap_id=swap_id)
            if count_retry:
                swap.retries += 1
            swap.last_error = reason
            swap.next_attempt_at = time.time() + delay
            s.add(swap)

    def wake_all(self, swap_ids: Iterable[str]) -> None:
        """Make these swaps due now (a block they wait for came)."""
        with self._session() as s, s.begin():
            s.exec(update(Swap).where(Swap.id.in_(list(swap_ids))).values(next_attempt_at=0.0))

    def wake(self, swap_id: str) -> None:
        """Make a swap due now (new information arrived, e.g. the trader's lock notice)."""
        with self._session() as s, s.begin():
            swap = s.get(Swap, swap_id)
            if swap is not None:
                swap.next_attempt_at = 0.0
                s.add(swap)
