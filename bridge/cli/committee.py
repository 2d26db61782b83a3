"""`bridgectl deposit evm|btc | withdraw evm|btc|status | message list|show`: margin in and out of
the bridge contract and the committee's Bitcoin custody, and the committee messages that move it.

    bridgectl deposit evm --asset eth --amount 1.5 [--key-env VAR | --account N] [--no-wait]
    bridgectl deposit btc [--account ACCT] [--key-env VAR]        # the deposit address and its script
    bridgectl deposit btc --account ACCT --verify ADDRESS [--refund-pubkey HEX]
    bridgectl deposit btc --account N --fund 0.5 [--btc-key K] [--mine] [--no-wait]   # devnet
    bridgectl withdraw evm --asset TUSD --amount 250 [--key-env VAR | --account N] [--no-wait]
    bridgectl withdraw btc --amount 0.2 --to BTC_ADDRESS [--key-env VAR | --account N] [--mine]
    bridgectl withdraw status NONCE [--json]
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

Bitcoin: an account's deposit address commits to the account and its own key (registered on the
contract: ``deposit btc`` sends ``registerBtcKey`` when it holds the key and the service replica
does not know it yet).  ``--fund`` (regtest only) pays it from a devnet BTC test key and follows
the deposit through the service's Bitcoin fold (seen at depth, or refused and why), the
DEPOSIT_CREDIT's signatures and delivery, to the credit.  ``withdraw btc`` follows the replica's
hold, the payout (PSBT, the attesters' signatures, broadcast, depth), the PAYOUT_DONE and the
posting.  Amounts are shown in whole BTC (8 decimals); ``--json`` adds base units (sats).

Longer than the house's ~400 lines on purpose: the three groups are one user story and share the
input checks, the waits on the service replica and the rendering of a message (the read-side
logic itself is ``bridge.committee.status``); the Bitcoin commands add the address terms, the
devnet funding and two more followers.
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
from bridge.core.errors import ConfigError, ContractReverted, DevnetError, InputError, InsufficientFunds, NotFound
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
    hint = " (BTC moves on Bitcoin: `bridgectl deposit btc`, `bridgectl withdraw btc`)" if symbol.strip().lower() == "btc" else ""
    raise InputError(f"unknown asset {symbol[:40]!r}: this bridge lists {', '.join(config.assets)}{hint}", field="asset")


def _amount(args: argparse.Namespace, asset, field: str = "amount", value: str | None = None) -> int:
    """``--amount`` (or ``value``, the option ``field``) in base units: whole units by the swap's
    exact parser, or ``--base-units``."""
    from bridge.swaps.assets import MAX_AMOUNT_CHARS
    from bridge.swaps.limits import check_amount

    given = args.amount if value is None else value
    if not args.base_units:
        return asset.to_base(given, field)
    text = given.strip().replace("_", "")
    if len(text) > MAX_AMOUNT_CHARS or not (text.isascii() and text.isdigit()):
        raise InputError(f"{field}: with --base-units, a whole number of base units, got {given[:40]!r}", field=field)
    return check_amount(int(text), asset.chain, field)


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
        receipt, nonce = await _request(bridge, config, sender, f"{asset.to_whole(amount)} {symbol}", bridge.request_withdrawal(key, address, amount))
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


async def _request(bridge, config, sender: str, what: str, sending) -> tuple[Any, int]:
    """A withdrawal request's receipt and nonce; the bridge's refusal said as the user reads it."""
    try:
        receipt = await sending
    except ContractReverted as exc:
        raise request_refused(exc, config, sender, what) from None
    events = [e for e in bridge.events_in(receipt) if e.name == "WithdrawalRequested"]
    if not events:
        raise ConfigError(f"tx {receipt.tx_hash} logged no WithdrawalRequested event: is {bridge.address} the bridge of committee.json?")
    return receipt, int(events[0]["requestNonce"])


def request_refused(exc: ContractReverted, config, sender: str, what: str) -> ContractReverted:
    """The bridge's refusal of a withdrawal request, said as the user reads it (nothing was held)."""
    m = config.margin
    if config.oracle is None or what.endswith(" BTC"):
        rule = "an account takes out what it holds" + (" (BTC is never borrowed)" if config.oracle is not None else "")
    else:
        rule = f"an account takes out what it holds, or borrows a listed asset only while it stays {m.initial_bps / 100:g} % healthy"
    reasons = {
        "InsufficientMargin": f"the free margin of {sender} does not cover {what}: {rule} (`bridgectl ledger health {sender}`)",
        "BelowMinimum": f"{what} is below the bridge's minimum BTC withdrawal",
        "BadDestination": "the destination is not a standard Bitcoin output script",
        "AssetNotListed": "the asset is not listed on this bridge",
        "PriceStale": "a price this account's health needs is stale: wait for the next oracle update",
        "PriceHalted": "a price this account's health needs is halted by the oracle's breaker until a quorum clears it",
        "NoPrice": "a price this account's health needs was never posted",
    }
    text = reasons.get(exc.reason or "", exc.message)
    return ContractReverted(f"withdrawal refused by the bridge ({exc.reason}): {text}; nothing is held", reason=exc.reason, data=exc.data)


