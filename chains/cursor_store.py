"""What an indexer persists: its cursor, the recent canonical block hashes, and a delivery log.

Three tables, all keyed by (indexer name, chain id) so any number of indexers
share one database:

* ``indexer_cursor``: the last processed height and hash.  ``hash`` is NULL
  before the first block is processed (nothing to chain the first block to).
* ``indexer_block``: height -> hash of the recent blocks processed, pruned to a
  window.  A reorg is found by comparing these with the chain, walking back.
* ``indexer_delivery``: the event keys delivered per block within the same
  window, so the orphaned blocks' events can be reverted exactly.

Every method works inside the caller's ``Session``; the indexer decides where a
transaction begins and ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import BigInteger, Column, Index, delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel

from bridge.errors import Conflict


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


class IndexerDelivery(SQLModel, table=True):
    __tablename__ = "indexer_delivery"
    __table_args__ = (Index("ix_indexer_delivery_height", "name", "chain_id", "height"),)

    name: str = Field(primary_key=True)
    chain_id: str = Field(primary_key=True)
    event_key: str = Field(primary_key=True)
    height: int = Field(sa_column=Column(BigInteger, nullable=False))
    block_hash: str


TABLES = [IndexerCursor.__table__, IndexerBlock.__table__, IndexerDelivery.__table__]


def create_tables(engine: Engine) -> None:
    """Create the indexer's tables only (idempotent), not everyone else's."""
    SQLModel.metadata.create_all(engine, tables=TABLES)


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
        hashes = self.stored_hashes(session, height + 1, 2**62)
        d = IndexerDelivery.__table__
        keys: dict[int, list[str]] = {h: [] for h in hashes}
        for r in session.execute(
            select(d.c.height, d.c.event_key).where(self._mine(d) & (d.c.height > height)).order_by(d.c.height)
        ):
            keys.setdefault(r.height, []).append(r.event_key)
        return [OrphanedBlock(h, hashes.get(h, ""), keys[h]) for h in sorted(keys, reverse=True)]

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

    def record(self, session: Session, blocks: list[tuple[int, str]], deliveries: list[dict]) -> None:
        """Store processed blocks (height, hash) and delivery rows (event_key, height, block_hash)."""
        if blocks:
            session.execute(
                insert(IndexerBlock.__table__),
                [{"name": self.name, "chain_id": self.chain_id, "height": h, "hash": bh} for h, bh in blocks],
            )
        if deliveries:
            keys = [row["event_key"] for row in deliveries]
            if len(set(keys)) != len(keys):
                self._refuse_repeat(deliveries, set())
            try:
                with session.begin_nested():
                    session.execute(
                        insert(IndexerDelivery.__table__),
                        [{"name": self.name, "chain_id": self.chain_id, **row} for row in deliveries],
                    )
            except IntegrityError:
                d = IndexerDelivery.__table__
                known = set(session.execute(select(d.c.event_key).where(self._mine(d) & d.c.event_key.in_(keys))).scalars())
                self._refuse_repeat(deliveries, known)
                raise

    def _refuse_repeat(self, deliveries: list[dict], known: set[str]) -> None:
        seen = set(known)
        for row in deliveries:
            if row["event_key"] in seen:
                raise Conflict(
                    f"indexer {self.name!r} on {self.chain_id}: event key {row['event_key']!r} of block "
                    f"{row['height']} was already delivered; the adapter's keys must be unique on the chain",
                    indexer=self.name, chain_id=self.chain_id, event_key=row["event_key"], height=row["height"],
                )
            seen.add(row["event_key"])

    def forget_above(self, session: Session, height: int) -> None:
        for table in (IndexerBlock.__table__, IndexerDelivery.__table__):
            session.execute(delete(table).where(self._mine(table) & (table.c.height > height)))

    def prune_below(self, session: Session, height: int) -> None:
        for table in (IndexerBlock.__table__, IndexerDelivery.__table__):
            session.execute(delete(table).where(self._mine(table) & (table.c.height < height)))
