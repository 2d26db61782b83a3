"""JSON from outside the process, parsed with bounds that do not depend on the recursion limit.

Python's C decoder recurses once per nesting level and trusts ``sys.getrecursionlimit()``
to stop it; a library we import (py_ecc, through web3) raises that limit to 100,000, so
``[`` x 100,000 runs the decoder off the C stack and the process dies with a segmentation
fault.  Every body, answer or file that another party wrote is parsed here instead: its
size and nesting depth are checked by a linear scan before the decoder sees it, numbers
are length-checked before they are converted, and ``NaN``/``Infinity`` (not JSON) are
refused.  The limits are generous for every message the bridge exchanges.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from bridge.errors import InputError

#: Deeper than any message of ours (bitcoind's UniValue stops at 512; we need far fewer).
MAX_DEPTH = 64
#: Digits (and sign, point, exponent) of one number: a uint256 has 78 digits.
MAX_NUMBER_CHARS = 100
#: A body larger than this is refused before it is read (HTTP 413 in the daemons).
MAX_BODY = 1 << 20

# A JSON string (escapes included), unrolled so the regex engine never backtracks.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKETS = re.compile(rb"[\[\]{}]")


class JsonRefused(InputError):
    """The text is not JSON we accept: malformed, too large, too deep, or a number out of bounds.
    ``status`` is the HTTP status a daemon answers with."""

    def __init__(self, message: str, status: int = 400, **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status


def check_depth(data: bytes, max_depth: int = MAX_DEPTH) -> None:
    """Refuse ``data`` whose brackets nest deeper than ``max_depth`` (strings are skipped).
    Malformed text may be refused here or later by the decoder; never accepted."""
    depth = 0
    for bracket in _BRACKETS.findall(_STRING.sub(b'""', data)):
        if bracket in b"[{":
            depth += 1
            if depth > max_depth:
                raise JsonRefused(f"JSON nested deeper than {max_depth} levels")
        else:
            depth -= 1


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise JsonRefused(f"JSON number of {len(text)} characters is out of range")
    return int(text)


def _refuse_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not a JSON number")


def loads(
    data: bytes | str,
    *,
    max_bytes: int | None = MAX_BODY,
    max_depth: int = MAX_DEPTH,
    parse_float: Callable[[str], Any] = float,
) -> Any:
    """``json.loads`` with bounds; any refusal (malformed included) is a ``JsonRefused``."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if max_bytes is not None and len(raw) > max_bytes:
        raise JsonRefused(f"JSON text of {len(raw)} bytes is over the limit of {max_bytes}", status=413)
    check_depth(raw, max_depth)

    def bounded_float(text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            raise JsonRefused(f"JSON number of {len(text)} characters is out of range")
        value = parse_float(text)
        if value in (float("inf"), float("-inf")):
            raise JsonRefused(f"JSON number {text} is out of range")
        return value

    try:
        return json.loads(raw, parse_int=_bounded_int, parse_float=bounded_float, parse_constant=_refuse_constant)
    except JsonRefused:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JsonRefused(f"not valid JSON: {exc}") from None
