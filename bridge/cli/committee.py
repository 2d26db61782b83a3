"""`bridgectl deposit evm | withdraw evm | message list|show`: margin in and out of the bridge
contract, and the committee messages that move it.

    bridgectl deposit evm --asset eth --amount 1.5 [--key-env VAR | --account N] [--no-wait]
    bridgectl withdraw evm --asset TUSD --amount 250 [--key-env VAR | --account N] [--no-wait]
    bridgectl message list [--state S] [--json]
    bridgectl message show ID|req:N [--json]

Amounts are whole units of the asset (``1.5`` ETH, ``250`` TUSD), converted exactly with the
swap's parser (``bridge.swaps.assets``: more decimals than the asset has is refused, never
rounded); ``--base-units`` takes base units instead.  The key that signs is read from an
environment variable (``--key-env``, default ``BRIDGE_EVM_KEY``: never from the command line,
which other users can see) or, on a devnet only, ``--account N`` (a devnet test key).  Every
input is checked before a chain is asked or anything is sent.

What happened is read from the service's replica (the bridge database the deliverer keeps,
``bridgectl relayer run deliverer``) and the attestation store (``bridge.committee.status``):
``deposit`` waits until the replica credits the deposit, ``withdraw`` follows the request
until the release is paid (or refused, or expired), each with a deadline (``--timeout``; exit
3 when it passes, 1 when the withdrawal is refused or expires).

Longer than the house's ~400 lines on purpose: the three groups are one user story and share the
input checks, the waits on the service replica and the rendering of a message (the read-side
logic itself is ``bridge.committee.status``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from typing import Any

from bridge.cli import emit, printable
from bridge.cli.args import devnet_account, positive_int
from bridge.core.errors import ConfigError, DevnetError, InputError, InsufficientFunds, NotFound
from bridge.core.settings import Settings, load_settings

#: Where the signing key is read from by default.
DEFAULT_KEY_ENV = "BRIDGE_EVM_KEY"
#: How often a waiting command looks at the replica, and how often it says it still waits.
POLL = 0.25
PROGRESS_EVERY = 3.0

_KEY = re.compile(r"(?:0x)?[0-9a-fA-F]{64}")


# --- shared option handling ---------------------------------------------------------------


def evm_key(value: str, where: str) -> str:
    """A private key as ``0x`` + 64 hex digits (``0x`` optional on input); ``ConfigError`` naming
    ``where`` (the variable it came from) otherwise, without echoing the value."""
    text = value.strip()
    if not _KEY.fullmatch(text) or int(text.removeprefix("0x"), 16) == 0:
        raise ConfigError(f"{where} does not hold an EVM private key (0x and 64 hex digits)", field="key")
    return "0x" + text.removeprefix("0x").lower()


#: Variables that hold keys, not settings: kept from the settings loader, which takes every
#: other ``BRIDGE_<KEY>`` for a setting (and refuses one it does not know).
KEY_ENV_VARS = ("BRIDGE_EVM_KEY", "BRIDGE_DELIVERER_KEY")


def cli_settings(args: argparse.Namespace, *key_envs: str | None) -> Settings:
    """The settings of ``--config``/``--data-dir`` and the environment, without the variables
    that hold keys (``KEY_ENV_VARS`` and ``key_envs``), pointed at the data dir's devnet."""
    skip = {*KEY_ENV_VARS, *(k for k in key_envs if k)}
    environ = {k: v for k, v in os.environ.items() if k not in skip}
    return devnet_nodes(load_settings(args.config, environ=environ, data_dir=args.data_dir))


def _settings(args: argparse.Namespace) -> Settings:
    return cli_settings(args, getattr(args, "key_env", None))


