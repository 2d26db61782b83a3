"""Hostile integers and texts at the ledger, through the library and through `bridgectl ledger`,
on SQLite and PostgreSQL: a value the database cannot hold is a clear ``InputError`` (a
``LedgerError`` or ``NotFound`` where it names something that does not exist) that writes
nothing; never a driver error (``OverflowError``, ``DataError``) or a traceback."""

from __future__ import annotations

import contextlib
import io
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bridge.cli import main
from bridge.core.errors import InputError, LedgerError, NotFound
from bridge.ledger import Ledger, Transfer, erc20, queries
from bridge.ledger.bounds import MAX_ACCOUNT_ID, MAX_TIMEOUT
from bridge.ledger.margin import MarginView, PriceReport
from bridge.ledger.models import LEDGER_TABLES, MAX_AMOUNT

HUGE = [2**31, 2**63, 2**64, 2**80, 10**30, 2**128, 10**400]
NOW = 1_700_000_000
_ids = itertools.count()


def snapshot(engine) -> dict:
    """Every row of every ledger table: what 'nothing was written' compares."""
    with engine.connect() as conn:
        return {t.name: sorted(map(tuple, conn.execute(select(t)).all()), key=repr) for t in LEDGER_TABLES}


@pytest.fixture
def ledger(ledger_db):
    return Ledger(ledger_db[1], clock=lambda: NOW)


@pytest.fixture
def books(ledger):
    """world (may go negative) -> alice 1000 sats; bob empty."""
    world = ledger.open_account("world", "external", "BTC")
    alice = ledger.open_account("alice", "user", "BTC")
    bob = ledger.open_account("bob", "user", "BTC")
    ledger.commit([Transfer("dep", world.id, alice.id, 1000)])
    return world, alice, bob