async def _follow(args: argparse.Namespace, settings: Settings, config, bridge, result: dict[str, Any]) -> int:
    """Print each step of the request's release as the service replica and the store show it."""
    status = _status(settings, config)
    nonce = result["request"]

    async def ended(view: dict[str, Any]) -> tuple[int, str] | None:
        result["message"] = view
        end = _ended(view)
        if end is not None and end[0] == 0 and view["delivery"] and view["delivery"]["tx_hash"]:
            tx = view["delivery"]["tx_hash"]
            block = (await bridge.chain.receipt(tx)).block_number
            result["paid_tx"], result["paid_block"] = tx, block
            return 0, end[1] + f" in tx {tx} (block {block})"
        return end

    try:
        return await _poll(args, status, result, lambda: status.message(f"req:{nonce}"), _progress, ended, f"`bridgectl message show req:{nonce}`")
    finally:
        status.close()


async def _poll(args: argparse.Namespace, status, result: dict[str, Any], load, progress, ended, later: str, tick=None) -> int:
    """The loop every withdraw follower shares: look (``load``), print what is new (``progress``),
    end with an exit code and a line (``ended``), or, once the same reason to wait has held a
    while, say it (and again now and then), until ``--timeout`` (exit 3).  ``tick`` runs at each
    look (the devnet's ``--mine``)."""
    started = noted = time.monotonic()
    shown: dict[str, Any] = {"request": None, "payout": None, "timeline": set(), "waiting": None}
    while True:
        try:
            view = await asyncio.to_thread(load)
        except NotFound:
            view, why = None, _replica_wait(status, f"the request is in block {result['block']}")
        else:
            why = view["waiting"]
            progress(args, view, shown)
            end = await ended(view)
            if end is not None:
                code, text = end
                if not args.json:
                    print(text, file=sys.stdout if code == 0 else sys.stderr, flush=True)
                result["outcome"] = text
                return code
        if tick is not None:
            await tick()
        elapsed = time.monotonic() - started
        if elapsed > args.timeout:
            result["waiting"] = why
            print(f"still waiting after {elapsed:.0f}s: {printable(why)}\n{later} shows it later", file=sys.stderr)
            return 3
        if why != shown["waiting"]:
            shown["waiting"], noted = why, time.monotonic()
        elif why and time.monotonic() - noted >= PROGRESS_EVERY:
            _say(args, f"{_clock(time.time())}  waiting: {printable(why)}")
            noted = time.monotonic() + PROGRESS_EVERY
        await asyncio.sleep(POLL)


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


# --- Bitcoin: the account, its deposit address ----------------------------------------------

_DEVNET_INDEX = re.compile(r"[0-9]{1,4}")
_EVM_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_MAX_ADDRESS_CHARS = 120


def _btc_terms(config):
    """The bridge's Bitcoin custody terms (``committee.json``'s ``bitcoin`` section)."""
    if config.bitcoin is None:
        raise ConfigError("this bridge takes no Bitcoin: its committee.json has no `bitcoin` section (custody keys, refund delay)", field="bitcoin")
    return config.bitcoin


def _key_address(key: str) -> str:
    from bridge.committee.crypto import address_of
    from eth_utils import to_checksum_address

    return to_checksum_address(address_of(bytes.fromhex(key[2:])))


def _devnet_evm_key(settings: Settings, index: int) -> str:
    from devnets.keys import evm_test_keys
    from devnets.manager import load_descriptor

    try:
        load_descriptor(settings.data_path)
    except DevnetError:
        raise ConfigError(
            f"--account N names a devnet test key, and {settings.data_path} holds no devnet (devnet.json); give the account's address (0x...) "
            "and its key with --key-env VAR elsewhere",
            field="account",
        ) from None
    return devnet_account(evm_test_keys(), index).private_key


def _btc_account(args: argparse.Namespace, settings: Settings) -> tuple[str, str | None]:
    """``(account address, its EVM key or None)`` of ``--account`` (an address, or devnet test
    account N) and ``--key-env``; the key is there when it is the account's."""
    env = args.key_env or DEFAULT_KEY_ENV
    value = os.environ.get(env)
    if args.account is None:
        if not value:
            raise ConfigError(f"which account? --account ADDRESS (or N, a devnet test account), or the account's key in ${env} (--key-env VAR)")
        key = evm_key(value, f"${env}")
        return _key_address(key), key
    text = args.account.strip()
    if _DEVNET_INDEX.fullmatch(text):
        if args.key_env:
            raise InputError("--account N signs with devnet test key N: drop --key-env (or give the account's address with it)", field="account")
        key = _devnet_evm_key(settings, int(text))
        return _key_address(key), key
    if not _EVM_ADDRESS.fullmatch(text):
        raise InputError(f"--account must be an EVM address (0x and 40 hex digits) or a devnet test account number, got {text[:50]!r}", field="account")
    from eth_utils import to_checksum_address

    account = to_checksum_address(text)
    if value:
        try:
            key = evm_key(value, f"${env}")
        except ConfigError:
            if args.key_env:  # named on purpose: it must hold a key
                raise
            return account, None  # the default variable holds something else: the account needs no key here
        if _key_address(key) == account:
            return account, key
        if args.key_env:  # named on purpose: it must be the account's
            raise InputError(f"${env} holds the key of {_key_address(key)}, not of --account {account}", field="account")
    return account, None


