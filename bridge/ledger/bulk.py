"""The statements whose cost grows with the batch: inserting transfers, looking up
which transfer ids already exist, and writing the totals of the accounts touched.

Both go to the driver with pre-encoded values instead of through SQLAlchemy's
per-row parameter processing, which measured at more than half the time of a
10,000-transfer batch.  SQLite: one ``executemany`` (the same call the raw baseline
of ``bench/ledger.py`` makes), and the id look-up passes the ids as one JSON array
(``json_each``) so the statement text is the same for every batch size.
PostgreSQL: ``COPY ... FROM STDIN`` (multi-row INSERT through insertmanyvalues
measured at about 10,000 rows/s here, COPY several times that) and ``= ANY(array)``.
"""

from __future__ import annotations

import io
import json
from typing import Iterable, Sequence

from sqlalchemy.engine import Connection

from bridge.ledger.models import AMOUNT_DIGITS, TOTAL_DIGITS, TRANSFER_COLUMNS, to_text

_COLS = ", ".join(TRANSFER_COLUMNS)
_AMOUNT = TRANSFER_COLUMNS.index("amount")
_SQLITE_INSERT = f"INSERT INTO ledger_transfers ({_COLS}) VALUES ({', '.join('?' * len(TRANSFER_COLUMNS))})"
_PG_COPY = f"COPY ledger_transfers ({_COLS}) FROM STDIN"
_LOOKUP_COLS = "id, kind, debit_account, credit_account, amount, pending_id, timeout, cause"
_SQLITE_LOOKUP = f"SELECT {_LOOKUP_COLS} FROM ledger_transfers WHERE id IN (SELECT value FROM json_each(?))"
_PG_LOOKUP = f"SELECT {_LOOKUP_COLS} FROM ledger_transfers WHERE id = ANY(%(ids)s)"

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


def insert_transfers(conn: Connection, rows: Sequence[tuple]) -> None:
    """Insert rows given in ``TRANSFER_COLUMNS`` order (amounts as ints)."""
    if conn.dialect.name == "postgresql":
        # Integer columns need no escaping; the text columns are escaped only when they must be.
        _copy(conn, _PG_COPY, (
            f"{h}\t{i}\t{_esc(tid)}\t{kind}\t{d}\t{c}\t{_esc(asset)}\t{amount}\t{_esc(pid)}\t"
            f"{_NULL if timeout is None else timeout}\t{_esc(cause)}\n"
            for h, i, tid, kind, d, c, asset, amount, pid, timeout, cause in rows
        ))
        return
    encoded = [r[:_AMOUNT] + (to_text(r[_AMOUNT], AMOUNT_DIGITS),) + r[_AMOUNT + 1 :] for r in rows]
    conn.exec_driver_sql(_SQLITE_INSERT, encoded)


def existing_transfers(conn: Connection, ids: Iterable[str]) -> dict[str, dict]:
    """The stored content of those of ``ids`` that exist, by id (amounts as ints)."""
    ids = list(ids)
    if conn.dialect.name == "postgresql":
        result = conn.exec_driver_sql(_PG_LOOKUP, {"ids": ids})
    else:
        result = conn.exec_driver_sql(_SQLITE_LOOKUP, (json.dumps(ids),))
    found: dict[str, dict] = {}
    for id_, kind, debit, credit, amount, pending_id, timeout, cause in result:
        found[id_] = dict(kind=kind, debit_account=debit, credit_account=credit, amount=int(amount),
                          pending_id=pending_id, timeout=timeout, cause=cause)
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
