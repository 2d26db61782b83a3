"""Hostile input at `bridgectl swap` (and the library's ``Party.start_swap``): every one is a clear
``error: ...`` (exit 1, the CLI's code for a ``BridgeError``; 2 is argparse's own usage errors),
no traceback, and nothing recorded.  Most refusals happen before any chain is asked, so these tests
need no devnet; one replays the amount that used to be recorded against real chains."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shlex
import time
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.cli import build_parser, main, printable
from bridge.core.db import make_engine
from bridge.core.errors import InputError
from bridge.core.settings import load_settings
from bridge.swaps import models as m
from bridge.swaps.assets import BITCOIN, BTC, ETH, EVM, AssetBook
from bridge.swaps.limits import MAX_BTC_SATS, MAX_UINT256, check_lp_url, max_amount
from bridge.swaps.models import INITIATOR, PARTICIPANT, Swap, SwapLeg
from bridge.swaps.party import Party
from bridge.swaps.store import SwapStore
from bridge.swaps.timelock import ChainTime, TimelockPolicy

CONTROL = "\x1b[31m\r\x07\x00\u202e"


def run(*argv: str) -> tuple[int, str, str]:
    """``bridgectl ARGV`` in process; argparse's own refusals (SystemExit 2) come back as 2."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def has_raw_control(text: str) -> bool:
    return any(not ch.isprintable() and ch != "\n" for ch in text)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A data dir with a complete trader swap config; the chains point at a closed port, so
    anything that got past the input checks would fail loudly instead of touching a devnet."""
    for var in (
        "BRIDGE_CONFIG",
        "BRIDGE_SWAP_CONFIG",
        "BRIDGE_DATA_DIR",
        "BRIDGE_DATABASE_URL",
        "BRIDGE_SWAP_BTC_KEY",
        "BRIDGE_SWAP_EVM_KEY",
        "BRIDGE_SWAP_HTLC",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BRIDGE_EVM__URL", "http://127.0.0.1:9")
    monkeypatch.setenv("BRIDGE_BITCOIN__RPC_PORT", "9")
    (tmp_path / "swaps.toml").write_text(
        'btc_key = "' + "11" * 32 + '"\nevm_key = "0x' + "22" * 32 + '"\nhtlc = "0x' + "33" * 20 + '"\n'
        '[tokens.tusd]\naddress = "0x' + "44" * 20 + '"\ndecimals = 6\n'
    )
    return tmp_path


def swap(home: Path, *argv: str) -> tuple[int, str, str]:
    return run("--data-dir", str(home), "swap", *argv)


def recorded(home: Path) -> list[str]:
    code, out, _ = swap(home, "list", "--json")
    assert code == 0
    return [s["id"] for s in json.loads(out)]


def store_of(home: Path) -> SwapStore:
    return SwapStore(make_engine(load_settings(None, data_dir=str(home)).db_url))


def assert_refused(code: int, err: str, *words: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err, err
    assert err.startswith("error: ") or "\nerror: " in err, err
    for w in words:
        assert w in err, err


# --- 1. amounts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sell, buy, words",
    [
        ("btc:1e5000", "eth:1", "sell: btc amount '1e5000' is more than can exist on bitcoin"),  # was ValueError
        ("btc:1e999999999", "eth:1", "sell: btc amount '1e999999999' is more than can exist"),  # was decimal.Overflow
        ("btc:1e99", "eth:1", "more than can exist on bitcoin (at most 21000000 btc)"),  # was recorded
        ("btc:21000000.00000001", "eth:1", "more than can exist on bitcoin"),
        ("btc:" + "9" * 5000, "eth:1", "sell: btc amount of 5000 characters is too long"),
        ("btc:1e-999999999", "eth:1", "has more than 8 decimals"),
        ("btc:\u0661", "eth:1", "is not a number (ASCII digits only)"),
        ("btc:0.5", "eth:1e78", "buy: eth amount '1e78' is more than can exist on evm"),
        ("btc:0.5", "tusd:1e72", "buy: tusd amount '1e72' is more than can exist on evm"),
        ("btc:0.5", "eth:115792089237316195423570985008687907853269984665640564039457.584007913129639936", "more than can exist on evm"),
        ("btc:0.5", "btc:1", "crosses chains"),
        ("btc:0.5", "doge:1", "buy: unknown asset 'doge'"),
        ("btc:" + CONTROL, "eth:1", "is not a number"),
    ],
)
def test_swap_start_refuses_amounts_that_cannot_exist_and_records_nothing(home, sell, buy, words):
    code, _out, err = swap(home, "start", "--sell", sell, "--buy", buy, "--lp", "http://127.0.0.1:8600", "--no-wait")
    assert_refused(code, err, words)
    assert not has_raw_control(err)
    assert recorded(home) == []


# --- 3. LP URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lp",
    [
        "notaurl",
        "ftp://127.0.0.1:8600",
        "http://",
        "http://127.0.0.1:0",
        "http://[::1",
        "http://127.0.0.1:99999",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "127.0.0.1:8600",
    ],
)
def test_swap_start_refuses_an_lp_that_is_not_an_http_url_at_once(home, lp):
    started = time.monotonic()
    code, _, err = swap(home, "start", "--sell", "btc:0.5", "--buy", "eth:7.5", "--lp", lp)  # without --no-wait
    assert_refused(code, err, "LP URL")
    assert time.monotonic() - started < 10  # refused, not retried for ever
    assert recorded(home) == []


# --- 1 and 3 through the library: Party.start_swap checks before it asks a chain ----------------


@dataclass
class FakeLeg:
    identity: str

    async def now(self) -> ChainTime:
        return ChainTime(height=200, timestamp=int(time.time()))


@pytest.fixture
def party(tmp_path) -> Party:
    """A Party whose legs answer ``now()`` without chains: enough for ``start_swap`` to record."""
    store = SwapStore(make_engine(f"sqlite:///{tmp_path / 'party.sqlite'}"))
    legs = {BITCOIN: FakeLeg("02" + "aa" * 32), EVM: FakeLeg("0x" + "bb" * 20)}
    engine = SimpleNamespace(policy=TimelockPolicy(), lp=None)
    return Party(None, None, store, legs, engine, AssetBook(), [])  # type: ignore[arg-type]


async def test_start_swap_records_good_input_and_refuses_bad_input_by_field(party):
    good = await party.start_swap("http://127.0.0.1:8600/", "btc:0.5", "eth:7.5")  # the fake records a real swap
    assert good.swap.lp_url == "http://127.0.0.1:8600" and good.leg(INITIATOR).value == 50_000_000
    for lp, sell, buy, field in [
        ("notaurl", "btc:0.5", "eth:7.5", "lp"),
        ("ftp://x", "btc:0.5", "eth:7.5", "lp"),
        ("http://127.0.0.1:8600", "btc:1e99", "eth:7.5", "sell"),
        ("http://127.0.0.1:8600", "btc:1e5000", "eth:7.5", "sell"),
        ("http://127.0.0.1:8600", "btc:1e999999999", "eth:7.5", "sell"),
        ("http://127.0.0.1:8600", "btc:0.5", "eth:1e80", "buy"),
        ("http://127.0.0.1:8600", "btc:0.5", "btc:1", "buy"),
        ("http://127.0.0.1:8600", None, "eth:7.5", "sell"),
    ]:
        with pytest.raises(InputError) as refused:
            await party.start_swap(lp, sell, buy)  # type: ignore[arg-type]
        assert refused.value.details["field"] == field, (lp, sell, buy, refused.value)
    assert [v.swap.id for v in party.store.list()] == [good.swap.id]


# --- 4. swap ids and what is printed from the database ---------------------------------------


BAD_IDS = ["\x1b[31mevil", "a\rb", "a\nb", "../../etc/passwd", "x" * 101, "", "a b", "caf\u00e9", "\u202eevil"]


@pytest.mark.parametrize(
    "argv",
    [
        ("status", "{id}"),
        ("status", "{id}", "--watch"),
        ("refund", "{id}"),
        ("audit", "{id}"),
        ("watch", "{id}", "--watcher", "http://127.0.0.1:8700"),
    ],
)
@pytest.mark.parametrize("bad", BAD_IDS)
def test_every_command_taking_a_swap_id_refuses_a_malformed_one(home, argv, bad):
    code, out, err = swap(home, *(a.replace("{id}", bad) for a in argv))
    assert_refused(code, err, "id must be 1-100 characters of A-Z a-z 0-9 _ . -")
    assert not has_raw_control(err) and not has_raw_control(out)


def _hostile_swap(store: SwapStore, swap_id: str, note: str) -> None:
    now = time.time()
    store.create(
        Swap(
            id=swap_id,
            role=INITIATOR,
            state=m.CREATED,
            hashlock=hashlib.sha256(swap_id.encode()).hexdigest(),
            secret="cd" * 32,
            lp_url="http://127.0.0.1:8600",
            created_at=now,
            updated_at=now,
            next_attempt_at=now + 60,
        ),
        [
            SwapLeg(swap_id=swap_id, leg=INITIATOR, chain="bitcoin", asset="btc", amount="50000000"),
            SwapLeg(swap_id=swap_id, leg=PARTICIPANT, chain="evm", asset="eth\x1b[2J", amount="7" + "0" * 18),
        ],
        note=note,
    )


def test_ids_notes_and_errors_read_from_the_database_are_printed_escaped(home):
    store = store_of(home)
    _hostile_swap(store, "evil\x1b]0;pwned\x07id", "lp said \x1b[2J\rOK")
    _hostile_swap(store, "plain-id", "note \x1b[31mred\u202e")
    store.defer("plain-id", "waiting: LP answered \x1b[5mblink\r\n", 60, count_retry=False)

    code, out, _ = swap(home, "list")
    assert code == 0 and not has_raw_control(out)
    assert "evil\\x1b]0;pwned\\x07id" in out and "waiting: LP answered \\x1b[5mblink\\r\\n" in out and "eth\\x1b[2J" in out

    code, out, _ = swap(home, "status", "plain-id")
    assert code == 0 and not has_raw_control(out)
    assert "note \\x1b[31mred\\u202e" in out

    code, out, _ = swap(home, "status", "plain-id", "--json")  # JSON escapes by itself; the values are intact
    data = json.loads(out)
    assert code == 0 and data["timeline"][0]["note"] == "note \x1b[31mred\u202e" and "\x1b" not in out


def test_error_messages_are_printed_escaped():
    assert printable("a\x1b[31m\rb\nc", keep_newlines=True) == "a\\x1b[31m\\rb\nc"
    assert printable("\u202e\x00\x7f") == "\\u202e\\x00\\x7f"


# --- 5. a swap nobody drives -----------------------------------------------------------------


def _swap_due(home: Path, swap_id: str, overdue: float, state: str = m.CREATED) -> None:
    store = store_of(home)
    _hostile_swap(store, swap_id, "secret stored")
    store.defer(swap_id, "waiting: 0/1 confirmations of the lock", -overdue, count_retry=False)
    if state != m.CREATED:
        store.transition(swap_id, m.CREATED, state, "done")


def test_status_of_a_swap_whose_driver_died_says_nothing_drives_it(home):
    _swap_due(home, "stalled", overdue=120)
    code, out, _ = swap(home, "status", "stalled")
    assert code == 0 and "waiting: 0/1 confirmations" in out
    assert "nothing is driving this swap (next step was due 120s ago): run `bridgectl swap status stalled --watch` to resume" in out
    code, out, _ = swap(home, "status", "stalled", "--json")
    assert 119 <= json.loads(out)["stalled_for"] < 130


@pytest.mark.parametrize(
    "swap_id, overdue, state",
    [
        ("fresh", -5, m.CREATED),  # due in 5 s: a running engine has it
        ("just-due", 3, m.CREATED),  # due 3 s ago: within the grace
        ("over", 300, m.FAILED),  # finished: nothing left to drive
    ],
)
def test_status_of_a_driven_or_finished_swap_has_no_stall_hint(home, swap_id, overdue, state):
    _swap_due(home, swap_id, overdue, state)
    code, out, _ = swap(home, "status", swap_id)
    assert code == 0 and "nothing is driving" not in out
    code, out, _ = swap(home, "status", swap_id, "--json")
    assert json.loads(out)["stalled_for"] is None


def test_a_swap_woken_by_an_event_but_never_stepped_counts_from_its_last_change(home):
    store = store_of(home)
    _hostile_swap(store, "woken", "secret stored")
    with store.engine.begin() as conn:  # woken (due now = 0.0) two minutes after it last changed
        conn.exec_driver_sql("UPDATE swap SET next_attempt_at = 0.0, updated_at = ? WHERE id = 'woken'", (time.time() - 120,))
    _code, out, _ = swap(home, "status", "woken", "--json")
    assert 119 <= json.loads(out)["stalled_for"] < 130


# --- 6. the README's btc-lock example parses, in sats ---------------------------------------


def test_readme_btc_lock_example_is_in_sats_and_parses():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(l for l in readme.splitlines() if l.startswith("bridgectl htlc btc-lock"))
    argv = shlex.split(line)[1:]
    argv[argv.index("--claim-pubkey") + 1] = "03" + "df" * 32
    args = build_parser().parse_args(argv)
    assert isinstance(args.amount, int) and args.amount == 10_000_000  # 0.1 BTC
    help_out = io.StringIO()
    with contextlib.redirect_stdout(help_out), pytest.raises(SystemExit):
        build_parser().parse_args(["htlc", "btc-lock", "--help"])
    assert "sats to lock" in help_out.getvalue()
    code, _, err = run("htlc", "btc-lock", "--amount", "0.1", "--claim-pubkey", "03" + "df" * 32)
    assert code == 2 and "amount must be a whole number, got '0.1'" in err


# --- property: AssetBook.parse / SwapAsset.to_base never raise anything but InputError ------------


BOOK = AssetBook({"tusd": ("0x" + "11" * 20, 6), "big": ("0x" + "22" * 20, 77)})
ASSETS = ["btc", "eth", "tusd", "big", "BTC", "doge", ""]

numbers = st.one_of(
    st.text(),
    st.text(alphabet="0123456789.eE+-_ ", max_size=40),
    st.builds(lambda m, e: f"{m}e{e}", st.decimals(allow_nan=False, allow_infinity=False).map(str), st.integers(-(10**12), 10**12)),
    st.builds(lambda i, f: f"{i}.{f}", st.integers(0, 10**90), st.integers(0, 10**30)),
    st.text(alphabet=st.characters(categories=["Nd"]), min_size=1, max_size=10),  # every script's digits
    st.sampled_from(["NaN", "sNaN", "Infinity", "-Infinity", "1e999999999", "1e-999999999", "9" * 5000, "0e99999", "1_000"]),
)


def _check_parsed(asset, n: int) -> None:
    assert isinstance(n, int) and not isinstance(n, bool)
    assert 1 <= n <= max_amount(asset.chain)
    assert asset.to_base(asset.to_whole(n)) == n  # exact both ways


@settings(max_examples=1500, deadline=None)
@given(symbol=st.sampled_from(ASSETS) | st.text(max_size=8), amount=numbers)
def test_property_parse_returns_a_bounded_int_or_an_input_error(symbol, amount):
    try:
        asset, n = BOOK.parse(f"{symbol}:{amount}", "sell")
    except InputError as exc:
        assert exc.details.get("field") == "sell"
        return
    _check_parsed(asset, n)
    # And it is the exact value of the text, never a rounded one.
    assert Fraction(Decimal(amount.strip())) * 10**asset.decimals == n


@settings(max_examples=500, deadline=None)
@given(amount=st.one_of(st.text(), st.decimals(), st.integers(), st.none(), st.floats()))
def test_property_to_base_takes_any_value(amount):
    for asset in (BTC, ETH, BOOK.get("big")):
        try:
            n = asset.to_base(amount)
        except InputError:
            continue
        _check_parsed(asset, n)


@settings(max_examples=300, deadline=None)
@given(spec=st.one_of(st.text(), st.integers(), st.none(), st.binary()))
def test_property_parse_takes_any_object(spec):
    try:
        asset, n = BOOK.parse(spec)  # type: ignore[arg-type]
    except InputError:
        return
    _check_parsed(asset, n)


def test_the_bounds_are_the_chains_own():
    assert BOOK.parse("btc:21000000")[1] == MAX_BTC_SATS
    assert ETH.to_base(ETH.to_whole(MAX_UINT256)) == MAX_UINT256
    assert BOOK.parse("eth:123456789012345678901234567890.123456789012345678")[1] == 123456789012345678901234567890_123456789012345678


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sell=st.text(max_size=20), lp=st.text(max_size=20))
def test_property_swap_start_cli_with_any_text_never_tracebacks(home, sell, lp):
    if "\x00" in sell + lp or sell.startswith("-") or lp.startswith("-"):
        return  # NUL cannot be in argv; a leading '-' is an option to argparse
    try:
        check_lp_url(lp)
        BOOK.parse(sell)
        return  # both valid (vanishingly rare): the start would go on to the chains
    except InputError:
        pass
    code, _out, err = swap(home, "start", "--sell", sell, "--buy", "eth:1", "--lp", lp, "--no-wait")
    assert "Traceback" not in err and code in (1, 2), (code, err)
    assert recorded(home) == []


# --- 1. against real chains: the amount that used to be recorded is refused ------------------------


def test_with_chains_up_an_impossible_amount_records_nothing(tmp_path, regtest, anvil, monkeypatch):
    """The control start (a real amount, --no-wait) is recorded, so the setup would record; the
    review's ``--sell btc:1e99 --no-wait`` is refused and leaves the list as it was."""
    user, password = regtest.rpc_auth
    host, port = regtest.rpc_url.removeprefix("http://").rstrip("/").split(":")
    for var in ("BRIDGE_CONFIG", "BRIDGE_SWAP_CONFIG", "BRIDGE_DATA_DIR", "BRIDGE_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    env = {
        "BRIDGE_BITCOIN__RPC_HOST": host,
        "BRIDGE_BITCOIN__RPC_PORT": port,
        "BRIDGE_BITCOIN__RPC_USER": user,
        "BRIDGE_BITCOIN__RPC_PASSWORD": password,
        "BRIDGE_EVM__URL": anvil.url,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "swaps.toml").write_text('btc_key = "' + "11" * 32 + '"\nevm_key = "0x' + "22" * 32 + '"\nhtlc = "0x' + "33" * 20 + '"\n')
    lp = "http://127.0.0.1:9"  # --no-wait: the LP is only asked once the engine runs

    def start(sell: str) -> tuple[int, str, str]:
        return swap(tmp_path, "start", "--sell", sell, "--buy", "eth:1", "--lp", lp, "--no-wait")

    code, _, err = start("btc:0.001")
    assert code == 0, err
    control = recorded(tmp_path)
    assert len(control) == 1
    for sell in ("btc:1e99", "btc:1e5000", "btc:1e999999999", "btc:21000001"):
        code, _, err = start(sell)
        assert_refused(code, err, "more than can exist on bitcoin")
    code, _out, err = swap(tmp_path, "start", "--sell", "btc:0.001", "--buy", "eth:1", "--lp", "notaurl", "--no-wait")
    assert_refused(code, err, "LP URL 'notaurl' must be http:// or https://")
    assert recorded(tmp_path) == control


# --- other numbers at the swap and relayer commands ---------------------------------------------


@pytest.mark.parametrize("feerates", ["0", "-1", "2,5,x", "9" * 5000, "\u0662", "1e3", ",".join(["2"] * 33), "100001"])
def test_swap_watch_refuses_a_bad_feerate_ladder(home, feerates):
    code, _, err = swap(home, "watch", "good-id", "--watcher", "http://127.0.0.1:8700", "--feerates", feerates)
    assert_refused(code, err, "--feerates must be up to 32 comma-separated whole sat/vB")


@pytest.mark.parametrize("port", ["99999999", "-1", "x", "\u0668\u0660"])
def test_relayer_port_out_of_range_is_a_usage_error(home, port):
    code, _, err = run("--data-dir", str(home), "relayer", "run", "lp", "--port", port)
    assert code == 2 and "port must be 0..65535" in err and "Traceback" not in err
