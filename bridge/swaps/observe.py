"""What a swap party sees on chain, through the indexer: HTLC events (EVM) and HTLC spends (Bitcoin).

One indexer per chain (``chains/indexer.py``: persisted cursor in the swap database, rewind
on a reorg by parent hash).  Its consumer keeps only what concerns this party's unfinished
swaps and writes it in the cursor's transaction, so each fact is stored exactly once across
crashes and deleted again when a reorg orphans its block.  In that same transaction it makes
the swaps concerned due, then wakes the engine's run loop: a revealed secret, a
counterparty's lock or a confirmed claim is acted on at once instead of at the next poll, and
swaps with nothing new are not re-checked in between.

The legs answer "where is that lock, how did this HTLC end, with which secret" from these
tables (``ChainIndex``); what the indexer cannot know yet (a spend still in the mempool) they
ask the node.

The consumers run at every block delivered and the legs read at every step of every swap, and
the ORM's per-statement overhead was a large share of a relayer's CPU: the statements go to the
DB-API (``bridge.core.dbapi``), the consumers' on the connection of the indexer's session.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from sqlalchemy.engine import Engine
from sqlalchemy.orm import configure_mappers
from sqlmodel import Field, Session, SQLModel

from bridge.core.db import init_db
from bridge.core.dbapi import Db, Tx, in_list, session_tx
from bridge.core.errors import Conflict
from bridge.swaps.models import OPEN_SQL
from bridge.swaps.store import make_due
from chains.base import BlockRef, ChainEvent
from chains.bitcoin import BitcoinTxFilter
from chains.cursor_store import OrphanedBlock
from chains.indexer import Indexer
from htlc.evm import Claimed, Locked, LogRef, SwapParams, decode_events

if TYPE_CHECKING:
    from bridge.swaps.legs.base import Leg

log = logging.getLogger("bridge.swaps.observe")

LOCKED, CLAIMED, REFUNDED = "locked", "claimed", "refunded"


class HtlcEventRow(SQLModel, table=True):
    """One event of the EVM HTLC contract that concerns one of our swaps."""

    __tablename__ = "swap_htlc_event"

    key: str = Field(primary_key=True)  # the indexer's event key: "txhash:logindex"
    kind: str  # LOCKED, CLAIMED or REFUNDED
    swap_ref: str = Field(index=True)  # the contract's swap id, 0x hex
    hashlock: Optional[str] = Field(default=None, index=True)  # hex, on LOCKED rows
    sender: Optional[str] = None
    recipient: Optional[str] = None
    token: Optional[str] = None
    amount: Optional[str] = None  # base units, decimal text (wei overflows 64 bits)
    expiry: Optional[int] = None
    nonce: Optional[int] = None
    preimage: Optional[str] = None  # hex, on CLAIMED rows
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int

    def where(self) -> LogRef:
        return LogRef(self.block_number, self.tx_hash, self.log_index)

    def locked(self) -> Locked:
        params = SwapParams(self.sender, self.recipient, self.token, int(self.amount), bytes.fromhex(self.hashlock), self.expiry, self.nonce)
        return Locked(bytes.fromhex(self.swap_ref.removeprefix("0x")), params, self.where())


class BtcSpendRow(SQLModel, table=True):
    """A mined transaction spending the HTLC output of one of our swaps."""

    __tablename__ = "swap_btc_spend"

    event_key: str = Field(primary_key=True)  # the spending txid (the indexer's event key)
    outpoint: str = Field(primary_key=True, index=True)  # "txid:vout" it spends
    witness: str  # JSON list of the spending input's witness items, hex
    block_height: int
    block_hash: str

    def witness_items(self) -> list[bytes]:
        return [bytes.fromhex(item) for item in json.loads(self.witness)]


def _upsert(model: type[SQLModel]) -> str:
    """Insert a row, or overwrite every column of the one with its primary key (``session.merge``)."""
    table = model.__table__
    names = [c.name for c in table.columns]
    keys = [c.name for c in table.primary_key]
    return (
        f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in names if n not in keys)}"
    )


_UPSERT_HTLC_EVENT = _upsert(HtlcEventRow)
_UPSERT_BTC_SPEND = _upsert(BtcSpendRow)
_OPEN_LEGS = f"FROM swap_leg JOIN swap ON swap.id = swap_leg.swap_id WHERE swap.state IN ({OPEN_SQL})"


def _swap_ids_for(tx: Tx, hashlocks: Iterable[str] = (), lock_refs: Iterable[str] = ()) -> set[str]:
    ids: set[str] = set()
    params: dict[str, Any] = {}
    if keys := in_list("h", set(hashlocks), params):
        ids.update(tx.column(f"SELECT id FROM swap WHERE hashlock IN ({keys})", params))
    params = {}
    if keys := in_list("r", set(lock_refs), params):
        ids.update(tx.column(f"SELECT swap_id FROM swap_leg WHERE lock_ref IN ({keys})", params))
    return ids


def _forget(tx: Tx, model: type[SQLModel], key: str, columns: str, orphaned: list[OrphanedBlock]) -> list[dict[str, Any]]:
    """Delete the ``model`` rows whose ``key`` column names an event a reorg orphaned; returns their ``columns``."""
    params: dict[str, Any] = {}
    keys = in_list("k", [k for block in orphaned for k in block.event_keys], params)
    if not keys:
        return []
    table = model.__tablename__
    rows = tx.rows(f"SELECT {columns} FROM {table} WHERE {key} IN ({keys})", params)
    if rows:
        tx.execute(f"DELETE FROM {table} WHERE {key} IN ({keys})", params)
    return rows


class EvmHtlcConsumer:
    """Stores the HTLC events whose hashlock (``Locked``) or swap id (``Claimed``/``Refunded``)
    belongs to one of our swaps."""

    def __init__(self, wake: Callable[[set[str]], None]) -> None:
        self.wake = wake
        self._cache: tuple[Session, set[str], set[str]] | None = None

    def _watched(self, session: Session, tx: Tx) -> tuple[set[str], set[str]]:
        """Hashlocks and lock refs of our open swaps, read once per batch (one session per batch)."""
        if self._cache is None or self._cache[0] is not session:
            hashlocks = set(tx.column(f"SELECT hashlock FROM swap WHERE state IN ({OPEN_SQL})"))
            refs = {r.lower() for r in tx.column(f"SELECT swap_leg.lock_ref {_OPEN_LEGS} AND swap_leg.lock_ref IS NOT NULL")}
            self._cache = (session, hashlocks, refs)
        return self._cache[1], self._cache[2]

    async def on_events(self, events: list[ChainEvent], block: BlockRef, *, session: Session) -> None:
        tx = session_tx(session)
        hashlocks, refs = self._watched(session, tx)
        touched_hashlocks: set[str] = set()
        touched_refs: set[str] = set()
        for event in events:
            decoded = decode_events([event])
            if not decoded:
                continue
            item = decoded[0]
            ref = "0x" + item.id.hex()
            row = dict.fromkeys(HtlcEventRow.model_fields) | {
                "key": event.key,
                "kind": LOCKED,
                "swap_ref": ref,
                "block_number": block.height,
                "block_hash": block.hash,
                "tx_hash": item.where.tx_hash,
                "log_index": item.where.log_index,
            }
            if isinstance(item, Locked):
                hashlock = item.swap.hashlock.hex()
                if hashlock not in hashlocks:
                    continue
                p = item.swap
                row.update(hashlock=hashlock, sender=p.sender, recipient=p.recipient, token=p.token, amount=str(p.amount), expiry=p.expiry, nonce=p.nonce)
                refs.add(ref)
                touched_hashlocks.add(hashlock)
            else:
                if ref not in refs and not tx.column("SELECT key FROM swap_htlc_event WHERE swap_ref = :ref LIMIT 1", {"ref": ref}):
                    continue
                if isinstance(item, Claimed):
                    row.update(kind=CLAIMED, preimage=bytes(item.preimage).hex())
                else:
                    row["kind"] = REFUNDED
                touched_refs.add(ref)
            tx.execute(_UPSERT_HTLC_EVENT, row)
        if touched_hashlocks or touched_refs:
            touched_hashlocks |= _hashlocks_of(tx, touched_refs)
            self.wake(make_due(tx, _swap_ids_for(tx, touched_hashlocks, touched_refs)))

    async def on_revert(self, orphaned: list[OrphanedBlock], *, session: Session) -> None:
        tx = session_tx(session)
        rows = _forget(tx, HtlcEventRow, "key", "swap_ref, hashlock", orphaned)
        if not rows:
            return
        refs = {r["swap_ref"] for r in rows}
        hashlocks = {r["hashlock"] for r in rows if r["hashlock"]} | _hashlocks_of(tx, refs)
        log.warning("reorg: forgot %d HTLC event(s) of swap(s) %s", len(rows), ", ".join(sorted(refs)))
        self.wake(make_due(tx, _swap_ids_for(tx, hashlocks, refs)))


def _hashlocks_of(tx: Tx, refs: set[str]) -> set[str]:
    params: dict[str, Any] = {"locked": LOCKED}
    if not (keys := in_list("ref", refs, params)):
        return set()
    return {h for h in tx.column(f"SELECT hashlock FROM swap_htlc_event WHERE swap_ref IN ({keys}) AND kind = :locked", params) if h}


def watched_outpoints(session: Session) -> BitcoinTxFilter:
    """The Bitcoin HTLC outputs of our unfinished swaps (both legs): the BTC indexer's selector."""
    return _watched_outpoints(session_tx(session))