def _refund_pubkey(args: argparse.Namespace, account: str) -> bytes | None:
    from bridge.cli.args import hex_bytes
    from bridge.custody.scripts import pubkey_matches_evm_address
    from htlc.bitcoin_script import is_compressed_pubkey

    if args.refund_pubkey is None:
        return None
    raw = hex_bytes(args.refund_pubkey[:200], "--refund-pubkey")
    if not is_compressed_pubkey(raw):
        raise InputError("--refund-pubkey must be a 33-byte compressed secp256k1 public key (66 hex digits, 02 or 03 first)", field="refund_pubkey")
    if not pubkey_matches_evm_address(raw, account):
        raise InputError(f"--refund-pubkey {raw.hex()} is not the key of {account}: the contract registers an account's own key only", field="refund_pubkey")
    return raw


def _asm_lines(script: bytes) -> list[str]:
    """The script's disassembly (Core's asm), indented by branch, each public key on a line."""
    from chains.btc.script import disassemble

    lines: list[str] = []
    depth, words = 0, []

    def flush() -> None:
        if words:
            lines.append("  " * depth + " ".join(words))
            words.clear()

    for word in disassemble(script).split():
        if word in ("OP_IF", "OP_NOTIF", "OP_ELSE", "OP_ENDIF"):
            flush()
            depth -= word in ("OP_ELSE", "OP_ENDIF")
            lines.append("  " * depth + word)
            depth += word in ("OP_IF", "OP_NOTIF", "OP_ELSE")
        elif len(word) == 66:  # a compressed public key
            flush()
            lines.append("  " * depth + word)
        else:
            words.append(word)
    flush()
    return lines


def deposit_terms(terms, account: str, refund_pubkey: bytes) -> dict[str, Any]:
    """Everything a depositor needs to know of its deposit address (whole units and base units)."""
    from bridge.custody.scripts import custody_address, deposit_address, deposit_script, deposit_script_pubkey
    from bridge.swaps.assets import BTC

    policy = terms.policy
    witness = deposit_script(policy, account, refund_pubkey)
    spk = deposit_script_pubkey(policy, account, refund_pubkey)
    floor = _deposit_floor(terms)
    return {
        "account": account,
        "network": policy.network,
        "deposit_address": deposit_address(policy, account, refund_pubkey),
        "script_pubkey": spk.hex(),
        "witness_script": witness.hex(),
        "witness_script_asm": _asm_lines(witness),
        "committee": {
            "threshold": policy.threshold,
            "size": policy.n,
            "pubkeys": [k.hex() for k in policy.pubkeys],
            "custody_address": custody_address(policy),
        },
        "refund_pubkey": refund_pubkey.hex(),
        "refund_delay": policy.refund_delay,
        "min_deposit": BTC.to_whole(floor),
        "min_deposit_base": str(floor),
        "sweep_allowance": BTC.to_whole(terms.sweep_allowance),
        "sweep_allowance_base": str(terms.sweep_allowance),
    }


def _deposit_floor(terms) -> int:
    """The smallest deposit the attesters' Bitcoin fold credits (``btc_deposits``: the bridge's
    minimum, the dust limit of a P2WSH output, more than the sweep allowance)."""
    from chains.btc.script import dust_threshold, p2wsh_script

    return max(terms.min_deposit, dust_threshold(p2wsh_script(b"")), terms.sweep_allowance + 1)


def render_deposit_terms(t: dict[str, Any]) -> str:
    c = t["committee"]
    lines = [
        f"deposit address  {t['deposit_address']}  ({t['network']}, P2WSH)",
        f"account          {t['account']}",
        f"witness script   {t['witness_script']}",
        "  disassembly",
        *(f"    {line}" for line in t["witness_script_asm"]),
        f"committee path   OP_IF: {c['threshold']} of the committee's {c['size']} custody keys; sweeps into custody ({c['custody_address']}) and payouts",
        f"refund path      OP_ELSE: after {t['refund_delay']} blocks (relative to the deposit's confirmation, BIP-68/112) the account's own key "
        f"{t['refund_pubkey']} takes the coins back alone, if the committee has not swept them by then",
        f"minimum deposit  {t['min_deposit']} BTC ({t['min_deposit_base']} sats): smaller outputs are refused, visibly, and not credited",
        f"sweep allowance  {t['sweep_allowance']} BTC ({t['sweep_allowance_base']} sats) kept from each credit to pay for sweeping it into custody",
    ]
    return "\n".join(lines)


# --- deposit btc ----------------------------------------------------------------------------


