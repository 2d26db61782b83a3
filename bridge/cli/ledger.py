"""`bridgectl ledger …`: inspect the books, post transfers by hand, audit, export, margin health.

The database is ``--db URL``, else the settings' ``database_url`` (default: the SQLite
file in the data dir).  An ACCOUNT is its numeric id or ``OWNER/KIND/ASSET`` (e.g.
``alice/user/BTC``).  Amounts are integers in base units (sats, wei, token units);
prices are USD with 8 decimals per whole unit.

``ledger health`` has two views.  Where a bridge's committee.json is found (as ``bridgectl
message`` and ``withdraw`` find it: ``[committee] config``, else ``<data dir>/committee.json``),
it shows the bridge: each account's health on the contract beside the service replica's, with
its positions (``bridge/cli/margin.py``).  Otherwise, with ``--standalone``, or with any of the
standalone options (``--quorum``, ``--max-age``, ``--max-spread-bps``, ``--threshold-bps``,
``--scan``), it shows the margin view of the ledger's own recorded price reports.  ``--bridge``
asks for the bridge view whatever is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge.cli import emit
from bridge.cli import printable as p
from bridge.core.db import make_engine
from bridge.core.errors import InputError
from bridge.ledger import ACCOUNT_KINDS, Account, Ledger, Transfer, erc20, queries
from bridge.ledger.audit import audit
from bridge.ledger.margin import MarginView, PricePolicy, PriceReport
from bridge.core.settings import load_settings


def _ledger(args: argparse.Namespace) -> Ledger:
    url = args.db or load_settings(args.config, data_dir=args.data_dir).db_url
    return Ledger(make_engine(url))


#: Longest integer text accepted (an amount below 2^128 has 39 digits); the ledger checks each range.
MAX_INT_CHARS = 100


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "…")


def _int(what: str):
    """An argparse ``type``: ASCII digits (``_`` separators, a leading ``-``); the ledger API checks the range."""

    def parse(value: str) -> int:
        text = value.strip().replace("_", "")
        digits = text.removeprefix("-")
        if len(text) > MAX_INT_CHARS or not digits.isascii() or not digits.isdigit():
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {_shown(value)}")
        return int(text, 10)

    return parse


def _account(ledger: Ledger, ref: str) -> Account:
    if ref.isascii() and ref.isdigit():
        if len(ref) > MAX_INT_CHARS:
            raise InputError(f"account id {_shown(ref)} is out of range", field="account")
        return ledger.account(int(ref))
    parts = ref.split("/", 2)
    if len(parts) != 3:
        raise InputError(f"account must be an id or OWNER/KIND/ASSET, got {_shown(ref)}", field="account")
    return ledger.find_account(*parts)


def _commit(args: argparse.Namespace, ledger: Ledger, t: Transfer) -> None:
    r = ledger.commit([t])
    data = {"transfer": t.id, "height": r.height, "applied": r.applied, "replayed": r.replayed}
    text = f"{p(t.id)}: committed at height {r.height}" if r.applied else f"{p(t.id)}: already committed (no change)"
    emit(args, data, text)


def cmd_assets(args):
    assets = _ledger(args).assets()
    rows = [a.row() for a in assets.values()]
    emit(args, rows, "\n".join(f"{p(a.code):<60} {p(a.symbol):<8} decimals={a.decimals:<3} haircut={a.haircut_bps}bps" for a in assets.values()))


def cmd_asset_add(args):
    asset = _ledger(args).register_asset(erc20(args.chain_id, args.address, args.decimals, args.symbol, args.haircut_bps))
    emit(args, asset.row(), f"registered {p(asset.code)}")


def cmd_haircut(args):
    asset = _ledger(args).set_haircut(args.asset, args.bps)
    emit(args, asset.row(), f"{p(asset.code)}: haircut {asset.haircut_bps} bps")


def cmd_open(args):
    acc = _ledger(args).open_account(args.owner, args.kind, args.asset, True if args.allow_negative else None)
    emit(args, acc.__dict__, f"account {acc.id}: {p(acc.name)}{' (may go negative)' if acc.allow_negative else ''}")


def cmd_accounts(args):
    accs = _ledger(args).accounts(args.owner)
    emit(args, [a.__dict__ for a in accs], "\n".join(f"{a.id:>6} {p(a.name)}" for a in accs) or "no accounts")


def cmd_transfer(args):
    ledger = _ledger(args)
    d, c = _account(ledger, args.debit), _account(ledger, args.credit)
    if args.pending:
        t = Transfer.hold(args.id, d.id, c.id, args.amount, timeout=args.timeout, cause=args.cause)
    elif args.timeout is not None:
        raise InputError("--timeout only applies with --pending", field="timeout")
    else:
        t = Transfer(args.id, d.id, c.id, args.amount, cause=args.cause)
    _commit(args, ledger, t)


def cmd_post(args):
    _commit(args, _ledger(args), Transfer.post(args.id, args.pending_id, args.amount, cause=args.cause))


def cmd_void(args):
    _commit(args, _ledger(args), Transfer.void(args.id, args.pending_id, cause=args.cause))


def cmd_expire(args):
    heights = _ledger(args).expire_due()
    emit(args, {"heights": list(heights)}, f"voided timed-out holds at height {heights[0]}" if heights else "no hold has timed out")


def cmd_balances(args):
    ledger = _ledger(args)
    account_id = _account(ledger, args.account).id if args.account else None
    views = queries.balances(ledger.engine, account_id, at=args.at, owner=args.owner)
    height = args.at if args.at is not None else ledger.height()
    lines = [f"height {height}"] + [
        f"{v.account_id:>6} {p(v.owner)}/{p(v.kind)}/{p(v.asset)}  balance={v.balance} available={v.available}"
        + (f" pending_out={v.debits_pending}" if v.debits_pending else "")
        + (f" pending_in={v.credits_pending}" if v.credits_pending else "")
        for v in views
    ]
    emit(args, {"height": height, "balances": [v.to_dict() for v in views]}, "\n".join(lines))


def _transfer_line(t: queries.TransferView) -> str:
    extra = f" pending={p(t.pending_id)}" if t.pending_id else ""
    extra += f" cause={p(t.cause)}" if t.cause else ""
    return f"h{t.height}.{t.idx} {p(t.id)} {t.kind} {t.debit_account}->{t.credit_account} {t.amount} {p(t.asset)}{extra}"


def cmd_history(args):
    ledger = _ledger(args)
    acc = _account(ledger, args.account)
    ts = queries.history(ledger.engine, acc.id, limit=args.limit)
    emit(args, [t.to_dict() for t in ts], "\n".join(_transfer_line(t) for t in ts) or f"no transfers on {p(acc.name)}")


def cmd_show(args):
    ledger = _ledger(args)
    ts = queries.transfers_by_cause(ledger.engine, args.cause) if args.cause else [queries.transfer(ledger.engine, args.id)]
    emit(args, [t.to_dict() for t in ts], "\n".join(_transfer_line(t) for t in ts) or "no transfers")


def cmd_audit(args):
    report = audit(_ledger(args).engine)
    lines = [f"height {report.height}: {report.transfers} transfers, {report.accounts} accounts"]
    lines += [f"  {p(a)}: sum {t['balance']}, pending {t['debits_pending']}" for a, t in report.totals.items()]
    lines += ["OK: every asset sums to zero and the stored balances equal the replay"] if report.ok else [f"PROBLEM: {p(x)}" for x in report.problems]
    emit(args, report.to_dict(), "\n".join(lines))
    return 0 if report.ok else 1


def cmd_export(args):
    ledger = _ledger(args)
    to = ledger.height() if args.to is None else args.to
    queries.check_range(args.from_, to)  # before the output file is created
    if args.output:
        with Path(args.output).open("w", newline="") as out:
            n = queries.export(ledger.engine, out, args.from_, to, args.format)
        print(f"wrote {n} transfers (heights {args.from_}..{to}) to {args.output}", file=sys.stderr)
    else:
        queries.export(ledger.engine, sys.stdout, args.from_, to, args.format)


#: The standalone margin view's defaults (``health`` leaves them unset, to tell the two views apart).
VIEW_DEFAULTS = {"quorum": 2, "max_age": 300, "max_spread_bps": 200, "threshold_bps": 11_000}


def _view(args) -> MarginView:
    value = {k: d if getattr(args, k, None) is None else getattr(args, k) for k, d in VIEW_DEFAULTS.items()}
    policy = PricePolicy(quorum=value["quorum"], max_age=value["max_age"], max_spread_bps=value["max_spread_bps"])
    return MarginView(_ledger(args).engine, policy, threshold_bps=value["threshold_bps"])


def cmd_price(args):
    view = _view(args)
    report = PriceReport(args.asset, args.price, args.timestamp if args.timestamp is not None else view.clock(), args.reporter)
    view.record_price(report)
    emit(args, report.__dict__, f"{p(report.reporter)}: {p(report.asset)} = {report.price} at {report.timestamp}")


def cmd_health(args):
    from bridge.cli.margin import cmd_bridge_health, wants_bridge_view

    if wants_bridge_view(args):
        return cmd_bridge_health(args)
    view = _view(args)
    healths = view.health(args.owner)
    events = view.scan() if args.scan else []
    lines = [
        f"{p(h.owner)}: collateral {h.collateral_value} liabilities {h.liability_value} health "
        f"{'-' if h.health_bps is None else h.health_bps} bps (threshold {h.threshold_bps})" + ("  LIQUIDATABLE" if h.liquidatable else "")
        for h in healths
    ]
    lines += [f"event {e.seq}: {p(e.owner)} is {e.state}" for e in events]
    emit(args, {"health": [h.to_dict() for h in healths], "events": [e.__dict__ for e in events]}, "\n".join(lines) or "no positions")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ledger", help="the cross-chain margin ledger: balances, transfers, audit, export, health")
    lsub = p.add_subparsers(dest="ledger_cmd", metavar="ACTION", required=True)

    def cmd(name: str, help: str, func) -> argparse.ArgumentParser:
        sp = lsub.add_parser(name, help=help)
        sp.add_argument("--db", help="database URL (default: settings database_url, else the data dir's SQLite file)")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=func)
        return sp

    bal = cmd("balances", "balances of every account, or of one, now or at a past height", cmd_balances)
    bal.add_argument("account", nargs="?", help="account id or OWNER/KIND/ASSET")
    bal.add_argument("--at", type=_int("height"), help="ledger height (default: now)")
    bal.add_argument("--owner", help="only this owner's accounts")

    hist = cmd("history", "transfers of one account, newest first", cmd_history)
    hist.add_argument("account", help="account id or OWNER/KIND/ASSET")
    hist.add_argument("--limit", type=_int("limit"), default=50)

    show = cmd("show", "one transfer by id, or every transfer of a cause", cmd_show)
    which = show.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="transfer id")
    which.add_argument("--cause", help="cause (e.g. swap:ID)")

    cmd("audit", "replay every transfer and check sums, balances, holds and heights (exit 1 on a problem)", cmd_audit)

    exp = cmd("export", "write the transfers of a height range as JSON Lines or CSV", cmd_export)
    exp.add_argument("--from", dest="from_", type=_int("height"), default=1)
    exp.add_argument("--to", type=_int("height"), help="last height (default: current)")
    exp.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    exp.add_argument("--output", "-o", help="file (default: stdout)")

    for name, help, func in (
        (
            "health",
            "margin health of one account or every account with collateral or debt: on the bridge beside the service replica "
            "(with a committee.json), else from recorded price reports",
            cmd_health,
        ),
        ("price", "record an oracle price report by hand", cmd_price),
    ):
        sp = cmd(name, help, func)
        # ``health`` leaves them unset: given, they ask for the standalone view.
        dflt = dict(VIEW_DEFAULTS) if name == "price" else dict.fromkeys(VIEW_DEFAULTS)
        sp.add_argument("--quorum", type=_int("quorum"), default=dflt["quorum"], help="standalone: fresh reporters needed (default 2)")
        sp.add_argument("--max-age", type=_int("seconds"), default=dflt["max_age"], help="standalone: seconds a report stays fresh (default 300)")
        sp.add_argument("--max-spread-bps", type=_int("bps"), default=dflt["max_spread_bps"], help="standalone: largest disagreement (default 200)")
        sp.add_argument("--threshold-bps", type=_int("bps"), default=dflt["threshold_bps"], help="standalone: liquidation threshold (default 11000)")
        if name == "health":
            sp.add_argument("owner", nargs="?", help="bridge view: an account address (default: every account); standalone: an owner (default: all)")
            sp.add_argument("--scan", action="store_true", help="standalone: also record threshold crossings as events")
            which = sp.add_mutually_exclusive_group()
            which.add_argument("--bridge", action="store_true", help="the bridge's view (contract and service replica), from committee.json")
            which.add_argument("--standalone", action="store_true", help="the view of the ledger's own recorded price reports")
        else:
            sp.add_argument("asset")
            sp.add_argument("price", type=_int("price"), help="USD with 8 decimals per whole unit")
            sp.add_argument("--reporter", required=True)
            sp.add_argument("--timestamp", type=_int("timestamp"), help="unix seconds (default: now)")

    tr = cmd("transfer", "move an amount from one account to another (or hold it with --pending)", cmd_transfer)
    tr.add_argument("id", help="transfer id, derived from its cause so a retry is harmless")
    tr.add_argument("debit", help="from: account id or OWNER/KIND/ASSET")
    tr.add_argument("credit", help="to: account id or OWNER/KIND/ASSET")
    tr.add_argument("amount", type=_int("amount"), help="integer base units")
    tr.add_argument("--cause")
    tr.add_argument("--pending", action="store_true", help="reserve only; post or void later")
    tr.add_argument("--timeout", type=_int("timeout"), help="seconds after which the hold voids itself")

    po = cmd("post", "post a pending transfer, fully or partly", cmd_post)
    po.add_argument("id")
    po.add_argument("pending_id")
    po.add_argument("--amount", type=_int("amount"), help="default: all of the hold")
    po.add_argument("--cause")

    vo = cmd("void", "void a pending transfer", cmd_void)
    vo.add_argument("id")
    vo.add_argument("pending_id")
    vo.add_argument("--cause")

    cmd("expire", "void every hold whose timeout has passed", cmd_expire)

    op = cmd("open", "open (or find) an account", cmd_open)
    op.add_argument("owner")
    op.add_argument("kind", choices=sorted(ACCOUNT_KINDS))
    op.add_argument("asset", help="asset code (BTC, ETH, ERC20:<chain>:<address>)")
    op.add_argument("--allow-negative", action="store_true", help="let the balance go below zero")

    ac = cmd("accounts", "list accounts", cmd_accounts)
    ac.add_argument("--owner")

    cmd("assets", "list the asset registry", cmd_assets)
    aa = cmd("asset-add", "register an ERC-20 by chain id and address", cmd_asset_add)
    aa.add_argument("--chain-id", type=_int("chain id"), required=True)
    aa.add_argument("--address", required=True)
    aa.add_argument("--decimals", type=_int("decimals"), required=True)
    aa.add_argument("--symbol", required=True)
    aa.add_argument("--haircut-bps", type=_int("bps"), default=0)

    hc = cmd("haircut", "set an asset's collateral haircut", cmd_haircut)
    hc.add_argument("asset")
    hc.add_argument("bps", type=_int("bps"))
