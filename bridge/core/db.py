"""Database engines: a SQLite file (WAL) by default, any SQLAlchemy URL by configuration.

Every component that persists state (indexer cursors, ledger, swaps) gets its
engine here so SQLite is always opened with the same durability settings.
"""

from __future__ import annotations

import time

import weakref
from pathlib import Path
from typing import Iterable

from sqlalchemy import Column, Table, event, inspect, literal, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel, create_engine

from bridge.core.errors import SchemaError


def make_engine(url: str, echo: bool = False, **kwargs) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": 30, "check_same_thread": False}
        connect_args.update(kwargs.pop("connect_args", {}))
        engine = create_engine(url, echo=echo, connect_args=connect_args, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            # WAL: readers never block the writer; NORMAL is crash-safe in WAL mode
            # (a power cut may lose the last commits, a process crash loses nothing).
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, **kwargs)


def init_db(engine: Engine, tables: Iterable[Table] | None = None) -> None:
    """Create ``tables`` (default: every table on SQLModel's metadata) and bring tables an
    older version created up to date by adding the columns they lack (idempotent).

    ``create_all`` alone never touches an existing table, so a database written before a
    model grew a column would fail on the first query naming it.  Only additive changes
    are made: a column that existing rows cannot fill (NOT NULL without a default) is
    refused with ``SchemaError`` naming it, rather than guessing a value.

    Each table is checked once per engine: the check reads the schema back (several queries a
    table), and a relayer opens its stores and indexes again for every swap it starts.
    """
    done = _initialised.setdefault(engine, weakref.WeakSet())
    tables = [t for t in (SQLModel.metadata.sorted_tables if tables is None else tables) if t not in done]
    if not tables:
        return
    for metadata in {id(t.metadata): t.metadata for t in tables}.values():
        for attempt in range(5):
            try:
                metadata.create_all(engine, tables=[t for t in tables if t.metadata is metadata])
                break
            except DBAPIError as exc:
                # Processes starting together on one database create the same tables: whoever
                # lost the race between create_all's check and its CREATE looks again.
                text_ = str(exc).lower()
                if not ("already exists" in text_ or "pg_type_typname_nsp_index" in text_) or attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
    for table in tables:
        add_missing_columns(engine, table)
    done.update(tables)


_initialised: "weakref.WeakKeyDictionary[Engine, weakref.WeakSet[Table]]" = weakref.WeakKeyDictionary()


def add_missing_columns(engine: Engine, table: Table) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each column of ``table`` its database table lacks;
    returns the names added."""
    have = {c["name"] for c in inspect(engine).get_columns(table.name, schema=table.schema)}
    missing = [c for c in table.columns if c.name not in have]
    for column in missing:  # all refusals before any change, so a refused upgrade writes nothing
        _check_addable(table, column)
    added = []
    for column in missing:
        try:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {_table_name(engine, table)} ADD COLUMN {_column_ddl(conn, column)}"))
                for index in table.indexes:
                    if column in index.columns.values():
                        index.create(conn, checkfirst=True)
            added.append(column.name)
        except DBAPIError as exc:
            # Another process opening the same database may have added it first.
            if column.name in {c["name"] for c in inspect(engine).get_columns(table.name, schema=table.schema)}:
                continue
            raise SchemaError(
                f"cannot add column {table.name}.{column.name} to the existing database: {str(exc.orig).splitlines()[0]}",
                table=table.name,
                column=column.name,
            ) from exc
    return added


def _scalar_default(column: Column) -> object:
    default = column.default
    if default is not None and default.is_scalar and default.arg is not None:
        return default.arg
    return None


def _check_addable(table: Table, column: Column) -> None:
    where = f"table {table.name!r} of the existing database lacks column {column.name!r}"
    if column.primary_key:
        raise SchemaError(f"{where}, part of its primary key: it cannot be added in place", table=table.name, column=column.name)
    if not column.nullable and column.server_default is None and _scalar_default(column) is None:
        raise SchemaError(
            f"{where}, which is NOT NULL without a default: existing rows have no value for it; migrate this database by hand (or start a new one)",
            table=table.name,
            column=column.name,
        )


def _table_name(engine: Engine, table: Table) -> str:
    return engine.dialect.identifier_preparer.format_table(table)


def _column_ddl(conn: Connection, column: Column) -> str:
    """``name TYPE [DEFAULT x] [NOT NULL] [REFERENCES t(c)]``: a model's Python-side scalar
    default becomes the column's server default, so existing rows get that value."""
    dialect = conn.dialect
    preparer = dialect.identifier_preparer
    parts = [preparer.format_column(column), dialect.type_compiler_instance.process(column.type, type_expression=column)]
    default = dialect.ddl_compiler(dialect, None).get_column_default_string(column)
    if default is None and (value := _scalar_default(column)) is not None:
        default = str(literal(value, type_=column.type).compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    if default is not None:
        parts += ["DEFAULT", default]
    if not column.nullable:
        parts.append("NOT NULL")
    for fk in column.foreign_keys:
        target = fk.column
        parts.append(f"REFERENCES {preparer.format_table(target.table)} ({preparer.format_column(target)})")
    return " ".join(parts)


POSTGRES_TEST_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def postgres_available(url: str = POSTGRES_TEST_URL) -> str | None:
    """None when reachable, else the reason (for a visible pytest skip)."""
    try:
        eng = create_engine(url, pool_pre_ping=True)
        with eng.connect():
            pass
        eng.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        return f"PostgreSQL not reachable at {url}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