def _watched_outpoints(tx: Tx) -> BitcoinTxFilter:
    refs = tx.column(f"SELECT swap_leg.lock_ref {_OPEN_LEGS} AND swap_leg.chain = 'bitcoin' AND swap_leg.lock_ref IS NOT NULL")
    outpoints = []
    for ref in refs:
        txid, _, vout = ref.partition(":")
        if len(txid) == 64 and vout.isdigit():
            outpoints.append((txid, int(vout)))
    return BitcoinTxFilter(scripts=(), outpoints=outpoints)


def outpoints_selector(db: Db) -> Callable[[], BitcoinTxFilter]:
    """The BTC indexer's selector: the HTLC outputs of our unfinished swaps, read afresh at every batch."""

    def selector() -> BitcoinTxFilter:
        with db.transaction() as tx:
            return _watched_outpoints(tx)

    return selector


class BtcSpendConsumer:
    """Stores the mined spends of our swaps' HTLC outputs (claims reveal the secret in the witness)."""

    def __init__(self, wake: Callable[[set[str]], None]) -> None:
        self.wake = wake
        self._cache: tuple[Session, set[str]] | None = None

    async def on_events(self, events: list[ChainEvent], block: BlockRef, *, session: Session) -> None:
        if self._cache is None or self._cache[0] is not session:  # once per batch
            self._cache = (session, {f"{t}:{n}" for t, n in (watched_outpoints(session).outpoints or ())})
        watched = self._cache[1]
        tx = session_tx(session)
        touched: set[str] = set()
        for event in events:
            for vin in event.data["tx"].get("vin", []):
                outpoint = f"{vin.get('txid')}:{vin.get('vout')}"
                if outpoint not in watched:
                    continue
                tx.execute(
                    _UPSERT_BTC_SPEND,
                    {
                        "event_key": event.key,
                        "outpoint": outpoint,
                        "witness": json.dumps(list(vin.get("txinwitness", []))),
                        "block_height": block.height,
                        "block_hash": block.hash,
                    },
                )
                touched.add(outpoint)
        if touched:
            self.wake(make_due(tx, _swap_ids_for(tx, lock_refs=touched)))

    async def on_revert(self, orphaned: list[OrphanedBlock], *, session: Session) -> None:
        tx = session_tx(session)
        rows = _forget(tx, BtcSpendRow, "event_key", "outpoint", orphaned)
        if not rows:
            return
        outpoints = {r["outpoint"] for r in rows}
        log.warning("reorg: forgot the spends of %s", ", ".join(sorted(outpoints)))
        self.wake(make_due(tx, _swap_ids_for(tx, lock_refs=outpoints)))


