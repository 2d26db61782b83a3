"""EIP-1559 fee choice and replacement (fee bump) arithmetic, all in integer wei."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from bridge.core.errors import InputError

GWEI = 10**9
#: Used when recent blocks paid no tips (devnets) or the node has no fee history.
DEFAULT_PRIORITY_FEE = 1 * GWEI
#: Blocks of history to read, and the tip percentile to follow.
FEE_HISTORY_BLOCKS = 5
TIP_PERCENTILE = 50
#: Nodes refuse a replacement unless both fees rise by at least 10%.
MIN_BUMP = Fraction(11, 10)


@dataclass(frozen=True)
class Fees:
    max_fee: int
    priority_fee: int

    def __post_init__(self) -> None:
        if self.priority_fee < 0 or self.max_fee < self.priority_fee:
            raise InputError(f"fees must satisfy 0 <= priority_fee <= max_fee, got {self.priority_fee} and {self.max_fee}")


def fees_from_history(history: dict[str, Any]) -> Fees:
    """Fees for the next block from an ``eth_feeHistory`` reply.

    The max fee leaves room for the base fee to double (six full blocks of +12.5%)
    before the transaction stops being includable.
    """
    base_fees = history.get("baseFeePerGas") or []
    next_base = int(base_fees[-1], 16) if base_fees else 0
    tips = sorted(int(r[0], 16) for r in history.get("reward") or [] if r)
    tip = tips[len(tips) // 2] if tips else 0
    priority = tip if tip > 0 else DEFAULT_PRIORITY_FEE
    return Fees(max_fee=2 * next_base + priority, priority_fee=priority)


def choose_fees(suggested: Fees, max_fee: int | None, priority_fee: int | None) -> Fees:
    """The caller's fees where given, the suggestion elsewhere (raising max fee to cover an explicit tip)."""
    for name, value in (("max_fee", max_fee), ("priority_fee", priority_fee)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InputError(f"{name} must be a non-negative int of wei, got {value!r}")
    priority = suggested.priority_fee if priority_fee is None else priority_fee
    if max_fee is None:
        max_fee = max(suggested.max_fee - suggested.priority_fee + priority, priority)
    return Fees(max_fee=max_fee, priority_fee=priority)


def _ceil(value: Fraction) -> int:
    return -((-value.numerator) // value.denominator)


def bumped(old: Fees, multiplier: float | int | Fraction | str, floor: Fees | None = None) -> Fees:
    """Fees for a replacement: ``old * multiplier`` rounded up, at least +10% on both, at least ``floor``."""
    factor = Fraction(str(multiplier)) if not isinstance(multiplier, Fraction) else multiplier
    if factor <= 1:
        raise InputError(f"fee_multiplier must be greater than 1, got {multiplier}")
    factor = max(factor, MIN_BUMP)

    def up(value: int, minimum: int) -> int:
        # value + 1: a zero fee must still strictly rise
        return max(_ceil(value * factor), value + 1, minimum)

    priority = up(old.priority_fee, floor.priority_fee if floor else 0)
    max_fee = up(old.max_fee, floor.max_fee if floor else 0)
    return Fees(max_fee=max(max_fee, priority), priority_fee=priority)