async def cmd_deposit_btc(args: argparse.Namespace) -> int:
    from bridge.swaps.assets import BTC

    settings = _settings(args)
    config = _config(settings)
    terms = _btc_terms(config)
    network = terms.policy.network
    # Every input checked before a chain is asked or anything is sent.
    fund = _amount(args, BTC, "fund", args.fund) if args.fund is not None else None
    if (fund is not None or args.mine) and network != "regtest":
        raise InputError(f"--fund and --mine pay from devnet test keys and mine blocks: regtest only (this bridge's custody is on {network})", field="fund")
    if args.verify is not None and fund is not None:
        raise InputError("--verify checks an address; it does not fund one (drop --fund)", field="verify")
    btc_key = None
    if fund is not None:
        from chains.bitcoin_wallet import BtcKey
        from devnets.keys import BTC_KEY_COUNT, btc_test_keys

        if fund < _deposit_floor(terms):
            floor = BTC.to_whole(_deposit_floor(terms))
            raise InputError(f"--fund: {BTC.to_whole(fund)} BTC is below the minimum deposit of {floor} BTC: it would be refused, not credited", field="fund")
        if not 0 <= args.btc_key < BTC_KEY_COUNT:
            raise InputError(f"--btc-key must be a devnet BTC test key, 0..{BTC_KEY_COUNT - 1}, got {args.btc_key}", field="btc_key")
        btc_key = BtcKey.from_hex(btc_test_keys()[args.btc_key].private_key)
    account, key = _btc_account(args, settings)
    given = _refund_pubkey(args, account)
    if args.verify is not None:
        return await _verify(args, settings, config, terms, account, given)
    status = _status(settings, config)
    try:
        result: dict[str, Any] = {"account": account}
        registered = await asyncio.to_thread(status.btc_keys, account)
        if not registered and key is not None:
            code = await _register(args, settings, config, status, account, key, result)
            if code:
                if args.json:
                    emit(args, result)
                return code
            registered = await asyncio.to_thread(status.btc_keys, account) or [_own_pubkey(key)]
        pubkey = registered[-1] if registered else given
        if pubkey is None:
            raise NotFound(
                f"{account} has registered no Bitcoin key in the service replica ({_redacted(settings.db_url)}), so it has no deposit address the attesters "
                "watch: run `bridgectl deposit btc` with the account's key (--key-env VAR, or --account N on a devnet) to register it",
                account=account,
            )
        result["registered"] = bool(registered)
        info = deposit_terms(terms, account, pubkey)
        result.update(info)
        _say(args, render_deposit_terms(info))
        if not registered:
            warn = f"warning: {account} has not registered its key: the attesters do not watch this address yet, and a payment to it is not credited"
            print(warn, file=sys.stderr)
        if fund is None:
            if args.json:
                emit(args, result)
            return 0
        if not registered:
            raise InputError(f"--fund: {account} has not registered its key, so a payment would not be credited; register first (with the account's key)")
        code = await _fund(args, settings, config, status, info, fund, btc_key, result)
    finally:
        status.close()
    if args.json:
        emit(args, result)
    return code


def _btc_whole(sats: int) -> str:
    from bridge.swaps.assets import BTC

    return BTC.to_whole(sats)


def _own_pubkey(key: str) -> bytes:
    from bridge.custody.scripts import refund_pubkey_of_evm_key

    return refund_pubkey_of_evm_key(key)


async def _register(args: argparse.Namespace, settings: Settings, config, status, account: str, key: str, result: dict[str, Any]) -> int:
    """``registerBtcKey`` from the account's key, then (unless ``--no-wait`` without ``--fund``)
    wait until the service replica holds it; 0, or 3 when the deadline passes."""
    bridge = await _connect(settings, config)
    try:
        receipt = await bridge.register_btc_key(key)
    finally:
        await bridge.chain.close()
    result["register_tx"], result["register_block"] = receipt.tx_hash, receipt.block_number
    tx = f"registerBtcKey tx {receipt.tx_hash} in block {receipt.block_number}"
    _say(args, f"{_clock(time.time())}  registered the refund key {_own_pubkey(key).hex()} of {account}: {tx}")
    if args.no_wait and args.fund is None:
        return 0
    started = time.monotonic()
    while not await asyncio.to_thread(status.btc_keys, account):
        elapsed = time.monotonic() - started
        if elapsed > args.timeout:
            why = _replica_wait(status, f"the registration is in block {receipt.block_number}")
            print(f"the service replica does not hold the key after {elapsed:.0f}s: {printable(why)}", file=sys.stderr)
            return 3
        await asyncio.sleep(POLL)
    _say(args, f"{_clock(time.time())}  the service replica holds the key (its Bitcoin fold watches the address from now on)")
    return 0


async def _verify(args: argparse.Namespace, settings: Settings, config, terms, account: str, given: bytes | None) -> int:
    from bridge.custody.scripts import verify_deposit_address

    address = args.verify.strip()
    if len(address) > _MAX_ADDRESS_CHARS:
        raise InputError(f"--verify: an address of {len(address)} characters is no Bitcoin address", field="verify")
    if given is not None:
        pubkeys, source = [given], "the given --refund-pubkey"
    else:
        status = _status(settings, config)
        try:
            pubkeys = await asyncio.to_thread(status.btc_keys, account)
        finally:
            status.close()
        source = "the key it registered, as the service replica holds it"
        if not pubkeys:
            raise NotFound(
                f"{account} has registered no Bitcoin key in the service replica ({_redacted(settings.db_url)}): nothing to derive its deposit "
                "address from; give the key with --refund-pubkey HEX to check against it",
                account=account,
            )
    checks = [(pk, verify_deposit_address(address, terms.policy, account, pk)) for pk in pubkeys]
    pubkey, check = next(((pk, c) for pk, c in checks if c.ok), checks[-1])
    result = {"address": address, "account": account, "ok": check.ok, "reason": check.reason, "refund_pubkey": pubkey.hex(), "key_source": source}
    text = f"ok: {printable(address)} is {check.reason}; refund key {pubkey.hex()}: {source}"
    if args.json:
        emit(args, result)
    elif check.ok:
        print(text)
    else:
        print(f"not ok: {printable(address)}: {printable(check.reason)}; refund key {pubkey.hex()}: {source}", file=sys.stderr)
    return 0 if check.ok else 1