class ChainIndex:
    """The read side the legs use: what the indexer stored, and how far it has looked."""

    def __init__(self, engine: Engine, indexer: Indexer | None = None) -> None:
        self.engine = engine
        self.indexer = indexer
        init_db(engine)
        configure_mappers()  # the rows come back as models built without a session (``model_construct``)
        self.db = Db(engine)

    async def caught_up(self) -> bool:
        """Has the indexer looked at every block the chain has now?  Only then does "not indexed"
        mean "not there"."""
        cursor = self.indexer.cursor() if self.indexer is not None else None
        return cursor is not None and cursor.height >= await self.indexer.adapter.height()

    def _first(self, model: type[SQLModel], where: str, params: dict[str, Any]) -> Any:
        with self.db.transaction() as tx:
            row = tx.one(f"SELECT * FROM {model.__tablename__} WHERE {where} LIMIT 1", params)
        return model.model_construct(**row) if row else None

    def locked(self, swap_ref: str) -> Locked | None:
        row = self._first(HtlcEventRow, "swap_ref = :ref AND kind = :locked", {"ref": swap_ref.lower(), "locked": LOCKED})
        return row.locked() if row else None

    def locked_to(self, hashlock: str, recipient: str) -> Locked | None:
        with self.db.transaction() as tx:
            rows = tx.rows("SELECT * FROM swap_htlc_event WHERE hashlock = :hashlock AND kind = :locked", {"hashlock": hashlock, "locked": LOCKED})
        return next((HtlcEventRow.model_construct(**r).locked() for r in rows if r["recipient"].lower() == recipient.lower()), None)

    def settlement(self, swap_ref: str) -> HtlcEventRow | None:
        """The ``Claimed`` or ``Refunded`` row of an EVM swap, if indexed."""
        return self._first(
            HtlcEventRow, "swap_ref = :ref AND kind IN (:claimed, :refunded)", {"ref": swap_ref.lower(), "claimed": CLAIMED, "refunded": REFUNDED}
        )

    def btc_spend(self, outpoint: str) -> BtcSpendRow | None:
        return self._first(BtcSpendRow, "outpoint = :outpoint", {"outpoint": outpoint})