def devnet_nodes(settings: Settings) -> Settings:
    """``settings`` pointed at the data dir's devnet (``devnet.json``) for whatever the settings
    leave unconfigured: the EVM node unless ``evm.url``/``rpc_host``/``rpc_port`` is set, the
    Bitcoin node unless ``bitcoin.rpc_host``/``rpc_port`` is set (and then its auth too).  So a
    devnet started on other ports (``devnet up --anvil-port 0``) is found by every command."""
    from devnets.manager import load_descriptor

    try:
        descriptor = load_descriptor(settings.data_path)
        evm_url, btc = descriptor["evm"]["rpc_url"], descriptor["bitcoin"]
        btc_port = int(btc["port"])
    except (DevnetError, KeyError, TypeError, ValueError):
        return settings
    update = {}
    if not settings.evm.model_fields_set & {"url", "rpc_host", "rpc_port"}:
        update["evm"] = settings.evm.model_copy(update={"url": evm_url})
    if not settings.bitcoin.model_fields_set & {"rpc_host", "rpc_port"}:
        auth = {"rpc_port": btc_port}
        if not settings.bitcoin.model_fields_set & {"rpc_user", "rpc_password", "cookie_file"}:
            cookie = btc.get("cookie_file")
            auth.update(
                {"cookie_file": cookie, "rpc_user": None, "rpc_password": None}
                if cookie
                else {"rpc_user": btc.get("rpc_user"), "rpc_password": btc.get("rpc_password")}
            )
        update["bitcoin"] = settings.bitcoin.model_copy(update=auth)
    return settings.model_copy(update=update) if update else settings


def _config(settings: Settings):
    from bridge.committee.config import load_bridge_config

    return load_bridge_config(settings.committee_config)


def _asset(config, symbol: str):
    """``(symbol as listed, address, SwapAsset)`` of the listed asset named ``symbol`` (any
    case); the ``SwapAsset`` converts amounts exactly."""
    from bridge.committee.config import ETH_ADDRESS
    from bridge.swaps.assets import EVM, SwapAsset

    for name, (address, decimals) in config.assets.items():
        if name.lower() == symbol.strip().lower():
            return name, address, SwapAsset(name.lower(), EVM, decimals, None if address == ETH_ADDRESS else address)
    hint = " (BTC is deposited on Bitcoin, to the committee's custody address)" if symbol.strip().lower() == "btc" else ""
    raise InputError(f"unknown asset {symbol[:40]!r}: this bridge lists {', '.join(config.assets)}{hint}", field="asset")


def _amount(args: argparse.Namespace, asset) -> int:
    """``--amount`` in base units: whole units by the swap's exact parser, or ``--base-units``."""
    from bridge.swaps.assets import MAX_AMOUNT_CHARS
    from bridge.swaps.limits import check_amount

    if not args.base_units:
        return asset.to_base(args.amount, "amount")
    text = args.amount.strip().replace("_", "")
    if len(text) > MAX_AMOUNT_CHARS or not (text.isascii() and text.isdigit()):
        raise InputError(f"amount: with --base-units, a whole number of base units, got {args.amount[:40]!r}", field="amount")
    return check_amount(int(text), asset.chain, "amount")


def _key(args: argparse.Namespace, settings: Settings) -> str:
    if args.account is not None:
        from devnets.keys import evm_test_keys
        from devnets.manager import load_descriptor

        try:
            load_descriptor(settings.data_path)
        except DevnetError:
            raise ConfigError(
                f"--account N signs with a devnet test key, and {settings.data_path} holds no devnet (devnet.json); use --key-env VAR elsewhere",
                field="account",
            ) from None
        return devnet_account(evm_test_keys(), args.account).private_key
    value = os.environ.get(args.key_env)
    if not value:
        raise ConfigError(f"no EVM key: put the key that signs in ${args.key_env} (or name another variable with --key-env; --account N on a devnet)")
    return evm_key(value, f"${args.key_env}")


async def _connect(settings: Settings, config):
    """The bridge contract, on a node that serves its chain and holds its code."""
    from bridge.committee.contract import CollateralBridge
    from chains.evm import EvmAdapter

    url = settings.evm.rpc_url
    chain = await EvmAdapter.connect(url, chain_id=config.chain_id, push_blocks=False)
    try:
        if not await chain.code(config.bridge):
            raise ConfigError(f"no bridge contract at {config.bridge} on {url} (committee.json is {settings.committee_config}; devnet reset?)")
    except BaseException:
        await chain.close()
        raise
    return CollateralBridge(chain, config.bridge)


def _status(settings: Settings, config, db: str | None = None):
    from bridge.committee.status import CommitteeStatus

    url = db or settings.db_url
    return CommitteeStatus.open(config, url, settings.committee.store_url or url)


