"""Swap persistence: every state change and the data it depends on commit together.

A handler computes what it wants to record (a signed transaction, a lock
reference) and calls ``transition``; the row's current state is checked inside
the same transaction, so two runners racing on one swap cannot both move it.
The compare-and-set, the history row (``swap_action``, with the attempt) and the
scheduling statements are the runtime's (``bridge.runtime.store``, table ``SWAPS``).
"""

from __future__ import annotations

import json
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable

from sqlalchemy.engine import Engine
from sqlalchemy.orm import configure_mappers

from bridge.core.db import init_db
from bridge.core.dbapi import Db, Tx, in_list
from bridge.core.errors import Conflict, InputError, NotFound
from bridge.runtime import spends
from bridge.runtime.store import OpStore, OpTable
from bridge.runtime.store import make_due as _make_due
from bridge.runtime.store import record as _record
from bridge.runtime.store import transition as _transition
from bridge.swaps.models import (
    CLAIM_INTENDED,
    CREATED,
    HASHLOCK,
    INITIATOR,
    INITIATOR_LOCK_INTENDED,
    LEGS,
    OPEN_SQL,
    PARTICIPANT,
    PARTICIPANT_LOCK_INTENDED,
    REFUND_INTENDED,
    STATES,
    TERMINAL,
    Swap,
    SwapAction,
    SwapLeg,
)
from chains.btc.primitives import Tx as BtcTx


class LockTaken(Conflict):
    """The hashlock or lock is already consumed by another swap of the same role (``SwapLock``)."""


def canonical_ref(kind: str, ref: str) -> str:
    """One spelling per lock, so ``txid:01`` and ``TXID:1`` cannot pass for two outputs."""
    ref = ref.lower()
    if kind == "bitcoin":
        txid, _, vout = ref.partition(":")
        return f"{txid}:{int(vout)}" if vout.isascii() and vout.isdigit() else ref
    return ref


@dataclass(frozen=True)
class SwapView:
    """A detached snapshot of one swap: its row, both legs, its log and the versions of its spends."""

    swap: Swap
    legs: dict[str, SwapLeg]
    actions: list[SwapAction]
    #: Per leg, every version of our claim/refund of it recorded (``spend_version``), the current first.
    spends: dict[str, list[str]] = field(default_factory=dict)

    def leg(self, name: str) -> SwapLeg:
        return self.legs[name]

    def spend_versions(self, leg: SwapLeg | str) -> list[str]:
        """Every version of our claim/refund of ``leg`` (fee bumps, re-signed nonces), the current one
        first: any of them may be the one mined."""
        return list(self.spends.get(leg if isinstance(leg, str) else leg.leg, ()))


_SWAP = tuple(Swap.model_fields)
_LEG = tuple(SwapLeg.model_fields)
_BOOLS = ("accepted", "lp_notified")
_OWN_LEG = "JOIN swap ON swap.id = swap_leg.swap_id"


def _swap(row: dict[str, Any]) -> Swap:
    for name in _BOOLS:  # SQLite hands booleans back as 0/1
        row[name] = bool(row[name])
    return Swap.model_construct(**row)


#: Swaps on the runtime's store pattern: the ``swap`` row, its ``swap_action`` history.
SWAPS = OpTable("swap", "swap", "swap_action", "swap_id", STATES, TERMINAL, retries="retries")
assert SWAPS.open_sql == OPEN_SQL


def make_due(tx: Tx, swap_ids: Iterable[str]) -> set[str]:
    """Make these swaps, the unfinished ones, due now in ``tx`` (news arrived for them); returns the ids."""
    return _make_due(tx, SWAPS, swap_ids)


def _insert(table: str, names: Iterable[str]) -> str:
    names = list(names)
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})"


_INSERT_SWAP = _insert("swap", _SWAP)
_INSERT_LEG = _insert("swap_leg", _LEG)
_INSERT_LOCK = _insert("swap_lock", ("role", "kind", "ref", "swap_id", "leg"))


