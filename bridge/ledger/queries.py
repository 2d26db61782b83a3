"""Read side: balances now and at a past height, history, transfers by cause, export.

Reads never lock.  A balance at height H comes from ``ledger_balance_history``:
the last row of each account at or below H (one index range per account), so
snapshots of any height cost the number of accounts, not the number of transfers.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from typing import IO, Iterator

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection, Engine

from bridge.core.errors import InputError, NotFound
from bridge.ledger.bounds import MAX_INT64, check_account_id, check_int, check_text
from bridge.ledger.models import (
    TRANSFER_COLUMNS,
    LedgerAccount,
    LedgerBalance,
    LedgerBalanceHistory,
    LedgerHead,
    LedgerTransfer,
)

_T = LedgerTransfer.__table__
_B = LedgerBalance.__table__
_H = LedgerBalanceHistory.__table__
_A = LedgerAccount.__table__
_HEAD = LedgerHead.__table__

EXPORT_FORMATS = ("jsonl", "csv")


@dataclass(frozen=True)
class BalanceView:
    account_id: int
    owner: str
    kind: str
    asset: str
    #: Posted balance: credits - debits.  Negative only for kinds that allow it.
    balance: int
    debits_pending: int
    credits_pending: int
    #: Height of the last change at or below the height asked for.
    height: int

    @property
    def available(self) -> int:
        return self.balance - self.debits_pending

    def to_dict(self) -> dict:
        return {**asdict(self), "available": self.available}


@dataclass(frozen=True)
class TransferView:
    height: int
    idx: int
    id: str
    kind: str
    debit_account: int
    credit_account: int
    asset: str
    amount: int
    pending_id: str | None
    timeout: int | None
    cause: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def begin_snapshot(conn: Connection) -> None:
    """Make every following read on ``conn`` see one consistent state of the books."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    else:
        # pysqlite opens no transaction for SELECTs, so each would see the latest commit;
        # an explicit (deferred) BEGIN pins the WAL snapshot at the first read.
        conn.exec_driver_sql("BEGIN")


def current_height(conn: Connection) -> int:
    return conn.execute(select(_HEAD.c.height).where(_HEAD.c.id == 1)).scalar_one()


def balances(engine: Engine, account_id: int | None = None, at: int | None = None, owner: str | None = None) -> list[BalanceView]:
    """Balances of every account (or one, or one owner's) now, or as of height ``at``."""
    if account_id is not None:
        check_account_id(account_id)
    check_text(owner, "owner", 200, optional=True)
    with engine.connect() as conn:
        begin_snapshot(conn)  # the height check and the rows must agree
        head = current_height(conn)
        if at is not None and (not _is_height(at) or at > head):
            raise InputError(f"height must be 0..{head} (the current height), got {at!r}", field="at")
        if at is None:
            src = _B
            q = select(
                _A.c.id, _A.c.owner, _A.c.kind, _A.c.asset, src.c.debits_posted, src.c.credits_posted, src.c.debits_pending, src.c.credits_pending, src.c.height
            ).join(src, src.c.account_id == _A.c.id)
        else:
            last = select(_H.c.account_id, func.max(_H.c.height).label("height")).where(_H.c.height <= at).group_by(_H.c.account_id).subquery()
            q = (
                select(
                    _A.c.id, _A.c.owner, _A.c.kind, _A.c.asset, _H.c.debits_posted, _H.c.credits_posted, _H.c.debits_pending, _H.c.credits_pending, _H.c.height
                )
                .join(last, last.c.account_id == _A.c.id)
                .join(_H, and_(_H.c.account_id == last.c.account_id, _H.c.height == last.c.height))
            )
        if account_id is not None:
            q = q.where(_A.c.id == account_id)
        if owner is not None:
            q = q.where(_A.c.owner == owner)
        rows = conn.execute(q.order_by(_A.c.id)).all()
        if account_id is not None and not rows:
            exists = conn.execute(select(_A.c.id).where(_A.c.id == account_id)).first()
            if exists is None:
                raise NotFound(f"unknown account id {account_id}", account=account_id)
            # The account had no transfer yet at that height: its balance was zero.
            acc = conn.execute(select(_A).where(_A.c.id == account_id)).mappings().one()
            return [BalanceView(acc["id"], acc["owner"], acc["kind"], acc["asset"], 0, 0, 0, 0)]
    return [
        BalanceView(r.id, r.owner, r.kind, r.asset, int(r.credits_posted) - int(r.debits_posted), int(r.debits_pending), int(r.credits_pending), r.height)
        for r in rows
    ]


