"""Ranges of the integers and texts the ledger stores or looks up.

Every value that enters the ledger from outside (a transfer, an account id, a height, a
price report) is range-checked here before any SQL sees it, so a value the database
cannot hold is an ``InputError`` that changes nothing, on every backend, instead of a
driver error (SQLite: ``OverflowError`` above 2^63; PostgreSQL: ``INTEGER`` columns stop
at 2^31 - 1 and ``VARCHAR(n)`` refuses longer text).
"""

from __future__ import annotations

from typing import Any

from bridge.core.errors import InputError

#: Account ids are ``INTEGER`` (a 32-bit serial on PostgreSQL): no account can have a larger id.
MAX_ACCOUNT_ID = 2**31 - 1
#: A pending transfer's timeout in seconds is stored as ``INTEGER`` (about 68 years).
MAX_TIMEOUT = 2**31 - 1
#: ``BIGINT`` columns: heights, unix timestamps, chain ids, event sequence numbers.
MAX_INT64 = 2**63 - 1
#: Plain ``INTEGER`` columns (basis-point thresholds).
MAX_INT32 = 2**31 - 1


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: object, what: str, low: int, high: int, field: str | None = None, **details: Any) -> int:
    """``value`` if it is an integer in ``low..high``, else an ``InputError`` naming ``field``."""
    if not is_int(value) or not low <= value <= high:  # type: ignore[operator]
        shown = value if not isinstance(value, str) else value[:40]
        raise InputError(f"{what} must be an integer in {low}..{high}, got {shown!r}", field=field or what, **details)
    return value  # type: ignore[return-value]


def check_account_id(value: object, field: str = "account", **details: Any) -> int:
    what = "account id" if field == "account" else f"{field} account id"
    return check_int(value, what, 1, MAX_ACCOUNT_ID, field, **details)


def check_text(value: object, what: str, max_len: int, field: str | None = None, *, optional: bool = False, **details: Any) -> str | None:
    """A string of 1..``max_len`` characters without NUL (which PostgreSQL cannot store)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= max_len or "\x00" in value:
        shown = value[:40] if isinstance(value, str) else value
        raise InputError(f"{what} must be a string of 1..{max_len} characters without NUL, got {shown!r}", field=field or what, **details)
    return value