def cli(url: str, *argv: str) -> tuple[int, str, str]:
    """``bridgectl ledger ARGV --db URL`` in process; argparse refusals (SystemExit 2) are returned as 2."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["ledger", argv[0], "--db", url, *argv[1:]])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


# --- the reported cases ------------------------------------------------------------------


def test_pending_timeout_of_2_pow_80_is_refused_by_the_cli_and_writes_nothing(ledger_db, books):
    url, engine = ledger_db
    before = snapshot(engine)
    code, _out, err = cli(url, "transfer", "hold-1", "alice/user/BTC", "bob/user/BTC", "10", "--pending", "--timeout", str(2**80))
    assert code == 1 and "Traceback" not in err
    assert "error: transfer hold-1: timeout (seconds) must be an integer in 1..2147483647" in err
    assert snapshot(engine) == before


def test_account_id_of_10_pow_30_is_refused_by_the_cli_and_writes_nothing(ledger_db, books):
    url, engine = ledger_db
    before = snapshot(engine)
    for argv in (
        ("transfer", "t-1", str(10**30), "alice/user/BTC", "1"),
        ("transfer", "t-1", "alice/user/BTC", str(10**30), "1"),
        ("balances", str(10**30)),
        ("history", str(10**30)),
        ("history", "1" * 5000),  # more digits than int() converts
    ):
        code, _out, err = cli(url, *argv)
        assert code == 1 and "Traceback" not in err, (argv, err)
        assert "account id" in err and "out of range" in err or "must be an integer in 1..2147483647" in err, (argv, err)
    assert snapshot(engine) == before


def test_non_ascii_digits_are_not_taken_for_an_account_id_or_an_amount(ledger_db, books):
    url, engine = ledger_db
    before = snapshot(engine)
    code, _, err = cli(url, "transfer", "t", "²", "alice/user/BTC", "1")  # '²'.isdigit() but int('²') fails
    assert code == 1 and "account must be an id or OWNER/KIND/ASSET" in err and "Traceback" not in err
    code, _, err = cli(url, "transfer", "t", "1", "2", "١٢")  # int() would read 12
    assert code == 2 and "amount must be an integer" in err
    assert snapshot(engine) == before


@pytest.mark.parametrize(
    "argv, words",
    [
        (("transfer", "t", "1", "2", str(MAX_AMOUNT + 1)), "amount must be an integer in 1..2^128-1"),
        (("post", "p", "h", "--amount", str(2**200)), "amount must be an integer in 1..2^128-1"),
        (("history", "1", "--limit", str(2**80)), "limit must be an integer in 0.."),
        (("history", "1", "--limit", "-1"), "limit must be an integer in 0.."),
        (("balances", "--at", str(10**30)), "height must be 0.."),
        (("export", "--to", str(10**30)), "--to height must be an integer in 0.."),
        (("export", "--from", "-5", "--to", "1"), "--from height must be an integer in 0.."),
        (("price", "BTC", "100", "--reporter", "r", "--timestamp", str(2**70)), "price timestamp must be unix seconds"),
        (("price", "BTC", str(2**130), "--reporter", "r"), "must be a positive integer"),
        (("health", "--threshold-bps", str(2**40), "--scan"), "liquidation threshold must be a positive number of bps"),
        (("asset-add", "--chain-id", str(2**70), "--address", "0x" + "11" * 20, "--decimals", "6", "--symbol", "T"), "chain id must be an integer"),
        (("asset-add", "--chain-id", "5", "--address", "0x" + "11" * 20, "--decimals", "6", "--symbol", "T" * 40), "asset symbol must be a string of 1..32"),
        (("haircut", "BTC", str(2**70)), "haircut must be 0..10000"),
    ],
)
def test_out_of_range_integers_at_the_cli_are_clear_errors_that_write_nothing(ledger_db, books, argv, words):
    url, engine = ledger_db
    before = snapshot(engine)
    code, _, err = cli(url, *argv)
    assert code == 1 and words in err and "Traceback" not in err, err
    assert snapshot(engine) == before


def test_export_refuses_a_bad_range_before_creating_the_file(ledger_db, books, tmp_path):
    url, _ = ledger_db
    path = tmp_path / "out.csv"
    code, _, err = cli(url, "export", "--from", "1", "--to", str(2**64), "--format", "csv", "-o", str(path))
    assert code == 1 and "--to height" in err and not path.exists()


# --- the library: the same checks hold for every caller ------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda w, a, b, n: Transfer("t", n, a.id, 1),
        lambda w, a, b, n: Transfer("t", w.id, n, 1),
        lambda w, a, b, n: Transfer("t", -n, a.id, 1),
        lambda w, a, b, n: Transfer.hold("t", a.id, b.id, 1, timeout=n),
        lambda w, a, b, n: Transfer.hold("t", a.id, b.id, 1, timeout=-n),
        lambda w, a, b, n: Transfer("t", w.id, a.id, n * MAX_AMOUNT),
        lambda w, a, b, n: Transfer.post("p", "dep", amount=n * MAX_AMOUNT),
    ],
)
def test_library_commit_refuses_what_no_column_can_hold(ledger, books, make):
    before = snapshot(ledger.engine)
    for n in HUGE:
        with pytest.raises(InputError):
            ledger.commit([make(*books, n)])
    assert snapshot(ledger.engine) == before


def test_the_largest_storable_values_still_commit(ledger, books):
    world, alice, bob = books
    big = ledger.open_account("whale", "user", "BTC")
    r = ledger.commit(
        [
            Transfer("max", world.id, big.id, MAX_AMOUNT),
            Transfer.hold("long-hold", alice.id, bob.id, 1, timeout=MAX_TIMEOUT),
        ]
    )
    assert r.applied == 2
    assert queries.balances(ledger.engine, big.id)[0].balance == MAX_AMOUNT


@pytest.mark.parametrize("n", [0, -1, MAX_ACCOUNT_ID + 1, *HUGE, 1.5, True, "1"])
def test_library_lookups_refuse_impossible_account_ids(ledger, books, n):
    with pytest.raises(InputError):
        ledger.account(n)
    with pytest.raises(InputError):
        queries.balances(ledger.engine, n)
    with pytest.raises(InputError):
        queries.history(ledger.engine, n)


def test_an_unknown_but_possible_account_id_is_still_not_found(ledger, books):
    with pytest.raises(NotFound):
        ledger.account(MAX_ACCOUNT_ID)


@pytest.mark.parametrize(
    "call",
    [
        lambda l: queries.history(l.engine, 1, limit=2**64),
        lambda l: queries.history(l.engine, 1, before_height=2**64),
        lambda l: list(queries.iter_transfers(l.engine, 0, 2**64)),
        lambda l: queries.export(l.engine, io.StringIO(), 0, 2**64),
        lambda l: MarginView(l.engine).record_price(PriceReport("BTC", 1, 2**64, "r")),
        lambda l: MarginView(l.engine).record_price(PriceReport("BTC", 1, NOW, "r" * 201)),
        lambda l: MarginView(l.engine, threshold_bps=2**31),
        lambda l: MarginView(l.engine).events(2**64),
        lambda l: l.register_asset(erc20(2**64, "0x" + "22" * 20, 6, "T")),
        lambda l: l.open_account("carol", "user", "B" * 121),
        lambda l: l.open_account("nul\x00owner", "user", "BTC"),
        lambda l: l.commit([Transfer("nul\x00id", 1, 2, 1)]),
        lambda l: l.commit([Transfer("t", 1, 2, 1, cause="nul\x00")]),
        lambda l: l.commit([Transfer.void("v", "p" * 201)]),
        lambda l: l.find_account("alice", "user", "BTC\x00"),
        lambda l: queries.transfer(l.engine, "x" * 201),
    ],
)
def test_library_reads_and_writes_range_check_their_input(ledger, books, call):
    before = snapshot(ledger.engine)
    with pytest.raises(InputError):
        call(ledger)
    assert snapshot(ledger.engine) == before


# --- properties: arbitrary input is valid or a BridgeError, never another exception ----------


ints = st.one_of(st.integers(), st.integers(min_value=2**31 - 3, max_value=2**31 + 3), st.sampled_from(HUGE + [-x for x in HUGE]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(debit=ints, credit=ints, amount=ints, timeout=st.one_of(st.none(), ints))
def test_property_any_integers_in_a_transfer_commit_or_are_refused_cleanly(ledger, books, debit, credit, amount, timeout):
    before = snapshot(ledger.engine)
    tid = f"prop-{next(_ids)}"
    t = Transfer.hold(tid, debit, credit, amount, timeout=timeout) if timeout is not None else Transfer(tid, debit, credit, amount)
    try:
        ledger.commit([t])
    except (InputError, LedgerError, NotFound):
        assert snapshot(ledger.engine) == before
        return
    # Accepted: then it was within every bound.
    assert 1 <= debit <= MAX_ACCOUNT_ID and 1 <= credit <= MAX_ACCOUNT_ID and 1 <= amount <= MAX_AMOUNT
    assert timeout is None or 1 <= timeout <= MAX_TIMEOUT


def _text_or_number():
    return st.one_of(
        st.text(max_size=30),
        st.integers().map(str),
        st.sampled_from([str(n) for n in HUGE] + ["-1", "0", "1_000", " 5 ", "١٢", "²", "1e5", "0x10", "9" * 5000, "\x1b[31m1"]),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(debit=_text_or_number(), amount=_text_or_number(), timeout=_text_or_number())
def test_property_ledger_cli_arbitrary_account_amount_and_timeout(ledger_db, books, debit, amount, timeout):
    """Any text as the account, the amount and the timeout: committed (only when all are valid),
    or refused (exit 1 with ``error:``, exit 2 from the argument parser) with no traceback and no write."""
    url, engine = ledger_db
    if any("\x00" in v for v in (debit, amount, timeout)):
        return  # no process can receive NUL in its arguments
    if any(v.startswith("-") and not v.lstrip("-").strip().isdigit() for v in (debit, amount, timeout)):
        return  # argparse would read it as an option: not what this property is about
    before = snapshot(engine)
    tid = f"cli-prop-{next(_ids)}"
    code, out, err = cli(url, "transfer", tid, debit, "bob/user/BTC", amount, "--pending", "--timeout", timeout)
    assert "Traceback" not in err
    if code == 0:
        assert "committed" in out
        return
    assert code in (1, 2), (code, err)
    assert ("error:" in err) if code == 1 else ("error: argument" in err)
    assert snapshot(engine) == before


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ref=_text_or_number())
def test_property_account_lookups_from_any_text(ledger_db, books, ref):
    url, _ = ledger_db
    if "\x00" in ref or ref.startswith("-"):
        return
    code, _out, err = cli(url, "balances", ref)
    assert "Traceback" not in err
    assert code == 0 or (code == 1 and "error:" in err), (code, err)
