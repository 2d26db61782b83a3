"""Plain DB-API statements for the hot paths, on connections from the engine's pool.

A relayer commits a few small statements at every step of every swap.  Through the ORM
each cost 0.3-0.9 ms of CPU (session, identity map, unit of work, statement
compilation), half of a relayer's CPU per swap, on the same cores that run the swap.
The same statements on the DB-API cursor cost about 0.01 ms.  SQLAlchemy still owns
the schema (``init_db``), the pool and the connection settings (``make_engine``).

SQL is written with ``:name`` parameters, sqlite3's named style; for drivers that use
``%(name)s`` (psycopg2) it is rewritten once per statement text.  Statements must be
portable between SQLite and PostgreSQL: no ``?``, no dialect functions.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy.engine import Engine

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def in_list(name: str, values: Iterable[Any], params: dict[str, Any]) -> str:
    """``:name0, :name1, ...`` for an ``IN (...)`` list, the values added to ``params``.
    The caller handles an empty list (``IN ()`` is not valid everywhere)."""
    keys = []
    for n, value in enumerate(values):
        params[f"{name}{n}"] = value
        keys.append(f":{name}{n}")
    return ", ".join(keys)


def _pyformat_text(text: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 - the cache is meant to live on
    out = cache.get(text)
    if out is None:
        out = cache[text] = _PARAM.sub(r"%(\1)s", text.replace("%", "%%"))
    return out


def _plain(text: str) -> str:
    return text


def _texts_for(engine: Engine) -> Callable[[str], str]:
    return _pyformat_text if engine.dialect.paramstyle in ("pyformat", "format") else _plain


class Tx:
    """One transaction's cursor."""

    def __init__(self, sql: Callable[[str], str], cursor: Any) -> None:
        self._sql, self._cursor = sql, cursor

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> int:
        """Run a statement; returns the rows it changed."""
        self._cursor.execute(self._sql(sql), params or {})
        return self._cursor.rowcount

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self._cursor.execute(self._sql(sql), params or {})
        names = [d[0] for d in self._cursor.description]
        return [dict(zip(names, row)) for row in self._cursor.fetchall()]

    def one(self, sql: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def column(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        self._cursor.execute(self._sql(sql), params or {})
        return [row[0] for row in self._cursor.fetchall()]


class Db:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sql = _texts_for(engine)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """Commit what the block wrote, or roll it all back if it raises.  (sqlite3 begins
        the transaction at the first write, so a read that must see the same snapshot as a
        later write belongs in that write's ``WHERE``, as ``SwapStore.transition`` does.)"""
        conn = self.engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                yield Tx(self.sql, cursor)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                cursor.close()
        finally:
            conn.close()  # back to the pool


def session_tx(session: Any) -> Tx:
    """A ``Tx`` on the DB-API connection of an ORM ``session``'s open transaction (begun if need
    be): its statements commit or roll back with whatever else the session does (the indexer
    hands its consumers such a session)."""
    conn = session.connection()
    return Tx(_texts_for(conn.engine), conn.connection.driver_connection.cursor())