def leaves(engine: Engine, at: int) -> list[tuple[int, str, int]]:
    """``(account_id, asset, balance)`` of every account changed up to height ``at``, sorted:
    what a snapshot of that height publishes.  Rows at or below a committed height never
    change, so this is exact however many batches commit meanwhile."""
    return sorted((b.account_id, b.asset, b.balance) for b in balances(engine, at=at))


def _is_height(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _view(r) -> TransferView:
    return TransferView(**{c: getattr(r, c) for c in TRANSFER_COLUMNS})


def history(engine: Engine, account_id: int, limit: int = 100, before_height: int | None = None) -> list[TransferView]:
    """Transfers that touched ``account_id``, newest first."""
    check_account_id(account_id)
    check_int(limit, "limit", 0, MAX_INT64)
    if before_height is not None:
        check_int(before_height, "height", 0, MAX_INT64, "before_height")
    q = select(_T).where(or_(_T.c.debit_account == account_id, _T.c.credit_account == account_id))
    if before_height is not None:
        q = q.where(_T.c.height < before_height)
    q = q.order_by(_T.c.height.desc(), _T.c.idx.desc()).limit(limit)
    with engine.connect() as conn:
        return [_view(r) for r in conn.execute(q)]


def transfers_by_cause(engine: Engine, cause: str) -> list[TransferView]:
    check_text(cause, "cause", 200)
    with engine.connect() as conn:
        return [_view(r) for r in conn.execute(select(_T).where(_T.c.cause == cause).order_by(_T.c.height, _T.c.idx))]


def transfer(engine: Engine, transfer_id: str) -> TransferView:
    check_text(transfer_id, "transfer id", 200, "id")
    with engine.connect() as conn:
        r = conn.execute(select(_T).where(_T.c.id == transfer_id)).first()
    if r is None:
        raise NotFound(f"no transfer {transfer_id!r}", transfer_id=transfer_id)
    return _view(r)


def check_range(from_height: int, to_height: int) -> None:
    """Refuse a height range that is not two heights, lowest first."""
    check_int(from_height, "--from height", 0, MAX_INT64, "from")
    check_int(to_height, "--to height", 0, MAX_INT64, "to")
    if from_height > to_height:
        raise InputError(f"--from {from_height} is above --to {to_height}", field="from")


def iter_transfers(engine: Engine, from_height: int, to_height: int, page: int = 5000) -> Iterator[TransferView]:
    """Transfers with ``from_height <= height <= to_height`` in commit order, read in pages
    (the range is checked at the call, before the first transfer is asked for)."""
    check_range(from_height, to_height)
    return _iter_transfers(engine, from_height, to_height, page)


def _iter_transfers(engine: Engine, from_height: int, to_height: int, page: int) -> Iterator[TransferView]:
    key = (from_height, -1)
    with engine.connect() as conn:
        while True:
            q = (
                select(_T)
                .where(or_(_T.c.height > key[0], and_(_T.c.height == key[0], _T.c.idx > key[1])), _T.c.height <= to_height)
                .order_by(_T.c.height, _T.c.idx)
                .limit(page)
            )
            rows = conn.execute(q).all()
            for r in rows:
                yield _view(r)
            if len(rows) < page:
                return
            key = (rows[-1].height, rows[-1].idx)


def export(engine: Engine, out: IO[str], from_height: int, to_height: int, fmt: str = "jsonl") -> int:
    """Write the transfers of a height range; returns how many.

    Amounts are written as decimal strings in both formats: JSON readers in most
    languages parse numbers as doubles, which are exact only up to 2^53.
    """
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}", field="format")
    check_range(from_height, to_height)
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(TRANSFER_COLUMNS)
        for t in iter_transfers(engine, from_height, to_height):
            writer.writerow(["" if v is None else v for v in (getattr(t, c) for c in TRANSFER_COLUMNS)])
            n += 1
    else:
        for t in iter_transfers(engine, from_height, to_height):
            d = t.to_dict()
            d["amount"] = str(d["amount"])
            out.write(json.dumps(d, sort_keys=True) + "\n")
            n += 1
    return n
