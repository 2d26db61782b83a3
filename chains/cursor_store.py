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

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, Column, delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel

from bridge.db import init_db
from bridge.errors import Conflict
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
    """The persisted state of one indexer (``name``) on one chain (``chain_id``)."""

    def __init__(self, name: str, chain_id: str) -> None:
        self.name = name
        self.chain_id = chain_id

    def _mine(self, table):
        return (table.c.name == self.name) & (table.c.chain_id == self.chain_id)

    def load(self, session: Session) -> Cursor | None:
        t = IndexerCursor.__table__
        row = session.execute(select(t.c.height, t.c.hash, t.c.first_height).where(self._mine(t))).first()
        return Cursor(row.height, row.hash, row.first_height) if row else None

    def create(self, session: Session, start_height: int) -> Cursor:
        session.execute(
            insert(IndexerCursor.__table__).values(
                name=self.name, chain_id=self.chain_id, height=start_height - 1, hash=None,
                first_height=start_height, updated_at=_now(),
            )
        )
        return Cursor(start_height - 1, None, start_height)

    def stored_hashes(self, session: Session, low: int, high: int) -> dict[int, str]:
        t = IndexerBlock.__table__
        rows = session.execute(
            select(t.c.height, t.c.hash).where(self._mine(t) & (t.c.height >= low) & (t.c.height <= high))
        )
        return {r.height: r.hash for r in rows}

    def delivered_above(self, session: Session, height: int) -> list[OrphanedBlock]:
        """Stored blocks above ``height`` with the keys delivered in each, newest first."""
        t = IndexerBlock.__table__
        rows = session.execute(
            select(t.c.height, t.c.hash, t.c.event_keys).where(self._mine(t) & (t.c.height > height)).order_by(t.c.height.desc())
        )
        return [OrphanedBlock(r.height, r.hash, list(r.event_keys)) for r in rows]

    def move(self, session: Session, old: Cursor, height: int, block_hash: str | None) -> Cursor:
        """Compare-and-set the cursor, so two live instances of one indexer cannot both deliver."""
        t = IndexerCursor.__table__
        same_hash = t.c.hash.is_(None) if old.hash is None else t.c.hash == old.hash
        result = session.execute(
            update(t)
            .where(self._mine(t) & (t.c.height == old.height) & same_hash)
            .values(height=height, hash=block_hash, updated_at=_now())
        )
        if result.rowcount != 1:
            raise Conflict(
                f"indexer {self.name!r} on {self.chain_id}: cursor is no longer at {old.height}; "
                "another instance with the same name moved it",
                indexer=self.name, chain_id=self.chain_id, expected_height=old.height,
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
                    indexer=self.name, chain_id=self.chain_id, event_key=e.key, height=e.block.height,
                )
            seen.add(e.key)
            keys[e.block.height].append(e.key)
        if blocks:
            session.execute(
                insert(IndexerBlock.__table__),
                [
                    {"name": self.name, "chain_id": self.chain_id, "height": b.height, "hash": b.hash, "event_keys": keys[b.height]}
                    for b in blocks
                ],
            )

    def forget_above(self, session: Session, height: int) -> None:
        t = IndexerBlock.__table__
        session.execute(delete(t).where(self._mine(t) & (t.c.height > height)))

    def prune_below(self, session: Session, height: int) -> None:
        t = IndexerBlock.__table__
        session.execute(delete(t).where(self._mine(t) & (t.c.height < height)))