async def _fund(args: argparse.Namespace, settings: Settings, config, status, info: dict[str, Any], amount: int, btc_key, result: dict[str, Any]) -> int:
    """Pay ``amount`` sats from devnet BTC test key ``--btc-key`` to the deposit address, then
    follow it (unless ``--no-wait``) until the service replica credits it."""
    from chains.bitcoin import BitcoinAdapter
    from chains.btc.primitives import Tx

    adapter = BitcoinAdapter.from_settings(settings)
    try:
        script = bytes.fromhex(info["script_pubkey"])
        signed = await adapter.send_to([btc_key], [(script, amount)])
        vout = next(n for n, o in enumerate(Tx.parse(bytes.fromhex(signed.raw_hex)).vout) if bytes(o.script_pubkey) == script)
        result["funding"] = {"txid": signed.txid, "vout": vout, "amount": _btc_whole(amount), "amount_base": str(amount), "fee_base": str(signed.fee_sats)}
        result["funding"]["vsize"] = signed.vsize
        payer = btc_key.p2wpkh_address(adapter.network)
        _say(
            args,
            f"{_clock(time.time())}  bitcoin: paid {_btc_whole(amount)} BTC from devnet BTC key {args.btc_key} ({payer}) to {info['deposit_address']}: "
            f"tx {signed.txid} output {vout} (fee {signed.fee_sats} sat, {signed.vsize} vB); in the mempool",
        )
        if args.mine:
            await _mine(args, adapter)
        if args.no_wait:
            _say(args, "not waiting (--no-wait): it is credited once the attesters see it at depth (`bridgectl message list` shows its DEPOSIT_CREDIT)")
            return 0
        how = "mining as needed" if args.mine else "nothing mines it but you: mine a block"
        _say(args, f"following it until credited (up to {args.timeout:.0f}s; {how})")
        return await _follow_deposit(args, adapter, status, signed.txid, vout, result)
    finally:
        await adapter.close()


async def _mine(args: argparse.Namespace, adapter) -> None:
    from devnets.controls import BitcoinDevnet

    (block,) = await BitcoinDevnet(adapter).mine(1)
    _say(args, f"{_clock(time.time())}  bitcoin: mined block {block} at height {await adapter.height()} (--mine)")


async def _follow_deposit(args: argparse.Namespace, adapter, status, txid: str, vout: int, result: dict[str, Any]) -> int:
    """Print each step of a Bitcoin deposit as the chain, the service's Bitcoin fold, the store
    and the deliveries show it; 0 when credited, 1 when refused, 3 at the deadline."""
    started = time.monotonic()
    mined_at, shown, mined = started, {"timeline": set(), "waiting": None}, None
    noted = started
    while True:
        if mined is None:
            tx = await adapter.tx_status(txid)
            if tx.confirmations > 0 and tx.block is not None:
                mined = tx.block.height
                _say(args, f"{_clock(time.time())}  bitcoin: tx {txid} mined in block {mined} ({tx.block.hash})")
        deposit = await asyncio.to_thread(status.btc_deposit, txid, vout)
        if deposit is not None and "deposit" not in result:
            result["deposit"] = deposit
            if deposit["state"] == "refused":
                print(f"{_clock(time.time())}  service fold: refused: {printable(deposit['reason'])}; nothing is credited", file=sys.stderr)
                return 1
            _say(
                args,
                f"{_clock(time.time())}  service fold: seen at depth in block {deposit['block']}: {deposit['amount']} BTC to the deposit address of "
                f"{deposit['account']}; its DEPOSIT_CREDIT credits {deposit['credit']} BTC (the rest pays the sweep)",
            )
        view = await asyncio.to_thread(status.credit_message, txid, vout) if deposit is not None else None
        if view is not None:
            result["message"] = view
            _timeline_news(args, view["timeline"], shown["timeline"], skip=("chain",))
        credit = await asyncio.to_thread(status.btc_credit, txid, vout)
        if credit is not None:
            result["credit"] = credit
            delivery = (view or {}).get("delivery") or {}
            where = f" (DEPOSIT_CREDIT delivered in tx {delivery['tx_hash']})" if delivery.get("tx_hash") else ""
            _say(args, f"{_clock(time.time())}  service replica: credited {credit['amount']} BTC as margin at ledger height {credit['ledger_height']}{where}")
            margin = [b for b in status.balances(credit["account"]) if b["asset"] == "BTC"]
            result["margin"] = margin[0] if margin else None
            if margin:
                _say(args, f"margin of {credit['account']}: {margin[0]['amount']} BTC ({margin[0]['held']} held for withdrawals)")
            _say(args, f"credited {time.monotonic() - started:.1f}s after the payment")
            return 0
        if deposit is None:
            fold, tip = status.btc_height(), await adapter.height()
            where = "in the mempool" if mined is None else f"in block {mined}"
            why = f"the service's Bitcoin fold has read up to block {fold} (tip {tip}); the payment is {where}"
            if fold is None:
                why = "the service replica follows no Bitcoin yet: `bridgectl relayer run deliverer` keeps it (is it running, on this database?)"
            if args.mine and time.monotonic() - mined_at >= 1.0 and (mined is None or (fold is not None and fold >= tip)):
                await _mine(args, adapter)
                mined_at = time.monotonic()
        elif view is None:
            why = "no attester has signed its DEPOSIT_CREDIT yet (each signs once its own Bitcoin fold sees the deposit at depth)"
        else:
            why = view["waiting"] or "the credit is delivered; the service replica folds it next"
        elapsed = time.monotonic() - started
        if elapsed > args.timeout:
            result["waiting"] = why
            print(f"not credited after {elapsed:.0f}s: {printable(why)}", file=sys.stderr)
            return 3
        if why != shown["waiting"]:
            shown["waiting"], noted = why, time.monotonic()
        elif time.monotonic() - noted >= PROGRESS_EVERY:
            _say(args, f"{_clock(time.time())}  waiting: {printable(why)}")
            noted = time.monotonic() + PROGRESS_EVERY
        await asyncio.sleep(POLL)


