"""Ledger throughput (prints figures; asserts nothing).

For each backend (SQLite file in WAL mode; PostgreSQL at ``bridge.core.db.POSTGRES_TEST_URL``
in a fresh schema, skipped with the reason when unreachable):

* raw: the same transfer rows into a table with the same columns and indexes, one
  transaction, by the fast path a user of the driver would take: the DBAPI cursor's
  ``executemany`` on SQLite (the ceiling there), ``COPY ... FROM STDIN`` on PostgreSQL
  (psycopg2's ``executemany`` is one round trip per row, so it is no ceiling; COPY is
  also what the ledger itself uses there, so the ratio compares like with like);
* ledger: ``Ledger.commit`` in batches of 10,000, 100 and 1 transfer(s) between
  1,000 funded user accounts (overdraft checks, idempotency look-up, balance and
  history updates, height bump, commit included), and the replay of a 10,000 batch;
* p50 / p99 latency of a single-transfer commit;
* balances of every account at a past height from the history table, beside a
  replay of the transfers up to that height (the two must agree).

Goals (issue 5): SQLite >= 50,000 transfers/s batched and >= 25% of raw;
PostgreSQL >= 20,000/s.  Usage::

    python bench/ledger.py [--backend sqlite|postgresql] [--transfers N]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import Column, Index, MetaData, Table

from bridge.core.db import postgres_available
from bridge.ledger import Ledger, Transfer, queries
from bridge.ledger.models import AMOUNT_DIGITS, TRANSFER_COLUMNS, LedgerTransfer, to_text
from bridge.ledger.testdb import BACKENDS, fresh_database

USERS = 1_000


def raw_table(engine) -> Table:
    """A table shaped like ledger_transfers (same columns, same indexes), for the baseline."""
    src = LedgerTransfer.__table__
    md = MetaData()
    table = Table("bench_raw_transfers", md, *[Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in src.columns])
    for ix in src.indexes:
        Index(
            f"bench_{ix.name}",
            *[table.c[c.name] for c in ix.columns],
            unique=ix.unique,
            **{f"{d}_where": ix.dialect_options[d]["where"] for d in ("sqlite", "postgresql") if ix.dialect_options[d]["where"] is not None},
        )
    md.create_all(engine)
    return table


def _copy_text(rows: list[tuple]) -> io.StringIO:
    """Rows in COPY's text format (the bench's values hold no tab, newline or backslash)."""
    buf = io.StringIO()
    buf.writelines("\t".join("\\N" if v is None else str(v) for v in row) + "\n" for row in rows)
    buf.seek(0)
    return buf


def raw_rate(engine, rows: list[tuple]) -> float:
    table = raw_table(engine)
    cols = ", ".join(TRANSFER_COLUMNS)
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            start = time.perf_counter()
            cur.copy_expert(f"COPY {table.name} ({cols}) FROM STDIN", _copy_text(rows))
            raw.commit()
            elapsed = time.perf_counter() - start
        finally:
            raw.close()
        return len(rows) / elapsed
    sql = f"INSERT INTO {table.name} ({cols}) VALUES ({', '.join(['?'] * len(TRANSFER_COLUMNS))})"
    amount = TRANSFER_COLUMNS.index("amount")
    rows = [r[:amount] + (to_text(r[amount], AMOUNT_DIGITS),) + r[amount + 1 :] for r in rows]
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        start = time.perf_counter()
        cur.executemany(sql, rows)
        raw.commit()
        elapsed = time.perf_counter() - start
    finally:
        raw.close()
    return len(rows) / elapsed


def make_batches(users: list[int], n: int, size: int, tag: str, rng: random.Random) -> list[list[Transfer]]:
    out = []
    for b in range(n // size):
        batch = []
        for i in range(size):
            d, c = rng.sample(users, 2)
            batch.append(Transfer(f"{tag}:{b}:{i}", d, c, rng.randint(1, 1_000), cause=f"{tag}:{b}" if i == 0 else None))
        out.append(batch)
    return out


def bench_backend(backend: str, transfers: int, directory: Path) -> None:
    with fresh_database(backend, directory) as (_, engine):
        ledger = Ledger(engine)
        world = ledger.open_account("world", "external", "BTC")
        users = [ledger.open_account(f"user{i}", "user", "BTC").id for i in range(USERS)]
        ledger.commit([Transfer(f"fund:{u}", world.id, u, 10**15) for u in users])
        rng = random.Random(7)

        sample = make_batches(users, transfers, 10_000, "raw", rng)
        rows = [
            (1_000_000 + b, i, t.id, t.kind, t.debit, t.credit, "BTC", t.amount, None, None, t.cause)
            for b, batch in enumerate(sample)
            for i, t in enumerate(batch)
        ]
        raw = raw_rate(engine, rows)
        how = "COPY" if engine.dialect.name == "postgresql" else "executemany"
        print(f"[{backend}] raw {how} of {len(rows)} rows: {raw:,.0f} rows/s")

        results = {}
        for size, n in ((10_000, transfers), (100, max(100, transfers // 5)), (1, max(1, min(2_000, transfers // 25)))):
            batches = make_batches(users, n, size, f"b{size}", rng)
            latencies = []
            start = time.perf_counter()
            for batch in batches:
                t0 = time.perf_counter()
                ledger.commit(batch)
                latencies.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            results[size] = (n / elapsed, latencies)
            if size == 10_000:
                start = time.perf_counter()
                for batch in batches:
                    ledger.commit(batch)
                replay = n / (time.perf_counter() - start)
        for size, (rate, _) in results.items():
            print(f"[{backend}] ledger batches of {size:>6}: {rate:>10,.0f} transfers/s  ({rate / raw:.0%} of raw)")
        print(f"[{backend}] replay of 10,000-batches (all no-ops): {replay:,.0f} transfers/s")
        # Balances at a past height: the history table versus replaying the transfers.
        at = ledger.height() // 2
        start = time.perf_counter()
        from_history = queries.balances(engine, at=at)
        t_history = time.perf_counter() - start
        start = time.perf_counter()
        replay_bal: dict[int, int] = {}
        for t in queries.iter_transfers(engine, 1, at):
            replay_bal[t.debit_account] = replay_bal.get(t.debit_account, 0) - t.amount
            replay_bal[t.credit_account] = replay_bal.get(t.credit_account, 0) + t.amount
        t_replay = time.perf_counter() - start
        assert {b.account_id: b.balance for b in from_history} == replay_bal
        print(
            f"[{backend}] balances of {len(from_history)} accounts at height {at}: history table {t_history * 1e3:.0f} ms, "
            f"replay of the transfers {t_replay * 1e3:.0f} ms"
        )
        single = sorted(results[1][1])
        p50 = statistics.median(single) * 1e3
        p99 = single[int(len(single) * 0.99) - 1] * 1e3
        print(f"[{backend}] single-transfer commit latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=BACKENDS, action="append", help="default: both")
    ap.add_argument("--transfers", type=int, default=50_000, help="transfers in the 10,000-batch run (default 50,000)")
    args = ap.parse_args()
    # Figures scale with free CPU: print the load so runs on a busy machine can be read.
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    for backend in args.backend or BACKENDS:
        if backend == "postgresql" and (reason := postgres_available()):
            print(f"[postgresql] skipped: {reason}")
            continue
        with tempfile.TemporaryDirectory() as d:
            bench_backend(backend, args.transfers, Path(d))


if __name__ == "__main__":
    main()
