"""8 concurrent writers (6 async tasks in this process, 2 OS processes) on the same hot
accounts lose no update, on SQLite and on PostgreSQL.

This file is also the worker script of the two processes (``python this_file URL ...``),
so both sides build exactly the same batches.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bridge.ledger import Ledger, Transfer
from bridge.ledger import queries
from bridge.ledger.audit import audit
from bridge.ledger.models import LedgerTransfer
from bridge.core.testing import wait_until

TASKS = 6
PROCESSES = 2
BATCHES = 12
PER_BATCH = 8
FUNDING = 10**30


def writer_batches(writer: int, hot: list[int]) -> list[list[Transfer]]:
    """Every batch moves money around the ring of hot accounts and holds/posts a little."""
    batches = []
    for j in range(BATCHES):
        batch = []
        for k in range(PER_BATCH):
            src, dst = hot[(writer + j + k) % len(hot)], hot[(writer + j + k + 1) % len(hot)]
            batch.append(Transfer(f"w{writer}:b{j}:t{k}", src, dst, 1 + (writer * 7 + j * 3 + k) % 50 + 2**70))
        batch.append(Transfer.hold(f"w{writer}:b{j}:hold", hot[j % len(hot)], hot[(j + 2) % len(hot)], 1000 + writer))
        if j:
            batch.append(Transfer.post(f"w{writer}:b{j}:post", f"w{writer}:b{j - 1}:hold", 500 + j))
        batches.append(batch)
    return batches


def expected_balances(hot: list[int], writers: int) -> dict[int, int]:
    bal = {h: FUNDING for h in hot}
    holds = {}
    for w in range(writers):
        for batch in writer_batches(w, hot):
            for t in batch:
                if t.kind == "transfer":
                    bal[t.debit] -= t.amount
                    bal[t.credit] += t.amount
                elif t.kind == "pending":
                    holds[t.id] = (t.debit, t.credit)
                else:
                    d, c = holds[t.pending_id]
                    bal[d] -= t.amount
                    bal[c] += t.amount
    return bal


def _worker_main(url: str, writer: int, go_file: str, hot: list[int]) -> None:
    from bridge.core.db import make_engine
    from bridge.core.testing import wait_until_sync

    ledger = Ledger(make_engine(url))
    print("ready", flush=True)
    wait_until_sync(lambda: Path(go_file).exists(), timeout=60, what="the go signal")
    for batch in writer_batches(writer, hot):
        ledger.commit(batch)
    print("done", flush=True)


@pytest.fixture
def hot_ledger(ledger_db):
    url, engine = ledger_db
    ledger = Ledger(engine)
    world = ledger.open_account("world", "external", "BTC")
    hot = [ledger.open_account(f"hot{i}", "user", "BTC").id for i in range(3)]
    ledger.commit([Transfer(f"fund{h}", world.id, h, FUNDING) for h in hot])
    return url, ledger, hot


async def test_eight_concurrent_writers_lose_no_update(hot_ledger, tmp_path):
    url, ledger, hot = hot_ledger
    go = tmp_path / "go"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            url,
            str(TASKS + i),
            str(go),
            ",".join(map(str, hot)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(PROCESSES)
    ]
    for p in procs:
        line = await asyncio.wait_for(p.stdout.readline(), 60)
        assert line.strip() == b"ready", (line, await p.stderr.read())

    async def task_writer(writer: int) -> None:
        await wait_until(go.exists, timeout=60, interval=0.005, what="the go signal")
        for batch in writer_batches(writer, hot):
            await ledger.acommit(batch)

    audits: list = []

    async def auditor() -> None:
        # Audits read one snapshot: mid-flight they must still see balanced books.
        for step in (20, 45, 70):
            await wait_until(lambda: ledger.height() >= step, timeout=120, what=f"height {step}")  # noqa: B023 - awaited here
            audits.append(await asyncio.to_thread(audit, ledger.engine))

    tasks = [asyncio.create_task(task_writer(w)) for w in range(TASKS)]
    go.touch()
    watcher = asyncio.create_task(auditor())
    await asyncio.gather(*tasks)
    await watcher
    assert audits and all(r.ok for r in audits), [r.problems for r in audits if not r.ok]
    for p in procs:
        out, err = await asyncio.wait_for(p.communicate(), 120)
        assert p.returncode == 0, err.decode()[-3000:]
        assert out.strip() == b"done"

    writers = TASKS + PROCESSES
    got = {b.account_id: b.balance for b in queries.balances(ledger.engine) if b.account_id in hot}
    assert got == expected_balances(hot, writers)
    per_writer = sum(len(b) for b in writer_batches(0, hot))
    with ledger.engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(LedgerTransfer.__table__)).scalar_one()
    assert count == len(hot) + writers * per_writer
    assert ledger.height() == 1 + writers * BATCHES
    report = audit(ledger.engine)
    assert report.ok, report.problems
    # The writers really ran at the same time: processes' batches land among the tasks'.
    with ledger.engine.connect() as conn:
        first_ids = conn.execute(select(LedgerTransfer.__table__.c.height, LedgerTransfer.__table__.c.id).where(LedgerTransfer.__table__.c.idx == 0)).all()
    writer_at = {h: int(i.split(":")[0][1:]) for h, i in first_ids if i.startswith("w")}
    task_heights = [h for h, w in writer_at.items() if w < TASKS]
    assert any(min(task_heights) < h < max(task_heights) for h, w in writer_at.items() if w >= TASKS)


async def test_same_batch_delivered_concurrently_applies_once(hot_ledger):
    """Relayers racing to deliver the same event: one commit wins, the others are no-ops
    (on PostgreSQL the losers hit the unique id index and are retried as replays)."""
    _, ledger, hot = hot_ledger
    batch = [Transfer(f"msg:{i}", hot[i % 3], hot[(i + 1) % 3], 10 + i) for i in range(50)]
    batch.append(Transfer.hold("msg:hold", hot[0], hot[1], 7))
    before = {b.account_id: b.balance for b in queries.balances(ledger.engine)}
    results = await asyncio.gather(*[ledger.acommit(batch) for _ in range(TASKS)])
    assert sorted(r.applied for r in results) == [0] * (TASKS - 1) + [len(batch)]
    after = {b.account_id: b.balance for b in queries.balances(ledger.engine)}
    moved = {h: 0 for h in hot}
    for t in batch[:-1]:
        moved[t.debit] -= t.amount
        moved[t.credit] += t.amount
    assert {h: after[h] - before[h] for h in hot} == moved
    assert ledger.height() == 2
    assert audit(ledger.engine).ok


if __name__ == "__main__":
    _worker_main(sys.argv[1], int(sys.argv[2]), sys.argv[3], [int(x) for x in sys.argv[4].split(",")])