def _timeline_news(args: argparse.Namespace, timeline: list[dict[str, Any]], seen: set, skip: tuple[str, ...] = ()) -> None:
    for entry in timeline:
        key = (entry["at"], entry["source"], entry["event"])
        if key not in seen and entry["source"] not in skip:
            seen.add(key)
            _say(args, f"{_clock(entry['at'])}  {entry['source']}: {printable(entry['event'])}")


# --- withdraw btc ---------------------------------------------------------------------------


def btc_destination(text: str, network: str) -> bytes:
    """The output script of a Bitcoin address for ``network``; ``InputError`` saying why not (an
    address of another network named as such; a script no payout may pay)."""
    from bridge.committee.replica import PAYABLE_SCRIPTS
    from chains.btc.address import NETWORKS, InvalidAddress, address_to_script
    from chains.btc.script import classify

    address = text.strip()
    if not address or len(address) > _MAX_ADDRESS_CHARS or not address.isascii() or not address.isprintable():
        raise InputError(f"--to: {address[:50]!r} is no Bitcoin address", field="to")
    try:
        script = address_to_script(address, network)
    except InvalidAddress as exc:
        others = [name for name in ("mainnet", "testnet", "regtest") if name != network and NETWORKS[name].hrp != NETWORKS[network].hrp]
        for other in others:
            try:
                address_to_script(address, other)
            except InvalidAddress:
                continue
            raise InputError(f"--to: {address} is a {other} address; this bridge pays on {network}", field="to") from None
        raise InputError(f"--to: not a {network} address: {exc.message}", field="to") from None
    kind = classify(script)
    if kind not in PAYABLE_SCRIPTS:
        raise InputError(f"--to: {address} pays a {kind} script, which no payout pays (P2PKH, P2SH, P2WPKH, P2WSH or P2TR)", field="to")
    return script


async def cmd_withdraw_btc(args: argparse.Namespace) -> int:
    from bridge.swaps.assets import BTC

    settings = _settings(args)
    config = _config(settings)
    terms = _btc_terms(config)
    network = terms.policy.network
    amount = _amount(args, BTC)
    script = btc_destination(args.to, network)
    if amount < terms.min_deposit:
        raise InputError(
            f"amount: {BTC.to_whole(amount)} BTC is below this bridge's minimum of {BTC.to_whole(terms.min_deposit)} BTC; the payout's fee comes out of it",
            field="amount",
        )
    if args.mine and network != "regtest":
        raise InputError(f"--mine mines devnet blocks: regtest only (this bridge's custody is on {network})", field="mine")
    key = _key(args, settings)
    address = args.to.strip()
    bridge = await _connect(settings, config)
    try:
        sender = bridge.chain.account(key).address
        receipt, nonce = await _request(bridge, config, sender, f"{BTC.to_whole(amount)} BTC", bridge.request_btc_withdrawal(key, amount, script))
    finally:
        await bridge.chain.close()
    result: dict[str, Any] = {
        "request": nonce,
        "account": sender,
        "asset": "BTC",
        "amount": BTC.to_whole(amount),
        "amount_base": str(amount),
        "to": address,
        "destination": script.hex(),
        "tx": receipt.tx_hash,
        "block": receipt.block_number,
    }
    tx = f"tx {receipt.tx_hash} in block {receipt.block_number}"
    _say(args, f"withdrawal request {nonce}: {BTC.to_whole(amount)} BTC of the margin of {sender} to {address}, {tx}")
    if args.no_wait:
        if args.json:
            emit(args, result)
        else:
            print(f"follow it with `bridgectl withdraw status {nonce}`")
        return 0
    _say(args, f"following it until paid on Bitcoin and posted (up to {args.timeout:.0f}s; `bridgectl withdraw status {nonce}` shows it any time)")
    code = await _follow_btc(args, settings, config, result)
    if args.json:
        emit(args, result)
    return code