def _bind(tx: Tx, integrity: type[Exception], role: str, kind: str, ref: str, swap_id: str, leg: str | None) -> None:
    """Record that ``swap_id`` consumes ``ref`` in ``tx``; ``LockTaken`` if another swap of ``role``
    already does.  The primary key decides, so two processes racing cannot both succeed."""
    ref = canonical_ref(kind, ref)
    owner = tx.one("SELECT swap_id, leg FROM swap_lock WHERE role = :role AND kind = :kind AND ref = :ref", {"role": role, "kind": kind, "ref": ref})
    if owner is not None:
        if (owner["swap_id"], owner["leg"]) == (swap_id, leg):
            return
        what = "hashlock" if kind == HASHLOCK else f"{kind} lock"
        raise LockTaken(f"{what} {ref} already backs another swap ({owner['swap_id']})", ref=ref, other=owner["swap_id"])
    try:
        tx.execute(_INSERT_LOCK, {"role": role, "kind": kind, "ref": ref, "swap_id": swap_id, "leg": leg})
    except integrity:
        raise LockTaken(f"{kind} {ref} was taken by another swap just now", ref=ref) from None


#: Bindings for swaps recorded before ``swap_lock`` existed (first swap of each ref wins).
_BACKFILL = (
    f"INSERT INTO swap_lock (role, kind, ref, swap_id, leg) SELECT s.role, '{HASHLOCK}', s.hashlock, MIN(s.id), NULL FROM swap s "
    "WHERE NOT EXISTS (SELECT 1 FROM swap_lock b WHERE b.role = s.role AND b.kind = 'hashlock' AND b.ref = s.hashlock) "
    "GROUP BY s.role, s.hashlock",
    # Own locks, and counterparty locks the swap went on to act on (seen: lock_tx recorded).
    "INSERT INTO swap_lock (role, kind, ref, swap_id, leg) SELECT s.role, l.chain, LOWER(l.lock_ref), MIN(s.id), MIN(l.leg) "
    "FROM swap_leg l JOIN swap s ON s.id = l.swap_id WHERE l.lock_ref IS NOT NULL AND l.lock_tx IS NOT NULL "
    "AND NOT EXISTS (SELECT 1 FROM swap_lock b WHERE b.role = s.role AND b.kind = l.chain AND b.ref = LOWER(l.lock_ref)) "
    "GROUP BY s.role, l.chain, LOWER(l.lock_ref)",
)


#: Spend histories of rows written before ``spend_version``: earlier versions, then the current one.
_LEGACY_SPENDS = (
    f"SELECT swap_id, leg, spend_history, spend_tx FROM swap_leg WHERE spend_tx IS NOT NULL AND {spends.not_copied(SWAPS, 'swap_leg.swap_id', 'swap_leg.leg')}"
)

_backfilled: "weakref.WeakSet[Engine]" = weakref.WeakSet()


