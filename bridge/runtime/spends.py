"""Every version of an operation's spend, one row each: a claim or refund re-signed at a higher fee
or under a fresh nonce is a new version, and any version sent may be the one that is mined.

One table for every kind of operation, keyed by the operation's table (``OpTable.table``: its
kind), its id and a ``part`` (a swap's leg; ``""`` when an operation has one spend).  A domain
store adds a version with ``add`` in the transaction of the transition that records it, and reads
them back with ``read`` (the current one first).  ``copy_legacy`` moves the comma-separated
histories older databases kept on the operation's row into the table, once per operation.

Plain DB-API statements (``bridge.core.dbapi``): they run inside the operations' steps.
"""

from __future__ import annotations

import time
from typing import Iterable

from sqlmodel import Field, SQLModel

from bridge.core.dbapi import Tx
from bridge.runtime.store import OpTable


class SpendVersion(SQLModel, table=True):
    __tablename__ = "spend_version"

    kind: str = Field(primary_key=True)  # the operation's table: "swap", "watch_job"
    op_id: str = Field(primary_key=True)
    part: str = Field(default="", primary_key=True)  # a swap's leg; "" for one spend per operation
    tx: str = Field(primary_key=True)  # txid (Bitcoin) or transaction hash (EVM)
    seq: int  # 1 for the first version of (kind, op_id, part), then 2, ...
    at: float


# One statement: the next ``seq`` of the part, and nothing when the version is there already
# (``HAVING`` without ``GROUP BY``: one aggregate row, kept only if no row of the part has ``tx``).
_ADD = (
    "INSERT INTO spend_version (kind, op_id, part, tx, seq, at) "
    "SELECT :kind, :op, :part, :tx, COALESCE(MAX(seq), 0) + 1, :at FROM spend_version "
    "WHERE kind = :kind AND op_id = :op AND part = :part HAVING COUNT(CASE WHEN tx = :tx THEN 1 END) = 0"
)
_READ = "SELECT part, tx FROM spend_version WHERE kind = :kind AND op_id = :op ORDER BY part, seq DESC"
_COPIED = "SELECT 1 FROM spend_version v WHERE v.kind = '{kind}' AND v.op_id = {op_id} AND v.part = {part}"


def add(tx: Tx, t: OpTable, op_id: str, version: str, part: str = "", at: float | None = None) -> bool:
    """Record ``version`` as the newest of ``op_id``'s spend (``part``) in ``tx``; a version already
    recorded is left where it is.  Returns whether a row was added."""
    params = {"kind": t.table, "op": op_id, "part": part, "tx": version, "at": time.time() if at is None else at}
    return tx.execute(_ADD, params) == 1


def read(tx: Tx, t: OpTable, op_id: str) -> dict[str, list[str]]:
    """Every version of each part of ``op_id``'s spend, the current (newest) first."""
    out: dict[str, list[str]] = {}
    for row in tx.rows(_READ, {"kind": t.table, "op": op_id}):
        out.setdefault(row["part"], []).append(row["tx"])
    return out


def not_copied(t: OpTable, op_id: str, part: str = "''") -> str:
    """A SQL condition for a domain's ``copy_legacy`` query: no version of the spend whose operation
    id and part are the SQL expressions ``op_id`` and ``part`` is in the table yet (fixed names of
    the caller's query and ``t.table``, never input)."""
    return f"NOT EXISTS ({_COPIED.format(kind=t.table, op_id=op_id, part=part)})"


def copy_legacy(tx: Tx, t: OpTable, found: Iterable[tuple[str, str, Iterable[str | None]]]) -> int:
    """Copy histories an older version kept as comma-separated text on the operation's row:
    ``found`` holds ``(op_id, part, versions)``, oldest first, each an entry or a comma-separated
    string (empty entries skipped).  The caller selects only operations with no row here yet
    (``not_copied``), so opening a database twice copies nothing twice.  Returns the rows added."""
    added = 0
    for op_id, part, versions in found:
        for entry in versions:
            for version in (entry or "").split(","):
                if version:
                    added += add(tx, t, op_id, version, part)
    return added