async def _follow_btc(args: argparse.Namespace, settings: Settings, config, result: dict[str, Any]) -> int:
    """Print each step of a BTC withdrawal: the replica's hold, the payout (PSBT, signatures,
    broadcast, depth), the PAYOUT_DONE (signatures, delivery), the posting; exit code."""
    status = _status(settings, config)
    adapter = None
    if args.mine:
        from chains.bitcoin import BitcoinAdapter

        adapter = BitcoinAdapter.from_settings(settings)
    nonce, mined_at = result["request"], [time.monotonic()]

    async def ended(view: dict[str, Any]) -> tuple[int, str] | None:
        result["status"] = view
        return _btc_ended(view)

    async def mine() -> None:
        if adapter is not None and time.monotonic() - mined_at[0] >= 1.0 and await adapter.rpc.call("getrawmempool"):
            await _mine(args, adapter)
            mined_at[0] = time.monotonic()

    try:
        return await _poll(args, status, result, lambda: status.withdrawal(nonce), _btc_progress, ended, f"`bridgectl withdraw status {nonce}`", mine)
    finally:
        status.close()
        if adapter is not None:
            await adapter.close()


def _btc_progress(args: argparse.Namespace, view: dict[str, Any], shown: dict[str, Any]) -> None:
    request, payout = view["request"], view.get("payout")
    if request is not None and request["state"] != shown["request"]:
        shown["request"] = request["state"]
        if request["state"] == "held":
            to = request.get("destination_address") or request.get("destination") or "its destination"
            _say(args, f"{_clock(time.time())}  service replica: {request['amount']} BTC held; the committee pays it on Bitcoin to {to}")
        elif request["state"] == "refused":
            _say(args, f"{_clock(time.time())}  service replica: refused: {printable(request['reason'])}")
    _timeline_news(args, view["timeline"], shown["timeline"], skip=("chain",))
    if payout is not None and (payout["state"], payout["txid"]) != shown["payout"]:
        shown["payout"] = (payout["state"], payout["txid"])
        if payout["state"] == "broadcast":
            fee = f", fee {payout['fee']} BTC" if payout["fee"] is not None else ""
            _say(args, f"{_clock(time.time())}  bitcoin: payout tx {payout['txid']} broadcast: pays {payout['paid']} BTC{fee} at {payout['feerate']} sat/vB")
        elif payout["state"] in ("confirmed", "done") and payout["confirmed"]:
            _say(args, f"{_clock(time.time())}  bitcoin: payout tx {payout['txid']} at depth in block {payout['confirmed']['block']}")


def _btc_ended(view: dict[str, Any]) -> tuple[int, str] | None:
    request, payout, delivery = view["request"], view.get("payout"), view["delivery"]
    if request is not None and request["state"] == "refused":
        return 1, f"refused: {printable(request['reason'])}; nothing is held, nothing paid"
    if request is not None and request["state"] == "released":
        tx = f" in Bitcoin tx {payout['txid']}" if payout and payout["txid"] else ""
        block = f" (block {payout['confirmed']['block']})" if payout and payout.get("confirmed") else ""
        paid = f" ({payout['paid']} BTC after the {payout['fee']} BTC fee)" if payout and payout["paid"] and payout["fee"] else ""
        done = f"; PAYOUT_DONE delivered in tx {delivery['tx_hash']}" if delivery and delivery["tx_hash"] else ""
        to = request.get("destination_address") or "its destination"
        return 0, f"paid: {request['amount']} BTC of margin to {to}{paid}{tx}{block}{done}; the hold is posted"
    if payout is not None and payout["state"] == "failed":
        return 1, f"payout failed: {printable(view['outcome'] or payout['history'][-1]['note'])}"
    if delivery is not None and delivery["state"] in ("expired", "refused"):
        return 1, f"PAYOUT_DONE {delivery['state']}: {printable(view['outcome'])}"
    return None


# --- withdraw status ------------------------------------------------------------------------


def render_withdrawal(view: dict[str, Any]) -> str:
    request = view["request"] or {}
    what = f"{request.get('amount', '?')} {request.get('asset', '')}"
    head = f"withdrawal request {request.get('nonce', '?')}  {what}  request state: {request.get('state', '?')}"
    return head + "\n" + render_message(view)


