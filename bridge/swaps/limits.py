"""Bounds on what enters a swap from outside: ids, LP URLs, amounts.

Checked where the input arrives (CLI, the LP's HTTP API), before anything converts or
stores it, so a hostile or mistyped value is a clear ``InputError`` and changes nothing.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from bridge.core.errors import InputError

#: Swap ids are chosen by the trader (a uuid4 hex) and echoed in URLs, logs and terminals:
#: printable, URL-safe characters only.
SWAP_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")

#: Bitcoin's MAX_MONEY in sats: no output can hold more.
MAX_BTC_SATS = 21_000_000 * 100_000_000
#: An EVM amount is a uint256.
MAX_UINT256 = 2**256 - 1


def check_swap_id(value: object, field: str = "id") -> str:
    if not isinstance(value, str) or not SWAP_ID.fullmatch(value):
        shown = value if not isinstance(value, str) else value[:40].encode("unicode_escape").decode()
        raise InputError(f"{field} must be 1-100 characters of A-Z a-z 0-9 _ . - (got {shown!r})", field=field)
    return value


def check_lp_url(value: str) -> str:
    """An LP is reached over http(s) at a host: anything else would be retried for ever."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise InputError(f"LP URL {value!r} is not a URL: {exc}", field="lp") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"LP URL {value!r} must be http:// or https:// with a host, e.g. http://127.0.0.1:8600", field="lp")
    if port == 0:
        raise InputError(f"LP URL {value!r} has port 0", field="lp")
    return value.rstrip("/")


def max_amount(chain: str) -> int:
    return MAX_BTC_SATS if chain == "bitcoin" else MAX_UINT256


def check_amount(amount: int, chain: str, what: str = "amount") -> int:
    """A positive amount that can exist on ``chain`` (Bitcoin's supply, a uint256)."""
    if amount <= 0:
        raise InputError(f"{what} must be positive, got {amount}", field=what)
    if amount > max_amount(chain):
        raise InputError(f"{what} {amount} is more than can exist on {chain} ({max_amount(chain)} base units)", field=what)
    return amount
