"""Database engines: a SQLite file (WAL) by default, any SQLAlchemy URL by configuration.

Every component that persists state (indexer cursors, ledger, swaps) gets its
engine here so SQLite is always opened with the same durability settings.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel, create_engine


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


def init_db(engine: Engine) -> None:
    """Create every table registered on SQLModel's metadata (idempotent)."""
    SQLModel.metadata.create_all(engine)


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
