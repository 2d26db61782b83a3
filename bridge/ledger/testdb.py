"""Throw-away ledger databases for tests and benchmarks, on SQLite or PostgreSQL.

PostgreSQL isolation is a fresh schema per database, selected through the URL
(``options=-csearch_path=...``) so the same URL works in subprocesses and the CLI.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

from sqlalchemy import text
from sqlalchemy.engine import Engine

from bridge.core.db import POSTGRES_TEST_URL, make_engine

BACKENDS = ("sqlite", "postgresql")


@contextlib.contextmanager
def fresh_database(backend: str, directory: Path, pg_url: str = POSTGRES_TEST_URL) -> Iterator[tuple[str, Engine]]:
    """Yield ``(url, engine)`` of an empty database; drop it afterwards."""
    if backend == "sqlite":
        url = f"sqlite:///{directory / f'ledger-{secrets.token_hex(4)}.sqlite'}"
        engine = make_engine(url)
        try:
            yield url, engine
        finally:
            engine.dispose()
        return
    schema = f"ledger_{secrets.token_hex(6)}"
    admin = make_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{sep}options={quote(f'-csearch_path={schema}')}"
    engine = make_engine(url)
    try:
        yield url, engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
