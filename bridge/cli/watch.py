"""The watcher from the command line.

    bridgectl relayer run watcher [--port 8700] [--evm-key-env WATCHER_EVM_KEY] [--stuck-blocks 3]
    bridgectl swap watch ID --watcher http://127.0.0.1:8700 [--feerates 2,5,12,30]

``relayer run watcher`` runs ``relayers.watcher`` on the shared runner, with its jobs in
the bridge database (settings); the EVM key it pays claim/refund gas from is read from
the named environment variable (never from the command line, which other users can see).
``swap watch`` is the party's side: it builds the watch jobs of one of its swaps
(pre-signing the Bitcoin spends with its own key) and posts them to a watcher.
These hook into the ``relayer`` and ``swap`` groups rather than forming a group.
"""

from __future__ import annotations

import argparse
import os

from bridge.cli import emit, printable
from bridge.core.errors import InputError
from bridge.core.settings import load_settings
from bridge.swaps.limits import check_swap_id

#: Highest feerate (sat/vB) accepted on the pre-signed ladder.
MAX_FEERATE = 100_000


def add_run_options(run: argparse.ArgumentParser) -> None:
    """Watcher options on ``relayer run`` (ignored by the other daemons)."""
    run.add_argument(
        "--evm-key-env", default="WATCHER_EVM_KEY", help="watcher: environment variable holding the EVM key that pays gas (default WATCHER_EVM_KEY)"
    )
    run.add_argument("--stuck-blocks", type=int, default=3, help="watcher: blocks a spend may stay unmined before a fee bump")
    run.add_argument("--poll-interval", type=float, default=0.5, help="watcher: seconds between passes over the jobs")


async def run_watcher(args: argparse.Namespace) -> int:
    from relayers import watcher

    settings = load_settings(args.config, data_dir=args.data_dir)
    return await watcher.run(
        settings,
        evm_key=os.environ.get(args.evm_key_env) or None,
        stuck_blocks=args.stuck_blocks,
        poll_interval=args.poll_interval,
        host=args.host,
        port=args.port,
    )


def register_swap_watch(cmds: argparse._SubParsersAction) -> None:
    watch = cmds.add_parser("watch", help="hand a swap's claim and refund to a watcher (for while you are offline)")
    watch.add_argument("id")
    watch.add_argument("--watcher", required=True, help="the watcher's URL")
    watch.add_argument("--feerates", default="2,5,12,30", help="sat/vB ladder pre-signed for Bitcoin spends")
    watch.add_argument("--swap-config", help="swap TOML (default: $BRIDGE_SWAP_CONFIG or <data dir>/swaps.toml)")
    watch.add_argument("--json", action="store_true", help="print JSON")
    watch.set_defaults(func=cmd_swap_watch)


async def cmd_swap_watch(args: argparse.Namespace) -> int:
    from bridge.swaps.config import load_swap_config
    from bridge.swaps.party import Party
    from chains.base import BITCOIN, EVM
    from bridge.watch.handoff import submit_jobs, swap_jobs

    check_swap_id(args.id)
    parts = args.feerates.split(",")
    if len(parts) > 32 or not all(len(p) <= 12 and p.strip().isascii() and p.strip().isdigit() and 1 <= int(p) <= MAX_FEERATE for p in parts):
        raise InputError(
            f"--feerates must be up to 32 comma-separated whole sat/vB in 1..{MAX_FEERATE}, got {printable(args.feerates[:80])!r}",
            field="feerates",
        )
    feerates = [int(x) for x in parts]
    settings = load_settings(args.config, data_dir=args.data_dir)
    party = await Party.open(settings, load_swap_config(settings, args.swap_config))
    try:
        view = party.store.get(args.id)
        btc_leg, evm_leg = party.legs[BITCOIN], party.legs[EVM]
        jobs = await swap_jobs(view, btc_leg.key, evm_leg.htlc, settings.bitcoin.network, feerates)
    finally:
        await party.close()
    answers = await submit_jobs(args.watcher, jobs)
    lines = [f"{printable(a.get('kind'))} job {printable(a.get('id'))} on {printable(a.get('chain'))}: {printable(a.get('state'))}" for a in answers]
    emit(args, answers, "\n".join(lines))
    return 0
