"""`bridgectl htlc` commands for Bitcoin HTLCs: audit, extract-secret, btc-lock, btc-claim, btc-refund.

Registered into the htlc group by ``bridge.cli.htlc``.  The node is the running
devnet's (``devnet.json`` in the data dir), else the one the settings name.  Keys:
``--key HEX`` or ``--wif WIF``, else devnet test key ``--account N`` (default 0).
Amounts are integer sats; feerates integer sat/vB (default: the node's estimate,
else the settings' fallback).
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
from typing import Any

from bridge.cli import emit
from bridge.cli.args import devnet_account, hex_bytes, positive_int
from bridge.core.errors import DevnetError, InputError, NotFound
from bridge.core.settings import load_settings
from chains.btc.primitives import hash160
from htlc.audit import HtlcTerms, audit
from htlc.bitcoin_script import TEMPLATE_P2SH_BIP199, TEMPLATE_P2WSH, p2sh_htlc_script, p2wsh_htlc_script
from htlc.secret import extract_secret


def _terms_text(t: HtlcTerms) -> str:
    rows: list[tuple[str, Any]] = [
        ("template", t.template),
        ("network", t.network),
        ("address", t.address),
        ("hashlock", t.hashlock.hex()),
        ("claim key", (t.claim_pubkey or b"").hex() or f"pubkey hash {t.claim_pubkey_hash.hex()}"),
        ("refund key", (t.refund_pubkey or b"").hex() or f"pubkey hash {t.refund_pubkey_hash.hex()}"),
        ("lock", f"{t.locktime} ({'block height' if t.lock_kind == 'height' else 'unix time'})"),
    ]
    if t.funding_txid is not None:
        rows += [("funding", f"{t.funding_txid}:{t.output_index}"), ("amount", f"{t.amount} sat")]
    return "\n".join(f"{k:11} {v}" for k, v in rows)


# --- offline commands ------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    funding = hex_bytes(args.tx, "tx") if args.tx else None
    terms = audit(hex_bytes(args.script, "script"), funding, network=args.network)
    emit(args, terms.to_dict(), text="HTLC recognised\n" + _terms_text(terms))
    return 0


def cmd_extract_secret(args: argparse.Namespace) -> int:
    hashlock = hex_bytes(args.hash, "hash", 32)
    secret = extract_secret(hex_bytes(args.tx, "tx"), hashlock)
    emit(args, {"secret": secret.hex(), "hashlock": hashlock.hex()}, text=secret.hex())
    return 0


# --- commands that talk to the node ---------------------------------------------------------------


def _adapter(args: argparse.Namespace):
    from chains.bitcoin import BitcoinAdapter
    from chains.bitcoin_rpc import BitcoinRpc
    from devnets.manager import load_descriptor

    settings = load_settings(args.config, data_dir=args.data_dir)
    try:
        node = load_descriptor(settings.data_path)["bitcoin"]
    except (DevnetError, KeyError):
        return BitcoinAdapter.from_settings(settings)
    rpc = BitcoinRpc(node["rpc_url"], user=node["rpc_user"], password=node["rpc_password"])
    return BitcoinAdapter(rpc, network=node.get("network", "regtest"), fallback_feerate=settings.bitcoin.fallback_feerate)


def _key(args: argparse.Namespace):
    from chains.bitcoin_wallet import BtcKey

    if args.key:
        return BtcKey.from_hex(args.key)
    if args.wif:
        return BtcKey.from_wif(args.wif)
    from devnets.keys import btc_test_keys

    return BtcKey.from_hex(devnet_account(btc_test_keys(), args.account).private_key)


async def cmd_btc_lock(args: argparse.Namespace) -> int:
    from htlc.bitcoin_tx import fund_htlc

    if args.hashlock:
        secret, hashlock = None, hex_bytes(args.hashlock, "hashlock", 32)
    else:
        secret = hex_bytes(args.secret, "secret", 32) if args.secret else secrets.token_bytes(32)
        hashlock = hashlib.sha256(secret).digest()
    key = _key(args)
    claim_pubkey = hex_bytes(args.claim_pubkey, "claim pubkey", 33)
    refund_pubkey = hex_bytes(args.refund_pubkey, "refund pubkey", 33) if args.refund_pubkey else key.pubkey
    adapter = _adapter(args)
    try:
        lock = args.refund_height if args.refund_height is not None else await adapter.height() + args.refund_in
        if args.template == TEMPLATE_P2WSH:
            script = p2wsh_htlc_script(hashlock, claim_pubkey, refund_pubkey, lock)
        else:
            script = p2sh_htlc_script(hashlock, hash160(claim_pubkey), hash160(refund_pubkey), lock)
        coin, signed = await fund_htlc(adapter, [key], script, args.amount, args.feerate, template=args.template)
    finally:
        await adapter.close()
    terms = audit(script, bytes.fromhex(signed.raw_hex), network=adapter.network)
    out = {**terms.to_dict(), "txid": coin.txid, "vout": coin.vout, "fee": signed.fee_sats}
    text = f"locked {coin.amount} sat in {coin.txid}:{coin.vout}\nscript {script.hex()}\n" + _terms_text(terms)
    if secret is not None:
        out["secret"] = secret.hex()
        text += f"\nsecret      {secret.hex()}  (keep it: it is shown once and claims the HTLC)"
    emit(args, out, text=text)
    return 0


async def _spend(args: argparse.Namespace, build) -> int:
    from htlc.bitcoin_tx import find_htlc_coins

    script = hex_bytes(args.script, "script")
    key = _key(args)
    adapter = _adapter(args)
    try:
        terms = audit(script, network=adapter.network)
        coins = await find_htlc_coins(adapter, script, terms.template)
        if args.txid:
            coins = [c for c in coins if c.txid == args.txid and (args.vout is None or c.vout == args.vout)]
        if not coins:
            raise NotFound(f"no unspent output pays the HTLC {terms.address}" + (f" in {args.txid}" if args.txid else ""))
        if len(coins) > 1:
            listed = ", ".join(f"{c.txid}:{c.vout}" for c in coins)
            raise InputError(f"several outputs pay the HTLC ({listed}); pick one with --txid/--vout")
        feerate = args.feerate or await adapter.estimate_feerate()
        destination = args.to or key.p2wpkh_address(adapter.network)
        signed = build(coins[0], key, destination, feerate, adapter.network)
        await adapter.send(signed.raw)
    finally:
        await adapter.close()
    emit(
        args,
        {"txid": signed.txid, "fee": signed.fee, "vsize": signed.vsize, "to": destination, "amount": coins[0].amount - signed.fee},
        text=f"sent {coins[0].amount - signed.fee} sat to {destination} in {signed.txid} (fee {signed.fee} sat, {signed.vsize} vB)",
    )
    return 0


async def cmd_btc_claim(args: argparse.Namespace) -> int:
    from htlc.bitcoin_tx import build_claim

    secret = hex_bytes(args.secret, "secret")
    return await _spend(args, lambda coin, key, dest, feerate, net: build_claim(coin, secret, key, dest, feerate, network=net))


async def cmd_btc_refund(args: argparse.Namespace) -> int:
    from htlc.bitcoin_tx import build_refund

    return await _spend(args, lambda coin, key, dest, feerate, net: build_refund(coin, key, dest, feerate, network=net))


# --- registration -------------------------------------------------------------------------------


def register_btc(hsub: argparse._SubParsersAction) -> None:
    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        sp = hsub.add_parser(name, help=help)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=func)
        return sp

    def node_command(name: str, help: str, func) -> argparse.ArgumentParser:
        sp = command(name, help, func)
        who = sp.add_mutually_exclusive_group()
        who.add_argument("--key", help="private key (hex) that signs and, by default, receives")
        who.add_argument("--wif", help="private key in WIF")
        who.add_argument("--account", type=int, default=0, help="devnet test key index (default 0)")
        sp.add_argument("--feerate", type=positive_int("feerate"), help="sat/vB (default: the node's estimate or the fallback)")
        return sp

    au = command("audit", "check a Bitcoin HTLC script (and its funding tx) against the templates we accept", cmd_audit)
    au.add_argument("--script", required=True, help="witness script (P2WSH) or redeem script (P2SH), hex")
    au.add_argument("--tx", help="funding transaction (hex): report the output paying the HTLC and its amount")
    au.add_argument("--network", default="regtest", choices=("regtest", "testnet", "signet", "mainnet"))

    ex = command("extract-secret", "pull the 32-byte secret out of a transaction that claimed an HTLC", cmd_extract_secret)
    ex.add_argument("--tx", required=True, help="the claiming transaction (hex)")
    ex.add_argument("--hash", required=True, help="the HTLC's SHA-256 hashlock (hex)")

    lk = node_command("btc-lock", "fund a Bitcoin HTLC from the key's coins", cmd_btc_lock)
    lk.add_argument("--amount", required=True, type=positive_int("amount"), help="sats to lock")
    lk.add_argument("--claim-pubkey", required=True, help="compressed pubkey (hex) that can claim with the secret")
    lk.add_argument("--refund-pubkey", help="compressed pubkey (hex) that can refund (default: the signing key's)")
    lk.add_argument("--secret", help="32-byte secret (hex); default: a fresh random one, printed once")
    lk.add_argument("--hashlock", help="sha256 of a secret you keep elsewhere (hex)")
    when = lk.add_mutually_exclusive_group()
    when.add_argument("--refund-height", type=positive_int("refund height"), help="absolute block height (or unix time for p2sh-bip199)")
    when.add_argument("--refund-in", type=positive_int("refund-in"), default=144, help="blocks from the tip (default 144)")
    lk.add_argument("--template", default=TEMPLATE_P2WSH, choices=(TEMPLATE_P2WSH, TEMPLATE_P2SH_BIP199))

    for name, help, func in (
        ("btc-claim", "claim a Bitcoin HTLC with its secret", cmd_btc_claim),
        ("btc-refund", "refund a Bitcoin HTLC after its lock height/time", cmd_btc_refund),
    ):
        sp = node_command(name, help, func)
        sp.add_argument("--script", required=True, help="the HTLC script (hex), as printed by btc-lock")
        sp.add_argument("--to", help="address to pay (default: the signing key's P2WPKH)")
        sp.add_argument("--txid", help="the funding txid, when several outputs pay the HTLC")
        sp.add_argument("--vout", type=int, help="the funding output index")
        if name == "btc-claim":
            sp.add_argument("--secret", required=True, help="the preimage (hex)")
