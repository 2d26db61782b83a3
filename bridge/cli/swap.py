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

from bridge.cli import emit
from bridge.settings import load_settings
from bridge.swaps import models as m
from bridge.swaps.assets import AssetBook
from bridge.swaps.protocol import describe


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
    start.add_argument("--lp", required=True, help="the liquidity provider's URL")
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


async def _party(args: argparse.Namespace, with_lp: bool = True):
    from bridge.swaps.config import load_swap_config
    from bridge.swaps.party import Party
    from bridge.swaps.protocol import LpClient

    settings = load_settings(args.config, data_dir=args.data_dir)
    return await Party.open(settings, load_swap_config(settings, args.swap_config), LpClient() if with_lp else None)


def _line(view) -> str:
    s = view.swap
    legs = "  ".join(f"{n}: {l.asset} {AssetBook().get(l.asset).to_whole(l.value) if l.asset in ('btc', 'eth') else l.amount}"
                     for n, l in view.legs.items())
    wait = f"  ({s.last_error})" if s.last_error else ""
    return f"{s.id}  {s.state:26} {legs}{wait}"


async def _drive(args: argparse.Namespace, party, swap_id: str) -> int:
    """Run the engine for one swap, printing every change of state (as it is recorded) and of
    what it waits for (looked at every 0.2 s)."""
    stop = asyncio.Event()
    shown: list = [None]

    def show(view) -> None:
        seen = (view.swap.state, view.swap.last_error)
        if view.swap.id == swap_id and seen != shown[0] and not args.json:
            print(time.strftime("%H:%M:%S"), _line(view), flush=True)
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
    party = await _party(args)
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
    party = await _party(args)
    try:
        if args.watch:
            return await _drive(args, party, args.id)
        view = party.store.get(args.id)
        timeline = "\n".join(
            f"  {time.strftime('%H:%M:%S', time.localtime(a.at))} {a.from_state or '-':26} -> {a.to_state:26} {a.note}"
            for a in view.actions
        )
        emit(args, describe(view), text=_line(view) + "\n" + timeline)
        return 0
    finally:
        await party.close()


async def cmd_list(args: argparse.Namespace) -> int:
    from bridge.db import make_engine
    from bridge.swaps.store import SwapStore

    settings = load_settings(args.config, data_dir=args.data_dir)
    store = SwapStore(make_engine(settings.db_url))
    views = store.list()
    emit(args, [describe(v) for v in views], text="\n".join(_line(v) for v in views) or "no swaps")
    return 0


async def cmd_refund(args: argparse.Namespace) -> int:
    party = await _party(args, with_lp=False)
    try:
        await party.engine.refund(args.id)
        return await _drive(args, party, args.id)
    finally:
        await party.close()


async def cmd_audit(args: argparse.Namespace) -> int:
    party = await _party(args, with_lp=False)
    try:
        report: dict[str, Any] = await party.engine.audit(args.id)
        text = "\n".join(f"{leg}: {'ok' if r.get('ok') else 'NOT OK'}  {r.get('detail', '')}" for leg, r in report.items())
        emit(args, report, text=text)
        return 0 if all(r.get("ok") for r in report.values()) else 1
    finally:
        await party.close()
