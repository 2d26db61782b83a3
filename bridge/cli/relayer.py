"""`bridgectl relayer run lp|watcher|attester|deliverer|liquidator`: the relayer daemons, each on the shared runner.

lp: the liquidity provider (quotes, accepts and settles swaps); watcher: finishes
swaps for parties that are offline (claims and refunds handed to it with
`bridgectl swap watch`); attester: one committee key, its own replica of the margin
ledger, signing what the replica justifies; deliverer: keeps the service's replica
(the bridge database) and takes every quorum to the bridge contract; liquidator: follows the
bridge with its own replica and liquidates, from its key, every account below the threshold
(``relayers/liquidator.py``).

    bridgectl relayer run attester --key KEYFILE [--db URL] [--port N] [--rotate-to FILE] [--approve-unpause N]
    bridgectl relayer run deliverer [--evm-key-env VAR] [--port N]
    bridgectl relayer run liquidator --key KEYFILE [--db URL] [--port N]

Both follow the data dir's devnet (``devnet.json``) unless other nodes are configured.  The
deliverer pays gas from the key in the environment variable ``--evm-key-env`` (default
``BRIDGE_DELIVERER_KEY``); on a devnet without it, from devnet test account 9 (said on stderr).
``--rotate-to FILE`` is the next committee the attester's operator approved, as JSON:
``{"committee": {"epoch": 1, "threshold": 3, "signers": ["0x…", …]}, "expiry": UNIX}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bridge.cli.committee import cli_settings, evm_key
from bridge.core.errors import ConfigError, DevnetError, InputError
from bridge.core.settings import Settings, load_settings

#: The deliverer's key, by default, and the devnet test account it falls back to on a devnet.
DELIVERER_KEY_ENV = "BRIDGE_DELIVERER_KEY"
DELIVERER_DEVNET_ACCOUNT = 9
WATCHER_KEY_ENV = "WATCHER_EVM_KEY"
#: Options only the attester takes (dest -> flag).
ATTESTER_ONLY = {"key": "--key", "db": "--db", "rotate_to": "--rotate-to", "approve_unpause": "--approve-unpause"}
#: Of those, the ones the liquidator takes too.
LIQUIDATOR_TOO = {"key", "db"}


def _port(value: str) -> int:
    """An argparse ``type``: a TCP port, 0..65535 (0: any free port)."""
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {value[:20]!r}")
    return int(text)


def _pause_count(value: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 20 and 1 <= int(text) < 1 << 64):
        raise argparse.ArgumentTypeError(f"--approve-unpause takes the contract's pause count (a whole number from 1), got {value[:20]!r}")
    return int(text)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("relayer", help="run relayer daemons")
    cmds = parser.add_subparsers(dest="relayer_cmd", metavar="SUBCOMMAND", required=True)
    run = cmds.add_parser("run", help="run a daemon until SIGTERM/SIGINT")
    run.add_argument(
        "daemon",
        choices=["lp", "watcher", "attester", "deliverer", "liquidator"],
        help="lp: the liquidity provider (quotes, accepts and settles swaps); watcher: finishes swaps for offline parties; "
        "attester: signs, for one committee key, what its own replica justifies; deliverer: keeps the service replica and delivers quorums; "
        "liquidator: liquidates, from its key, every account below the bridge's liquidation threshold",
    )
    run.add_argument("--swap-config", help="lp, watcher: swap TOML (default: $BRIDGE_SWAP_CONFIG or <data dir>/swaps.toml)")
    run.add_argument("--host", default=None, help="HTTP bind address (default: lp.host from the swap config for the LP, else 127.0.0.1)")
    run.add_argument(
        "--port",
        type=_port,
        default=None,
        help="HTTP port (default: lp.port from the swap config for the LP, 8700 watcher, 8710 attester, 8720 deliverer, 8730 liquidator)",
    )
    run.add_argument("--key", metavar="KEYFILE", help="attester: the committee key file; liquidator: its EVM key file (32 bytes as hex)")
    run.add_argument(
        "--db",
        metavar="URL",
        help="attester, liquidator: its replica's database (default <data dir>/attester-<address>.sqlite, <data dir>/liquidator-<address>.sqlite)",
    )
    run.add_argument(
        "--rotate-to",
        metavar="FILE",
        help='attester: sign the ROTATION to this committee: JSON {"committee": {"epoch": E, "threshold": M, "signers": [ADDRESS, ...]}, "expiry": UNIX}',
    )
    run.add_argument("--approve-unpause", type=_pause_count, metavar="N", help="attester: sign the UNPAUSE lifting the contract's N-th pause")
    run.set_defaults(func=cmd_run)
    from bridge.cli.watch import add_run_options  # the watcher's hook (bridge/cli/watch.py)

    add_run_options(run)
    # --evm-key-env serves the watcher and the deliverer, each with its own default.
    run.set_defaults(evm_key_env=None)
    for action in run._actions:
        if action.dest == "evm_key_env":
            action.help = f"watcher, deliverer: environment variable holding the EVM key that pays gas (default {WATCHER_KEY_ENV}, {DELIVERER_KEY_ENV})"


async def cmd_run(args: argparse.Namespace) -> int:
    for dest, flag in ATTESTER_ONLY.items():
        if args.daemon == "attester" or getattr(args, dest) is None:
            continue
        if dest not in LIQUIDATOR_TOO:
            raise InputError(f"{flag} applies to `relayer run attester` only", field=dest)
        if args.daemon != "liquidator":
            raise InputError(f"{flag} applies to `relayer run attester` only (and to `relayer run liquidator`)", field=dest)
    if args.daemon == "attester":
        return await _run_attester(args)
    if args.daemon == "liquidator":
        return await _run_liquidator(args)
    if args.daemon == "deliverer":
        return await _run_deliverer(args)
    if args.daemon == "watcher":
        from bridge.cli.watch import run_watcher

        args.evm_key_env = args.evm_key_env or WATCHER_KEY_ENV
        return await run_watcher(args)
    from bridge.swaps.config import load_swap_config
    from relayers import lp

    settings = load_settings(args.config, data_dir=args.data_dir)
    return await lp.run(settings, load_swap_config(settings, args.swap_config), host=args.host, port=args.port)


async def _run_attester(args: argparse.Namespace) -> int:
    from relayers.committee import DEFAULT_ATTESTER_PORT, read_key, run_attester

    if not args.key:
        raise InputError("`relayer run attester` needs --key KEYFILE (the committee key, 32 bytes as hex)", field="key")
    read_key(args.key)  # a missing or malformed key file is refused before anything starts
    settings = cli_settings(args, args.evm_key_env)
    rotation = load_rotation(args.rotate_to) if args.rotate_to else None
    port = args.port if args.port is not None else DEFAULT_ATTESTER_PORT
    return await run_attester(settings, args.key, db_url=args.db, host=args.host, port=port, rotation=rotation, approve_unpause=args.approve_unpause)


async def _run_liquidator(args: argparse.Namespace) -> int:
    from relayers.committee import read_key
    from relayers.liquidator import DEFAULT_LIQUIDATOR_PORT, run_liquidator

    if not args.key:
        raise InputError("`relayer run liquidator` needs --key KEYFILE (the liquidator's EVM key, 32 bytes as hex)", field="key")
    read_key(args.key)  # a missing or malformed key file is refused before anything starts
    if args.evm_key_env:
        raise InputError("--evm-key-env does not apply to `relayer run liquidator`: it sends from --key KEYFILE", field="evm_key_env")
    settings = cli_settings(args)
    port = args.port if args.port is not None else DEFAULT_LIQUIDATOR_PORT
    return await run_liquidator(settings, args.key, db_url=args.db, host=args.host, port=port)


async def _run_deliverer(args: argparse.Namespace) -> int:
    from relayers.committee import DEFAULT_DELIVERER_PORT, run_deliverer

    env = args.evm_key_env or DELIVERER_KEY_ENV
    settings = cli_settings(args, env)
    key = deliverer_key(settings, env)
    port = args.port if args.port is not None else DEFAULT_DELIVERER_PORT
    return await run_deliverer(settings, key, host=args.host, port=port)


def deliverer_key(settings: Settings, env: str) -> str:
    """The deliverer's gas key: ``$env``, else on a devnet its test account 9 (said on stderr)."""
    value = os.environ.get(env)
    if value:
        return evm_key(value, f"${env}")
    from devnets.keys import evm_test_keys
    from devnets.manager import load_descriptor

    try:
        load_descriptor(settings.data_path)
    except DevnetError:
        raise ConfigError(
            f"the deliverer pays gas for every delivery: put its EVM key in ${env} (or name another variable with --evm-key-env)", field="evm_key_env"
        ) from None
    test = evm_test_keys()[DELIVERER_DEVNET_ACCOUNT]
    print(f"deliverer: ${env} is not set; paying gas from devnet test account {test.index} ({test.address}), devnet only", file=sys.stderr)
    return test.private_key


