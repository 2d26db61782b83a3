"""`bridgectl swap start | status | list | refund | audit`: the trader's side of an atomic swap.

    bridgectl swap start --sell btc:0.5 --buy eth:7.5 --lp http://127.0.0.1:8600
    bridgectl swap status ID [--watch]

Keys, the HTLC contract and tokens come from the swap config (``bridge.swaps.config``).
``start`` runs the swap to its end in the foreground, printing each step and what it
waits for (confirmations, blocks or seconds to expiry); interrupted, it resumes with
``swap status ID --watch`` (which also drives the swap) from the state in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bridge.cli import emit, printable
from bridge.core.errors import BridgeError, InputError
from bridge.core.settings import load_settings
from bridge.swaps import models as m
from bridge.swaps.assets import AssetBook
from bridge.swaps.limits import check_lp_url, check_swap_id
from bridge.swaps.protocol import describe

#: An unfinished swap whose next step is overdue by more than this (or by two poll intervals,
#: whichever is longer) has no process driving it: a running engine takes a due swap within
#: one poll interval.
STALL_AFTER = 30.0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("swap", help="atomic swaps with a liquidity provider (trader side)")
    cmds = parser.add_subparsers(dest="swap_cmd", metavar="SUBCOMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--swap-config", help="swap TOML (default: $BRIDGE_SWAP_CONFIG or <data dir>/swaps.toml)")
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    start = common(cmds.add_parser("start", help="start a swap and run it to the end"))
    start.add_argument("--sell", required=True, help="what you lock, ASSET:AMOUNT in whole units, e.g. btc:0.5")
    start.add_argument("--buy", required=True, help="what you receive, e.g. eth:7.5")
    start.add_argument("--lp", required=True, help="the liquidity provider's URL, http(s)://HOST[:PORT]")
    start.add_argument("--no-wait", action="store_true", help="record the swap and return (run it with status --watch)")
    start.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")
    start.set_defaults(func=cmd_start)

    status = common(cmds.add_parser("status", help="show a swap; --watch drives it until it ends"))
    status.add_argument("id")
    status.add_argument("--watch", action="store_true")
    status.add_argument("--timeout", type=float, default=None)
    status.set_defaults(func=cmd_status)

    lst = common(cmds.add_parser("list", help="list swaps"))
    lst.set_defaults(func=cmd_list)

    refund = common(cmds.add_parser("refund", help="refund your lock now if it has expired"))
    refund.add_argument("id")
    refund.add_argument("--timeout", type=float, default=None)
    refund.set_defaults(func=cmd_refund)

    audit = common(cmds.add_parser("audit", help="check both legs on chain against the recorded terms"))
    audit.add_argument("id")
    audit.set_defaults(func=cmd_audit)

    from bridge.cli.watch import register_swap_watch  # `swap watch`: the watcher's hook (bridge/cli/watch.py)

    register_swap_watch(cmds)


def _config(args: argparse.Namespace):
    from bridge.swaps.config import load_swap_config

    settings = load_settings(args.config, data_dir=args.data_dir)
    return settings, load_swap_config(settings, args.swap_config)


async def _party(args: argparse.Namespace, with_lp: bool = True, loaded=None):
    from bridge.swaps.party import Party
    from bridge.swaps.protocol import LpClient

    settings, config = loaded or _config(args)
    return await Party.open(settings, config, LpClient() if with_lp else None)


def _amount(leg, book: AssetBook | None = None) -> str:
    """A leg's amount in whole units of its asset (a token by the decimals the swap config gives it);
    a token the config does not know is shown in base units, and says so."""
    try:
        return (book or AssetBook()).get(leg.asset).to_whole(leg.value)
    except (ValueError, TypeError, BridgeError):  # a row another version (or party) wrote, or an unknown token
        return f"{leg.amount} (base units)"


def _line(view, book: AssetBook | None = None) -> str:
    """One swap on one line; everything read from the database is printed with control characters escaped."""
    s = view.swap
    legs = "  ".join(f"{printable(n)}: {printable(l.asset)} {printable(_amount(l, book))}" for n, l in view.legs.items())
    wait = f"  ({printable(s.last_error)})" if s.last_error else ""
    return f"{printable(s.id)}  {printable(s.state):26} {legs}{wait}"


def stalled_for(swap, poll_interval: float, now: float | None = None) -> float | None:
    """Seconds the next step of an unfinished swap is overdue, when that is long enough to mean
    that no process is driving it; else None."""
    if swap.state in m.TERMINAL:
        return None
    now = time.time() if now is None else now
    # 0.0 means "due now" (woken by an event): due since the swap last changed.
    due_at = swap.next_attempt_at or swap.updated_at or swap.created_at
    overdue = now - float(due_at)
    return round(overdue, 1) if overdue > max(STALL_AFTER, 2 * poll_interval) else None


async def _drive(args: argparse.Namespace, party, swap_id: str) -> int:
    """Run the engine for one swap, printing every change of state (as it is recorded) and of
    what it waits for (looked at every 0.2 s)."""
    stop = asyncio.Event()
    shown: list = [None]

    def show(view) -> None:
        seen = (view.swap.state, view.swap.last_error)
        if view.swap.id == swap_id and seen != shown[0] and not args.json:
            print(time.strftime("%H:%M:%S"), _line(view, party.assets), flush=True)
            shown[0] = seen

    party.engine.on_transition = show
    runner = asyncio.create_task(party.engine.run(stop, only={swap_id}))
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        while True:
            show(party.store.get(swap_id, with_actions=False))
            if runner.done():
                runner.result()
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            await asyncio.wait({runner}, timeout=0.2)
    finally:
        stop.set()
        await asyncio.gather(runner, return_exceptions=True)
    view = party.store.get(swap_id)
    if args.json:
        emit(args, describe(view))
    return 0 if view.swap.state in (m.CLAIMED, m.REFUNDED) else 1 if view.swap.state == m.FAILED else 3


async def cmd_start(args: argparse.Namespace) -> int:
    loaded = _config(args)
    # Refuse bad input before any chain is asked or anything is recorded (``start_swap`` checks again).
    check_lp_url(args.lp)
    assets = loaded[1].assets()
    sell, _ = assets.parse(args.sell, "sell")
    buy, _ = assets.parse(args.buy, "buy")
    if sell.chain == buy.chain:
        raise InputError("an atomic swap crosses chains: sell and buy are on the same chain", field="buy")
    party = await _party(args, loaded=loaded)
    try:
        view = await party.start_swap(args.lp, args.sell, args.buy)
        if not args.json:
            print(f"swap {view.swap.id}: secret stored, hash {view.swap.hashlock}")
        if args.no_wait:
            if args.json:
                emit(args, describe(view))
            return 0
        return await _drive(args, party, view.swap.id)
    finally:
        await party.close()


async def cmd_status(args: argparse.Namespace) -> int:
    check_swap_id(args.id)
    settings, config = loaded = _config(args)
    if args.watch:
        party = await _party(args, loaded=loaded)
        try:
            return await _drive(args, party, args.id)
        finally:
            await party.close()
    # Only reading: the database is enough (no chain needs to be up to see a swap).
    store = _store(settings)
    try:
        view = store.get(args.id)
    finally:
        store.engine.dispose()
    timeline = "\n".join(
        f"  {time.strftime('%H:%M:%S', time.localtime(a.at))} {printable(a.from_state or '-'):26} -> {printable(a.to_state):26} {printable(a.note)}"
        for a in view.actions
    )
    data = describe(view)
    stalled = stalled_for(view.swap, config.poll_interval)
    data["stalled_for"] = stalled
    text = _line(view, config.assets()) + "\n" + timeline
    if stalled is not None:
        text += (
            f"\nnothing is driving this swap (next step was due {stalled:.0f}s ago): run `bridgectl swap status {printable(view.swap.id)} --watch` to resume"
        )
    emit(args, data, text=text)
    return 0


def _store(settings):
    from bridge.core.db import make_engine
    from bridge.swaps.store import SwapStore

    return SwapStore(make_engine(settings.db_url))


async def cmd_list(args: argparse.Namespace) -> int:
    settings, config = _config(args)
    store = _store(settings)
    try:
        views = store.list()
    finally:
        store.engine.dispose()
    book = config.assets()
    emit(args, [describe(v) for v in views], text="\n".join(_line(v, book) for v in views) or "no swaps")
    return 0


async def cmd_refund(args: argparse.Namespace) -> int:
    check_swap_id(args.id)
    party = await _party(args, with_lp=False)
    try:
        await party.engine.refund(args.id)
        return await _drive(args, party, args.id)
    finally:
        await party.close()


async def cmd_audit(args: argparse.Namespace) -> int:
    check_swap_id(args.id)
    party = await _party(args, with_lp=False)
    try:
        report: dict[str, Any] = await party.engine.audit(args.id)
        text = "\n".join(f"{printable(leg)}: {'ok' if r.get('ok') else 'NOT OK'}  {printable(r.get('detail', ''))}" for leg, r in report.items())
        emit(args, report, text=text)
        return 0 if all(r.get("ok") for r in report.values()) else 1
    finally:
        await party.close()
