"""`bridgectl htlc …`: lock, claim, refund and inspect HTLCs by hand (for debugging a swap).

EVM commands live here; the Bitcoin ones (audit, extract-secret, btc-*) in ``htlc_btc``.

The EVM node is ``--rpc-url``, else the running devnet's (``devnet.json``), else the
settings' ``evm.rpc_url``.  The HTLC address is ``--htlc``, else the one ``htlc
evm-deploy`` recorded in the data dir.  Keys: ``--key HEX`` or ``--account N`` (a devnet
test key, default 0).  Amounts are integers in base units (wei for ETH).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

from bridge.cli import emit
from bridge.cli.args import devnet_account, hex_bytes, positive_int
from bridge.core.errors import ConfigError, DevnetError, NotFound
from bridge.core.settings import Settings, load_settings

#: Where ``evm-deploy`` records addresses, inside the data dir.
DEPLOYMENT_FILE = "htlc-evm.json"


# --- shared option handling ---------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, data_dir=args.data_dir)


def _rpc_url(args: argparse.Namespace, settings: Settings) -> str:
    if args.rpc_url:
        return args.rpc_url
    from devnets.manager import load_descriptor

    try:
        return load_descriptor(settings.data_path)["evm"]["rpc_url"]
    except (DevnetError, KeyError):
        return settings.evm.rpc_url


def _key(args: argparse.Namespace) -> str:
    if args.key:
        return args.key
    from devnets.keys import evm_test_keys

    return devnet_account(evm_test_keys(), args.account).private_key


def _deployment_path(settings: Settings) -> Path:
    return settings.data_path / DEPLOYMENT_FILE


async def _open(args: argparse.Namespace):
    """The adapter and the HTLC contract the command works on."""
    from chains.evm import EvmAdapter
    from htlc.evm import EvmHtlc

    settings = _settings(args)
    chain = await EvmAdapter.connect(_rpc_url(args, settings))
    address = args.htlc
    if address is None:
        path = _deployment_path(settings)
        try:
            address = json.loads(path.read_text())["htlc"]
        except FileNotFoundError:
            await chain.close()
            raise ConfigError(f"no HTLC address: pass --htlc or run `bridgectl htlc evm-deploy` (looked in {path})") from None
    try:
        htlc = EvmHtlc(chain, address)
        if not await chain.code(htlc.address):
            raise NotFound(f"no contract at {htlc.address} on {chain.url} (devnet reset? run `bridgectl htlc evm-deploy`)")
    except BaseException:
        await chain.close()
        raise
    return chain, htlc


# --- EVM commands -------------------------------------------------------------------------


async def cmd_evm_deploy(args: argparse.Namespace) -> int:
    from chains.evm import EvmAdapter
    from htlc.evm import TOKEN_KINDS, Erc20, EvmHtlc

    settings = _settings(args)
    chain = await EvmAdapter.connect(_rpc_url(args, settings))
    try:
        key = _key(args)
        deployed: dict[str, Any] = {"chain_id": await chain.chain_id_int(), "htlc": (await EvmHtlc.deploy(chain, key)).address}
        if args.tokens:
            deployed["tokens"] = {kind: (await Erc20.deploy(chain, key, kind, kind, kind[:4].upper(), args.decimals)).address for kind in TOKEN_KINDS}
    finally:
        await chain.close()
    path = _deployment_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(deployed, indent=2) + "\n")
    lines = [f"HTLC  {deployed['htlc']}"] + [f"{k:18} {a}" for k, a in deployed.get("tokens", {}).items()]
    emit(args, deployed, text="\n".join(lines + [f"recorded in {path}"]))
    return 0


async def cmd_evm_lock(args: argparse.Namespace) -> int:
    from htlc.evm import ETH, Erc20

    if args.hashlock:
        secret, hashlock = None, hex_bytes(args.hashlock, "hashlock", 32)
    else:
        secret = hex_bytes(args.secret, "secret", 32) if args.secret else secrets.token_bytes(32)
        hashlock = hashlib.sha256(secret).digest()
    chain, htlc = await _open(args)
    try:
        key = _key(args)
        expiry = args.expiry if args.expiry is not None else (await chain.head()).timestamp + args.expires_in
        token = ETH if args.token.lower() == "eth" else args.token
        if token != ETH:
            await Erc20(chain, token).approve(key, htlc.address, args.amount)
        swap_id, tx_hash = await htlc.lock(key, args.to, token, args.amount, hashlock, expiry)
        swap = (await htlc.locked_swap(swap_id)).swap
    finally:
        await chain.close()
    out = {"id": "0x" + swap_id.hex(), "tx": tx_hash, **_swap_dict(swap)}
    if secret is not None:
        out["secret"] = "0x" + secret.hex()
    text = f"locked swap {out['id']} in {tx_hash}\nexpiry {expiry}, nonce {swap.nonce}"
    if "secret" in out:
        text += f"\nsecret {out['secret']}  (keep it: it is shown once and claims the swap)"
    emit(args, out, text=text)
    return 0


async def cmd_evm_claim(args: argparse.Namespace) -> int:
    chain, htlc = await _open(args)
    try:
        tx_hash = await htlc.claim(_key(args), hex_bytes(args.id, "id", 32), hex_bytes(args.secret, "secret"))
    finally:
        await chain.close()
    emit(args, {"id": args.id, "tx": tx_hash, "status": "claimed"}, text=f"claimed {args.id} in {tx_hash}")
    return 0


async def cmd_evm_refund(args: argparse.Namespace) -> int:
    chain, htlc = await _open(args)
    try:
        tx_hash = await htlc.refund(_key(args), hex_bytes(args.id, "id", 32))
    finally:
        await chain.close()
    emit(args, {"id": args.id, "tx": tx_hash, "status": "refunded"}, text=f"refunded {args.id} in {tx_hash}")
    return 0


async def cmd_evm_show(args: argparse.Namespace) -> int:
    from htlc.evm import Claimed, Locked, SwapStatus

    swap_id = hex_bytes(args.id, "id", 32)
    chain, htlc = await _open(args)
    try:
        status = await htlc.swap(swap_id)
        events = await htlc.events(swap_id=swap_id) if status != SwapStatus.NONE else []
        now = (await chain.head()).timestamp
    finally:
        await chain.close()
    out: dict[str, Any] = {"id": "0x" + swap_id.hex(), "status": status.name.lower(), "chain_time": now}
    for event in events:
        if isinstance(event, Locked):
            out |= _swap_dict(event.swap) | {"lock_tx": event.where.tx_hash}
        elif isinstance(event, Claimed):
            out |= {"secret": "0x" + event.preimage.hex(), "claim_tx": event.where.tx_hash}
        else:
            out["refund_tx"] = event.where.tx_hash
    text = "\n".join(f"{k:10} {v}" for k, v in out.items())
    if status == SwapStatus.LOCKED:
        left = out["expiry"] - now
        text += f"\n{'':10} {'claimable for ' + str(left) + 's' if left > 0 else 'expired: refundable'}"
    emit(args, out, text=text)
    return 0


def _swap_dict(swap) -> dict[str, Any]:
    from htlc.evm import ETH

    return {
        "sender": swap.sender,
        "recipient": swap.recipient,
        "token": "ETH" if swap.token == ETH else swap.token,
        "amount": swap.amount,
        "hashlock": "0x" + swap.hashlock.hex(),
        "expiry": swap.expiry,
        "nonce": swap.nonce,
    }


# --- registration -------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("htlc", help="lock, claim, refund and inspect HTLCs on the devnets by hand")
    hsub = p.add_subparsers(dest="htlc_cmd", metavar="ACTION", required=True)

    def evm(name: str, help: str, func) -> argparse.ArgumentParser:
        sp = hsub.add_parser(name, help=help)
        sp.add_argument("--rpc-url", help="EVM node (default: the devnet's, else settings evm.rpc_url)")
        sp.add_argument("--htlc", help="HTLC contract address (default: the one `htlc evm-deploy` recorded)")
        who = sp.add_mutually_exclusive_group()
        who.add_argument("--key", help="private key (0x hex) that signs")
        who.add_argument("--account", type=int, default=0, help="devnet test account index that signs (default 0)")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=func)
        return sp

    dp = evm("evm-deploy", "deploy the HTLC contract (and with --tokens the devnet test tokens)", cmd_evm_deploy)
    dp.add_argument("--tokens", action="store_true", help="also deploy TestToken, NoReturnToken, FeeOnTransferToken")
    dp.add_argument("--decimals", type=int, choices=(6, 18), default=18, help="decimals of the test tokens")

    lk = evm("evm-lock", "lock ETH or an ERC-20 for a recipient under a SHA-256 hashlock", cmd_evm_lock)
    lk.add_argument("--to", required=True, help="recipient address")
    lk.add_argument("--amount", required=True, type=positive_int("amount in base units (wei for ETH)"), help="integer base units (wei for ETH)")
    lk.add_argument("--token", default="eth", help="ERC-20 address, or `eth` (default); the amount is approved first")
    lock_to = lk.add_mutually_exclusive_group()
    lock_to.add_argument("--secret", help="32-byte secret (hex); default: a fresh random one, printed once")
    lock_to.add_argument("--hashlock", help="sha256 of a secret you keep elsewhere (hex)")
    when = lk.add_mutually_exclusive_group()
    when.add_argument("--expiry", type=int, help="unix time after which only a refund is possible")
    when.add_argument("--expires-in", type=int, default=3600, help="seconds from the chain's current time (default 3600)")

    cl = evm("evm-claim", "claim a swap with its secret; funds go to the recipient whoever signs", cmd_evm_claim)
    cl.add_argument("--id", required=True, help="swap id (hex)")
    cl.add_argument("--secret", required=True, help="the preimage (hex)")

    rf = evm("evm-refund", "refund an expired swap to its sender (anyone may send this)", cmd_evm_refund)
    rf.add_argument("--id", required=True, help="swap id (hex)")

    sh = evm("evm-show", "status, parameters and settlement of a swap", cmd_evm_show)
    sh.add_argument("--id", required=True, help="swap id (hex)")

    from bridge.cli.htlc_btc import register_btc

    register_btc(hsub)
