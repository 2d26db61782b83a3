"""`bridgectl liquidate ACCOUNT --key KEYFILE` and the bridge's view of `bridgectl ledger health`:
margin health on the bridge contract beside the service replica's, and liquidation by hand.

    bridgectl ledger health [ACCOUNT] [--db URL] [--json]     # with a bridge committee.json
    bridgectl liquidate 0xACCOUNT --key KEYFILE [--json]

``ledger health`` shows, for one account or every account the service replica holds a position
of, the health the contract computes now (``CollateralBridge.health``) and the one the service
replica computes from its own book and folded prices at the time of the same block
(``Replica.health``), side by side, with each position on chain and in the replica.  Amounts a
person reads are whole units of the asset (``BTC 0.5``, ``TUSD -30000``) and USD (``$ 38,000.00``,
after haircuts); ``--json`` gives base units (and USD with the oracle's 8 decimals).  An account
below the liquidation threshold is marked LIQUIDATABLE; a price that does not count (stale,
halted by its breaker, never posted) is named, on each side.

``liquidate`` reads the account's health on chain first (a refusal says why: ``not
liquidatable: health 12,345 bps >= 11,000``), sends ``liquidate`` from the key in KEYFILE (32
bytes as hex, as an attester's ``--key``), and prints the transaction, the positions taken over
and the key's own health after.  The key's account must stay at least ``initialBps`` healthy
with the positions: deposit collateral into it first.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any

from bridge.cli import emit, printable
from bridge.cli.committee import _config, _connect, cli_settings
from bridge.core.errors import Conflict, ContractReverted, InputError, PriceRejected

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
USD_DECIMALS = 8

#: What the contract's refusals of ``liquidate`` mean for the one who sent it.
_REFUSALS = {
    "NotLiquidatable": "the account is not below the threshold (any more): liquidated by someone else, or it recovered",
    "SelfLiquidation": "an account cannot liquidate itself",
    "IsPaused": "the bridge is paused: nobody liquidates until a quorum lifts the pause",
    "NoOracle": "the bridge has no price oracle: nobody is liquidated",
}


# --- formatting -----------------------------------------------------------------------------


def whole(base: int, decimals: int) -> str:
    """Base units as whole units, exactly (``-30000``, ``0.5``)."""
    sign = "-" if base < 0 else ""
    units, rest = divmod(abs(int(base)), 10**decimals)
    return f"{sign}{units}" if not rest else f"{sign}{units}.{str(rest).zfill(decimals).rstrip('0')}"


def usd(value: int, up: bool = False) -> str:
    """USD with 8 decimals as ``$ 38,000.00`` (cents rounded for the bridge: collateral down, liabilities up)."""
    cents = (Decimal(value) / 10**USD_DECIMALS).quantize(Decimal("0.01"), rounding=ROUND_UP if up else ROUND_DOWN)
    return f"$ {cents:,.2f}"


def bps_text(bps: int | None) -> str:
    return "-" if bps is None else f"{bps:,} bps"


def account_arg(value: str) -> str:
    """An account address, checksummed; ``InputError`` otherwise."""
    from eth_utils import to_checksum_address

    text = value.strip()
    if not _ADDRESS.fullmatch(text):
        raise InputError(f"an account is an EVM address (0x and 40 hex digits), got {text[:50]!r}", field="account")
    return to_checksum_address(text)


def _margin_assets(config) -> list[tuple[str, bytes, int]]:
    """``(symbol, address, decimals)`` of every asset health sums over: the listed ones, then BTC."""
    from bridge.committee.messages import BTC_ASSET

    listed = [(sym, bytes.fromhex(addr[2:]), dec) for sym, (addr, dec) in config.assets.items()]
    return [*listed, ("BTC", BTC_ASSET, 8)]


def _chain_refusal(health, config, max_age: int) -> dict[str, Any] | None:
    from bridge.committee.liquidation import refusal_text

    if health.refusal is None:
        return None
    symbol = config.symbol_of(health.asset) if health.asset else None
    return {"reason": health.refusal, "asset": symbol, "message": refusal_text(health.refusal, symbol, max_age)}


# --- ledger health (the bridge's view) ------------------------------------------------------


def wants_bridge_view(args: argparse.Namespace) -> bool:
    """Whether ``ledger health`` shows the bridge (``--bridge``, or a committee.json found as
    ``message``/``withdraw`` find it and none of the standalone options given) or the standalone
    margin view of recorded price reports (``--standalone``, or any of its options)."""
    from bridge.core.errors import ConfigError

    standalone = [f"--{o.replace('_', '-')}" for o in ("quorum", "max_age", "max_spread_bps", "threshold_bps") if getattr(args, o) is not None]
    standalone += ["--scan"] if args.scan else []
    if args.bridge and standalone:
        raise InputError(f"{', '.join(standalone)}: options of the standalone view, not of --bridge", field="bridge")
    if args.standalone or standalone:
        return False
    if args.bridge:
        return True
    try:
        return cli_settings(args).committee_config.exists()
    except ConfigError:  # settings the standalone view may not even need (it has --db): it says so if it does
        return False


async def cmd_bridge_health(args: argparse.Namespace) -> int:
    from eth_utils import to_checksum_address

    from bridge.committee.liquidation import chain_health
    from bridge.committee.status import CommitteeStatus

    account = account_arg(args.owner) if args.owner else None
    settings = cli_settings(args)
    config = _config(settings)
    status = CommitteeStatus.open(config, args.db or settings.db_url)
    bridge = await _connect(settings, config)
    try:
        terms = await bridge.margin_terms()
        threshold, initial, max_age = terms["liquidationBps"], terms["initialBps"], terms["maxPriceAge"]
        head = await bridge.chain.head()
        replica = status.replica
        height = status.replica_height() if replica is not None else None
        if account is not None:
            accounts = [account.lower()]
        elif replica is not None:
            accounts = sorted({owner for owner, _asset in await asyncio.to_thread(replica.positions) if _ADDRESS.fullmatch(owner)})
        else:
            accounts = []
        rows = []
        for owner in accounts:
            chain = await chain_health(bridge, owner)
            positions = []
            mine = await asyncio.to_thread(replica.positions, owner) if replica is not None else {}
            for symbol, address, decimals in _margin_assets(config):
                on_chain = await bridge.balance_of(owner, address)
                held = mine.get((owner, address), 0)
                if on_chain or held:
                    positions.append({"asset": symbol, "asset_address": to_checksum_address(address), "decimals": decimals, "chain": on_chain, "replica": held})
            rows.append(_row(owner, chain, _replica_figure(replica, owner, head.timestamp, max_age), positions, config, threshold, max_age))
    finally:
        await bridge.chain.close()
        status.close()
    data = {
        "bridge": config.bridge,
        "block": head.height,
        "block_time": head.timestamp,
        "liquidation_bps": threshold,
        "initial_bps": initial,
        "max_price_age": max_age,
        "replica_height": height,
        "accounts": [_json_row(r) for r in rows],
    }
    emit(args, data, _render(data, rows, replica is not None, account))
    return 0


#: The replica's reasons for a price that does not count, as the contract names them.
_REPLICA_REASONS = {"stale": "PriceStale", "halted": "PriceHalted", "missing": "NoPrice"}


def _replica_figure(replica, owner: str, now: int, max_age: int) -> dict[str, Any] | None:
    from bridge.committee.liquidation import refusal_text

    if replica is None:
        return None
    try:
        fig = replica.health(owner, now)
    except PriceRejected as exc:
        asset, reason = exc.details.get("asset"), _REPLICA_REASONS.get(str(exc.details.get("reason")), str(exc.details.get("reason")))
        return {"refused": {"reason": reason, "asset": asset, "message": refusal_text(reason, asset, max_age)}}
    return {"collateral": fig.collateral, "liabilities": fig.liabilities, "bps": fig.bps, "below": None}


def _row(owner: str, chain, replica: dict[str, Any] | None, positions: list[dict[str, Any]], config, threshold: int, max_age: int) -> dict[str, Any]:
    from eth_utils import to_checksum_address

    refused = _chain_refusal(chain, config, max_age)
    on_chain = None if refused else {"collateral": chain.collateral, "liabilities": chain.liabilities, "bps": chain.bps}
    if replica is not None and "refused" not in replica:
        replica["below"] = replica["liabilities"] != 0 and replica["collateral"] * 10_000 < threshold * replica["liabilities"]
    return {
        "account": to_checksum_address(owner),
        "chain": on_chain,
        "chain_refused": refused,
        "replica": replica,
        "liquidatable": chain.below(threshold),
        "threshold": threshold,
        "positions": positions,
    }


def _json_row(r: dict[str, Any]) -> dict[str, Any]:
    """Base units as decimal strings (and USD with 8 decimals)."""

    def figure(f: dict[str, Any] | None) -> dict[str, Any] | None:
        if f is None or "refused" in f:
            return f
        return {"collateral": str(f["collateral"]), "liabilities": str(f["liabilities"]), "health_bps": f["bps"]}

    return {
        "account": r["account"],
        "liquidatable": r["liquidatable"],
        "chain": figure(r["chain"]) or {"refused": r["chain_refused"]},
        "replica": figure(r["replica"]),
        "positions": [{**p, "chain": str(p["chain"]), "replica": str(p["replica"])} for p in r["positions"]],
    }


def _render(data: dict[str, Any], rows: list[dict[str, Any]], have_replica: bool, account: str | None) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(data["block_time"]))
    lines = [
        f"bridge {data['bridge']} at block {data['block']} ({when}): liquidation below {data['liquidation_bps']:,} bps, "
        f"borrowing up to {data['initial_bps']:,} bps; prices count for {data['max_price_age']} s"
    ]
    if have_replica:
        lag = "" if data["replica_height"] == data["block"] else f" (the chain is at {data['block']}: the replica may lag)"
        lines.append(f"service replica: folded to block {data['replica_height']}{lag}; its figures at block {data['block']}'s time")
    else:
        lines.append("service replica: not started (`bridgectl relayer run deliverer` keeps it): the chain's figures only")
    if not rows and have_replica:
        lines.append("no account holds or owes anything")
    for r in rows:
        lines += ["", *_account_lines(r)]
    return "\n".join(lines)


def _status(r: dict[str, Any]) -> str:
    chain, threshold = r["chain"], r["threshold"]
    if r["chain_refused"] is not None:
        return f"cannot be judged now: {r['chain_refused']['message']}"
    if chain["bps"] is None:
        return "owes nothing"
    if r["liquidatable"]:
        return f"LIQUIDATABLE: health {chain['bps']:,} bps < {threshold:,}"
    return f"healthy: {chain['bps']:,} bps >= {threshold:,}"


def _account_lines(r: dict[str, Any]) -> list[str]:
    chain, replica = r["chain"], r["replica"]
    lines = [f"{r['account']}  {_status(r)}", f"  {'':14}{'chain':22}{'service replica' if replica is not None else ''}"]

    def cell(f: dict[str, Any] | None, what: str) -> str:
        if f is None:
            return "-"
        if "refused" in f:
            return "price refused"
        if what == "bps":
            return "owes nothing" if f["bps"] is None else bps_text(f["bps"])
        return usd(f[what], up=what == "liabilities")

    for label, what in (("health", "bps"), ("collateral", "collateral"), ("liabilities", "liabilities")):
        right = cell(replica, what) if replica is not None else ""
        lines.append(f"  {label:14}{cell(chain if chain is not None else {'refused': True}, what):22}{right}".rstrip())
    for p in r["positions"]:
        right = whole(p["replica"], p["decimals"]) if replica is not None else ""
        differs = "   (differs: the replica lags, or a fold anomaly)" if replica is not None and p["chain"] != p["replica"] else ""
        lines.append(f"  {p['asset']:14}{whole(p['chain'], p['decimals']):22}{right}{differs}".rstrip())
    if r["chain_refused"] is not None:
        lines.append(f"  ! chain: {printable(r['chain_refused']['message'])}")
    if replica is not None and "refused" in replica:
        lines.append(f"  ! service replica: {printable(replica['refused']['message'])}")
    if r["liquidatable"] and replica is not None and replica.get("below") is False:
        lines.append("  ! the service replica does not find it below the threshold (it lags, or its prices differ)")
    return lines


# --- liquidate ------------------------------------------------------------------------------


async def cmd_liquidate(args: argparse.Namespace) -> int:
    from eth_account import Account

    from bridge.committee.liquidation import chain_health
    from relayers.committee import read_key

    account = account_arg(args.account)
    key = "0x" + read_key(args.key).hex()
    me = Account.from_key(key).address
    if me.lower() == account.lower():
        raise InputError(f"{me} is the key's own account: an account cannot liquidate itself (the contract refuses: SelfLiquidation)", field="account")
    settings = cli_settings(args)
    config = _config(settings)
    bridge = await _connect(settings, config)
    try:
        terms = await bridge.margin_terms()
        threshold, initial, max_age = terms["liquidationBps"], terms["initialBps"], terms["maxPriceAge"]
        before = await chain_health(bridge, account)
        if before.refusal is not None:
            raise Conflict(f"not liquidatable now: {_chain_refusal(before, config, max_age)['message']}", reason=before.refusal)
        if before.bps is None:
            raise Conflict(f"not liquidatable: {account} owes nothing", reason="NotLiquidatable")
        if not before.below(threshold):
            raise Conflict(f"not liquidatable: health {before.bps:,} bps >= {threshold:,}", reason="NotLiquidatable", health_bps=before.bps)
        try:
            receipt = await bridge.liquidate(key, account)
        except ContractReverted as exc:
            raise Conflict(f"refused by the contract: {_refusal(exc, bridge, config, me, initial, max_age)}", reason=exc.reason) from None
        events = bridge.events_in(receipt)
        after = await chain_health(bridge, me)
    finally:
        await bridge.chain.close()
    decimals = {"0x" + address.hex(): (symbol, d) for symbol, address, d in _margin_assets(config)}
    seized = []
    for e in events:
        if e.name == "Seized":
            symbol, d = decimals.get(str(e["asset"]).lower(), (str(e["asset"]), 0))
            seized.append({"asset": symbol, "asset_address": str(e["asset"]), "amount": whole(e["amount"], d), "amount_base": str(e["amount"])})
    liquidated = next((e for e in events if e.name == "Liquidated"), None)
    bps = liquidated["healthBps"] if liquidated is not None else before.bps
    data = {
        "account": account,
        "liquidator": me,
        "tx": receipt.tx_hash,
        "block": receipt.block_number,
        "health_bps": bps,
        "collateral": str(liquidated["collateralValue"] if liquidated is not None else before.collateral),
        "liabilities": str(liquidated["liabilityValue"] if liquidated is not None else before.liabilities),
        "seized": seized,
        "after": {"collateral": str(after.collateral), "liabilities": str(after.liabilities), "health_bps": after.bps}
        if after.refusal is None
        else {"refused": _chain_refusal(after, config, max_age)},
    }
    lines = [
        f"liquidated {account} (health {bps:,} bps < {threshold:,}): tx {receipt.tx_hash} in block {receipt.block_number}",
        f"positions taken over by {me}:",
        *(f"  {s['asset']:8} {s['amount']}" for s in seized),
    ]
    if after.refusal is None:
        lines.append(
            f"health of {me} after: {bps_text(after.bps) if after.bps is not None else 'owes nothing'} "
            f"(collateral {usd(after.collateral)}, liabilities {usd(after.liabilities, up=True)})"
        )
    else:
        lines.append(f"health of {me} after: cannot be judged now: {data['after']['refused']['message']}")
    emit(args, data, "\n".join(lines))
    return 0


def _refusal(exc: ContractReverted, bridge, config, me: str, initial: int, max_age: int) -> str:
    from bridge.committee.liquidation import PRICE_REFUSALS, refusal_text
    from chains.evm_revert import decode_revert

    decoded = decode_revert(exc.data, bridge.abi)
    reason = decoded[0] if decoded is not None else (exc.reason or "reverted")
    if reason in PRICE_REFUSALS:
        asset = decoded[1][0] if decoded is not None and decoded[1] else None
        return f"{reason}: {refusal_text(reason, config.symbol_of(str(asset)) if asset else None, max_age)}"
    if reason == "InsufficientMargin":
        return f"InsufficientMargin: {me} would be below the initial margin ({initial:,} bps) once the positions are its own: deposit collateral into it first"
    return f"{reason}: {_REFUSALS[reason]}" if reason in _REFUSALS else str(reason)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("liquidate", help="liquidate an account below the bridge's liquidation threshold: its positions become the key's")
    p.add_argument("account", help="the account to liquidate (0x and 40 hex digits)")
    p.add_argument("--key", required=True, metavar="KEYFILE", help="file holding the liquidator's EVM key (32 bytes as hex)")
    p.add_argument("--json", action="store_true", help="print JSON (base units)")
    p.set_defaults(func=cmd_liquidate)
