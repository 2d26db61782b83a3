"""Every statement of the commit path, as fixed SQL text sent to the driver.

Measured reasons: for a 10,000-transfer batch, SQLAlchemy's per-row parameter
processing was more than half the time; for a one-transfer batch, building and
caching the Core statements cost several times what SQLite took to run them.
So values are pre-encoded here (amounts as fixed-width text on SQLite, see
``models``) and each statement is a constant string.

SQLite: ``executemany`` for rows (the same call the raw baseline of
``bench/ledger.py`` makes), lists of ids passed as one JSON array (``json_each``)
so the text is the same for every batch size.  PostgreSQL: ``COPY ... FROM STDIN``
for rows (INSERT through insertmanyvalues measured at about 10,000 rows/s here,
COPY several times that), ``= ANY(array)`` for lists, and ``FOR UPDATE`` on every
row the batch will change, taken in ascending key order so writers never deadlock.
"""

from __future__ import annotations

import io
import json
from typing import Iterable, Sequence

from sqlalchemy.engine import Connection

from bridge.ledger.models import AMOUNT_DIGITS, TOTAL_DIGITS, TRANSFER_COLUMNS, to_text

_COLS = ", ".join(TRANSFER_COLUMNS)
_SQLITE_INSERT = f"INSERT INTO ledger_transfers ({_COLS}) VALUES ({', '.join('?' * len(TRANSFER_COLUMNS))})"
_PG_COPY = f"COPY ledger_transfers ({_COLS}) FROM STDIN"
_LOOKUP_COLS = "id, kind, debit_account, credit_account, amount, pending_id, timeout, cause"

_TOTALS = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")
_TOTAL_COLS = ("account_id", "asset", *_TOTALS, "height")
_SQLITE_UPSERT = (
    f"INSERT INTO ledger_balances ({', '.join(_TOTAL_COLS)}) VALUES ({', '.join('?' * len(_TOTAL_COLS))}) "
    f"ON CONFLICT (account_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in (*_TOTALS, 'height'))}"
)
_PG_UPDATE = (
    f"UPDATE ledger_balances AS b SET {', '.join(f'{c} = v.{c}' for c in (*_TOTALS, 'height'))} "
    f"FROM (VALUES %s) AS v ({', '.join(_TOTAL_COLS)}) WHERE b.account_id = v.account_id"
)
_PG_UPDATE_ROW = "(%s, %s, %s::numeric, %s::numeric, %s::numeric, %s::numeric, %s::bigint)"
_PG_HISTORY_COPY = f"COPY ledger_balance_history ({', '.join(_TOTAL_COLS)}) FROM STDIN"
_SQLITE_HISTORY = f"INSERT INTO ledger_balance_history ({', '.join(_TOTAL_COLS)}) VALUES ({', '.join('?' * len(_TOTAL_COLS))})"

# COPY text format: backslash escapes for the characters that delimit fields and rows.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"


def _esc(value: str | None) -> str:
    if value is None:
        return _NULL
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _copy(conn: Connection, sql: str, lines: Iterable[str]) -> None:
    buf = io.StringIO()
    buf.writelines(lines)
    buf.seek(0)
    with conn.connection.dbapi_connection.cursor() as cur:
        cur.copy_expert(sql, buf)


def insert_transfers(conn: Connection, height: int, rows: Sequence[tuple]) -> None:
    """Insert a batch's rows, given in ``TRANSFER_COLUMNS`` order without height and index."""
    if conn.dialect.name == "postgresql":
        # Integer columns need no escaping; the text columns are escaped only when they must be.
        _copy(
            conn,
            _PG_COPY,
            (
                f"{height}\t{i}\t{_esc(tid)}\t{kind}\t{d}\t{c}\t{_esc(asset)}\t{amount}\t{_esc(pid)}\t{_NULL if timeout is None else timeout}\t{_esc(cause)}\n"
                for i, (tid, kind, d, c, asset, amount, pid, timeout, cause) in enumerate(rows)
            ),
        )
        return
    conn.exec_driver_sql(
        _SQLITE_INSERT,
        [
            (height, i, tid, kind, d, c, asset, to_text(amount, AMOUNT_DIGITS), pid, timeout, cause)
            for i, (tid, kind, d, c, asset, amount, pid, timeout, cause) in enumerate(rows)
        ],
    )


def existing_transfers(conn: Connection, ids: Iterable[str]) -> dict[str, dict]:
    """The stored content of those of ``ids`` that exist, by id (amounts as ints)."""
    found: dict[str, dict] = {}
    for id_, kind, debit, credit, amount, pending_id, timeout, cause in _run(conn, "lookup", (_list(conn, ids),)):
        found[id_] = dict(kind=kind, debit_account=debit, credit_account=credit, amount=int(amount), pending_id=pending_id, timeout=timeout, cause=cause)
    return found