def load_rotation(path: str):
    """``--rotate-to FILE`` as a ``RotationPlan``: the next committee (its signers in any order,
    sorted here as the contract wants them) and until when its ROTATION may act."""
    from eth_utils import is_address, to_canonical_address

    from bridge.committee.attester import RotationPlan
    from bridge.committee.messages import Committee, CommitteeRefused

    where = f"--rotate-to {path}"
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror}", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not JSON: {exc}", path=path) from None
    committee = data.get("committee") if isinstance(data, dict) else None
    if not isinstance(committee, dict):
        raise ConfigError(f'{where}: expected {{"committee": {{"epoch": .., "threshold": .., "signers": [..]}}, "expiry": UNIX}}', path=path)
    fields = {}
    for name, what in (("epoch", committee.get("epoch")), ("threshold", committee.get("threshold")), ("expiry", data.get("expiry"))):
        if type(what) is not int or what < 0:
            raise ConfigError(f"{where}: {name} must be a whole number, got {what!r}"[:300], path=path)
        fields[name] = what
    signers = committee.get("signers")
    if not isinstance(signers, list) or not all(isinstance(s, str) and is_address(s) for s in signers):
        raise ConfigError(f"{where}: signers must be a list of EVM addresses", path=path)
    try:
        new = Committee(fields["epoch"], tuple(sorted(to_canonical_address(s) for s in signers)), fields["threshold"])
    except CommitteeRefused as exc:
        raise ConfigError(f"{where}: committee refused: {exc.reason}", path=path) from None
    return RotationPlan(new, fields["expiry"])
