"""The committee's daemons as OS processes for the tests, with settings from the environment
(``BRIDGE_*``, see ``support.committee.daemon_env``):

    python tests/support/committee_proc.py attester --key KEYFILE [--db URL] [--port N]
    python tests/support/committee_proc.py deliverer [--evm-key-env VAR] [--port N]
    python tests/support/committee_proc.py byzantine --key KEYFILE --db URL [--forge ADDR:SYMBOL:AMOUNT ...]
                                                     [--forge-request ADDR:SYMBOL:AMOUNT ...]
                                                     [--legit] [--no-equivocate] [--no-garbage] [--port N]

``attester`` and ``deliverer`` are ``relayers.committee.run_attester`` / ``run_deliverer`` (what
``bridgectl relayer run attester|deliverer`` runs); ``byzantine`` is ``support.byzantine``.  Each
runs on the shared runner until SIGTERM/SIGINT; with ``--port`` it answers ``/health`` once it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for path in (str(TESTS.parent), str(TESTS)):
    if path not in sys.path:
        sys.path.insert(0, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="committee_proc")
    daemons = parser.add_subparsers(dest="daemon", required=True)
    attester = daemons.add_parser("attester")
    attester.add_argument("--key", required=True)
    attester.add_argument("--db")
    attester.add_argument("--port", type=int, help="serve /health and /metrics here")
    deliverer = daemons.add_parser("deliverer")
    deliverer.add_argument("--evm-key-env")
    deliverer.add_argument("--port", type=int, help="serve /health and /metrics here")
    byzantine = daemons.add_parser("byzantine")
    byzantine.add_argument("--key", required=True)
    byzantine.add_argument("--db", required=True)
    byzantine.add_argument("--forge", action="append", default=[], help="ADDR:SYMBOL:AMOUNT margin the chain never deposited")
    byzantine.add_argument("--forge-request", action="append", default=[], help="ADDR:SYMBOL:AMOUNT a withdrawal request the chain never took")
    byzantine.add_argument("--legit", action="store_true", help="also sign the other requests' RELEASE correctly")
    byzantine.add_argument("--no-equivocate", dest="equivocate", action="store_false")
    byzantine.add_argument("--no-garbage", dest="garbage", action="store_false")
    byzantine.add_argument("--port", type=int, help="serve /health and /metrics here")
    args = parser.parse_args(argv)

    from bridge.core.settings import load_settings
    from relayers.committee import run_attester, run_deliverer

    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format=f"%(asctime)s %(levelname)s [{args.daemon} {os.getpid()}] %(name)s: %(message)s")
    if args.daemon == "attester":
        return asyncio.run(run_attester(settings, args.key, db_url=args.db, port=args.port))
    if args.daemon == "deliverer":
        key = os.environ[args.evm_key_env] if args.evm_key_env else None
        return asyncio.run(run_deliverer(settings, key, port=args.port))
    from support.byzantine import Behaviour, parse_forgeries, run_byzantine

    behaviour = Behaviour(parse_forgeries(args.forge), parse_forgeries(args.forge_request), legit=args.legit, equivocate=args.equivocate, garbage=args.garbage)
    return asyncio.run(run_byzantine(settings, args.key, args.db, behaviour, port=args.port))


if __name__ == "__main__":
    sys.exit(main())
