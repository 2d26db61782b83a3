"""Margin view: what each owner's collateral is worth against what they owe.

Prices arrive as attested price messages, one per reporter; an asset's price is the
median of the quorum's fresh reports, refused when too few are fresh or when they
disagree by more than a bound.  Everything is integer fixed point: prices and
values are USD with ``PRICE_DECIMALS`` decimals, ratios are basis points.

An owner's collateral is the haircut value of what they can use in their ``user``
accounts (posted balance minus holds); their liabilities are what their ``debt``
accounts are below zero, valued without haircut.  Health = collateral * 10,000 /
liabilities (bps), liquidatable below the threshold.  Rounding always favours the
bridge: collateral rounds down, liabilities round up.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from sqlalchemy import and_, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from bridge.core.errors import IdempotencyConflict, InputError, PriceRejected
from bridge.ledger import queries
from bridge.ledger.assets import MAX_BPS, load_all
from bridge.ledger.bounds import MAX_INT32, MAX_INT64, check_int, check_text
from bridge.ledger.models import MAX_AMOUNT, LedgerMarginEvent, LedgerPriceReport

PRICE_DECIMALS = 8
COLLATERAL_KINDS = ("user",)
LIABILITY_KINDS = ("debt",)

_R = LedgerPriceReport.__table__
_E = LedgerMarginEvent.__table__


@dataclass(frozen=True)
class PriceReport:
    """One reporter's attested price: USD (``PRICE_DECIMALS``) per whole unit of ``asset``."""

    asset: str
    price: int
    timestamp: int
    reporter: str

    def check(self) -> None:
        if not isinstance(self.price, int) or isinstance(self.price, bool) or not 0 < self.price <= MAX_AMOUNT:
            raise InputError(f"price of {self.asset} from {self.reporter} must be a positive integer, got {self.price!r}", field="price")
        if not isinstance(self.timestamp, int) or isinstance(self.timestamp, bool) or not 0 <= self.timestamp <= MAX_INT64:
            raise InputError(f"price timestamp must be unix seconds (0..{MAX_INT64}), got {self.timestamp!r}", field="timestamp")
        if not self.reporter or not self.asset:
            raise InputError("price report needs an asset and a reporter", field="reporter")
        check_text(self.asset, "price asset", 120, "asset")
        check_text(self.reporter, "price reporter", 200, "reporter")


@dataclass(frozen=True)
class PricePolicy:
    #: Distinct fresh reporters needed for a price.
    quorum: int = 2
    #: Seconds after which a report no longer counts.
    max_age: int = 300
    #: Largest allowed (highest - lowest) / median among the counted reports, in bps.
    max_spread_bps: int = 200
    #: Reporters whose reports count; None accepts any.
    reporters: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.quorum < 1 or self.max_age < 0 or self.max_spread_bps < 0:
            raise InputError("price policy needs quorum >= 1, max_age >= 0 and max_spread_bps >= 0", field="policy")


def median_price(reports: Iterable[PriceReport], asset: str, policy: PricePolicy, now: int) -> int:
    """The asset's price from the latest report of each reporter, or ``PriceRejected``."""
    latest: dict[str, PriceReport] = {}
    for r in reports:
        if r.asset != asset or (policy.reporters is not None and r.reporter not in policy.reporters):
            continue
        if r.reporter not in latest or r.timestamp > latest[r.reporter].timestamp:
            latest[r.reporter] = r
    # A report from the future is as untrustworthy as a stale one.
    fresh = sorted(r.price for r in latest.values() if 0 <= now - r.timestamp <= policy.max_age)
    if len(fresh) < policy.quorum:
        stale = len(latest) - len(fresh)
        raise PriceRejected(
            f"{asset}: {len(fresh)} fresh price reports, {policy.quorum} needed ({stale} older than {policy.max_age}s or from the future)",
            asset=asset,
            reason="stale",
            fresh=len(fresh),
            quorum=policy.quorum,
        )
    mid = len(fresh) // 2
    median = fresh[mid] if len(fresh) % 2 else (fresh[mid - 1] + fresh[mid]) // 2
    spread = fresh[-1] - fresh[0]
    if spread * MAX_BPS > policy.max_spread_bps * median:
        raise PriceRejected(
            f"{asset}: reporters disagree, prices {fresh[0]}..{fresh[-1]} spread more than {policy.max_spread_bps} bps around {median}",
            asset=asset,
            reason="disputed",
            low=fresh[0],
            high=fresh[-1],
            median=median,
        )
    return median


