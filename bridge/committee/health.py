"""An account's health as the bridge contract computes it, from a replica's book and prices.

``../shared/DESIGN.md``, "Prices, margin and liquidation": health = haircut collateral value *
10,000 / liabilities value (bps), in USD with the oracle's 8 decimals, each position valued on its
own and rounded for the bridge (collateral down, liabilities up; ``bridge.ledger.margin.value``).
The contract's ``_values`` is the same arithmetic on the same integers: a replica at the height of
a block and the contract in that block agree to the unit, which the tests check.

A price counts while it is at most ``max_price_age`` seconds old at the block's time and its
breaker is not tripped; only the assets a position holds or owes need one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from bridge.core.errors import PriceRejected
from bridge.ledger.assets import MAX_BPS, Asset
from bridge.ledger.margin import value

__all__ = ["Figure", "figure", "owes"]


@dataclass(frozen=True)
class Figure:
    collateral: int
    liabilities: int

    @property
    def bps(self) -> int | None:
        """Health in bps, None when the account owes nothing."""
        return None if self.liabilities == 0 else self.collateral * MAX_BPS // self.liabilities

    def below(self, bps: int) -> bool:
        """Whether health is below ``bps`` (never, owing nothing): the contract's own comparison."""
        return self.liabilities != 0 and self.collateral * MAX_BPS < bps * self.liabilities


def owes(positions: Mapping[bytes, int]) -> bool:
    return any(p < 0 for p in positions.values())


def figure(positions: Mapping[bytes, int], assets: Mapping[bytes, Asset], prices: Mapping[str, object], now: int, max_price_age: int) -> Figure:
    """Collateral and liabilities of ``positions`` (asset address -> signed base units) at ``now``;
    ``prices`` maps ``0x``-hex asset addresses to folded prices (``price``, ``time``, ``tripped``).
    ``PriceRejected`` names the first asset whose price does not count."""
    collateral = liabilities = 0
    for address, position in sorted(positions.items()):
        if position == 0:
            continue
        key = "0x" + address.hex()
        asset = assets[address]
        p = prices.get(key)
        if p is None or not getattr(p, "price", 0):
            raise PriceRejected(f"{asset.symbol}: no price posted", asset=asset.symbol, reason="missing")
        if getattr(p, "tripped", False):
            raise PriceRejected(f"{asset.symbol}: its price breaker is tripped", asset=asset.symbol, reason="halted")
        if p.time + max_price_age < now:  # type: ignore[attr-defined]
            raise PriceRejected(f"{asset.symbol}: price older than {max_price_age}s", asset=asset.symbol, reason="stale")
        if position > 0:
            collateral += value(position, p.price, asset.decimals, asset.haircut_bps)  # type: ignore[attr-defined]
        else:
            liabilities += value(-position, p.price, asset.decimals, round_up=True)  # type: ignore[attr-defined]
    return Figure(collateral, liabilities)
