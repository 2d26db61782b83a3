"""The one store pattern of long operations: compare-and-set transitions and a status history.

An operation (a swap, a watch job, and later a delivery, a payout, a snapshot publication) is
one row of its own table, which has at least ``id``, ``state``, ``updated_at``, a retry counter,
``last_error`` and ``next_attempt_at``; its history table has ``seq``, the operation's id,
``at``, ``from_state``, ``to_state``, ``note`` and ``attempt``.  ``OpTable`` names them, so each
domain keeps its table and column names (stored state names never change) and runs the same
statements: ``transition`` moves the row only if it is still in an expected state, and writes a
history row with the time, the reason and the attempt that made the move, in the caller's
transaction (so the domain's own writes commit with it).

Plain DB-API statements (``bridge.core.dbapi``): these run at every step of every operation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from bridge.core.dbapi import Db, Tx, in_list
from bridge.core.errors import Conflict, InputError, NotFound


@dataclass(frozen=True)
class OpTable:
    """Where one kind of operation lives."""

    #: How messages name one operation ("swap", "watch job").
    what: str
    table: str
    history: str
    #: The history table's column holding the operation id.
    ref: str
    states: tuple[str, ...]
    terminal: frozenset[str]
    #: The operation row's count of failed attempts in its current state.
    retries: str = "retries"
    #: Unfinished states as SQL literals (fixed names, never input) for ``state IN (...)``.
    open_sql: str = field(init=False)
    insert_history: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "open_sql", ", ".join(f"'{s}'" for s in self.states if s not in self.terminal))
        object.__setattr__(
            self,
            "insert_history",
            f"INSERT INTO {self.history} ({self.ref}, at, from_state, to_state, note, attempt) VALUES (:op, :at, :from_state, :to_state, :note, :attempt)",
        )


@dataclass(frozen=True)
class Moved:
    """What ``transition`` did: the state it left, when, and whether the state changed."""

    previous: str
    at: float
    changed: bool


def record(tx: Tx, t: OpTable, op_id: str, from_state: str | None, to_state: str, note: str = "", at: float | None = None, attempt: int | None = 1) -> None:
    """One history row (creation, or a note that is no transition)."""
    tx.execute(
        t.insert_history,
        {"op": op_id, "at": time.time() if at is None else at, "from_state": from_state, "to_state": to_state, "note": note, "attempt": attempt},
    )


def transition(
    tx: Tx, t: OpTable, op_id: str, expect: str | Iterable[str], to: str, note: str = "", fields: dict[str, Any] | None = None, now: float | None = None
) -> Moved:
    """Move ``op_id`` from one of ``expect`` to ``to`` in ``tx`` and set ``fields`` on its row.

    A state change resets the retry counter and the last error and makes the operation due at
    once; ``to`` equal to the current state records data only (and a history row if ``note``).
    The history row carries the attempt that made the move (failed attempts in the state + 1).
    ``Conflict`` when the operation is in another state, or moved on between the read and the
    compare-and-set (a second runner on the same database); ``NotFound`` when it does not exist.
    """
    if to not in t.states:
        raise InputError(f"unknown {t.what} state {to!r}", field="state")
    expected = {expect} if isinstance(expect, str) else set(expect)
    now = time.time() if now is None else now
    row = tx.one(f"SELECT state, {t.retries} FROM {t.table} WHERE id = :id", {"id": op_id})
    if row is None:
        raise NotFound(f"no {t.what} {op_id}", **{_key(t): op_id})
    previous, retries = row["state"], row[t.retries] or 0
    if previous not in expected:
        raise Conflict(f"{t.what} {op_id} is {previous}, not {'/'.join(sorted(expected))}", **{_key(t): op_id}, state=previous)
    changed = previous != to
    values: dict[str, Any] = {t.retries: 0, "last_error": None, "next_attempt_at": now} if changed else {}
    values.update(fields or {})
    values.update(state=to, updated_at=now)
    # Compare-and-set on the state read above: a runner that moved the operation meanwhile wins.
    moved = tx.execute(
        f"UPDATE {t.table} SET {', '.join(f'{n} = :v_{n}' for n in values)} WHERE id = :id AND state = :previous",
        {**{f"v_{n}": v for n, v in values.items()}, "id": op_id, "previous": previous},
    )
    if moved != 1:
        raise Conflict(f"{t.what} {op_id} moved on from {previous} meanwhile", **{_key(t): op_id}, state=previous)
    if changed or note:
        record(tx, t, op_id, previous, to, note, now, retries + 1)
    return Moved(previous, now, changed)


def _key(t: OpTable) -> str:
    return t.ref


def make_due(tx: Tx, t: OpTable, op_ids: Iterable[str], at: float = 0.0) -> set[str]:
    """Make these operations, the unfinished ones, due at ``at`` (default: now, news arrived)."""
    ids = set(op_ids)
    params: dict[str, Any] = {"at": at}
    if keys := in_list("id", ids, params):
        tx.execute(f"UPDATE {t.table} SET next_attempt_at = :at WHERE id IN ({keys}) AND state IN ({t.open_sql})", params)
    return ids


class OpStore:
    """The scheduling side of an ``OpTable`` (what ``bridge.runtime.Operations`` needs of a store)."""

    def __init__(self, db: Db, table: OpTable) -> None:
        self.db, self.t = db, table

    def due(self, now: float | None = None, limit: int | None = None, among: Iterable[str] | None = None, first: str | None = None) -> list[str]:
        """Ids of unfinished operations (``among`` these, if given) whose next attempt is due, the
        longest waiting first (those in state ``first`` before all others, if given)."""
        params: dict[str, Any] = {"now": time.time() if now is None else now}
        sql = f"SELECT id FROM {self.t.table} WHERE state IN ({self.t.open_sql}) AND next_attempt_at <= :now"
        if among is not None:
            among = list(among)
            if not among:
                return []
            sql += f" AND id IN ({in_list('id', among, params)})"
        order = "next_attempt_at"
        if first is not None:
            order = f"CASE WHEN state = :first THEN 0 ELSE 1 END, {order}"
            params["first"] = first
        sql += f" ORDER BY {order}"
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = limit
        with self.db.transaction() as tx:
            return tx.column(sql, params)

    def defer(self, op_id: str, reason: str, delay: float, count_retry: bool = True) -> None:
        """Try again after ``delay`` seconds, remembering why (a wait or an error)."""
        with self.db.transaction() as tx:
            found = tx.execute(
                f"UPDATE {self.t.table} SET {self.t.retries} = {self.t.retries} + :add, last_error = :reason, next_attempt_at = :at WHERE id = :id",
                {"add": 1 if count_retry else 0, "reason": reason, "at": time.time() + delay, "id": op_id},
            )
            if not found:
                raise NotFound(f"no {self.t.what} {op_id}", **{_key(self.t): op_id})

    def wake(self, op_ids: Iterable[str]) -> None:
        """Make these operations due now (a block or an event they wait for came)."""
        with self.db.transaction() as tx:
            make_due(tx, self.t, op_ids)

    def retries(self, op_id: str) -> int:
        with self.db.transaction() as tx:
            found = tx.column(f"SELECT {self.t.retries} FROM {self.t.table} WHERE id = :id", {"id": op_id})
        return (found[0] or 0) if found else 0

    def finished(self, op_ids: Iterable[str]) -> bool:
        """Whether every one of these operations is in a terminal state (unknown ids count as not)."""
        ids = list(op_ids)
        params: dict[str, Any] = {}
        if not ids:
            return True
        with self.db.transaction() as tx:
            states = tx.column(f"SELECT state FROM {self.t.table} WHERE id IN ({in_list('id', ids, params)})", params)
        return len(states) == len(set(ids)) and all(s in self.t.terminal for s in states)

    def counts(self) -> dict[str, int]:
        """Operations per state (states without any left out)."""
        with self.db.transaction() as tx:
            rows = tx.rows(f"SELECT state, COUNT(*) AS n FROM {self.t.table} GROUP BY state")
        return {r["state"]: int(r["n"]) for r in rows}

    def history(self, op_id: str) -> list[dict[str, Any]]:
        """Every recorded transition of ``op_id``, oldest first: ``seq``, ``at``, ``from_state``,
        ``to_state``, ``note`` and ``attempt`` (None on rows written before attempts were kept)."""
        with self.db.transaction() as tx:
            return tx.rows(f"SELECT seq, at, from_state, to_state, note, attempt FROM {self.t.history} WHERE {self.t.ref} = :id ORDER BY seq", {"id": op_id})
