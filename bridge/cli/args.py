"""Argument parsing shared by the command groups: hex values, positive whole numbers and the devnet
test account to sign with."""

from __future__ import annotations

import argparse
from typing import Callable, Sequence, TypeVar

from bridge.core.errors import InputError

T = TypeVar("T")


def hex_bytes(value: str, what: str, size: int | None = None) -> bytes:
    """``value`` as bytes (optional 0x, surrounding whitespace ignored); ``size`` bytes exactly when given."""
    try:
        raw = bytes.fromhex(value.strip().removeprefix("0x"))
    except ValueError:
        raise InputError(f"{what} is not hex: {value!r}", field=what) from None
    if size is not None and len(raw) != size:
        raise InputError(f"{what} must be {size} bytes ({2 * size} hex digits), got {len(raw)}", field=what)
    return raw


def positive_int(what: str) -> Callable[[str], int]:
    """An argparse ``type`` for a positive whole number (``_`` separators allowed), named ``what`` in errors."""

    def parse(value: str) -> int:
        try:
            n = int(value.replace("_", ""), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {value!r}") from None
        if n <= 0:
            raise argparse.ArgumentTypeError(f"{what} must be positive, got {n}")
        return n

    return parse


def devnet_account(keys: Sequence[T], account: int) -> T:
    """The ``--account`` index into the devnet's test keys."""
    if not 0 <= account < len(keys):
        raise InputError(f"--account must be 0..{len(keys) - 1}, got {account}", field="account")
    return keys[account]