def write_totals(conn: Connection, rows: Sequence[tuple]) -> None:
    """Set the running totals of the accounts a batch touched and append them to the history.

    ``rows``: ``(account_id, asset, debits_posted, credits_posted, debits_pending, credits_pending, height)``.
    """
    if conn.dialect.name == "postgresql":
        # Balance rows exist from account creation on, so one UPDATE ... FROM (VALUES ...)
        # sets them all (psycopg2's executemany would be one round trip per account).
        from psycopg2.extras import execute_values  # PostgreSQL is an optional extra

        with conn.connection.dbapi_connection.cursor() as cur:
            execute_values(cur, _PG_UPDATE, rows, template=_PG_UPDATE_ROW, page_size=len(rows))
        _copy(conn, _PG_HISTORY_COPY, ("\t".join(map(str, (a, _esc(asset), *totals, h))) + "\n" for a, asset, *totals, h in rows))
        return
    encoded = [(a, asset, *(to_text(v, TOTAL_DIGITS) for v in totals), h) for a, asset, *totals, h in rows]
    conn.exec_driver_sql(_SQLITE_UPSERT, encoded)
    conn.exec_driver_sql(_SQLITE_HISTORY, encoded)


def _pg(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _list(conn: Connection, items: Iterable) -> object:
    return list(items) if _pg(conn) else json.dumps(list(items))


_SQL = {
    # name: (SQLite, PostgreSQL)
    "lookup": (
        f"SELECT {_LOOKUP_COLS} FROM ledger_transfers WHERE id IN (SELECT value FROM json_each(?))",
        f"SELECT {_LOOKUP_COLS} FROM ledger_transfers WHERE id = ANY(%s)",
    ),
    "due": (
        "SELECT id FROM ledger_pending WHERE expires_at IS NOT NULL AND expires_at <= ? ORDER BY id",
        "SELECT id FROM ledger_pending WHERE expires_at IS NOT NULL AND expires_at <= %s ORDER BY id",
    ),
    "holds": (
        "SELECT id, debit_account, credit_account, asset, amount, expires_at FROM ledger_pending WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
        "SELECT id, debit_account, credit_account, asset, amount, expires_at FROM ledger_pending WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
    ),
    "totals": (
        f"SELECT account_id, {', '.join(_TOTALS)} FROM ledger_balances WHERE account_id IN (SELECT value FROM json_each(?)) ORDER BY account_id",
        f"SELECT account_id, {', '.join(_TOTALS)} FROM ledger_balances WHERE account_id = ANY(%s) ORDER BY account_id FOR UPDATE",
    ),
    "bump": (
        "UPDATE ledger_head SET height = height + 1 WHERE id = 1 RETURNING height",
        "UPDATE ledger_head SET height = height + 1 WHERE id = 1 RETURNING height",
    ),
    "batch": (
        "INSERT INTO ledger_batches (height, committed_at, transfers) VALUES (?, ?, ?)",
        "INSERT INTO ledger_batches (height, committed_at, transfers) VALUES (%s, %s, %s)",
    ),
    "add_holds": (
        "INSERT INTO ledger_pending (id, debit_account, credit_account, asset, amount, expires_at, height) VALUES (?, ?, ?, ?, ?, ?, ?)",
        "INSERT INTO ledger_pending (id, debit_account, credit_account, asset, amount, expires_at, height) VALUES (%s, %s, %s, %s, %s, %s, %s)",
    ),
    "drop_holds": (
        "DELETE FROM ledger_pending WHERE id IN (SELECT value FROM json_each(?))",
        "DELETE FROM ledger_pending WHERE id = ANY(%s)",
    ),
}


def _run(conn: Connection, name: str, params: tuple):
    return conn.exec_driver_sql(_SQL[name][_pg(conn)], params)


def due_holds(conn: Connection, now: int) -> list[str]:
    """Ids of open holds whose timeout has passed."""
    return [r[0] for r in _run(conn, "due", (now,))]


def lock_holds(conn: Connection, ids: Sequence[str]) -> list[tuple]:
    """``(id, debit, credit, asset, amount, expires_at)`` of the open holds among ``ids``."""
    return [(i, d, c, a, int(amount), exp) for i, d, c, a, amount, exp in _run(conn, "holds", (_list(conn, sorted(ids)),))]


def lock_totals(conn: Connection, account_ids: Sequence[int]) -> list[tuple]:
    """``(account_id, debits_posted, credits_posted, debits_pending, credits_pending)`` per account."""
    return [(a, int(dp), int(cp), int(dq), int(cq)) for a, dp, cp, dq, cq in _run(conn, "totals", (_list(conn, sorted(account_ids)),))]


def bump_height(conn: Connection) -> int:
    """The next height; on PostgreSQL the head row stays locked until commit, so batches
    become visible in height order."""
    return _run(conn, "bump", ()).scalar_one()


def record_batch(conn: Connection, height: int, committed_at: int, transfers: int) -> None:
    _run(conn, "batch", (height, committed_at, transfers))


def add_holds(conn: Connection, rows: Sequence[tuple]) -> None:
    """``(id, debit, credit, asset, amount, expires_at, height)`` per new hold."""
    if not _pg(conn):
        rows = [(i, d, c, a, to_text(amount, AMOUNT_DIGITS), exp, h) for i, d, c, a, amount, exp, h in rows]
    conn.exec_driver_sql(_SQL["add_holds"][_pg(conn)], list(rows))


def drop_holds(conn: Connection, ids: Sequence[str]) -> None:
    _run(conn, "drop_holds", (_list(conn, ids),))
