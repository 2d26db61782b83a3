"""Swap assets and exact amount parsing.

Amounts are typed in whole units (``btc:0.5``) and converted once, exactly, to the
chain's base unit (sats, wei, token base units).  An amount with more decimals than the
asset has is refused rather than rounded, and so is one that cannot exist on its chain
(more than Bitcoin's ``MAX_MONEY``, more than a uint256 on an EVM chain).  The text is
bounded before it is converted, and the conversion is integer arithmetic on the digits
(``Decimal`` arithmetic would round beyond 28 digits, or overflow on a huge exponent).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from bridge.core.errors import InputError
from bridge.swaps.limits import check_amount, max_amount
from chains.base import BITCOIN, EVM  # the chain names, also imported from here

#: Longest amount text accepted: a uint256 in base units has 78 digits; decimals, a point
#: and an exponent fit easily.
MAX_AMOUNT_CHARS = 100


def _shown(value: object) -> str:
    """``value`` for an error message: short, and with control characters escaped."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > 40:
        text = text[:40] + "…"
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return f"'{text}'"


@dataclass(frozen=True)
class SwapAsset:
    symbol: str  # lower case: "btc", "eth", "tusd"
    chain: str  # BITCOIN or EVM
    decimals: int
    token: str | None = None  # ERC-20 address; None for the chain's native coin

    def to_base(self, whole: str | Decimal, field: str = "amount") -> int:
        """Whole units (text or ``Decimal``) to base units; anything else is an ``InputError`` naming ``field``."""
        what = f"{field}: {self.symbol} amount"
        if isinstance(whole, str):
            text = whole.strip()
            if len(text) > MAX_AMOUNT_CHARS:
                raise InputError(f"{what} of {len(text)} characters is too long (at most {MAX_AMOUNT_CHARS})", field=field)
            if not text.isascii():
                raise InputError(f"{what} {_shown(whole)} is not a number (ASCII digits only)", field=field)
            try:
                value = Decimal(text)
            except InvalidOperation:
                raise InputError(f"{what} {_shown(whole)} is not a number", field=field) from None
        elif isinstance(whole, Decimal):
            value = whole
        else:
            raise InputError(f"{what} must be text, got {type(whole).__name__}", field=field)
        if not value.is_finite() or value <= 0:
            raise InputError(f"{what} must be positive, got {_shown(whole)}", field=field)
        _, digits, exponent = value.as_tuple()
        if len(digits) > MAX_AMOUNT_CHARS:
            raise InputError(f"{what} has too many digits ({len(digits)})", field=field)
        limit = max_amount(self.chain)
        # The leading digit's place in base units; a uint256 has 78 digits (places 0..77).
        if value.adjusted() + self.decimals >= len(str(limit)):
            raise InputError(self._too_large(what, whole, limit), field=field)
        coefficient = int("".join(map(str, digits)))
        shift = int(exponent) + self.decimals  # value = coefficient * 10**(shift - decimals)
        while shift < 0 and coefficient % 10 == 0:  # trailing zeros after the point are harmless
            coefficient //= 10
            shift += 1
        if shift < 0:
            raise InputError(f"{what} {_shown(whole)} has more than {self.decimals} decimals", field=field)
        base = coefficient * 10**shift
        if base > limit:
            raise InputError(self._too_large(what, whole, limit), field=field)
        return check_amount(base, self.chain, field)

    def _too_large(self, what: str, whole: object, limit: int) -> str:
        return f"{what} {_shown(whole)} is more than can exist on {self.chain} (at most {self.to_whole(limit)} {self.symbol})"

    def to_whole(self, base: int) -> str:
        """Base units to whole units, exactly (``to_base(to_whole(n)) == n``)."""
        sign = "-" if base < 0 else ""
        units, rest = divmod(abs(int(base)), 10**self.decimals)
        if not rest:
            return f"{sign}{units}"
        return f"{sign}{units}.{str(rest).zfill(self.decimals).rstrip('0')}"


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

    def get(self, symbol: str, field: str = "asset") -> SwapAsset:
        asset = self._assets.get(symbol.lower()) if isinstance(symbol, str) else None
        if asset is None:
            where = "" if field == "asset" else f"{field}: "
            raise InputError(f"{where}unknown asset {_shown(symbol)}; known: {', '.join(sorted(self._assets))}", field=field)
        return asset

    def parse(self, spec: str, field: str = "amount") -> tuple[SwapAsset, int]:
        """``"btc:0.5"`` -> ``(BTC, 50_000_000)``; any other input is an ``InputError`` naming ``field``."""
        if not isinstance(spec, str):
            raise InputError(f"{field} must look like ASSET:AMOUNT, e.g. btc:0.5, got {type(spec).__name__}", field=field)
        symbol, sep, whole = spec.partition(":")
        if not sep or not whole.strip():
            raise InputError(f"{field} {_shown(spec)} must look like ASSET:AMOUNT, e.g. btc:0.5", field=field)
        asset = self.get(symbol.strip(), field)
        return asset, asset.to_base(whole.strip(), field)