def value(amount: int, price: int, decimals: int, haircut_bps: int = 0, round_up: bool = False) -> int:
    """USD (``PRICE_DECIMALS``) value of ``amount`` base units, after the haircut."""
    num = amount * price * (MAX_BPS - haircut_bps)
    den = 10**decimals * MAX_BPS
    return -(-num // den) if round_up else num // den


@dataclass(frozen=True)
class Health:
    owner: str
    collateral_value: int
    liability_value: int
    #: None when the owner owes nothing.
    health_bps: int | None
    threshold_bps: int
    height: int

    @property
    def liquidatable(self) -> bool:
        return self.health_bps is not None and self.health_bps < self.threshold_bps

    def to_dict(self) -> dict:
        return {
            "owner": self.owner,
            "collateral_value": str(self.collateral_value),
            "liability_value": str(self.liability_value),
            "health_bps": None if self.health_bps is None else str(self.health_bps),
            "threshold_bps": self.threshold_bps,
            "liquidatable": self.liquidatable,
            "height": self.height,
        }


@dataclass(frozen=True)
class MarginEvent:
    seq: int
    owner: str
    state: str
    health_bps: int | None
    threshold_bps: int
    collateral_value: int
    liability_value: int
    height: int
    created_at: int


class MarginView:
    def __init__(
        self,
        engine: Engine,
        policy: PricePolicy = PricePolicy(),
        threshold_bps: int = 11_000,
        clock: Callable[[], int] | None = None,
    ) -> None:
        if not isinstance(threshold_bps, int) or isinstance(threshold_bps, bool) or not 0 < threshold_bps <= MAX_INT32:
            raise InputError(f"liquidation threshold must be a positive number of bps (at most {MAX_INT32}), got {threshold_bps!r}", field="threshold_bps")
        self.engine = engine
        self.policy = policy
        self.threshold_bps = threshold_bps
        self.clock = clock or (lambda: int(time.time()))

    def record_price(self, report: PriceReport) -> None:
        """Store a reporter's price (idempotent; the same key with another price is a conflict)."""
        report.check()
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        with self.engine.begin() as conn:
            conn.execute(
                insert(_R).values(asset=report.asset, reporter=report.reporter, timestamp=report.timestamp, price=report.price).on_conflict_do_nothing()
            )
            stored = conn.execute(
                select(_R.c.price).where(_R.c.asset == report.asset, _R.c.reporter == report.reporter, _R.c.timestamp == report.timestamp)
            ).scalar_one()
        if stored != report.price:
            raise IdempotencyConflict(
                f"{report.reporter} already reported {report.asset} at {report.timestamp} as {stored}, not {report.price}",
                field="price",
            )

    def prices(self, assets: Iterable[str], reports: Sequence[PriceReport] | None = None) -> dict[str, int]:
        """Median price of each asset from ``reports`` (default: the stored reports)."""
        assets = sorted(set(assets))
        now = self.clock()
        if reports is None:
            # Only each reporter's newest report counts (stale ones too, so a refusal can say so).
            newest = (
                select(_R.c.asset, _R.c.reporter, func.max(_R.c.timestamp).label("ts"))
                .where(_R.c.asset.in_(assets))
                .group_by(_R.c.asset, _R.c.reporter)
                .subquery()
            )
            q = select(_R).join(newest, and_(_R.c.asset == newest.c.asset, _R.c.reporter == newest.c.reporter, _R.c.timestamp == newest.c.ts))
            with self.engine.connect() as conn:
                reports = [PriceReport(r.asset, r.price, r.timestamp, r.reporter) for r in conn.execute(q)]
        return {a: median_price(reports, a, self.policy, now) for a in assets}

    def health(self, owner: str | None = None, reports: Sequence[PriceReport] | None = None) -> list[Health]:
        """Health of one owner or of every owner holding collateral or debt."""
        balances = queries.balances(self.engine, owner=owner)
        with self.engine.connect() as conn:
            registry = load_all(conn)
            height = queries.current_height(conn)
        relevant = [b for b in balances if (b.kind in COLLATERAL_KINDS and b.available > 0) or (b.kind in LIABILITY_KINDS and b.balance < 0)]
        prices = self.prices({b.asset for b in relevant}, reports) if relevant else {}
        collateral: dict[str, int] = defaultdict(int)
        liabilities: dict[str, int] = defaultdict(int)
        for b in relevant:
            asset = registry[b.asset]
            if b.kind in COLLATERAL_KINDS:
                collateral[b.owner] += value(b.available, prices[b.asset], asset.decimals, asset.haircut_bps)
            else:
                liabilities[b.owner] += value(-b.balance, prices[b.asset], asset.decimals, round_up=True)
        owners = sorted({owner} if owner is not None else set(collateral) | set(liabilities))
        out = []
        for o in owners:
            c, debt = collateral.get(o, 0), liabilities.get(o, 0)
            out.append(Health(o, c, debt, None if debt == 0 else c * MAX_BPS // debt, self.threshold_bps, height))
        return out

    def scan(self, reports: Sequence[PriceReport] | None = None) -> list[MarginEvent]:
        """Compute every owner's health and record an event for each one that crossed the threshold."""
        healths = self.health(reports=reports)
        now = self.clock()
        with self.engine.begin() as conn:
            last_state: dict[str, str] = {}
            for r in conn.execute(select(_E.c.owner, _E.c.state).order_by(_E.c.seq)):
                last_state[r.owner] = r.state
            rows = []
            for h in healths:
                state = "liquidatable" if h.liquidatable else "healthy"
                # Owners start healthy: only a change of state is news.
                if last_state.get(h.owner, "healthy") != state:
                    rows.append(
                        dict(
                            owner=h.owner,
                            state=state,
                            health_bps=h.health_bps,
                            threshold_bps=h.threshold_bps,
                            collateral_value=h.collateral_value,
                            liability_value=h.liability_value,
                            height=h.height,
                            created_at=now,
                        )
                    )
            # Owners no longer holding collateral or debt are healthy by definition.
            gone = {o for o, s in last_state.items() if s == "liquidatable"} - {h.owner for h in healths}
            rows += [
                dict(
                    owner=o,
                    state="healthy",
                    health_bps=None,
                    threshold_bps=self.threshold_bps,
                    collateral_value=0,
                    liability_value=0,
                    height=queries.current_height(conn),
                    created_at=now,
                )
                for o in sorted(gone)
            ]
            if not rows:
                return []
            first = conn.execute(select(_E.c.seq).order_by(_E.c.seq.desc()).limit(1)).scalar() or 0
            conn.execute(_E.insert(), rows)
            return self._events(conn, first)

    def events(self, since_seq: int = 0) -> list[MarginEvent]:
        """Events after ``since_seq``, oldest first (relayers keep their cursor)."""
        check_int(since_seq, "since_seq", 0, MAX_INT64)
        with self.engine.connect() as conn:
            return self._events(conn, since_seq)

    @staticmethod
    def _events(conn, since_seq: int) -> list[MarginEvent]:
        return [MarginEvent(**dict(r)) for r in conn.execute(select(_E).where(_E.c.seq > since_seq).order_by(_E.c.seq)).mappings()]
