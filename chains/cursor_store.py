"""What an indexer persists: its cursor and the recent blocks it processed, with their events.

Two tables, keyed by (indexer name, chain id) so any number of indexers share one
database:

* ``indexer_cursor``: the last processed height and hash.  ``hash`` is NULL
  before the first block is processed (nothing to chain the first block to).
* ``indexer_block``: the recent blocks processed (height, hash) and the keys of
  the events delivered in each (the delivery log), pruned to a window.  A reorg is
  found by comparing these hashes with the chain, walking back; the orphaned
  blocks' keys say exactly which events to revert.  One row per block, not per
  event, keeps a batch of 10^5 events to a few hundred rows.

Every method works inside the caller's ``Session``; the indexer decides where a
transaction begins and ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, Column
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel

from bridge.core.db import init_db
from bridge.core.dbapi import session_tx
from bridge.core.errors import Conflict
from chains.base import BlockRef, ChainEvent


def _now() -> datetime:
    return datetime.now(timezone.utc)


class IndexerCursor(SQLModel, table=True):
    __tablename__ = "indexer_cursor"

    name: str = Field(primary_key=True)
    chain_id: str = Field(primary_key=True)
    #: Last processed height; ``first_height - 1`` before anything was processed.
    height: int = Field(sa_column=Column(BigInteger, nullable=False))
    hash: str | None = None
    #: Where indexing began: a reorg that reaches below it rewinds everything.
    first_height: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = Field(default_factory=_now)


class IndexerBlock(SQLModel, table=True):
    __tablename__ = "indexer_block"

    name: str = Field(primary_key=True)
    chain_id: str = Field(primary_key=True)
    height: int = Field(sa_column=Column(BigInteger, primary_key=True))
    hash: str
    #: Keys of the events delivered in this block, in chain order.
    event_keys: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


TABLES = [IndexerCursor.__table__, IndexerBlock.__table__]


def create_tables(engine: Engine) -> None:
    """Create the indexer's tables only (idempotent), not everyone else's."""
    init_db(engine, TABLES)


@dataclass(frozen=True)
class Cursor:
    height: int
    hash: str | None
    first_height: int


@dataclass(frozen=True)
class OrphanedBlock:
    """A block the indexer had processed that is no longer on the canonical chain."""

    height: int
    hash: str
    event_keys: list[str]


class CursorStore:
    """The persisted state of one indexer (``name``) on one chain (``chain_id``).

    Statements go to the DB-API connection of the caller's session (``bridge.core.dbapi.session_tx``),
    not through the ORM: an indexer at the tip runs several for every block."""

    def __init__(self, name: str, chain_id: str) -> None:
        self.name = name
        self.chain_id = chain_id
        self._mine = {"name": name, "chain_id": chain_id}

    def load(self, session: Session) -> Cursor | None:
        row = session_tx(session).one("SELECT height, hash, first_height FROM indexer_cursor WHERE name = :name AND chain_id = :chain_id", self._mine)
        return Cursor(row["height"], row["hash"], row["first_height"]) if row else None

    def create(self, session: Session, start_height: int) -> Cursor:
        session_tx(session).execute(
            "INSERT INTO indexer_cursor (name, chain_id, height, hash, first_height, updated_at) "
            "VALUES (:name, :chain_id, :height, NULL, :first_height, CURRENT_TIMESTAMP)",
            {**self._mine, "height": start_height - 1, "first_height": start_height},
        )
        return Cursor(start_height - 1, None, start_height)

    def stored_hashes(self, session: Session, low: int, high: int) -> dict[int, str]:
        rows = session_tx(session).rows(
            "SELECT height, hash FROM indexer_block WHERE name = :name AND chain_id = :chain_id AND height >= :low AND height <= :high",
            {**self._mine, "low": low, "high": high},
        )
        return {r["height"]: r["hash"] for r in rows}

    def delivered_above(self, session: Session, height: int) -> list[OrphanedBlock]:
        """Stored blocks above ``height`` with the keys delivered in each, newest first."""
        rows = session_tx(session).rows(
            "SELECT height, hash, event_keys FROM indexer_block WHERE name = :name AND chain_id = :chain_id AND height > :height ORDER BY height DESC",
            {**self._mine, "height": height},
        )
        return [OrphanedBlock(r["height"], r["hash"], _keys(r["event_keys"])) for r in rows]

    def move(self, session: Session, old: Cursor, height: int, block_hash: str | None) -> Cursor:
        """Compare-and-set the cursor, so two live instances of one indexer cannot both deliver."""
        moved = session_tx(session).execute(
            "UPDATE indexer_cursor SET height = :height, hash = :hash, updated_at = CURRENT_TIMESTAMP "
            "WHERE name = :name AND chain_id = :chain_id AND height = :old_height AND " + ("hash IS NULL" if old.hash is None else "hash = :old_hash"),
            {**self._mine, "height": height, "hash": block_hash, "old_height": old.height, "old_hash": old.hash},
        )
        if moved != 1:
            raise Conflict(
                f"indexer {self.name!r} on {self.chain_id}: cursor is no longer at {old.height}; another instance with the same name moved it",
                indexer=self.name,
                chain_id=self.chain_id,
                expected_height=old.height,
            )
        return Cursor(height, block_hash, old.first_height)

    def record(self, session: Session, blocks: list[BlockRef], events: list[ChainEvent]) -> None:
        """Store processed blocks with the keys of the events delivered in each."""
        keys: dict[int, list[str]] = {b.height: [] for b in blocks}
        seen: set[str] = set()
        for e in events:
            if e.key in seen:
                raise Conflict(
                    f"indexer {self.name!r} on {self.chain_id}: event key {e.key!r} appears twice "
                    f"(again in block {e.block.height}); the adapter's keys must be unique on the chain",
                    indexer=self.name,
                    chain_id=self.chain_id,
                    event_key=e.key,
                    height=e.block.height,
                )
            seen.add(e.key)
            keys[e.block.height].append(e.key)
        tx = session_tx(session)
        for b in blocks:
            tx.execute(
                "INSERT INTO indexer_block (name, chain_id, height, hash, event_keys) VALUES (:name, :chain_id, :height, :hash, :event_keys)",
                {**self._mine, "height": b.height, "hash": b.hash, "event_keys": json.dumps(keys[b.height])},
            )

    def forget_above(self, session: Session, height: int) -> None:
        session_tx(session).execute(
            "DELETE FROM indexer_block WHERE name = :name AND chain_id = :chain_id AND height > :height", {**self._mine, "height": height}
        )

    def prune_below(self, session: Session, height: int) -> None:
        session_tx(session).execute(
            "DELETE FROM indexer_block WHERE name = :name AND chain_id = :chain_id AND height < :height", {**self._mine, "height": height}
        )


def _keys(stored: str | list[str]) -> list[str]:
    # The JSON column comes back as text from sqlite3 and already parsed from psycopg2.
    return json.loads(stored) if isinstance(stored, str) else list(stored)