def _clock(ts: float | None) -> str:
    if ts is None:
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def _date(ts: int | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _redacted(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: say nothing of it
        return "the configured database"


def _short(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}" if len(address) > 12 else address


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text, flush=True)


# --- deposit evm ----------------------------------------------------------------------------


async def _allowance(token, owner: str, spender: str) -> int:
    from htlc.evm import decode_result, encode_call

    raw = await token.chain.call(token.address, encode_call(token.abi, "allowance", owner, spender))
    return decode_result(token.abi, "allowance", raw)[0]


async def cmd_deposit_evm(args: argparse.Namespace) -> int:
    settings = _settings(args)
    config = _config(settings)
    symbol, _address, asset = _asset(config, args.asset)
    amount = _amount(args, asset)
    key = _key(args, settings)
    bridge = await _connect(settings, config)
    chain = bridge.chain
    try:
        sender = chain.account(key).address
        result: dict[str, Any] = {"account": sender, "asset": symbol, "amount": asset.to_whole(amount), "amount_base": str(amount)}
        if asset.token is None:
            have = await chain.balance(sender)
            if have <= amount:
                raise InsufficientFunds(f"{sender} holds {asset.to_whole(have)} ETH: not enough to deposit {asset.to_whole(amount)} ETH and pay the gas")
            receipt = await bridge.deposit_eth(key, amount)
        else:
            from htlc.evm import Erc20

            token = Erc20(chain, asset.token)
            have = await token.balance(sender)
            if have < amount:
                raise InsufficientFunds(f"{sender} holds {asset.to_whole(have)} {symbol}: not enough to deposit {asset.to_whole(amount)} {symbol}")
            if await _allowance(token, sender, bridge.address) < amount:
                result["approve_tx"] = await token.approve(key, bridge.address, amount)
                _say(args, f"approved {asset.to_whole(amount)} {symbol} to the bridge {bridge.address}: tx {result['approve_tx']}")
            receipt = await bridge.deposit_erc20(key, asset.token, amount)
        events = [e for e in bridge.events_in(receipt) if e.name == "Deposited"]
        if not events:
            raise ConfigError(f"tx {receipt.tx_hash} logged no Deposited event: is {bridge.address} the bridge of committee.json?")
        event = events[0]
        credited = int(event["amount"])
        result.update(tx=receipt.tx_hash, block=receipt.block_number, log_index=event.where.log_index, credited=asset.to_whole(credited))
        result["credited_base"] = str(credited)
        _say(args, f"deposited {asset.to_whole(amount)} {symbol} from {sender}: tx {receipt.tx_hash} in block {receipt.block_number}")
        _say(args, f"Deposited event (log {event.where.log_index}): {asset.to_whole(credited)} {symbol} ({credited} base units) to the margin of {sender}")
    finally:
        await chain.close()
    if args.no_wait:
        if args.json:
            emit(args, result)
        return 0
    code = await _wait_credit(args, settings, config, result)
    if args.json:
        emit(args, result)
    return code


async def _wait_credit(args: argparse.Namespace, settings: Settings, config, result: dict[str, Any]) -> int:
    """Wait until the service replica credits the deposit; 0, or 3 when the deadline passes."""
    status = _status(settings, config)
    started = time.monotonic()
    noted = started
    _say(args, f"waiting for the service replica ({_redacted(settings.db_url)}) to credit it (up to {args.timeout:.0f}s)")
    try:
        while True:
            credit = await asyncio.to_thread(status.credit, result["tx"], result["log_index"])
            if credit is not None:
                break
            why = _replica_wait(status, f"the deposit is in block {result['block']}")
            elapsed = time.monotonic() - started
            if elapsed > args.timeout:
                result["credit"], result["waiting"] = None, why
                print(f"not credited after {elapsed:.0f}s: {printable(why)}", file=sys.stderr)
                return 3
            if time.monotonic() - noted >= PROGRESS_EVERY:
                _say(args, f"  … {elapsed:.0f}s: {why}")
                noted = time.monotonic()
            await asyncio.sleep(POLL)
        result["credit"] = credit
        margin = [b for b in status.balances(result["account"]) if b["asset"] == credit["asset"]]
        result["margin"] = margin[0] if margin else None
        _say(args, f"credited in the service replica after {time.monotonic() - started:.1f}s (ledger height {credit['ledger_height']})")
        if margin:
            _say(args, f"margin of {result['account']}: {margin[0]['amount']} {margin[0]['asset']} ({margin[0]['held']} held for withdrawals)")
        return 0
    finally:
        status.close()


def _replica_wait(status, where: str) -> str:
    if status.replica is None:
        return "the service replica has not started: `bridgectl relayer run deliverer` keeps it (is it running on this database?)"
    return f"the service replica has folded up to block {status.replica_height()}; {where}"


# --- withdraw evm ---------------------------------------------------------------------------


async def cmd_withdraw_evm(args: argparse.Namespace) -> int:
    settings = _settings(args)
    config = _config(settings)
    symbol, address, asset = _asset(config, args.asset)
    amount = _amount(args, asset)
    key = _key(args, settings)
    bridge = await _connect(settings, config)
    try:
        sender = bridge.chain.account(key).address
        receipt = await bridge.request_withdrawal(key, address, amount)
        events = [e for e in bridge.events_in(receipt) if e.name == "WithdrawalRequested"]
        if not events:
            raise ConfigError(f"tx {receipt.tx_hash} logged no WithdrawalRequested event: is {bridge.address} the bridge of committee.json?")
        nonce = int(events[0]["requestNonce"])
        result: dict[str, Any] = {
            "request": nonce,
            "account": sender,
            "asset": symbol,
            "amount": asset.to_whole(amount),
            "amount_base": str(amount),
            "tx": receipt.tx_hash,
            "block": receipt.block_number,
        }
        _say(args, f"withdrawal request {nonce}: {asset.to_whole(amount)} {symbol} to {sender}, tx {receipt.tx_hash} in block {receipt.block_number}")
        if args.no_wait:
            if args.json:
                emit(args, result)
            else:
                print(f"follow it with `bridgectl message show req:{nonce}`")
            return 0
        _say(args, f"following it until paid (up to {args.timeout:.0f}s; `bridgectl message show req:{nonce}` shows it any time)")
        code = await _follow(args, settings, config, bridge, result)
    finally:
        await bridge.chain.close()
    if args.json:
        emit(args, result)
    return code


async def _follow(args: argparse.Namespace, settings: Settings, config, bridge, result: dict[str, Any]) -> int:
    """Print each step of the request's release as the service replica and the store show it."""
    status = _status(settings, config)
    nonce = result["request"]
    started = time.monotonic()
    noted, shown = started, {"request": None, "timeline": set(), "waiting": None}  # noted: since when that reason holds
    try:
        while True:
            try:
                view = await asyncio.to_thread(status.message, f"req:{nonce}")
            except NotFound:
                view, why = None, _replica_wait(status, f"the request is in block {result['block']}")
            else:
                why = view["waiting"]
                _progress(args, view, shown)
                result["message"] = view
                end = _ended(view)
                if end is not None:
                    code, text = end
                    if code == 0 and view["delivery"] and view["delivery"]["tx_hash"]:
                        tx = view["delivery"]["tx_hash"]
                        block = (await bridge.chain.receipt(tx)).block_number
                        text += f" in tx {tx} (block {block})"
                        result["paid_tx"], result["paid_block"] = tx, block
                    if not args.json:
                        print(text, file=sys.stdout if code == 0 else sys.stderr, flush=True)
                    result["outcome"] = text
                    return code
            elapsed = time.monotonic() - started
            if elapsed > args.timeout:
                result["waiting"] = why
                print(f"still waiting after {elapsed:.0f}s: {printable(why)}\n`bridgectl message show req:{nonce}` shows it later", file=sys.stderr)
                return 3
            # Say why it waits once the same reason has held for a while (and again now and then).
            if why != shown["waiting"]:
                shown["waiting"], noted = why, time.monotonic()
            elif why and time.monotonic() - noted >= PROGRESS_EVERY:
                _say(args, f"{_clock(time.time())}  waiting: {printable(why)}")
                noted = time.monotonic() + PROGRESS_EVERY
            await asyncio.sleep(POLL)
    finally:
        status.close()


def _progress(args: argparse.Namespace, view: dict[str, Any], shown: dict[str, Any]) -> None:
    """Print what is new since the last look: the timeline's new entries and the replica's
    judgement of the request, in time order."""
    lines: list[tuple[float, str]] = []
    request = view["request"]
    if request is not None and request["state"] != shown["request"]:
        shown["request"] = request["state"]
        if request["state"] == "held":
            text = f"service replica: {request['amount']} {request['asset']} held; release message {view['id']} valid until {_date(request['expiry'])}"
        elif request["state"] == "refused":
            text = f"service replica: refused: {printable(request['reason'])}"
        else:
            text = f"service replica: request {request['state']}"
        lines.append((time.time(), text))
    for entry in view["timeline"]:
        key = (entry["at"], entry["event"])
        if key not in shown["timeline"]:
            shown["timeline"].add(key)
            lines.append((entry["at"], f"{entry['source']}: {printable(entry['event'])}"))
    for at, text in sorted(lines):
        _say(args, f"{_clock(at)}  {text}")


def _ended(view: dict[str, Any]) -> tuple[int, str] | None:
    request, delivery = view["request"], view["delivery"]
    if view["state"] == "refused" and delivery is None:
        return 1, printable(view["outcome"])
    if request is not None and request["state"] == "released":
        return 0, f"paid: {request['amount']} {request['asset']} released to {request['account']}"
    if request is not None and request["state"] == "expired":
        return 1, f"expired: {printable(request['reason'])}; the margin is yours again (request again)"
    if delivery is not None and delivery["state"] in ("expired", "refused"):
        return 1, f"{delivery['state']}: {printable(view['outcome'])}"
    return None


def _tally(view: dict[str, Any]) -> dict[str, Any] | None:
    tallies = view["signatures"]
    if not tallies:
        return None
    return min(tallies, key=lambda t: (not t["quorum"], t["needed"], -t["epoch"]))


def _tally_line(t: dict[str, Any]) -> str:
    signed = ", ".join(f"{m['index']} {_short(m['address'])}" for m in t["signed"]) or "none"
    missing = ", ".join(f"{m['index']} {_short(m['address'])}" for m in t["missing"]) or "none"
    quorum = "a quorum" if t["quorum"] else f"{t['needed']} more needed"
    return f"{len(t['signed'])} of {t['size']} signed, {t['threshold']} needed (epoch {t['epoch']}: {quorum}); signed: {signed}; missing: {missing}"


# --- message list | show --------------------------------------------------------------------


def _amount_text(fields: dict[str, Any]) -> str:
    return f"{fields['amount']} {fields['asset']}" if "amount" in fields else "-"


def render_message(view: dict[str, Any]) -> str:
    """``message show`` as text (everything read from a database printed with control characters escaped)."""
    p = printable
    lines = [f"message {view['id'] or '(none)'}  {view['kind']}  state: {p(view['state'])}"]
    request, m = view["request"], view["message"]
    if request is not None:
        reason = f" ({p(request['reason'])})" if request["reason"] else ""
        lines.append(
            f"  request     #{request['nonce']} {p(request['state'])}{reason}: {request['amount']} {request['asset']} to {request['account']}, "
            f"block {request['block']} ({_date(request['block_time'])}), source {request['source']}"
        )
        if view.get("request_note"):
            lines.append(f"              note: {p(view['request_note'])}")
    if m is not None:
        lines.append(f"  message     version {m['version']}, {m['kind']}, source chain {m['source_chain_id']} {m['source']} -> dest chain {m['dest_chain_id']}")
        lines.append(f"              account {m['account']}, nonce {m['nonce']}, expiry {_date(m['expiry'])}, payload {m['payload_hash']}")
        if "amount" in m:
            lines.append(f"              amount {_amount_text(m)} ({m['amount_base']} base units of {m['asset_address']})")
        if "new_committee" in m:
            c = m["new_committee"]
            lines.append(f"              new committee: epoch {c['epoch']}, {c['threshold']} of {len(c['signers'])}: {', '.join(c['signers'])}")
    for t in view["signatures"]:
        lines.append(f"  signatures  {_tally_line(t)}")
        if t["invalid"]:
            lines.append(f"              invalid signatures stored (counted missing): {', '.join(x['address'] for x in t['invalid'])}")
    delivery = view["delivery"]
    if delivery is None:
        lines.append("  delivery    none opened (no deliverer on this database has seen it)" if view["id"] else "  delivery    none")
    else:
        tx = f", tx {delivery['tx_hash']}" if delivery["tx_hash"] else ""
        retries = f", {delivery['retries']} retries" if delivery["retries"] else ""
        lines.append(f"  delivery    {p(delivery['state'])}{tx}{retries}")
    lines.append("  timeline")
    for entry in view["timeline"]:
        lines.append(f"    {_clock(entry['at'])}  {entry['source']:8} {p(entry['event'])}")
    if view["waiting"]:
        lines.append(f"  waiting     {p(view['waiting'])}")
    if view["outcome"]:
        lines.append(f"  outcome     {p(view['outcome'])}")
    return "\n".join(lines)


def _list_line(view: dict[str, Any]) -> str:
    m = view["message"] or {}
    t = _tally(view)
    sigs = f"{len(t['signed'])}/{t['threshold']}" if t else "-"
    request = view["request"]
    who = f"req:{request['nonce']}" if request else f"nonce {m.get('nonce', '-')}"
    return f"{view['id']}  {view['kind']:9} {who:10} {_amount_text(m):>24}  sigs {sigs:5} {printable(view['state'])}"


async def cmd_message_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    status = _status(settings, _config(settings), args.db)
    try:
        views = await asyncio.to_thread(status.messages, args.state, args.limit)
    finally:
        status.close()
    emit(args, views, text="\n".join(_list_line(v) for v in views) or "no messages")
    return 0


async def cmd_message_show(args: argparse.Namespace) -> int:
    from bridge.committee.status import parse_message_ref

    parse_message_ref(args.id)  # refuse a malformed id before opening anything
    settings = _settings(args)
    status = _status(settings, _config(settings), args.db)
    try:
        view = await asyncio.to_thread(status.message, args.id)
    finally:
        status.close()
    emit(args, view, text=render_message(view))
    return 0


# --- registration ---------------------------------------------------------------------------


def _value_options(p: argparse.ArgumentParser, what: str, timeout: float) -> None:
    p.add_argument("--asset", required=True, help="a listed asset: ETH or an ERC-20 of committee.json (TUSD on the devnet)")
    p.add_argument("--amount", required=True, help=f"how much to {what}, in whole units (1.5 = 1.5 ETH); base units with --base-units")
    p.add_argument("--base-units", action="store_true", help="--amount is in base units (wei, token units)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument(
        "--key-env", default=DEFAULT_KEY_ENV, metavar="VAR", help=f"environment variable holding the EVM key that signs (default {DEFAULT_KEY_ENV})"
    )
    keys.add_argument("--account", type=int, default=None, metavar="N", help="sign with devnet test account N (devnet only)")
    p.add_argument("--no-wait", action="store_true", help="send and return, without waiting for the service replica")
    p.add_argument("--timeout", type=float, default=timeout, help=f"seconds to wait before giving up (exit 3; default {timeout:.0f})")
    p.add_argument("--json", action="store_true", help="print JSON")


def register(sub: argparse._SubParsersAction) -> None:
    from bridge.committee.status import MESSAGE_STATES

    deposit = sub.add_parser("deposit", help="deposit collateral into the bridge as margin")
    cmds = deposit.add_subparsers(dest="deposit_cmd", metavar="CHAIN", required=True)
    evm = cmds.add_parser("evm", help="deposit ETH or a listed ERC-20 to the bridge contract; waits until the service replica credits it")
    _value_options(evm, "deposit", 60.0)
    evm.set_defaults(func=cmd_deposit_evm)

    withdraw = sub.add_parser("withdraw", help="withdraw margin from the bridge")
    cmds = withdraw.add_subparsers(dest="withdraw_cmd", metavar="CHAIN", required=True)
    evm = cmds.add_parser("evm", help="request a withdrawal on the bridge contract; follows it until a quorum's release pays it")
    _value_options(evm, "withdraw", 120.0)
    evm.set_defaults(func=cmd_withdraw_evm)

    message = sub.add_parser("message", help="committee messages: signatures, deliveries, timelines")
    cmds = message.add_subparsers(dest="message_cmd", metavar="SUBCOMMAND", required=True)
    lst = cmds.add_parser("list", help="messages, newest last, with their state and signatures")
    lst.add_argument("--state", choices=MESSAGE_STATES, help="only messages in this state")
    lst.add_argument("--limit", type=positive_int("--limit"), default=50, help="at most this many, the newest (default 50)")
    show = cmds.add_parser("show", help="one message: fields, request, signatures and who is missing, delivery timeline, why it waits")
    show.add_argument("id", help="the message id (64 hex digits, 0x optional) or req:N for the release of withdrawal request N")
    for p, func in ((lst, cmd_message_list), (show, cmd_message_show)):
        p.add_argument("--db", help="the service database (default: the settings' database_url)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)
