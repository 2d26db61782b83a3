"""Swap assets and exact amount parsing.

Amounts are typed in whole units (``btc:0.5``) and converted once, with
``Decimal``, to the chain's base unit (sats, wei, token base units).  An amount
with more decimals than the asset has is refused rather than rounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from bridge.errors import InputError

BITCOIN = "bitcoin"
EVM = "evm"


@dataclass(frozen=True)
class SwapAsset:
    symbol: str  # lower case: "btc", "eth", "tusd"
    chain: str  # BITCOIN or EVM
    decimals: int
    token: str | None = None  # ERC-20 address; None for the chain's native coin

    def to_base(self, whole: str | Decimal) -> int:
        try:
            value = Decimal(whole)
        except InvalidOperation:
            raise InputError(f"{self.symbol} amount {whole!r} is not a number", field="amount") from None
        if not value.is_finite() or value <= 0:
            raise InputError(f"{self.symbol} amount must be positive, got {whole!r}", field="amount")
        base = value.scaleb(self.decimals)
        if base != base.to_integral_value():
            raise InputError(
                f"{self.symbol} amount {whole} has more than {self.decimals} decimals", field="amount"
            )
        return int(base)

    def to_whole(self, base: int) -> str:
        text = format(Decimal(base).scaleb(-self.decimals), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text


BTC = SwapAsset("btc", BITCOIN, 8)
ETH = SwapAsset("eth", EVM, 18)


class AssetBook:
    """The assets a party can swap: BTC, ETH and the ERC-20s it was configured with."""

    def __init__(self, tokens: dict[str, tuple[str, int]] | None = None) -> None:
        self._assets = {"btc": BTC, "eth": ETH}
        for symbol, (address, decimals) in (tokens or {}).items():
            sym = symbol.lower()
            if sym in self._assets:
                raise InputError(f"token symbol {symbol!r} clashes with a native asset", field="tokens")
            self._assets[sym] = SwapAsset(sym, EVM, decimals, address)

    def get(self, symbol: str) -> SwapAsset:
        try:
            return self._assets[symbol.lower()]
        except KeyError:
            raise InputError(f"unknown asset {symbol!r}; known: {', '.join(sorted(self._assets))}", field="asset") from None

    def parse(self, spec: str) -> tuple[SwapAsset, int]:
        """``"btc:0.5"`` -> ``(BTC, 50_000_000)``."""
        symbol, sep, whole = spec.partition(":")
        if not sep or not whole:
            raise InputError(f"amount {spec!r} must look like ASSET:AMOUNT, e.g. btc:0.5", field="amount")
        asset = self.get(symbol.strip())
        return asset, asset.to_base(whole.strip())