class SwapObservers:
    """One indexer per chain of a party, sharing the swap database, waking the engine."""

    def __init__(self, engine: Engine, legs: dict[str, Leg], poll_interval: float = 0.5, name: str = "swaps") -> None:
        self.engine = engine
        self.db = Db(engine)
        self.poll_interval = poll_interval
        self.woken = asyncio.Event()
        #: Told which swaps an event made due (the engine re-runs those whose step was under way,
        #: since that step's "nothing yet" would otherwise push the wake-up back).
        self.on_wake: Callable[[set[str]], None] = lambda swap_ids: None
        self.indexers: dict[str, Indexer] = {}
        for chain, leg in legs.items():
            consumer, selector = leg.observer(self.db, self._wake)  # what this chain's indexer keeps, and where it looks
            indexer = Indexer(f"{name}-{chain}", leg.adapter, engine, consumer, selector=selector, confirmations=1, poll_interval=poll_interval, log_every=60.0)
            self.indexers[chain] = indexer
        self.legs = legs

    def _wake(self, swap_ids: set[str]) -> None:
        self.on_wake(swap_ids)
        self.woken.set()

    async def _start_height(self, chain: str, indexer: Indexer) -> int:
        """Where a new cursor starts: the earliest block an unfinished swap watches from, else the head."""
        head = await indexer.adapter.height()
        with self.db.transaction() as tx:
            froms = tx.column(f"SELECT swap_leg.watch_from {_OPEN_LEGS} AND swap_leg.chain = :chain AND swap_leg.watch_from IS NOT NULL", {"chain": chain})
        return min([head, *froms])

    async def run(self, stop: asyncio.Event) -> None:
        for chain, indexer in self.indexers.items():
            if indexer.cursor() is None:
                indexer.start_height = await self._start_height(chain, indexer)
        # The legs read the index only while it is kept up: a leg without one scans the chain itself.
        for chain, indexer in self.indexers.items():
            self.legs[chain].index = ChainIndex(self.engine, indexer)
        try:
            async with asyncio.TaskGroup() as group:
                for indexer in self.indexers.values():
                    group.create_task(indexer.run(stop), name=f"indexer {indexer.name}")
        except* Conflict:
            # Another process (a second `swap start` on the same database) moves these cursors:
            # it keeps the index; this one returns, and its engine polls the chains instead.
            log.warning("another process follows the chains for this swap database; polling instead")
        finally:
            for chain in self.indexers:
                self.legs[chain].index = None
