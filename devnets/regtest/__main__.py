"""``python -m devnets.regtest``: the embedded regtest node as a process, started like bitcoind."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from devnets.regtest.node import DatadirInUse, RegtestNode

log = logging.getLogger("devnets.regtest")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devnets.regtest",
        description="Embedded Bitcoin regtest node: blocks and scripts validated by Bitcoin Core's "
        "libbitcoinkernel, JSON-RPC compatible with bitcoind -regtest.",
    )
    parser.add_argument("--datadir", required=True, help="data directory; the chain, indexes, mempool and .cookie live in DATADIR/regtest")
    parser.add_argument("--rpcport", type=int, default=18443, help="JSON-RPC port (default 18443 like bitcoind -regtest; 0 picks a free port)")
    parser.add_argument("--rpcbind", default="127.0.0.1", help="address the JSON-RPC server listens on (default 127.0.0.1)")
    parser.add_argument("--rpcuser", help="JSON-RPC user name (with --rpcpassword; without both a .cookie file is written)")
    parser.add_argument("--rpcpassword", help="JSON-RPC password (with --rpcuser)")
    parser.add_argument("--rest", "-rest", action="store_true", help="serve bitcoind's REST interface under /rest/ (like bitcoind -rest; off: 404)")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    args = parser.parse_args(argv)
    if (args.rpcuser is None) != (args.rpcpassword is None):
        parser.error("--rpcuser and --rpcpassword go together")
    return args


async def run(args: argparse.Namespace) -> None:
    node = RegtestNode(args.datadir, args.rpcport, args.rpcbind, args.rpcuser, args.rpcpassword, rest=args.rest)
    await node.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop)
    # bitcoind prints this once RPC is ready; launchers wait for the RPC port or this line.
    print(f"init message: Done loading (rpc {node.rpc_url}, height {node.chain.height})", flush=True)
    await node.stopped.wait()
    log.info("Shutdown: in progress...")
    await node.stop()
    print("Shutdown: done", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    try:
        asyncio.run(run(args))
    except DatadirInUse as exc:
        # bitcoind's InitError: the message on stderr, exit status 1.
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
