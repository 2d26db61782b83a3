"""Accounts and transfers: the only code that writes balances.

A batch is a list of transfers that commits together or not at all, in order
(a linked batch).  Committing it:

1. takes the write lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL row locks below),
2. voids holds whose timeout has passed (their own height, committed first),
3. finds which ids already exist with one ``SELECT ... WHERE id IN (...)``:
   same content is a no-op, other content an ``IdempotencyConflict``,
4. locks the balance rows of every account involved (``FOR UPDATE``, ascending
   account id, so two writers never wait on each other in a cycle),
5. applies the new transfers in order to those totals in Python (overdrafts,
   pending holds) and checks that every asset still sums to zero,
6. bumps the height and writes transfers, totals, history and holds with a few
   set-based statements.

Any refusal raises before step 6 and the transaction rolls back: nothing written.
Races between writers on PostgreSQL (a duplicate id or pending resolution slipping in
between steps 3 and 6, serialization failures, deadlocks) surface as the retryable
``LedgerConcurrencyError`` and the whole batch is retried through ``bridge.core.retry``.

Over 400 lines on purpose: every write of a balance is here and nowhere else, so the invariants
(sums zero per asset, no overdraft, holds) are checked in one place.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, NoReturn, Sequence

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from bridge.core.db import init_db
from bridge.core.errors import (
    IdempotencyConflict,
    InputError,
    LedgerConcurrencyError,
    LedgerError,
    Overdraft,
    PendingTransferError,
    UnknownAccount,
)
from bridge.ledger import assets as asset_registry
from bridge.ledger import bulk
from bridge.ledger.assets import Asset
from bridge.ledger.bounds import MAX_TIMEOUT, check_account_id, check_int, check_text
from bridge.ledger.models import (
    LEDGER_TABLES,
    MAX_AMOUNT,
    LedgerAccount,
    LedgerBalance,
    LedgerHead,
    LedgerTransfer,
)
from bridge.core.retry import DEFAULT_RETRY, RetryPolicy

#: Account kinds and whether their balance may go below zero.  The external world
#: (coins outside the bridge), custody mirrors (what the committee holds on chain,
#: which can lag the books) and debt (an owner's borrowings) are the sides that
#: may; everything that belongs to a user or holds value in trust may not.
ACCOUNT_KINDS: dict[str, bool] = {
    "user": False,
    "escrow": False,
    "fees": False,
    "custody": True,
    "external": True,
    "debt": True,
}
PUBLIC_KINDS = ("transfer", "pending", "post", "void")
MAX_ID_LEN = 200

_T = LedgerTransfer.__table__
_B = LedgerBalance.__table__
_A = LedgerAccount.__table__
_HEAD = LedgerHead.__table__

# PostgreSQL SQLSTATEs worth retrying the whole batch for: serialization failure,
# deadlock, unique violation (a concurrent writer committed the same id first), lock timeout.
_RETRY_PGCODES = {"40001", "40P01", "23505", "55P03"}


@dataclass(frozen=True)
class Transfer:
    """What a caller asks for.  Build with the class methods for two-phase kinds."""

    id: str
    debit: int | None = None
    credit: int | None = None
    amount: int | None = None
    kind: str = "transfer"
    pending_id: str | None = None
    timeout: int | None = None
    cause: str | None = None

    @classmethod
    def hold(cls, id: str, debit: int, credit: int, amount: int, timeout: int | None = None, cause: str | None = None) -> "Transfer":
        """A pending transfer: reserves ``amount`` on ``debit`` until posted, voided or timed out."""
        return cls(id, debit, credit, amount, "pending", timeout=timeout, cause=cause)

    @classmethod
    def post(cls, id: str, pending_id: str, amount: int | None = None, cause: str | None = None) -> "Transfer":
        """Post a pending transfer, fully (``amount=None``) or partly (the rest is released)."""
        return cls(id, amount=amount, kind="post", pending_id=pending_id, cause=cause)

    @classmethod
    def void(cls, id: str, pending_id: str, cause: str | None = None) -> "Transfer":
        return cls(id, kind="void", pending_id=pending_id, cause=cause)


@dataclass(frozen=True)
class Account:
    id: int
    owner: str
    kind: str
    asset: str
    allow_negative: bool

    @property
    def name(self) -> str:
        return f"{self.owner}/{self.kind}/{self.asset}"


@dataclass(frozen=True)
class CommitResult:
    #: Height of the batch, or None when every transfer was already there.
    height: int | None
    applied: int
    replayed: int
    #: Heights of holds voided by timeout before this batch.
    expired_heights: tuple[int, ...] = ()


@dataclass
class _Hold:
    id: str
    debit: int
    credit: int
    asset: str
    amount: int
    expires_at: int | None
    from_db: bool


@dataclass
class _Totals:
    asset: str
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    touched: bool = field(default=False)

    def available(self) -> int:
        return self.credits_posted - self.debits_posted - self.debits_pending


def _check_owner(owner: object) -> None:
    if not isinstance(owner, str) or not 1 <= len(owner) <= 200 or "/" in owner or "\x00" in owner:
        raise InputError(f"owner must be 1..200 characters without '/', got {owner!r}", field="owner")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_amount(t: Transfer, amount: object) -> None:
    if not _is_int(amount) or not 1 <= amount <= MAX_AMOUNT:  # type: ignore[operator]
        raise InputError(f"transfer {t.id}: amount must be an integer in 1..2^128-1, got {amount!r}", field="amount", transfer_id=t.id)


def check_shape(t: Transfer, internal: bool = False) -> None:
    """Refuse malformed transfers before touching the database: every integer is range-checked
    against what its column can hold, so no driver error (overflow) can come later."""
    if not isinstance(t, Transfer):
        raise InputError(f"not a Transfer: {t!r}")
    check_text(t.id, "transfer id", MAX_ID_LEN, "id")
    if t.kind not in PUBLIC_KINDS and not (internal and t.kind == "expire"):
        raise InputError(f"transfer {t.id}: kind must be one of {', '.join(PUBLIC_KINDS)}, got {t.kind!r}", field="kind", transfer_id=t.id)
    check_text(t.cause, f"transfer {t.id}: cause", MAX_ID_LEN, "cause", optional=True, transfer_id=t.id)
    if t.kind in ("transfer", "pending"):
        for name in ("debit", "credit"):
            check_account_id(getattr(t, name), name, transfer_id=t.id)
        if t.debit == t.credit:
            raise InputError(f"transfer {t.id}: debit and credit are the same account {t.debit}", field="credit", transfer_id=t.id)
        _check_amount(t, t.amount)
        if t.pending_id is not None:
            raise InputError(f"transfer {t.id}: pending_id is only for post and void", field="pending_id", transfer_id=t.id)
        if t.timeout is not None:
            if t.kind != "pending":
                raise InputError(f"transfer {t.id}: timeout must be a positive number of seconds on a pending transfer", field="timeout", transfer_id=t.id)
            check_int(t.timeout, f"transfer {t.id}: timeout (seconds)", 1, MAX_TIMEOUT, "timeout", transfer_id=t.id)
    else:
        if not isinstance(t.pending_id, str) or not t.pending_id:
            raise InputError(f"transfer {t.id}: {t.kind} needs the id of a pending transfer", field="pending_id", transfer_id=t.id)
        check_text(t.pending_id, f"transfer {t.id}: pending_id", MAX_ID_LEN, "pending_id", transfer_id=t.id)
        if t.debit is not None or t.credit is not None or t.timeout is not None:
            raise InputError(f"transfer {t.id}: {t.kind} takes its accounts from the pending transfer", field="debit", transfer_id=t.id)
        if t.kind == "post":
            if t.amount is not None:
                _check_amount(t, t.amount)
        elif t.amount is not None:
            raise InputError(f"transfer {t.id}: a {t.kind} releases the whole hold; it takes no amount", field="amount", transfer_id=t.id)


def _checked(batch: Sequence[Transfer]) -> list[Transfer]:
    batch = list(batch)
    if not batch:
        raise InputError("empty batch", field="batch")
    for t in batch:
        check_shape(t)
    return batch


class Ledger:
    """The books.  Thread-safe; one instance per engine is enough for a process."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], int] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        assets: Sequence[Asset] | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock or (lambda: int(time.time()))
        self.retry = retry
        self._sqlite = engine.dialect.name == "sqlite"
        self._pg = engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if self._pg else sqlite.insert
        self._accounts: dict[int, Account] = {}
        self._driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self.retry.run_sync(lambda: self._setup(asset_registry.default_assets() if assets is None else list(assets)), what="ledger setup")

    # -- setup and accounts ----------------------------------------------------

    def _setup(self, assets: list[Asset]) -> None:
        try:
            init_db(self.engine, LEDGER_TABLES)
        except DBAPIError as exc:
            self._raise_mapped(exc.orig, exc)

        def write(conn: Connection) -> None:
            conn.execute(self._insert(_HEAD).values(id=1, height=0).on_conflict_do_nothing(index_elements=["id"]))
            for a in assets:
                asset_registry.register(conn, a)

        self._write(write)

    def register_asset(self, asset: Asset) -> Asset:
        return self._write(lambda conn: asset_registry.register(conn, asset))

    def set_haircut(self, code: str, haircut_bps: int) -> Asset:
        check_text(code, "asset code", 120, "asset")

        def write(conn: Connection) -> Asset:
            current = asset_registry.load(conn, code)
            updated = replace(current, haircut_bps=haircut_bps)
            asset_registry.validate(updated)
            table = asset_registry.LedgerAsset.__table__
            conn.execute(table.update().where(table.c.code == code).values(haircut_bps=haircut_bps))
            return updated

        return self._write(write)

    def assets(self) -> dict[str, Asset]:
        with self.engine.connect() as conn:
            return asset_registry.load_all(conn)

    def open_account(self, owner: str, kind: str, asset: str, allow_negative: bool | None = None) -> Account:
        """Get or create the account ``owner/kind/asset`` (idempotent)."""
        _check_owner(owner)
        check_text(asset, "asset code", 120, "asset")
        if kind not in ACCOUNT_KINDS:
            raise InputError(f"account kind must be one of {', '.join(ACCOUNT_KINDS)}, got {kind!r}", field="kind")
        negative = ACCOUNT_KINDS[kind] if allow_negative is None else bool(allow_negative)

        account = self._write(lambda conn: self._open(conn, owner, kind, asset, negative))
        self._accounts[account.id] = account
        return account

    def open_account_in(self, conn: Connection, owner: str, kind: str, asset: str, allow_negative: bool | None = None) -> Account:
        """``open_account`` inside the caller's open transaction (a replica's fold writes its
        accounts, transfers and cursor move in one transaction)."""
        _check_owner(owner)
        check_text(asset, "asset code", 120, "asset")
        if kind not in ACCOUNT_KINDS:
            raise InputError(f"account kind must be one of {', '.join(ACCOUNT_KINDS)}, got {kind!r}", field="kind")
        account = self._open(conn, owner, kind, asset, ACCOUNT_KINDS[kind] if allow_negative is None else bool(allow_negative))
        self._accounts[account.id] = account
        return account

    @staticmethod
    def _open(conn: Connection, owner: str, kind: str, asset: str, negative: bool) -> Account:
        asset_registry.load(conn, asset)
        row = conn.execute(select(_A).where(_A.c.owner == owner, _A.c.kind == kind, _A.c.asset == asset)).mappings().first()
        if row is not None:
            if row["allow_negative"] != negative:
                raise IdempotencyConflict(
                    f"account {owner}/{kind}/{asset} exists with allow_negative={row['allow_negative']}",
                    field="allow_negative",
                )
            return Account(**dict(row))
        account_id = conn.execute(_A.insert().values(owner=owner, kind=kind, asset=asset, allow_negative=negative).returning(_A.c.id)).scalar_one()
        zero = dict(debits_posted=0, credits_posted=0, debits_pending=0, credits_pending=0)
        conn.execute(_B.insert().values(account_id=account_id, asset=asset, height=0, **zero))
        return Account(account_id, owner, kind, asset, negative)

    def account(self, account_id: int) -> Account:
        check_account_id(account_id)
        found = self._load_accounts(None, [account_id])
        return found[account_id]

    def find_account(self, owner: str, kind: str, asset: str) -> Account:
        for what, value, size in (("owner", owner, 200), ("kind", kind, 32), ("asset", asset, 120)):
            check_text(value, what, size)
        with self.engine.connect() as conn:
            row = conn.execute(select(_A).where(_A.c.owner == owner, _A.c.kind == kind, _A.c.asset == asset)).mappings().first()
        if row is None:
            raise UnknownAccount(f"no account {owner}/{kind}/{asset}", account=f"{owner}/{kind}/{asset}")
        return Account(**dict(row))

    def accounts(self, owner: str | None = None) -> list[Account]:
        q = select(_A).order_by(_A.c.id)
        if owner is not None:
            q = q.where(_A.c.owner == owner)
        with self.engine.connect() as conn:
            return [Account(**dict(r)) for r in conn.execute(q).mappings()]

    def _load_accounts(self, conn: Connection | None, ids: Iterable[int]) -> dict[int, Account]:
        # Accounts never change once created, so a process-wide cache is exact.
        missing = [i for i in set(ids) if i not in self._accounts]
        if missing:
            q = select(_A).where(_A.c.id.in_(missing))
            if conn is None:
                with self.engine.connect() as c:
                    rows = c.execute(q).mappings().all()
            else:
                rows = conn.execute(q).mappings().all()
            for r in rows:
                self._accounts[r["id"]] = Account(**dict(r))
            unknown = sorted(set(missing) - {r["id"] for r in rows})
            if unknown:
                raise UnknownAccount(f"unknown account id {unknown[0]}", account=unknown[0])
        return {i: self._accounts[i] for i in ids}

    # -- committing ------------------------------------------------------------

    def height(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(_HEAD.c.height).where(_HEAD.c.id == 1)).scalar_one()

    def commit(self, batch: Sequence[Transfer]) -> CommitResult:
        """Commit ``batch`` atomically, in order; retried as a whole on write conflicts."""
        batch = _checked(batch)
        return self.retry.run_sync(lambda: self._attempt(batch), what="ledger commit")

    async def acommit(self, batch: Sequence[Transfer]) -> CommitResult:
        """``commit`` from async code: the blocking work runs in a worker thread."""
        batch = _checked(batch)
        return await self.retry.run(lambda: asyncio.to_thread(self._attempt, batch), what="ledger commit")

    def transfer(self, id: str, debit: int, credit: int, amount: int, cause: str | None = None) -> CommitResult:
        return self.commit([Transfer(id, debit, credit, amount, cause=cause)])

    def expire_due(self) -> tuple[int, ...]:
        """Void every hold whose timeout has passed; returns the heights written (normally 0 or 1)."""
        now = self.clock()
        return self.retry.run_sync(lambda: self._write(lambda conn: self._sweep(conn, now)), what="ledger expiry")

    def apply_in(self, conn: Connection, batch: Sequence[Transfer], now: int) -> CommitResult:
        """Apply ``batch`` inside the caller's open transaction, at the caller's time ``now`` (a
        replica passes its block's timestamp, so every replica folds to the same books).  No
        timed-out holds are swept and nothing is retried here: the caller's transaction is the
        unit; a refusal raises before anything is written."""
        return self._apply(conn, _checked(batch), now)

    def available_in(self, conn: Connection, account_id: int) -> int:
        """What ``account_id`` can spend (posted balance less pending debits), read in ``conn``."""
        totals = self._lock_totals(conn, self._load_accounts(conn, [account_id]))
        return totals[account_id].available()

    def _attempt(self, batch: list[Transfer]) -> CommitResult:
        now = self.clock()

        def work(conn: Connection) -> CommitResult:
            expired = self._sweep(conn, now)
            if expired:
                # Expiries are their own height and stand even if this batch is refused.
                conn.commit()
                self._begin(conn)
            result = self._apply(conn, batch, now)
            return replace(result, expired_heights=expired)

        return self._write(work)

    def _begin(self, conn: Connection) -> None:
        if self._sqlite:
            # Take the write lock up front: a deferred transaction that reads and then
            # writes could fail with SQLITE_BUSY after its reads, losing the batch.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def _write(self, fn: Callable[[Connection], object]):
        try:
            with self.engine.connect() as conn:
                self._begin(conn)
                result = fn(conn)
                conn.commit()
                return result
        except DBAPIError as exc:
            self._raise_mapped(exc.orig, exc)
        except self._driver_error as exc:  # from the bulk paths, which use the driver directly
            self._raise_mapped(exc, exc)

    def _raise_mapped(self, orig: BaseException, exc: BaseException) -> NoReturn:
        """Raise the retryable ledger error for a write conflict; any other error unchanged."""
        pgcode = getattr(orig, "pgcode", None)
        text = str(orig).lower()
        if pgcode in _RETRY_PGCODES:
            reason = f"{pgcode} {str(orig).splitlines()[0]}"
        elif self._sqlite and ("locked" in text or "busy" in text):
            reason = f"SQLite database busy: {orig}"
        elif "already exists" in text:  # two processes creating the schema at once
            reason = f"concurrent schema creation: {str(orig).splitlines()[0]}"
        else:
            raise exc
        raise LedgerConcurrencyError(f"concurrent ledger write, can be retried: {reason}", pgcode=pgcode) from exc

    def _sweep(self, conn: Connection, now: int) -> tuple[int, ...]:
        due = bulk.due_holds(conn, now)
        if not due:
            return ()
        result = self._apply(conn, [Transfer(f"expire:{pid}", kind="expire", pending_id=pid) for pid in due], now)
        return () if result.height is None else (result.height,)

    def _apply(self, conn: Connection, batch: list[Transfer], now: int) -> CommitResult:
        new = self._dedupe(conn, batch)
        if not new:
            return CommitResult(None, 0, len(batch))

        holds = self._load_holds(conn, {t.pending_id for t in new if t.pending_id is not None})
        account_ids = {a for t in new for a in (t.debit, t.credit) if a is not None}
        account_ids.update(a for h in holds.values() for a in (h.debit, h.credit))
        accounts = self._load_accounts(conn, account_ids)
        totals = self._lock_totals(conn, accounts)
        before = {aid: (t.credits_posted - t.debits_posted, t.debits_pending, t.credits_pending) for aid, t in totals.items()}

        rows: list[tuple] = []
        opened: dict[str, _Hold] = {}
        closed: list[str] = []
        resolved: dict[str, tuple[str, str]] = {}  # hold id -> (kind, transfer id) within this batch
        for t in new:
            if t.kind in ("transfer", "pending"):
                d, c = accounts[t.debit], accounts[t.credit]
                if d.asset != c.asset:
                    raise InputError(
                        f"transfer {t.id}: debit account {d.id} holds {d.asset} but credit account {c.id} holds {c.asset}",
                        field="credit",
                        transfer_id=t.id,
                    )
                dt, ct = totals[d.id], totals[c.id]
                if not d.allow_negative and dt.available() < t.amount:
                    raise Overdraft(
                        f"transfer {t.id}: account {d.id} ({d.name}) has {dt.available()} available, needs {t.amount}",
                        transfer_id=t.id,
                        account=d.id,
                        available=dt.available(),
                        amount=t.amount,
                    )
                if t.kind == "transfer":
                    dt.debits_posted += t.amount
                    ct.credits_posted += t.amount
                else:
                    dt.debits_pending += t.amount
                    ct.credits_pending += t.amount
                    expires = None if t.timeout is None else now + t.timeout
                    opened[t.id] = _Hold(t.id, d.id, c.id, d.asset, t.amount, expires, False)
                dt.touched = ct.touched = True
                rows.append(self._row(t, d.id, c.id, d.asset, t.amount))
                continue
            hold = opened.pop(t.pending_id, None) or holds.pop(t.pending_id, None)
            if hold is None:
                raise self._hold_missing(conn, t, resolved)
            resolved[hold.id] = (t.kind, t.id)
            expired = hold.expires_at is not None and hold.expires_at <= now
            if t.kind == "post" and expired:
                raise PendingTransferError(f"transfer {t.id}: pending transfer {hold.id} timed out at {hold.expires_at}", transfer_id=t.id, pending_id=hold.id)
            if t.kind == "expire" and not expired:
                raise LedgerError(f"hold {hold.id} has not timed out")
            amount = hold.amount if t.amount is None or t.kind != "post" else t.amount
            if amount > hold.amount:
                raise InputError(f"transfer {t.id}: cannot post {amount}, pending transfer {hold.id} holds {hold.amount}", field="amount", transfer_id=t.id)
            dt, ct = totals[hold.debit], totals[hold.credit]
            dt.debits_pending -= hold.amount
            ct.credits_pending -= hold.amount
            if t.kind == "post":
                dt.debits_posted += amount
                ct.credits_posted += amount
            dt.touched = ct.touched = True
            if hold.from_db:
                closed.append(hold.id)
            rows.append(self._row(t, hold.debit, hold.credit, hold.asset, amount))

        self._check_zero_sum(totals, before)
        height = bulk.bump_height(conn)
        bulk.insert_transfers(conn, height, rows)
        bulk.write_totals(
            conn,
            [(aid, t.asset, t.debits_posted, t.credits_posted, t.debits_pending, t.credits_pending, height) for aid, t in sorted(totals.items()) if t.touched],
        )
        if opened:
            bulk.add_holds(conn, [(h.id, h.debit, h.credit, h.asset, h.amount, h.expires_at, height) for h in opened.values()])
        if closed:
            bulk.drop_holds(conn, closed)
        bulk.record_batch(conn, height, now, len(rows))
        return CommitResult(height, len(rows), len(batch) - len(rows))

    @staticmethod
    def _row(t: Transfer, debit: int, credit: int, asset: str, amount: int) -> tuple:
        """A transfer row without its height and index, in ``TRANSFER_COLUMNS`` order."""
        return (t.id, t.kind, debit, credit, asset, amount, t.pending_id, t.timeout, t.cause)

    def _dedupe(self, conn: Connection, batch: list[Transfer]) -> list[Transfer]:
        """The transfers of ``batch`` not yet committed; raise on any id reused with other content."""
        stored = bulk.existing_transfers(conn, {t.id for t in batch})
        seen: dict[str, Transfer] = {}
        new: list[Transfer] = []
        for t in batch:
            if t.id in stored:
                self._same_as_stored(conn, t, stored[t.id])
            elif t.id in seen:
                first = seen[t.id]
                if first != t:
                    name = next(f for f in ("kind", "debit", "credit", "amount", "pending_id", "timeout", "cause") if getattr(first, f) != getattr(t, f))
                    raise IdempotencyConflict(
                        f"transfer {t.id} appears twice in the batch with different {name}: {getattr(first, name)!r} vs {getattr(t, name)!r}",
                        field=name,
                        transfer_id=t.id,
                    )
            else:
                seen[t.id] = t
                new.append(t)
        return new

    def _same_as_stored(self, conn: Connection, t: Transfer, row: dict) -> None:
        if row["kind"] != t.kind:
            self._conflict(t, "kind", row["kind"], t.kind)
        if t.kind in ("transfer", "pending"):
            pairs = (("debit", row["debit_account"]), ("credit", row["credit_account"]), ("amount", row["amount"]), ("timeout", row["timeout"]))
            for name, value in pairs:
                if getattr(t, name) != value:
                    self._conflict(t, name, value, getattr(t, name))
        else:
            if row["pending_id"] != t.pending_id:
                self._conflict(t, "pending_id", row["pending_id"], t.pending_id)
            if t.kind == "post":
                wanted = t.amount
                if wanted is None:  # "post all": compare with what the hold held
                    wanted = conn.execute(select(_T.c.amount).where(_T.c.id == t.pending_id)).scalar_one()
                if wanted != row["amount"]:
                    self._conflict(t, "amount", row["amount"], wanted)
        if row["cause"] != t.cause:
            self._conflict(t, "cause", row["cause"], t.cause)

    @staticmethod
    def _conflict(t: Transfer, name: str, stored: object, wanted: object) -> None:
        raise IdempotencyConflict(
            f"transfer {t.id} already committed with {name}={stored!r}, not {wanted!r}",
            field=name,
            transfer_id=t.id,
        )

    @staticmethod
    def _load_holds(conn: Connection, ids: set[str]) -> dict[str, _Hold]:
        if not ids:
            return {}
        return {r[0]: _Hold(*r, from_db=True) for r in bulk.lock_holds(conn, ids)}

    def _hold_missing(self, conn: Connection, t: Transfer, in_batch: dict[str, tuple[str, str]]) -> PendingTransferError:
        if t.pending_id in in_batch:
            kind, by = in_batch[t.pending_id]
        else:
            row = conn.execute(select(_T.c.id, _T.c.kind).where(_T.c.pending_id == t.pending_id)).first()
            kind, by = (row.kind, row.id) if row is not None else (None, None)
        if kind is not None:
            verb = {"post": "posted", "void": "voided", "expire": "voided by timeout"}[kind]
            return PendingTransferError(
                f"transfer {t.id}: pending transfer {t.pending_id} was already {verb} by {by}",
                transfer_id=t.id,
                pending_id=t.pending_id,
                resolved_by=by,
            )
        kind = conn.execute(select(_T.c.kind).where(_T.c.id == t.pending_id)).scalar_one_or_none()
        if kind is not None:
            return PendingTransferError(f"transfer {t.id}: {t.pending_id} is a {kind} transfer, not a pending one", transfer_id=t.id, pending_id=t.pending_id)
        return PendingTransferError(f"transfer {t.id}: no pending transfer {t.pending_id}", transfer_id=t.id, pending_id=t.pending_id)

    @staticmethod
    def _lock_totals(conn: Connection, accounts: dict[int, Account]) -> dict[int, _Totals]:
        return {a: _Totals(accounts[a].asset, *values) for a, *values in bulk.lock_totals(conn, list(accounts))}

    @staticmethod
    def _check_zero_sum(totals: dict[int, _Totals], before: dict[int, tuple[int, int, int]]) -> None:
        """Every asset's books still balance: posted deltas sum to zero, pending debits match credits."""
        net: dict[str, list[int]] = {}
        for aid, t in totals.items():
            b = before[aid]
            s = net.setdefault(t.asset, [0, 0])
            s[0] += (t.credits_posted - t.debits_posted) - b[0]
            s[1] += (t.debits_pending - b[1]) - (t.credits_pending - b[2])
        broken = {a: s for a, s in net.items() if s != [0, 0]}
        if broken:
            raise LedgerError(f"batch would unbalance the books: {broken}", assets=sorted(broken))
