"""`bridgectl devnet up | down | status | reset`."""

from __future__ import annotations

import argparse
import sys

from bridge.cli import emit
from bridge.core.settings import load_settings


def _devnet(args: argparse.Namespace):
    from devnets.manager import Devnet

    settings = load_settings(args.config, data_dir=args.data_dir)
    return Devnet.from_settings(
        settings,
        anvil_port=getattr(args, "anvil_port", None),
        bitcoin_port=getattr(args, "bitcoin_port", None),
        bitcoin_backend="bitcoind" if getattr(args, "bitcoind", None) else None,
        bitcoind_path=getattr(args, "bitcoind", None),
        anvil_binary=getattr(args, "anvil", None),
    )


def _progress(args):
    # With --json, progress goes to stderr so stdout stays one JSON document.
    return (lambda msg: print(msg, file=sys.stderr)) if args.json else print


def cmd_up(args):
    devnet = _devnet(args)
    descriptor = devnet.up(_progress(args))
    if args.json:
        emit(args, descriptor)
        return 0
    print(f"\nEVM     {descriptor['evm']['rpc_url']}  chain id {descriptor['evm']['chain_id']}")
    for acct in descriptor["evm"]["accounts"][:3]:
        print(f"        account {acct['index']}: {acct['address']}")
    print(f"Bitcoin {descriptor['bitcoin']['rpc_url']}  regtest ({descriptor['bitcoin']['backend']})")
    for key in descriptor["bitcoin"]["keys"][:3]:
        print(f"        key {key['index']}: {key['address']}")
    print(f"Full list with private keys: {devnet.descriptor_path}")
    return 0


def cmd_down(args):
    emit(args, _devnet(args).down(_progress(args)), text="devnet down")
    return 0


def cmd_status(args):
    status = _devnet(args).status()
    lines = [f"data dir  {status['data_dir']}"]
    for name in ("evm", "bitcoin"):
        s = status[name]
        height = s.get("height", "-")
        state = "answers" if s["answers"] else f"no answer ({s.get('error', 'down')})"
        lines.append(f"{name:8}  {s['rpc_url']:28} process {s['process']:11} height {height!s:6} {state}")
        if s.get("log_tail"):
            lines.append(f"          last log lines:\n{s['log_tail']}")
    emit(args, status, text="\n".join(lines))
    # Non-zero when something is down, so scripts can `bridgectl devnet status || …`.
    return 0 if status["evm"]["answers"] and status["bitcoin"]["answers"] else 3


def cmd_reset(args):
    devnet = _devnet(args)
    descriptor = devnet.reset(_progress(args), start=not args.no_start)
    emit(args, descriptor or {"reset": True}, text="devnet reset" + ("" if args.no_start else " and started fresh"))
    return 0


def cmd_price(args):
    """Move a devnet price feed (the attesters read it, report it, and the oracle takes a quorum)."""
    import asyncio

    from bridge.cli.committee import cli_settings
    from bridge.committee.oracle import load_oracle_config, set_devnet_price
    from bridge.core.errors import ConfigError
    from chains.evm import EvmAdapter
    from devnets.keys import evm_test_keys

    settings = cli_settings(args)
    config = load_oracle_config(settings.committee_config)
    if config is None:
        raise ConfigError(f"{settings.committee_config} has no oracle: `bridgectl devnet up` deploys one")

    async def move():
        async with EvmAdapter.from_settings(settings.evm) as chain:
            return await set_devnet_price(chain, evm_test_keys(1)[0].private_key, config, args.symbol, args.usd)

    name, rnd = asyncio.run(move())
    emit(
        args,
        {"asset": name, "usd": args.usd, "answer": str(rnd.answer), "round": rnd.round_id, "updated_at": rnd.updated_at},
        text=f"{name} / USD set to {args.usd} (feed round {rnd.round_id}); the attesters report it in their next slot",
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devnet", help="start, stop, inspect and reset the local Anvil + Bitcoin regtest devnets")
    dsub = p.add_subparsers(dest="devnet_cmd", metavar="ACTION", required=True)

    def common(sp, ports=False):
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        if ports:
            sp.add_argument("--anvil-port", type=int, help="Anvil RPC port (default 8545; 0 = any free port)")
            sp.add_argument("--bitcoin-port", type=int, help="regtest RPC port (default 18443; 0 = any free port)")
            sp.add_argument("--bitcoind", metavar="PATH", help="run a real `bitcoind -regtest` from PATH instead of the embedded node")
            sp.add_argument("--anvil", metavar="PATH", help="run this anvil binary instead of the pinned one in node_modules")

    up = dsub.add_parser("up", help="start both chains (idempotent), fund the test keys, write devnet.json")
    common(up, ports=True)
    up.set_defaults(func=cmd_up)
    down = dsub.add_parser("down", help="stop the processes `up` started (by pid)")
    common(down)
    down.set_defaults(func=cmd_down)
    st = dsub.add_parser("status", help="heights and liveness of both nodes (exit 3 if one is down)")
    common(st)
    st.set_defaults(func=cmd_status)
    rs = dsub.add_parser("reset", help="stop both nodes, wipe both chains, start fresh")
    common(rs, ports=True)
    rs.add_argument("--no-start", action="store_true", help="only wipe; do not start again")
    rs.set_defaults(func=cmd_reset)
    pr = dsub.add_parser("price", help="move a devnet price feed: `bridgectl devnet price BTC 95000`")
    common(pr)
    pr.add_argument("symbol", help="BTC or ETH")
    pr.add_argument("usd", help="the new price in USD, e.g. 95000 or 3412.50")
    pr.set_defaults(func=cmd_price)
