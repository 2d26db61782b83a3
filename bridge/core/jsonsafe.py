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

from bridge.core.errors import InputError

#: Deeper than any message of ours (bitcoind's UniValue stops at 512; we need far fewer).
MAX_DEPTH = 64
#: Digits (and sign, point, exponent) of one number: a uint256 has 78 digits.
MAX_NUMBER_CHARS = 100
#: A body larger than this is refused before it is read (HTTP 413 in the daemons).
MAX_BODY = 1 << 20

# A JSON string (escapes included), unrolled so the regex engine never backtracks.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_INNERMOST = re.compile(rb"\[\]|\{\}")
_OPENING = frozenset(b"[{")
_PASSES = 8
_NUMBER = re.compile(rb"[-+0-9.eE]{%d,}" % (MAX_NUMBER_CHARS + 1))
# A float whose exponent is 100 or more: ``float`` would make it inf (or hold it as a huge value).
_HUGE_EXPONENT = re.compile(rb"[0-9][eE]\+?0*[1-9][0-9]{2,}")


class JsonRefused(InputError):
    """The text is not JSON we accept: malformed, too large, too deep, or a number out of bounds.
    ``status`` is the HTTP status a daemon answers with."""

    def __init__(self, message: str, status: int = 400, **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status


def _strip_strings(data: bytes) -> bytes:
    """``data`` with every string's content removed.  Without an escaped quote, the pieces
    between quotes alternate outside/inside, and a split and join does it at memory speed."""
    if b'\\"' not in data:
        return b'""'.join(data.split(b'"')[0::2])
    return _STRING.sub(b'""', data)


def check_depth(data: bytes, max_depth: int = MAX_DEPTH, *, strings_stripped: bool = False) -> None:
    """Refuse ``data`` whose brackets nest deeper than ``max_depth`` (strings are skipped).

    Each pass of a C-speed regex removes the innermost ``[]``/``{}`` pairs, the leaves of the
    tree, which lowers its height by exactly one; messages are a few levels deep, so a few
    passes clear them.  What is left is walked bracket by bracket against the depth still
    allowed, and a hostile text is refused within ``max_depth`` brackets of that walk."""
    brackets = _NOT_BRACKET.sub(b"", data if strings_stripped else _strip_strings(data))
    removed = 0
    while brackets and removed < min(max_depth, _PASSES):
        brackets = _INNERMOST.sub(b"", brackets)
        removed += 1
    depth, allowed = 0, max_depth - removed
    for bracket in brackets:  # ints; stops at the first level too deep
        depth = depth + 1 if bracket in _OPENING else depth - 1
        if depth > allowed:
            raise JsonRefused(f"JSON nested deeper than {max_depth} levels")
    # Unbalanced brackets are malformed, which the decoder reports in its own words.


async def read_capped(message: Any, limit: int = MAX_BODY, what: str = "body") -> bytes:
    """The body of an aiohttp request or response (``message``: anything with ``content_length``
    and a ``content`` stream), refused with a 413 ``JsonRefused`` once over ``limit`` bytes: a
    declared length over the limit before anything is read, and never more than ``limit + 1``
    bytes read (a chunked or lying body is cut there)."""
    declared = message.content_length
    if declared is not None and declared > limit:
        raise JsonRefused(f"{what} of {declared} bytes is over the limit of {limit}", status=413)
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await message.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise JsonRefused(f"{what} is over the limit of {limit} bytes", status=413)
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not a JSON number")


def loads(
    data: bytes | str,
    *,
    max_bytes: int | None = MAX_BODY,
    max_depth: int = MAX_DEPTH,
    parse_float: Callable[[str], Any] = float,
) -> Any:
    """``json.loads`` with bounds; any refusal (malformed included) is a ``JsonRefused``.
    The checks run over the text once, at C speed; the decoder then runs with no Python hook
    per value (a 28 MB batch of blocks parses within a fraction of plain ``json.loads``'s time)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if max_bytes is not None and len(raw) > max_bytes:
        raise JsonRefused(f"JSON text of {len(raw)} bytes is over the limit of {max_bytes}", status=413)
    outside_strings = _strip_strings(raw)
    check_depth(outside_strings, max_depth, strings_stripped=True)
    if (long := _NUMBER.search(outside_strings)) is not None:
        raise JsonRefused(f"JSON number of {len(long[0])} characters or more is out of range")
    if parse_float is float and _HUGE_EXPONENT.search(outside_strings):
        raise JsonRefused("JSON number out of range (exponent of 100 or more)")
    try:
        return json.loads(raw, parse_float=parse_float, parse_constant=_refuse_constant)
    except JsonRefused:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JsonRefused(f"not valid JSON: {exc}") from None
