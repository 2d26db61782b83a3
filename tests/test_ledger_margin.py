"""Margin view: median prices from a quorum, stale and disputed prices refused, haircut
collateral against debt, threshold crossings recorded as events."""

from __future__ import annotations

import pytest

from bridge.core.errors import IdempotencyConflict, InputError, PriceRejected
from bridge.ledger import Ledger, Transfer, erc20
from bridge.ledger.margin import MarginView, PricePolicy, PriceReport, median_price, value

NOW = 1_700_000_000
BTC_USD = 60_000 * 10**8  # USD with 8 decimals per whole BTC
USDC_USD = 10**8


def reports(asset: str, prices: list[int], ages: list[int] | None = None) -> list[PriceReport]:
    ages = ages or [0] * len(prices)
    return [PriceReport(asset, p, NOW - age, f"oracle{i}") for i, (p, age) in enumerate(zip(prices, ages))]


def test_median_of_fresh_quorum():
    policy = PricePolicy(quorum=3, max_age=60, max_spread_bps=100)
    assert median_price(reports("BTC", [100_00, 100_20, 99_90]), "BTC", policy, NOW) == 100_00
    assert median_price(reports("BTC", [100_00, 100_20, 99_90, 100_10]), "BTC", policy, NOW) == 100_05
    # An older report of the same reporter is superseded by its newest one.
    rs = reports("BTC", [100_00, 100_20, 99_90]) + [PriceReport("BTC", 1, NOW - 30, "oracle0")]
    assert median_price(rs, "BTC", policy, NOW) == 100_00


def test_stale_prices_refused():
    policy = PricePolicy(quorum=2, max_age=60, max_spread_bps=100)
    with pytest.raises(PriceRejected, match="1 fresh price reports, 2 needed") as exc:
        median_price(reports("BTC", [100, 100], ages=[10, 61]), "BTC", policy, NOW)
    assert exc.value.details["reason"] == "stale"
    with pytest.raises(PriceRejected, match="from the future"):
        median_price(reports("BTC", [100, 100], ages=[0, -5]), "BTC", policy, NOW)
    # Reporters outside the committee do not count toward the quorum.
    outsiders = PricePolicy(quorum=2, max_age=60, reporters=frozenset({"oracle0"}))
    with pytest.raises(PriceRejected):
        median_price(reports("BTC", [100, 100]), "BTC", outsiders, NOW)


def test_disputed_prices_refused():
    policy = PricePolicy(quorum=3, max_age=60, max_spread_bps=100)
    assert median_price(reports("BTC", [10_000, 10_050, 10_100]), "BTC", policy, NOW) == 10_050
    with pytest.raises(PriceRejected, match="disagree") as exc:
        median_price(reports("BTC", [10_000, 10_050, 10_200]), "BTC", policy, NOW)
    assert exc.value.details["reason"] == "disputed"


def test_value_is_exact_integer_math():
    assert value(10**8, BTC_USD, 8) == BTC_USD
    assert value(10**8, BTC_USD, 8, haircut_bps=1_000) == BTC_USD * 9 // 10
    big = 2**128 - 1
    assert value(big, 3, 18) == big * 3 // 10**18
    assert value(1, 1, 8, round_up=True) == 1 and value(1, 1, 8) == 0


@pytest.fixture
def book(ledger_db):
    _, engine = ledger_db
    ledger = Ledger(engine)
    ledger.set_haircut("BTC", 1_000)
    usdc = ledger.register_asset(erc20(31337, "0x" + "11" * 20, 6, "USDC"))
    world_btc = ledger.open_account("world", "external", "BTC")
    world_usdc = ledger.open_account("world", "external", usdc.code)
    alice_btc = ledger.open_account("alice", "user", "BTC")
    alice_debt = ledger.open_account("alice", "debt", usdc.code)
    ledger.commit(
        [
            Transfer("deposit", world_btc.id, alice_btc.id, 10**8),  # 1 BTC
            Transfer("borrow", alice_debt.id, world_usdc.id, 45_000 * 10**6),  # owes 45,000 USDC
        ]
    )
    clock = {"now": NOW}
    view = MarginView(engine, PricePolicy(quorum=2, max_age=60, max_spread_bps=100), threshold_bps=11_000, clock=lambda: clock["now"])
    return ledger, view, usdc, clock


def feed(view: MarginView, asset: str, price: int, at: int) -> None:
    for i, p in enumerate((price, price)):
        view.record_price(PriceReport(asset, p, at, f"oracle{i}"))


def test_health_and_threshold_events(book):
    ledger, view, usdc, clock = book
    feed(view, "BTC", BTC_USD, NOW)
    feed(view, usdc.code, USDC_USD, NOW)
    [h] = view.health("alice")
    assert h.collateral_value == 54_000 * 10**8  # 60,000 less the 10% haircut
    assert h.liability_value == 45_000 * 10**8
    assert h.health_bps == 12_000 and not h.liquidatable
    assert view.scan() == []

    clock["now"] += 10
    feed(view, "BTC", 50_000 * 10**8, clock["now"])  # 45,000 collateral / 45,000 debt = 100%
    [event] = view.scan()
    assert (event.owner, event.state, event.health_bps, event.threshold_bps) == ("alice", "liquidatable", 10_000, 11_000)
    assert view.scan() == []  # still below: no new event

    ledger.commit([Transfer("top-up", ledger.find_account("world", "external", "BTC").id, ledger.find_account("alice", "user", "BTC").id, 2 * 10**7)])
    [event2] = view.scan()
    assert event2.state == "healthy" and event2.health_bps == 12_000
    assert [e.seq for e in view.events()] == [event.seq, event2.seq]
    assert view.events(since_seq=event.seq) == [event2]


def test_health_refused_on_stale_or_disputed_prices(book):
    _, view, usdc, clock = book
    feed(view, "BTC", BTC_USD, NOW)
    feed(view, usdc.code, USDC_USD, NOW)
    clock["now"] += 61
    with pytest.raises(PriceRejected, match=r"0 fresh price reports, 2 needed \(2 older than 60s"):
        view.health("alice")
    view.record_price(PriceReport("BTC", BTC_USD, clock["now"], "oracle0"))
    view.record_price(PriceReport("BTC", BTC_USD * 103 // 100, clock["now"], "oracle1"))
    feed(view, usdc.code, USDC_USD, clock["now"])
    with pytest.raises(PriceRejected, match="disagree"):
        view.scan()
    assert view.events() == []


def test_price_reports_are_idempotent_and_checked(book):
    _, view, _, _ = book
    r = PriceReport("BTC", BTC_USD, NOW, "oracle0")
    view.record_price(r)
    view.record_price(r)
    with pytest.raises(IdempotencyConflict, match="already reported"):
        view.record_price(PriceReport("BTC", BTC_USD + 1, NOW, "oracle0"))
    with pytest.raises(InputError):
        view.record_price(PriceReport("BTC", 1.5, NOW, "oracle0"))  # type: ignore[arg-type]
    with pytest.raises(InputError):
        view.record_price(PriceReport("BTC", 0, NOW, "oracle0"))
