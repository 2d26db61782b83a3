"""The persisted swap: one ``Swap`` row per party's view, two ``SwapLeg`` rows, an action log.

State names are stored as text and never renamed: a database written by an older
version must still read the same.  The initiator (trader) locks first on the
"initiator" leg; the participant (LP) locks the "participant" leg.
Amounts are stored as decimal text because wei overflows a 64-bit column.
"""

from __future__ import annotations

from typing import Optional

from sqlmodel import Field, SQLModel

INITIATOR = "initiator"
PARTICIPANT = "participant"
LEGS = (INITIATOR, PARTICIPANT)

CREATED = "created"
INITIATOR_LOCK_INTENDED = "initiator_lock_intended"
INITIATOR_LOCKED = "initiator_locked"
PARTICIPANT_LOCK_INTENDED = "participant_lock_intended"
PARTICIPANT_LOCKED = "participant_locked"
CLAIM_INTENDED = "claim_intended"
CLAIMED = "claimed"
REFUND_INTENDED = "refund_intended"
REFUNDED = "refunded"
FAILED = "failed"  # refused or abandoned before this party locked anything
#: The participant's claim became impossible: the initiator refunded its lock first (the
#: participant's own lock was or will be claimed with the secret; its books show the loss).
CLAIM_LOST = "claim_lost"

STATES = (
    CREATED,
    INITIATOR_LOCK_INTENDED,
    INITIATOR_LOCKED,
    PARTICIPANT_LOCK_INTENDED,
    PARTICIPANT_LOCKED,
    CLAIM_INTENDED,
    CLAIMED,
    REFUND_INTENDED,
    REFUNDED,
    FAILED,
    CLAIM_LOST,
)
TERMINAL = frozenset({CLAIMED, REFUNDED, FAILED, CLAIM_LOST})
#: The unfinished states as SQL literals for ``state IN (...)``: the DB-API statements inline these
#: fixed names (never input) instead of binding one parameter each.
OPEN_SQL = ", ".join(f"'{s}'" for s in STATES if s not in TERMINAL)


class Swap(SQLModel, table=True):
    __tablename__ = "swap"

    id: str = Field(primary_key=True)
    role: str  # INITIATOR or PARTICIPANT: whose view this row is
    state: str = Field(index=True)
    hashlock: str  # hex sha256 of the secret
    #: hex; the initiator stores it before the hashlock leaves the process,
    #: the participant once it is revealed on chain.
    secret: Optional[str] = None
    lp_url: Optional[str] = None
    #: The LP accepted these terms (initiator's view); always true on the LP's side.
    accepted: bool = False
    #: The initiator told the LP where its lock is (initiator's view).
    lp_notified: bool = False
    created_at: float
    updated_at: float
    retries: int = 0
    next_attempt_at: float = Field(default=0.0, index=True)
    last_error: Optional[str] = None
    #: ``updated_at`` of the row the ledger last recorded; older than ``updated_at`` (or unset)
    #: means a crash came between a change and its books, which ``SwapEngine.catch_up`` redoes.
    booked_at: Optional[float] = None
    #: LP side: who asked for the swap (the peer address of ``POST /swaps``), to bound the
    #: reservations one client holds open.
    client: Optional[str] = None


class SwapLeg(SQLModel, table=True):
    __tablename__ = "swap_leg"

    swap_id: str = Field(primary_key=True, foreign_key="swap.id")
    leg: str = Field(primary_key=True)  # INITIATOR or PARTICIPANT
    chain: str  # "bitcoin" or "evm"
    asset: str  # "btc", "eth", or a token symbol
    token: Optional[str] = None  # ERC-20 address
    amount: str  # base units, decimal text
    #: Bitcoin: compressed pubkeys (hex) of the refund (sender) and claim (recipient) keys;
    #: EVM: addresses.
    sender: Optional[str] = None
    recipient: Optional[str] = None
    #: Bitcoin: block height (CLTV); EVM: unix seconds of chain time.
    expiry: Optional[int] = None
    script: Optional[str] = None  # Bitcoin witness script, hex
    #: Bitcoin: "txid:vout" of the HTLC output; EVM: the contract's swap id (0x hex).
    lock_ref: Optional[str] = None
    lock_tx: Optional[str] = None
    lock_raw: Optional[str] = None  # signed funding (Bitcoin) or lock (EVM) tx, kept for re-broadcast
    #: EVM: JSON of the lock as recorded before broadcast: its unsigned fields (``fee_bump.EvmTxFields``)
    #: to re-sign it, an ERC-20's ``approve`` (fields, raw, hash; the nonce just before the lock's), and
    #: ``history``, the hashes of earlier versions (re-signed under a fresh nonce), any of which may be mined.
    lock_evm: Optional[str] = None
    #: EVM: JSON of the mined lock's ``SwapParams`` and block number, read from its receipt; the
    #: claim/refund calldata needs the parameters, which the contract does not store.
    lock_params: Optional[str] = None
    #: Where to start looking on chain: the head height when the lock was intended.
    watch_from: Optional[int] = None
    spend_kind: Optional[str] = None  # "claim" or "refund", by this party
    spend_tx: Optional[str] = None
    spend_raw: Optional[str] = None  # signed claim/refund, kept for re-broadcast
    spend_evm: Optional[str] = None  # EVM: JSON ``EvmTxFields`` of spend_raw, re-signed by a fee bump
    spend_feerate: Optional[int] = None  # sat/vB of spend_raw
    #: Legacy: earlier versions of the spend, comma separated, as versions before the ``spend_version``
    #: table kept them; ``SwapStore`` copies them into that table on open and never writes this column.
    #: Every version (fee bumps, re-signed nonces) is read from ``SwapView.spend_versions``.
    spend_history: Optional[str] = None
    spend_sent_at: Optional[float] = None  # unix time this version was first broadcast
    #: How this lock ended, once this party saw it confirmed: "claimed" or "refunded" (by
    #: either party).  None: not settled yet, or a row written before the column existed
    #: (``books.leg_outcome`` then judges from the swap's state).
    outcome: Optional[str] = None

    @property
    def value(self) -> int:
        return int(self.amount)


#: ``SwapLock.kind`` of a swap's hashlock; a lock's kind is its chain ("bitcoin", "evm").
HASHLOCK = "hashlock"


class SwapLock(SQLModel, table=True):
    """What a swap consumes, one row each, and so no other swap of the same role can: its
    hashlock, its own lock, and the counterparty's lock once it has been seen on chain.

    The primary key is the guarantee: one lock (an outpoint, an EVM swap id) or one hashlock
    backs at most one swap per role in this database, however many processes step swaps, so
    one trader lock can never be audited into two LP locks, and one claim never books twice.
    Rows are written in the transaction that records the swap or the lock (``SwapStore``).
    """

    __tablename__ = "swap_lock"

    role: str = Field(primary_key=True)
    kind: str = Field(primary_key=True)
    ref: str = Field(primary_key=True)  # hashlock hex, "txid:vout", or an EVM swap id (0x hex), normalised
    swap_id: str = Field(index=True, foreign_key="swap.id")
    leg: Optional[str] = None  # the leg whose lock this is; None for the hashlock


class SwapAction(SQLModel, table=True):
    __tablename__ = "swap_action"

    seq: Optional[int] = Field(default=None, primary_key=True)
    swap_id: str = Field(index=True, foreign_key="swap.id")
    at: float
    from_state: Optional[str] = None
    to_state: str
    note: str = ""
    #: Which attempt in ``from_state`` made the move (1: the first); None on rows older than the column.
    attempt: Optional[int] = None
