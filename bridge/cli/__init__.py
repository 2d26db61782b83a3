"""``bridgectl``: one command line for operators, traders and test authors.

Each command group lives in its own module here and exposes ``register(sub)``,
which adds its sub-parser and sets ``func`` (sync or async, taking ``args``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import re
import sys
from typing import Any, Sequence

from bridge.core.errors import BridgeError

#: Command groups, in the order ``--help`` lists them.  A module that is not
#: there yet is skipped, so groups can land one at a time.
GROUPS = ("devnet", "htlc", "ledger", "swap", "relayer", "committee", "margin")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridgectl",
        description="Cross-chain collateral bridge: devnets, HTLCs, ledger, swaps and relayers.",
    )
    parser.add_argument("--config", help="TOML settings file (default: $BRIDGE_CONFIG or ./bridge.toml)")
    parser.add_argument("--data-dir", help="devnet/bridge data directory (default: .devnet)")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: INFO)")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    for name in GROUPS:
        try:
            module = importlib.import_module(f"bridge.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bridge.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(value: object, keep_newlines: bool = False) -> str:
    """``value`` as text safe to print on a terminal: control characters (escape sequences,
    carriage returns, bidi overrides) are shown escaped, e.g. ``\\x1b``.  For text read from
    the database or from another party (swap ids, notes, errors), never printed raw."""
    text = "" if value is None else str(value)

    def escape(match: re.Match) -> str:
        ch = match.group()
        if keep_newlines and ch == "\n":
            return ch
        return ch.encode("unicode_escape").decode("ascii")

    return _UNSAFE.sub(escape, text)


def emit(args: argparse.Namespace, data: Any, text: str | None = None) -> None:
    """Print ``data`` as JSON with ``--json``, else ``text`` (or a readable rendering of data)."""
    if getattr(args, "json", False) or text is None:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=(args.log_level or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        result = func(args)
        if inspect.isawaitable(result):
            result = asyncio.run(result)
        return int(result or 0)
    except BridgeError as exc:
        if getattr(args, "json", False):
            print(json.dumps(exc.to_dict(), indent=2, default=str))
        print(f"error: {printable(exc.message, keep_newlines=True)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
