"""`bridgectl relayer run lp|watcher`: the relayer daemons, each on the shared runner.

lp: the liquidity provider (quotes, accepts and settles swaps); watcher: finishes
swaps for parties that are offline (claims and refunds handed to it with
`bridgectl swap watch`).
"""

from __future__ import annotations

import argparse

from bridge.core.settings import load_settings


def _port(value: str) -> int:
    """An argparse ``type``: a TCP port, 0..65535 (0: any free port)."""
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {value[:20]!r}")
    return int(text)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("relayer", help="run relayer daemons")
    cmds = parser.add_subparsers(dest="relayer_cmd", metavar="SUBCOMMAND", required=True)
    run = cmds.add_parser("run", help="run a daemon until SIGTERM/SIGINT")
    run.add_argument(
        "daemon", choices=["lp", "watcher"], help="lp: the liquidity provider (quotes, accepts and settles swaps); watcher: finishes swaps for offline parties"
    )
    run.add_argument("--swap-config", help="swap TOML (default: $BRIDGE_SWAP_CONFIG or <data dir>/swaps.toml)")
    run.add_argument("--host", default=None, help="HTTP bind address (default: lp.host from the swap config for the LP, 127.0.0.1 for the watcher)")
    run.add_argument("--port", type=_port, default=None, help="HTTP port (default: lp.port from the swap config for the LP, 8700 for the watcher)")
    run.set_defaults(func=cmd_run)
    from bridge.cli.watch import add_run_options  # the watcher's hook (bridge/cli/watch.py)

    add_run_options(run)


async def cmd_run(args: argparse.Namespace) -> int:
    from bridge.swaps.config import load_swap_config
    from relayers import lp

    if args.daemon == "watcher":
        from bridge.cli.watch import run_watcher

        return await run_watcher(args)
    settings = load_settings(args.config, data_dir=args.data_dir)
    return await lp.run(settings, load_swap_config(settings, args.swap_config), host=args.host, port=args.port)
