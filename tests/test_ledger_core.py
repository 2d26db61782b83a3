"""Ledger core on SQLite and PostgreSQL: double entry, idempotency, two-phase, linked batches."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import pytest
from sqlalchemy import func, select, text

from bridge.core.errors import (
    IdempotencyConflict,
    InputError,
    NotFound,
    Overdraft,
    PendingTransferError,
    UnknownAccount,
    UnknownAsset,
)
from bridge.ledger import Ledger, Transfer, erc20
from bridge.ledger import queries
from bridge.ledger.audit import audit
from bridge.ledger.models import LedgerPending, LedgerTransfer

MAX = 2**128 - 1


class Clock:
    def __init__(self, now: int = 1_700_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ledger(ledger_db, clock):
    _, engine = ledger_db
    return Ledger(engine, clock=clock)


@pytest.fixture
def accts(ledger):
    world = ledger.open_account("world", "external", "BTC")
    alice = ledger.open_account("alice", "user", "BTC")
    bob = ledger.open_account("bob", "user", "BTC")
    return world, alice, bob


def state(ledger: Ledger) -> tuple:
    """Everything a commit could change, for 'nothing was written' checks."""
    with ledger.engine.connect() as conn:
        transfers = conn.execute(select(func.count()).select_from(LedgerTransfer.__table__)).scalar_one()
        holds = sorted(conn.execute(select(LedgerPending.__table__.c.id)).scalars())
    return ledger.height(), transfers, holds, queries.balances(ledger.engine)


def bal(ledger: Ledger, account) -> int:
    return queries.balances(ledger.engine, account.id)[0].balance


def test_transfer_moves_money_and_sums_to_zero(ledger, accts):
    world, alice, bob = accts
    r = ledger.commit([Transfer("dep:1", world.id, alice.id, 1_000), Transfer("pay:1", alice.id, bob.id, 300, cause="swap:9")])
    assert (r.height, r.applied, r.replayed) == (1, 2, 0)
    assert [bal(ledger, a) for a in accts] == [-1_000, 700, 300]
    assert [t.id for t in queries.transfers_by_cause(ledger.engine, "swap:9")] == ["pay:1"]
    assert [t.id for t in queries.history(ledger.engine, alice.id)] == ["pay:1", "dep:1"]
    report = audit(ledger.engine)
    assert report.ok, report.problems
    assert report.totals["BTC"]["balance"] == 0


def test_max_amount_round_trips(ledger, accts):
    world, alice, bob = accts
    ledger.commit([Transfer("big", world.id, alice.id, MAX)])
    ledger.commit([Transfer("big2", world.id, bob.id, MAX)])
    assert bal(ledger, alice) == MAX and bal(ledger, world) == -2 * MAX
    assert queries.transfer(ledger.engine, "big").amount == MAX
    assert queries.balances(ledger.engine, alice.id, at=1)[0].balance == MAX
    with pytest.raises(InputError, match="amount"):
        ledger.commit([Transfer("too-big", world.id, alice.id, MAX + 1)])
    out = io.StringIO()
    queries.export(ledger.engine, out, 1, 2, "jsonl")
    assert [json.loads(line)["amount"] for line in out.getvalue().splitlines()] == [str(MAX), str(MAX)]
    assert audit(ledger.engine).ok


def test_overdraft_refused_with_nothing_written(ledger, accts):
    world, alice, bob = accts
    ledger.commit([Transfer("dep", world.id, alice.id, 100), Transfer.hold("hold", alice.id, bob.id, 30)])
    before = state(ledger)
    with pytest.raises(Overdraft) as exc:
        ledger.commit([Transfer("spend", alice.id, bob.id, 71)])
    assert exc.value.details["available"] == 70 and exc.value.details["account"] == alice.id
    assert state(ledger) == before
    ledger.commit([Transfer("spend", alice.id, bob.id, 70)])  # the same id is free to use
    assert bal(ledger, alice) == 30


def test_linked_batch_with_one_bad_transfer_leaves_no_trace(ledger, accts):
    world, alice, bob = accts
    ledger.commit([Transfer("dep", world.id, alice.id, 100)])
    before = state(ledger)
    bad_batches = [
        [Transfer("a", alice.id, bob.id, 50), Transfer.hold("h", alice.id, bob.id, 10), Transfer("b", bob.id, alice.id, 61)],
        [Transfer("a", alice.id, bob.id, 50), Transfer("b", alice.id, 9999, 1)],
        [Transfer.hold("h", alice.id, bob.id, 10), Transfer.post("p", "h", 11)],
    ]
    for batch in bad_batches:
        with pytest.raises((Overdraft, UnknownAccount, InputError)):
            ledger.commit(batch)
        assert state(ledger) == before
    # In order: a transfer may spend what an earlier one in the same batch brought in.
    ledger.commit([Transfer("a", alice.id, bob.id, 100), Transfer("b", bob.id, alice.id, 60)])
    assert [bal(ledger, alice), bal(ledger, bob)] == [60, 40]


def test_replay_of_10000_transfers_changes_nothing(ledger, accts):
    world, alice, bob = accts
    batch = [Transfer(f"evt:{i}", world.id, alice.id if i % 2 else bob.id, i + 1, cause=f"c{i % 7}") for i in range(10_000)]
    first = ledger.commit(batch)
    assert first.applied == 10_000
    before = state(ledger)
    again = ledger.commit(batch)
    assert (again.height, again.applied, again.replayed) == (None, 0, 10_000)
    for chunk in (batch[:100], batch[5000:5001], batch[::-1]):
        ledger.commit(chunk)
    assert state(ledger) == before
    # A replay mixed with new transfers writes only the new ones.
    r = ledger.commit(batch[:10] + [Transfer("new", alice.id, bob.id, 1)])
    assert (r.applied, r.replayed) == (1, 10)


def test_conflicting_reuse_of_an_id_is_refused_and_named(ledger, accts):
    world, alice, bob = accts
    ledger.commit([Transfer("dep", world.id, alice.id, 100, cause="msg:1"), Transfer.hold("h", alice.id, bob.id, 10, timeout=60)])
    before = state(ledger)
    cases = {
        "amount": Transfer("dep", world.id, alice.id, 101, cause="msg:1"),
        "credit": Transfer("dep", world.id, bob.id, 100, cause="msg:1"),
        "debit": Transfer("dep", bob.id, alice.id, 100, cause="msg:1"),
        "cause": Transfer("dep", world.id, alice.id, 100, cause="msg:2"),
        "kind": Transfer.hold("dep", world.id, alice.id, 100, cause="msg:1"),
        "timeout": Transfer.hold("h", alice.id, bob.id, 10, timeout=61),
    }
    for field_name, t in cases.items():
        with pytest.raises(IdempotencyConflict) as exc:
            ledger.commit([Transfer("other", world.id, bob.id, 5), t])
        assert exc.value.details["field"] == field_name, exc.value
        assert field_name in str(exc.value)
    with pytest.raises(IdempotencyConflict, match="twice in the batch with different amount"):
        ledger.commit([Transfer("x", world.id, bob.id, 5), Transfer("x", world.id, bob.id, 6)])
    assert state(ledger) == before


def test_pending_post_full_and_partial(ledger, accts):
    world, alice, bob = accts
    ledger.commit([Transfer("dep", world.id, alice.id, 100)])
    ledger.commit([Transfer.hold("h1", alice.id, bob.id, 60), Transfer.hold("h2", alice.id, bob.id, 40)])
    view = queries.balances(ledger.engine, alice.id)[0]
    assert (view.balance, view.debits_pending, view.available) == (100, 100, 0)
    with pytest.raises(Overdraft):
        ledger.commit([Transfer("spend", alice.id, bob.id, 1)])
    ledger.commit([Transfer.post("p1", "h1"), Transfer.post("p2", "h2", 15)])
    assert [bal(ledger, alice), bal(ledger, bob)] == [25, 75]
    assert queries.balances(ledger.engine, alice.id)[0].debits_pending == 0
    # Posting twice (another id) is refused; the same post replayed is a no-op.
    with pytest.raises(PendingTransferError, match="already posted by p1"):
        ledger.commit([Transfer.post("p1-again", "h1")])
    assert ledger.commit([Transfer.post("p1", "h1")]).applied == 0
    with pytest.raises(IdempotencyConflict):
        ledger.commit([Transfer.post("p1", "h1", 59)])
    assert audit(ledger.engine).ok


def test_pending_void_and_bad_references(ledger, accts):
    world, alice, bob = accts
    ledger.commit([Transfer("dep", world.id, alice.id, 100), Transfer.hold("h", alice.id, bob.id, 70)])
    ledger.commit([Transfer.void("v", "h")])
    view = queries.balances(ledger.engine, alice.id)[0]
    assert (view.balance, view.available, bal(ledger, bob)) == (100, 100, 0)
    with pytest.raises(PendingTransferError, match="already voided by v"):
        ledger.commit([Transfer.post("p", "h")])
    with pytest.raises(PendingTransferError, match="no pending transfer nope"):
        ledger.commit([Transfer.void("v2", "nope")])
    with pytest.raises(PendingTransferError, match="not a pending one"):
        ledger.commit([Transfer.void("v3", "dep")])
    ledger.commit([Transfer.hold("h2", alice.id, bob.id, 5)])
    with pytest.raises(PendingTransferError, match="already posted by p2a"):
        ledger.commit([Transfer.post("p2a", "h2"), Transfer.void("v2a", "h2")])
    with pytest.raises(InputError, match="takes no amount"):
        ledger.commit([Transfer("v4", amount=5, kind="void", pending_id="h")])


def test_pending_times_out_and_voids_itself(ledger, accts, clock):
    world, alice, bob = accts
    ledger.commit([Transfer("dep", world.id, alice.id, 100), Transfer.hold("h", alice.id, bob.id, 70, timeout=30)])
    clock.now += 29
    assert ledger.expire_due() == ()
    clock.now += 1
    # The next commit first voids the hold (its own height), then applies the batch.
    r = ledger.commit([Transfer("spend", alice.id, bob.id, 100)])
    assert r.expired_heights == (2,) and r.height == 3
    assert queries.transfer(ledger.engine, "expire:h").kind == "expire"
    with pytest.raises(PendingTransferError, match="voided by timeout"):
        ledger.commit([Transfer.post("late", "h")])
    ledger.commit([Transfer.hold("h2", bob.id, alice.id, 5, timeout=10)])
    clock.now += 10
    assert ledger.expire_due() == (5,)
    assert audit(ledger.engine).ok


def test_balance_at_past_height_equals_replay(ledger, accts):
    world, alice, bob = accts
    ids = [a.id for a in accts]
    batches = []
    for h in range(1, 21):
        batch = [Transfer(f"d{h}", world.id, alice.id, 10 * h)]
        if h % 3 == 0:
            batch.append(Transfer(f"m{h}", alice.id, bob.id, 7 * h))
        if h % 5 == 0:
            batch.append(Transfer.hold(f"h{h}", bob.id, alice.id, h))
        if h % 5 == 1 and h > 1:
            batch.append(Transfer.post(f"p{h}", f"h{h - 1}", h - 2))
        batches.append(batch)
        ledger.commit(batch)
    transfers = list(queries.iter_transfers(ledger.engine, 1, 20))
    for at in (1, 4, 10, 15, 16, 20):
        replay = {i: 0 for i in ids}
        for t in transfers:
            if t.height <= at and t.kind in ("transfer", "post"):
                replay[t.debit_account] -= t.amount
                replay[t.credit_account] += t.amount
        got = {b.account_id: b.balance for b in queries.balances(ledger.engine, at=at)}
        # Accounts untouched up to that height are left out (their balance was zero).
        assert {i: got.get(i, 0) for i in ids} == replay and set(got) <= set(ids), at
        assert queries.balances(ledger.engine, bob.id, at=at)[0].balance == replay[bob.id]
    with pytest.raises(InputError, match="height"):
        queries.balances(ledger.engine, at=21)
    # Snapshot leaves of a past height do not move when more batches commit.
    leaves_10 = queries.leaves(ledger.engine, 10)
    ledger.commit([Transfer("later", world.id, bob.id, 1)])
    assert queries.leaves(ledger.engine, 10) == leaves_10
    assert leaves_10 == sorted((a.id, "BTC", b) for a, b in zip(accts, [-550, 550 - 126 + 4, 126 - 4]))


def test_input_errors_change_nothing(ledger, accts):
    world, alice, bob = accts
    before = state(ledger)
    bad = [
        Transfer("z", world.id, alice.id, 0),
        Transfer("f", world.id, alice.id, 1.5),  # type: ignore[arg-type]
        Transfer("b", world.id, alice.id, True),  # type: ignore[arg-type]
        Transfer("n", world.id, alice.id, -1),
        Transfer("s", alice.id, alice.id, 1),
        Transfer("", world.id, alice.id, 1),
        Transfer("t", world.id, alice.id, 1, timeout=5),
        Transfer("k", world.id, alice.id, 1, kind="mint"),
    ]
    for t in bad:
        with pytest.raises(InputError):
            ledger.commit([t])
    with pytest.raises(InputError, match="empty batch"):
        ledger.commit([])
    eth = ledger.open_account("carol", "user", "ETH")
    with pytest.raises(InputError, match="holds BTC but credit account .* holds ETH"):
        ledger.commit([Transfer("x", world.id, eth.id, 1)])
    with pytest.raises(UnknownAsset):
        ledger.open_account("carol", "user", "DOGE")
    with pytest.raises(InputError, match="kind"):
        ledger.open_account("carol", "wizard", "BTC")
    with pytest.raises(NotFound):
        queries.balances(ledger.engine, 12345)
    assert state(ledger)[:3] == before[:3]


def test_accounts_and_assets_are_idempotent(ledger):
    a = ledger.open_account("dave", "user", "ETH")
    assert ledger.open_account("dave", "user", "ETH") == a
    assert ledger.find_account("dave", "user", "ETH") == a
    with pytest.raises(IdempotencyConflict):
        ledger.open_account("dave", "user", "ETH", allow_negative=True)
    usdc = erc20(31337, "0x" + "ab" * 20, 6, "USDC", haircut_bps=500)
    assert ledger.register_asset(usdc) == usdc
    assert ledger.register_asset(usdc) == usdc
    with pytest.raises(IdempotencyConflict, match="decimals"):
        ledger.register_asset(erc20(31337, "0x" + "AB" * 20, 18, "USDC", haircut_bps=500))
    assert ledger.assets()[usdc.code].decimals == 6
    with pytest.raises(InputError, match="address"):
        erc20(31337, "0x1234", 6, "BAD")


def test_export_jsonl_and_csv(ledger, accts):
    world, alice, bob = accts
    ledger.commit([Transfer("d\t1", world.id, alice.id, 5, cause="tab\nnewline")])
    ledger.commit([Transfer.hold("h", alice.id, bob.id, 2, timeout=9)])
    ledger.commit([Transfer.post("p", "h", 1)])
    out = io.StringIO()
    assert queries.export(ledger.engine, out, 2, 3, "jsonl") == 2
    rows = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(r["height"], r["id"], r["kind"], r["amount"]) for r in rows] == [(2, "h", "pending", "2"), (3, "p", "post", "1")]
    out = io.StringIO()
    assert queries.export(ledger.engine, out, 1, 3, "csv") == 3
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert parsed[0]["id"] == "d\t1" and parsed[0]["cause"] == "tab\nnewline" and parsed[2]["pending_id"] == "h"
    with pytest.raises(InputError):
        queries.export(ledger.engine, io.StringIO(), 1, 3, "xml")


def test_audit_finds_tampering(ledger, accts):
    world, alice, bob = accts
    ledger.commit([Transfer("dep", world.id, alice.id, 100)])
    assert audit(ledger.engine).ok
    stored = "1" if ledger.engine.dialect.name == "postgresql" else "0" * 77 + "1"
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE ledger_balances SET credits_posted = :v WHERE account_id = :a"), {"v": stored, "a": bob.id})
    report = audit(ledger.engine)
    assert not report.ok
    assert any(f"account {bob.id}: stored totals" in p for p in report.problems)
    assert any("asset BTC: balances sum to 1" in p for p in report.problems)


async def test_async_commit(ledger, accts):
    world, alice, _ = accts
    r = await ledger.acommit([Transfer("a1", world.id, alice.id, 5)])
    assert r.height == 1 and bal(ledger, alice) == 5


def test_ids_from_events_are_canonical(ledger, accts):
    from bridge.ledger import ids

    txid = "AB" * 32
    assert ids.btc_output(txid, 1) == ids.btc_output("0x" + txid.lower(), 1) == f"btc:{'ab' * 32}:1"
    assert ids.swap_leg("0x" + "01" * 32, "claim") == f"swap:{'01' * 32}:claim"
    assert ids.message("11" * 32) == f"msg:{'11' * 32}" and ids.evm_log("22" * 32, 0) == f"evm:{'22' * 32}:0"
    for bad in (lambda: ids.btc_output("xyz", 0), lambda: ids.btc_output(txid, -1), lambda: ids.swap_leg(txid, "Claim!")):
        with pytest.raises(InputError):
            bad()
    world, alice, _ = accts
    # Two spellings of one deposit credit once.
    ledger.commit([Transfer(ids.btc_output(txid, 0), world.id, alice.id, 5)])
    assert ledger.commit([Transfer(ids.btc_output(txid.lower(), 0), world.id, alice.id, 5)]).applied == 0


def test_a_changed_haircut_survives_reopening_the_ledger(ledger_db, clock):
    """An operator's `ledger haircut BTC 1000` must not make the next process refuse to start."""
    _, engine = ledger_db
    Ledger(engine, clock=clock).set_haircut("BTC", 1000)
    reopened = Ledger(engine, clock=clock)  # registers the default assets again
    assert reopened.assets()["BTC"].haircut_bps == 1000
    with pytest.raises(IdempotencyConflict, match="decimals"):
        reopened.register_asset(replace(reopened.assets()["BTC"], decimals=6))