class SwapStore(OpStore):
    """Statements go straight to the DB-API (``bridge.core.dbapi``): a relayer runs several at every
    step of every swap.  The rows come back as detached ``Swap``/``SwapLeg`` models.  ``due``,
    ``defer``, ``wake``, ``retries``, ``finished`` and ``history`` are the runtime's (``OpStore``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        init_db(engine)
        configure_mappers()  # the models are built without a session (``model_construct``)
        super().__init__(Db(engine), SWAPS)
        self._integrity: type[Exception] = engine.dialect.dbapi.IntegrityError
        if engine not in _backfilled:
            with self.db.transaction() as tx:
                for statement in _BACKFILL:
                    tx.execute(statement)
                legacy = tx.rows(_LEGACY_SPENDS)
                spends.copy_legacy(tx, SWAPS, ((r["swap_id"], r["leg"], (r["spend_history"], r["spend_tx"])) for r in legacy))
            _backfilled.add(engine)

    def create(self, swap: Swap, legs: Iterable[SwapLeg], note: str = "") -> SwapView:
        """Insert a new swap; the same id with the same content again is a no-op (idempotent accept)."""
        legs = list(legs)
        if sorted(l.leg for l in legs) != sorted(LEGS):
            raise InputError("a swap has exactly one initiator and one participant leg")
        with self.db.transaction() as tx:
            existing = tx.one("SELECT hashlock, role FROM swap WHERE id = :id", {"id": swap.id})
            if existing is not None:
                old = {r["leg"]: r for r in tx.rows("SELECT leg, chain, asset, amount FROM swap_leg WHERE swap_id = :id", {"id": swap.id})}
                same = (
                    existing["hashlock"] == swap.hashlock
                    and existing["role"] == swap.role
                    and all((old[l.leg]["chain"], old[l.leg]["asset"], old[l.leg]["amount"]) == (l.chain, l.asset, l.amount) for l in legs)
                )
                if not same:
                    raise Conflict(f"swap {swap.id} already exists with other terms", swap_id=swap.id)
            else:
                tx.execute(_INSERT_SWAP, {n: getattr(swap, n) for n in _SWAP})
                _bind(tx, self._integrity, swap.role, HASHLOCK, swap.hashlock, swap.id, None)
                for leg in legs:
                    tx.execute(_INSERT_LEG, {n: getattr(leg, n) for n in _LEG})
                _record(tx, SWAPS, swap.id, None, swap.state, note, swap.created_at)
        return self.get(swap.id)

    def get(self, swap_id: str, with_actions: bool = True) -> SwapView:
        """The swap, its legs and (unless ``with_actions`` is false: the engine's steps do not
        read the log, which grows with the swap) its action log."""
        with self.db.transaction() as tx:
            return self._read(tx, swap_id, with_actions)

    def _read(self, tx: Tx, swap_id: str, with_actions: bool) -> SwapView:
        row = tx.one("SELECT * FROM swap WHERE id = :id", {"id": swap_id})
        if row is None:
            raise NotFound(f"no swap {swap_id}", swap_id=swap_id)
        legs = {r["leg"]: SwapLeg.model_construct(**r) for r in tx.rows("SELECT * FROM swap_leg WHERE swap_id = :id", {"id": swap_id})}
        actions = (
            [SwapAction.model_construct(**r) for r in tx.rows("SELECT * FROM swap_action WHERE swap_id = :id ORDER BY seq", {"id": swap_id})]
            if with_actions
            else []
        )
        # No statement for the many steps before anything is spent.
        versions = spends.read(tx, SWAPS, swap_id) if any(l.spend_tx for l in legs.values()) else {}
        return SwapView(_swap(row), legs, actions, versions)

    def list(self, states: Iterable[str] | None = None) -> list[SwapView]:
        params: dict[str, Any] = {}
        where = ""
        if states is not None:
            states = list(states)
            if not states:
                return []
            where = f"WHERE state IN ({in_list('state', states, params)})"
        with self.db.transaction() as tx:
            ids = tx.column(f"SELECT id FROM swap {where} ORDER BY created_at", params)
            return [self._read(tx, i, True) for i in ids]

    def committed(self, role: str, states: Iterable[str], asset: str) -> int:
        """What ``role``'s own legs in ``states`` hold of ``asset`` (one query, not a swap at a time)."""
        params: dict[str, Any] = {"role": role, "asset": asset}
        states = list(states)
        if not states:
            return 0
        with self.db.transaction() as tx:
            amounts = tx.column(
                f"SELECT swap_leg.amount FROM swap_leg {_OWN_LEG} WHERE swap.role = :role AND swap_leg.leg = :role "
                f"AND swap.state IN ({in_list('state', states, params)}) AND swap_leg.asset = :asset",
                params,
            )
        return sum(int(a) for a in amounts)

    def unbooked(self) -> list[str]:
        """Ids of swaps changed since the ledger last recorded them."""
        with self.db.transaction() as tx:
            return tx.column("SELECT id FROM swap WHERE booked_at IS NULL OR booked_at < updated_at ORDER BY created_at")

    def mark_booked(self, swap_id: str, updated_at: float) -> None:
        """The ledger holds the facts of the swap as of ``updated_at``."""
        with self.db.transaction() as tx:
            tx.execute("UPDATE swap SET booked_at = :at WHERE id = :id", {"at": updated_at, "id": swap_id})

    def wake_expiring(self, chain: str, expired: int, lock_deadline: int) -> int:
        """Make due the unfinished swaps whose own lock on ``chain`` has expired (expiry at or before
        ``expired``: refund), and the LP's swaps still waiting for a trader lock that expires at or
        before ``lock_deadline`` (too late to lock against).  Values are heights or timestamps, as
        the chain's expiries are.  Returns how many swaps were waiting."""
        with self.db.transaction() as tx:
            return tx.execute(
                f"UPDATE swap SET next_attempt_at = :now WHERE state IN ({OPEN_SQL}) AND next_attempt_at > :now AND id IN ("
                f" SELECT swap_leg.swap_id FROM swap_leg {_OWN_LEG} WHERE swap_leg.chain = :chain AND swap_leg.expiry IS NOT NULL AND ("
                f"  (swap_leg.leg = swap.role AND swap_leg.expiry <= :expired)"
                f"  OR (swap_leg.leg = :initiator AND swap.role = :participant AND swap.state = :created AND swap_leg.expiry <= :deadline)))",
                {
                    "now": time.time(),
                    "chain": chain,
                    "expired": expired,
                    "deadline": lock_deadline,
                    "initiator": INITIATOR,
                    "participant": PARTICIPANT,
                    "created": CREATED,
                },
            )

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
        A leg's new ``spend_tx`` becomes the newest of its spend versions (``SwapView.spend_versions``).
        Raises ``Conflict`` when the swap is no longer in ``expect`` (someone else moved it).
        Returns the swap and legs as written, without the action log (``get`` reads it).
        """
        if to not in STATES:
            raise InputError(f"unknown swap state {to!r}", field="state")
        unknown = [n for n in (swap_fields or {}) if n not in Swap.model_fields] + [
            f"{leg}.{n}" for leg, fields in (legs or {}).items() for n in fields if leg not in LEGS or n not in SwapLeg.model_fields
        ]
        if unknown:
            raise InputError(f"not swap fields: {', '.join(unknown)}", fields=unknown)
        with self.db.transaction() as tx:
            _transition(tx, SWAPS, swap_id, expect, to, note, swap_fields)
            for leg_name, fields in (legs or {}).items():
                if fields:
                    tx.execute(
                        f"UPDATE swap_leg SET {', '.join(f'{n} = :v_{n}' for n in fields)} WHERE swap_id = :id AND leg = :leg",
                        {**{f"v_{n}": v for n, v in fields.items()}, "id": swap_id, "leg": leg_name},
                    )
                    if fields.get("spend_tx"):
                        spends.add(tx, SWAPS, swap_id, fields["spend_tx"], part=leg_name)
            view = self._read(tx, swap_id, with_actions=False)
            for leg_name, fields in (legs or {}).items():
                if fields.get("lock_ref"):
                    # Recording a lock is consuming it: no other swap of this role may act on it.
                    _bind(tx, self._integrity, view.swap.role, view.legs[leg_name].chain, fields["lock_ref"], swap_id, leg_name)
            return view

    def report_lock(self, swap_id: str, ref: str, script: str | None) -> bool:
        """The trader says where its lock is (LP side): remembered for the engine to audit, not
        consumed (``SwapLock``) until the audit has seen it on chain, so a report naming someone
        else's lock blocks nobody.  Only the first report of a swap still waiting is kept and
        logged; returns whether this one was."""
        with self.db.transaction() as tx:
            kept = tx.execute(
                "UPDATE swap_leg SET lock_ref = :ref, script = :script WHERE swap_id = :id AND leg = :leg AND lock_ref IS NULL "
                "AND EXISTS (SELECT 1 FROM swap WHERE swap.id = :id AND swap.state = :created)",
                {"ref": ref, "script": script, "id": swap_id, "leg": INITIATOR, "created": CREATED},
            )
            if kept:
                _record(tx, SWAPS, swap_id, CREATED, CREATED, f"trader reports lock {ref}", attempt=None)
                make_due(tx, [swap_id])
        return bool(kept)

    def open_reservations(self, client: str) -> int:
        """LP side: swaps this client asked for that still wait for the trader's lock."""
        with self.db.transaction() as tx:
            return tx.column(
                "SELECT COUNT(*) FROM swap WHERE role = :role AND state = :created AND client = :client",
                {"role": PARTICIPANT, "created": CREATED, "client": client},
            )[0]

    def reserved_inputs(self) -> set[tuple[str, int]]:
        """Outpoints spent by Bitcoin locks recorded as intended and not yet seen confirmed."""
        with self.db.transaction() as tx:
            rows = tx.column(
                f"SELECT swap_leg.lock_raw FROM swap_leg {_OWN_LEG} WHERE swap.state IN (:a, :b) AND swap_leg.leg = swap.role "
                "AND swap_leg.chain = 'bitcoin' AND swap_leg.lock_raw IS NOT NULL",
                {"a": INITIATOR_LOCK_INTENDED, "b": PARTICIPANT_LOCK_INTENDED},
            )
        return {(i.prevout.txid_hex, i.prevout.n) for raw in rows for i in BtcTx.parse(bytes.fromhex(raw)).vin}

    def evm_nonces(self) -> list[int]:
        """Nonces of the EVM transactions this store's swaps still intend to get mined: the lock
        (and its approve) of a swap whose lock is intended, the claim/refund of one whose spend
        is.  A recorded transaction owns its nonce even before it is sent (a crash in between);
        one the swap no longer intends (a claim given up for a refund) frees it.  One store
        holds one party, whose swaps all sign with its one EVM key."""
        with self.db.transaction() as tx:
            rows = tx.rows(
                "SELECT swap.state, swap.role, swap_leg.leg, swap_leg.spend_kind, swap_leg.lock_evm, swap_leg.spend_evm "
                f"FROM swap_leg {_OWN_LEG} WHERE swap.state IN (:a, :b, :c, :d) AND swap_leg.chain = 'evm'",
                {"a": INITIATOR_LOCK_INTENDED, "b": PARTICIPANT_LOCK_INTENDED, "c": CLAIM_INTENDED, "d": REFUND_INTENDED},
            )
        out: list[int] = []
        for row in rows:
            state, role, leg, spend_kind, lock_evm, spend_evm = row.values()
            if state in (INITIATOR_LOCK_INTENDED, PARTICIPANT_LOCK_INTENDED) and leg == role and lock_evm:
                lock = json.loads(lock_evm)
                out.append(lock["fields"]["nonce"])
                if lock.get("approve"):
                    out.append(lock["approve"]["fields"]["nonce"])
            elif spend_evm and spend_kind == ("claim" if state == CLAIM_INTENDED else "refund"):
                out.append(json.loads(spend_evm)["nonce"])
        return out

    def wake_all(self, swap_ids: Iterable[str]) -> None:
        """Make these swaps due now (a block they wait for came)."""
        with self.db.transaction() as tx:
            make_due(tx, swap_ids)

    def wake(self, swap_ids: str | Iterable[str]) -> None:  # type: ignore[override] - also one id, as before
        """Make a swap (or these swaps) due now (new information arrived, e.g. the trader's lock notice)."""
        self.wake_all([swap_ids] if isinstance(swap_ids, str) else swap_ids)
