"""The node's own durable indexes, in SQLite (WAL) next to the kernel's data.

SQLite because it is in the standard library, one file, transactional (a block's index changes
commit together or not at all) and survives kill -9 once a commit returns (WAL + synchronous
NORMAL: the data is in the OS, not in our process).  Tables:

- ``chain``: the active chain as we indexed it, height -> hash, header time, and the raw block.
  The raw block is our journal: the kernel only flushes its block index and UTXO set now and then,
  so after a kill -9 it may have forgotten blocks we already reported as accepted; on start we
  feed those back to it from here.
- ``txindex``: txid -> (block hash, position) for the active chain (bitcoind's -txindex).
- ``utxo``: outpoint -> (value, script, height, coinbase), maintained per block with the kernel's
  undo data on disconnect.
- ``mempool``: raw mempool transactions with their entry time, so a restart (clean or not) keeps them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS chain (height INTEGER PRIMARY KEY, hash TEXT NOT NULL, time INTEGER NOT NULL, raw BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS txindex (txid TEXT PRIMARY KEY, block_hash TEXT NOT NULL, pos INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS utxo (
    txid TEXT NOT NULL, vout INTEGER NOT NULL, value INTEGER NOT NULL, script BLOB NOT NULL,
    height INTEGER NOT NULL, coinbase INTEGER NOT NULL, PRIMARY KEY (txid, vout)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS utxo_script ON utxo (script);
CREATE TABLE IF NOT EXISTS mempool (txid TEXT PRIMARY KEY, raw BLOB NOT NULL, time INTEGER NOT NULL, seq INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Coin:
    txid: str
    vout: int
    value: int
    script: bytes
    height: int
    coinbase: bool


@dataclass
class IndexedBlock:
    """What connecting or disconnecting one block needs to know about it."""

    hash: str
    height: int
    time: int
    raw: bytes
    # per tx: (txid, [(prev_txid, prev_vout), ...] (empty for the coinbase), [(value, script), ...])
    txs: list[tuple[str, list[tuple[str, int]], list[tuple[int, bytes]]]]


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- active chain ------------------------------------------------------------------------

    def tip_height(self) -> int:
        row = self.db.execute("SELECT MAX(height) FROM chain").fetchone()
        return -1 if row[0] is None else row[0]

    def hash_at(self, height: int) -> str | None:
        row = self.db.execute("SELECT hash FROM chain WHERE height=?", (height,)).fetchone()
        return row[0] if row else None

    def raw_at(self, height: int) -> bytes | None:
        row = self.db.execute("SELECT raw FROM chain WHERE height=?", (height,)).fetchone()
        return row[0] if row else None

    def times(self, low: int, high: int) -> list[int]:
        rows = self.db.execute("SELECT time FROM chain WHERE height BETWEEN ? AND ? ORDER BY height", (low, high))
        return [r[0] for r in rows]

    def height_of(self, block_hash: str) -> int | None:
        row = self.db.execute("SELECT height FROM chain WHERE hash=?", (block_hash,)).fetchone()
        return row[0] if row else None

    # --- block connect / disconnect, one SQLite transaction each ---------------------------

    def apply(self, disconnect: Iterable[tuple[IndexedBlock, list[list[tuple[int, bytes, int, bool]]]]], connect: Iterable[IndexedBlock]) -> None:
        """Move the index from its chain to the kernel's in one commit: undo ``disconnect`` (top
        first, each with its undo coins), then apply ``connect`` (bottom first)."""
        db = self.db
        db.execute("BEGIN")
        try:
            for block, undo in disconnect:
                for txid, _inputs, _outputs in block.txs:
                    db.execute("DELETE FROM utxo WHERE txid=?", (txid,))
                    db.execute("DELETE FROM txindex WHERE txid=? AND block_hash=?", (txid, block.hash))
                own = {txid for txid, _i, _o in block.txs}
                restore = []
                for (_txid, inputs, _outputs), coins in zip(block.txs[1:], undo):
                    for (ptxid, pvout), (value, script, height, coinbase) in zip(inputs, coins):
                        if ptxid not in own:  # spent inside the block: never in the set before it
                            restore.append((ptxid, pvout, value, script, height, int(coinbase)))
                db.executemany("INSERT OR REPLACE INTO utxo VALUES (?,?,?,?,?,?)", restore)
                db.execute("DELETE FROM chain WHERE height=?", (block.height,))
            for block in connect:
                spent = []
                created = []
                for pos, (txid, inputs, outputs) in enumerate(block.txs):
                    spent.extend(inputs)
                    for vout, (value, script) in enumerate(outputs):
                        if script[:1] == b"\x6a":  # OP_RETURN outputs are never in the UTXO set
                            continue
                        created.append((txid, vout, value, script, block.height, int(pos == 0)))
                spent_set = set(spent)
                db.executemany("DELETE FROM utxo WHERE txid=? AND vout=?", spent)
                db.executemany(
                    "INSERT OR REPLACE INTO utxo VALUES (?,?,?,?,?,?)",
                    [c for c in created if (c[0], c[1]) not in spent_set],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO txindex VALUES (?,?,?)",
                    [(txid, block.hash, pos) for pos, (txid, _i, _o) in enumerate(block.txs)],
                )
                db.execute("INSERT OR REPLACE INTO chain VALUES (?,?,?,?)", (block.height, block.hash, block.time, block.raw))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # --- tx index and UTXO set ------------------------------------------------------------------

    def tx_location(self, txid: str) -> tuple[str, int] | None:
        row = self.db.execute("SELECT block_hash, pos FROM txindex WHERE txid=?", (txid,)).fetchone()
        return (row[0], row[1]) if row else None

    def coin(self, txid: str, vout: int) -> Coin | None:
        row = self.db.execute("SELECT * FROM utxo WHERE txid=? AND vout=?", (txid, vout)).fetchone()
        return Coin(row[0], row[1], row[2], row[3], row[4], bool(row[5])) if row else None

    def has_outputs_of(self, txid: str) -> bool:
        return self.db.execute("SELECT 1 FROM utxo WHERE txid=? LIMIT 1", (txid,)).fetchone() is not None

    def coins_for_scripts(self, scripts: Iterable[bytes]) -> list[Coin]:
        out: list[Coin] = []
        for script in set(scripts):
            rows = self.db.execute("SELECT * FROM utxo WHERE script=? ORDER BY height, txid, vout", (script,))
            out.extend(Coin(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows)
        return out

    def utxo_stats(self) -> tuple[int, int]:
        row = self.db.execute("SELECT COUNT(*), COALESCE(SUM(value),0) FROM utxo").fetchone()
        return row[0], row[1]

    # --- mempool ----------------------------------------------------------------------------------

    def mempool_rows(self) -> Iterator[tuple[str, bytes, int]]:
        yield from self.db.execute("SELECT txid, raw, time FROM mempool ORDER BY seq")

    def mempool_replace(self, add: list[tuple[str, bytes, int]], remove: list[str]) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            if remove:
                db.executemany("DELETE FROM mempool WHERE txid=?", [(t,) for t in remove])
            if add:
                seq = db.execute("SELECT COALESCE(MAX(seq),0) FROM mempool").fetchone()[0]
                db.executemany(
                    "INSERT OR REPLACE INTO mempool VALUES (?,?,?,?)",
                    [(txid, raw, t, seq + i + 1) for i, (txid, raw, t) in enumerate(add)],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