def _payout_lines(payout: dict[str, Any] | None) -> list[str]:
    p = printable
    if payout is None:
        return ["  payout      none planned yet"]
    tx = f", tx {payout['txid']}" if payout["txid"] else ""
    paid = f", pays {payout['paid']} BTC" if payout["paid"] is not None else ""
    fee = f", fee {payout['fee']} BTC" if payout["fee"] is not None else ""
    bumps = f", {payout['bumps']} fee bump{'s' if payout['bumps'] != 1 else ''}"
    depth = f", at depth in block {payout['confirmed']['block']}" if payout.get("confirmed") else ""
    lines = [f"  payout      {payout['id']} {p(payout['state'])}{tx}{paid}{fee}, {payout['feerate']} sat/vB{bumps}{depth}"]
    for prop in payout["proposals"]:
        signed = ", ".join(f"{m['index']} {_short(m['address'])}" for m in prop["signed"] if m["index"] is not None) or "none"
        missing = ", ".join(f"{m['index']} {_short(m['address'])}" for m in prop["missing"]) or "none"
        count = len([m for m in prop["signed"] if m["index"] is not None])
        tally = f"{count} of {prop['size']} signed, {prop['threshold']} needed; signed: {signed}; missing: {missing}"
        lines.append(f"              PSBT {prop['txid']} (round {prop['round']}): {tally}")
    if payout["last_error"] and payout["state"] not in ("done", "failed"):
        lines.append(f"              last: {p(payout['last_error'])}")
    return lines


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
        if request.get("destination"):
            lines.append(f"              to Bitcoin {request.get('destination_address') or '(no address)'} (output script {request['destination']})")
        if view.get("request_note"):
            lines.append(f"              note: {p(view['request_note'])}")
    if request is not None and request["asset"] == "BTC" and "payout" in view:  # paid on Bitcoin
        lines += _payout_lines(view["payout"])
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


async def cmd_withdraw_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    status = _status(settings, _config(settings), args.db)
    try:
        view = await asyncio.to_thread(status.withdrawal, args.nonce)
    finally:
        status.close()
    emit(args, view, text=render_withdrawal(view))
    return 0


def _nonce(value: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) >= 1 << 64:
        raise argparse.ArgumentTypeError(f"a request nonce is a whole number 0..2^64-1, got {value[:40]!r}")
    return int(text)


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
    btc = cmds.add_parser(
        "btc",
        help="the account's Bitcoin deposit address and script (registering its key first); --verify checks an address; --fund pays it on a devnet",
    )
    btc.add_argument("--account", metavar="ACCT", help="the account: an EVM address, or N for devnet test account N (default: the key's account)")
    btc.add_argument("--key-env", metavar="VAR", help=f"environment variable holding the account's EVM key, to register it (default {DEFAULT_KEY_ENV})")
    btc.add_argument("--verify", metavar="ADDRESS", help="check that ADDRESS is the account's deposit address (exit 0) or say why not (exit 1)")
    btc.add_argument("--refund-pubkey", metavar="HEX", help="derive with this compressed key (the account's own) instead of the one it registered")
    btc.add_argument("--fund", metavar="AMOUNT", help="devnet: pay AMOUNT (whole BTC, e.g. 0.5) to the address from a devnet BTC test key, then follow it")
    btc.add_argument("--btc-key", type=int, default=1, metavar="N", help="devnet BTC test key that pays --fund (default 1)")
    btc.add_argument("--base-units", action="store_true", help="--fund is in sats")
    btc.add_argument("--mine", action="store_true", help="devnet: mine the blocks the deposit needs to reach depth")
    btc.add_argument("--no-wait", action="store_true", help="do not wait for the service replica (the registration, the credit)")
    btc.add_argument("--timeout", type=float, default=120.0, help="seconds to wait before giving up (exit 3; default 120)")
    btc.add_argument("--json", action="store_true", help="print JSON (amounts in base units too)")
    btc.set_defaults(func=cmd_deposit_btc)

    withdraw = sub.add_parser("withdraw", help="withdraw margin from the bridge")
    cmds = withdraw.add_subparsers(dest="withdraw_cmd", metavar="CHAIN", required=True)
    evm = cmds.add_parser("evm", help="request a withdrawal on the bridge contract; follows it until a quorum's release pays it")
    _value_options(evm, "withdraw", 120.0)
    evm.set_defaults(func=cmd_withdraw_evm)
    btc = cmds.add_parser("btc", help="request BTC margin paid to a Bitcoin address; follows the payout until it is at depth and posted")
    btc.add_argument("--amount", required=True, help="how much to withdraw, in whole BTC (0.2); sats with --base-units")
    btc.add_argument("--to", required=True, metavar="BTC_ADDRESS", help="the Bitcoin address to pay (of the bridge's network)")
    btc.add_argument("--base-units", action="store_true", help="--amount is in sats")
    keys = btc.add_mutually_exclusive_group()
    keys.add_argument(
        "--key-env", default=DEFAULT_KEY_ENV, metavar="VAR", help=f"environment variable holding the EVM key that signs (default {DEFAULT_KEY_ENV})"
    )
    keys.add_argument("--account", type=int, default=None, metavar="N", help="sign with devnet test account N (devnet only)")
    btc.add_argument("--mine", action="store_true", help="devnet: mine a block whenever a transaction waits (the sweep, the payout)")
    btc.add_argument("--no-wait", action="store_true", help="send and return, without following the payout")
    btc.add_argument("--timeout", type=float, default=180.0, help="seconds to wait before giving up (exit 3; default 180)")
    btc.add_argument("--json", action="store_true", help="print JSON (amounts in base units too)")
    btc.set_defaults(func=cmd_withdraw_btc)
    st = cmds.add_parser("status", help="a withdrawal request: the replica's hold, its payout on Bitcoin (BTC), its message and delivery, one timeline")
    st.add_argument("nonce", type=_nonce, help="the request's nonce (printed by `withdraw evm|btc`)")
    st.add_argument("--db", help="the service database (default: the settings' database_url)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=cmd_withdraw_status)

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
