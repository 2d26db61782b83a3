"""The ledger's tables.

Amounts are Python ints everywhere.  On PostgreSQL they are ``NUMERIC(p, 0)``.
On SQLite they are stored as zero-padded decimal TEXT of fixed width: SQLite's
INTEGER stops at 2^63 and its NUMERIC affinity silently turns larger values into
REAL (lossy), while two 64-bit halves would make every comparison and every ad-hoc
query a two-column affair.  Fixed-width text is exact, still compares and sorts
correctly with ``=``/``<``/``ORDER BY`` (all stored amounts are non-negative), and
costs nothing in the write path because the ledger never does arithmetic in SQL:
new totals are computed in Python while the writer holds the rows locked.

Tables written by every batch: ``ledger_transfers`` (append-only), ``ledger_balances``
(current running totals), ``ledger_balance_history`` (the totals of every account a
batch touched, at that batch's height; a balance at a past height is one indexed
look-up instead of a replay), ``ledger_pending`` (open two-phase holds),
``ledger_batches`` and ``ledger_head`` (the height counter, also the commit lock).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, String, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import NUMERIC
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

#: Largest amount a single transfer may move.
MAX_AMOUNT = 2**128 - 1
#: Digits of a transfer amount (2^128 - 1 has 39) and of a running total (sums of many transfers).
AMOUNT_DIGITS = 39
TOTAL_DIGITS = 78


class Amount(TypeDecorator):
    """A non-negative integer of up to ``digits`` decimal digits, exact on every backend."""

    impl = String
    cache_ok = True

    def __init__(self, digits: int = AMOUNT_DIGITS) -> None:
        super().__init__(digits)
        self.digits = digits

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(NUMERIC(self.digits, 0))
        return dialect.type_descriptor(String(self.digits))

    def process_bind_param(self, value, dialect):
        if value is None or dialect.name == "postgresql":
            return value
        return to_text(value, self.digits)

    def process_result_value(self, value, dialect):
        return None if value is None else int(value)


def to_text(value: int, digits: int) -> str:
    """SQLite storage form of an amount (see module docstring)."""
    text = str(value)
    if value < 0 or len(text) > digits:
        raise ValueError(f"amount {value} does not fit {digits} digits")
    return text.zfill(digits)


def amount_column(digits: int = AMOUNT_DIGITS, **kw) -> Column:
    return Column(Amount(digits), nullable=False, **kw)


class LedgerAsset(SQLModel, table=True):
    __tablename__ = "ledger_assets"
    __table_args__ = (UniqueConstraint("chain_id", "address", name="uq_ledger_assets_chain_address"),)

    code: str = Field(primary_key=True, max_length=120)
    symbol: str = Field(max_length=32)
    #: "btc" (sats), "eth" (wei) or "erc20" (token base units).
    kind: str = Field(max_length=16)
    chain_id: int = Field(sa_type=BigInteger)
    address: str | None = Field(default=None, max_length=42)
    decimals: int
    #: Share of the asset's value not counted as collateral, in basis points.
    haircut_bps: int = 0


class LedgerAccount(SQLModel, table=True):
    __tablename__ = "ledger_accounts"
    __table_args__ = (UniqueConstraint("owner", "kind", "asset", name="uq_ledger_accounts_owner_kind_asset"),)

    id: int | None = Field(default=None, primary_key=True)
    owner: str = Field(max_length=200, index=True)
    kind: str = Field(max_length=32)
    asset: str = Field(max_length=120, foreign_key="ledger_assets.code")
    allow_negative: bool = False


class LedgerBalance(SQLModel, table=True):
    __tablename__ = "ledger_balances"

    account_id: int = Field(primary_key=True, foreign_key="ledger_accounts.id")
    asset: str = Field(max_length=120)
    debits_posted: int = Field(sa_column=amount_column(TOTAL_DIGITS))
    credits_posted: int = Field(sa_column=amount_column(TOTAL_DIGITS))
    debits_pending: int = Field(sa_column=amount_column(TOTAL_DIGITS))
    credits_pending: int = Field(sa_column=amount_column(TOTAL_DIGITS))
    height: int = Field(default=0, sa_type=BigInteger)


class LedgerBalanceHistory(SQLModel, table=True):
    __tablename__ = "ledger_balance_history"

    account_id: int = Field(primary_key=True)
    height: int = Field(primary_key=True, sa_type=BigInteger)
    asset: str = Field(max_length=120)
    debits_posted: int = Field(sa_column=amount_column(TOTAL_DIGITS))
    credits_posted: int = Field(sa_column=amount_column(TOTAL_DIGITS))
    debits_pending: int = Field(sa_column=amount_column(TOTAL_DIGITS))
    credits_pending: int = Field(sa_column=amount_column(TOTAL_DIGITS))


class LedgerTransfer(SQLModel, table=True):
    """One committed transfer.  No foreign keys: accounts are checked under the commit lock
    and never deleted, and per-row FK checks would cost the hot insert path."""

    __tablename__ = "ledger_transfers"
    __table_args__ = (
        Index("ix_ledger_transfers_id", "id", unique=True),
        # Each pending transfer is posted, voided or expired at most once.  Partial
        # indexes: most rows have neither column, and skipping them keeps inserts fast.
        Index(
            "ix_ledger_transfers_pending_id",
            "pending_id",
            unique=True,
            sqlite_where=text("pending_id IS NOT NULL"),
            postgresql_where=text("pending_id IS NOT NULL"),
        ),
        Index("ix_ledger_transfers_debit", "debit_account"),
        Index("ix_ledger_transfers_credit", "credit_account"),
        Index(
            "ix_ledger_transfers_cause",
            "cause",
            sqlite_where=text("cause IS NOT NULL"),
            postgresql_where=text("cause IS NOT NULL"),
        ),
    )

    height: int = Field(primary_key=True, sa_type=BigInteger)
    idx: int = Field(primary_key=True)
    id: str = Field(max_length=200)
    #: transfer | pending | post | void | expire
    kind: str = Field(max_length=8)
    debit_account: int
    credit_account: int
    asset: str = Field(max_length=120)
    amount: int = Field(sa_column=amount_column())
    pending_id: str | None = Field(default=None, max_length=200)
    #: Seconds a pending transfer may stay open (pending only).
    timeout: int | None = None
    cause: str | None = Field(default=None, max_length=200)


#: Column order of the bulk insert paths (SQLite executemany, PostgreSQL COPY).
TRANSFER_COLUMNS = ("height", "idx", "id", "kind", "debit_account", "credit_account", "asset", "amount", "pending_id", "timeout", "cause")


class LedgerPending(SQLModel, table=True):
    """Open holds: inserted by a pending transfer, deleted by its post, void or expiry."""

    __tablename__ = "ledger_pending"

    id: str = Field(primary_key=True, max_length=200)
    debit_account: int
    credit_account: int
    asset: str = Field(max_length=120)
    amount: int = Field(sa_column=amount_column())
    #: Unix seconds after which the hold voids itself; None = no timeout.
    expires_at: int | None = Field(default=None, sa_type=BigInteger, index=True)
    height: int = Field(sa_type=BigInteger)


class LedgerBatch(SQLModel, table=True):
    __tablename__ = "ledger_batches"

    height: int = Field(primary_key=True, sa_type=BigInteger)
    committed_at: int = Field(sa_type=BigInteger)  # unix seconds
    transfers: int


class LedgerHead(SQLModel, table=True):
    """One row: the current height.  Bumping it is the last step of every batch, so
    batches commit in height order and a reader that sees height H sees all of it."""

    __tablename__ = "ledger_head"

    id: int = Field(default=1, primary_key=True)
    height: int = Field(default=0, sa_type=BigInteger)


class LedgerPriceReport(SQLModel, table=True):
    """An oracle price as a reporter attested it (price: USD per whole unit, PRICE_DECIMALS)."""

    __tablename__ = "ledger_price_reports"

    asset: str = Field(primary_key=True, max_length=120)
    reporter: str = Field(primary_key=True, max_length=200)
    timestamp: int = Field(primary_key=True, sa_type=BigInteger)
    price: int = Field(sa_column=amount_column())


class LedgerMarginEvent(SQLModel, table=True):
    """An owner's margin health crossed the liquidation threshold (either way)."""

    __tablename__ = "ledger_margin_events"

    seq: int | None = Field(default=None, primary_key=True)
    owner: str = Field(max_length=200, index=True)
    #: "liquidatable" or "healthy"
    state: str = Field(max_length=16)
    #: None when the owner has no liabilities (infinitely healthy).
    health_bps: int | None = Field(default=None, sa_column=Column(Amount(TOTAL_DIGITS), nullable=True))
    threshold_bps: int
    collateral_value: int = Field(sa_column=amount_column(TOTAL_DIGITS))
    liability_value: int = Field(sa_column=amount_column(TOTAL_DIGITS))
    height: int = Field(sa_type=BigInteger)
    created_at: int = Field(sa_type=BigInteger)


LEDGER_TABLES = [
    m.__table__
    for m in (
        LedgerAsset,
        LedgerAccount,
        LedgerBalance,
        LedgerBalanceHistory,
        LedgerTransfer,
        LedgerPending,
        LedgerBatch,
        LedgerHead,
        LedgerPriceReport,
        LedgerMarginEvent,
    )
]
