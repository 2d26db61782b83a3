"""The persisted watch job and its action log.

State names are stored as text and never renamed.  A job is either a ``claim``
(wait for the secret, then claim the HTLC for the party) or a ``refund`` (wait for
the expiry, then refund it to the party); both go through the same states:

    watching -> spend_intended -> spend_sent -> confirmed
                      ^______________|  (a fee bump: a new spend recorded, then sent)
    watching -> spent_elsewhere   (someone else claimed or refunded the HTLC first)
    watching -> expired           (EVM claim jobs: the contract refuses claims from the expiry
                                   on; a Bitcoin claim stays possible until the output is spent)
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy.engine import Engine
from sqlmodel import Field, SQLModel

from bridge.core.db import init_db
from bridge.runtime.spends import SpendVersion

CLAIM = "claim"
REFUND = "refund"
KINDS = (CLAIM, REFUND)

WATCHING = "watching"
SPEND_INTENDED = "spend_intended"
SPEND_SENT = "spend_sent"
CONFIRMED = "confirmed"
SPENT_ELSEWHERE = "spent_elsewhere"
EXPIRED = "expired"

STATES = (WATCHING, SPEND_INTENDED, SPEND_SENT, CONFIRMED, SPENT_ELSEWHERE, EXPIRED)
TERMINAL = frozenset({CONFIRMED, SPENT_ELSEWHERE, EXPIRED})


class WatchJob(SQLModel, table=True):
    __tablename__ = "watch_job"

    id: str = Field(primary_key=True)
    kind: str  # CLAIM or REFUND
    chain: str  # "bitcoin" or "evm"
    state: str = Field(index=True)
    #: The job as the party sent it (canonical JSON), kept to answer a re-submission.
    spec: str
    hashlock: str  # hex
    #: From the audited HTLC, not from the job: Bitcoin block height, EVM unix seconds.
    expiry: int
    #: Bitcoin: scriptPubKey hex the spends pay; EVM: the address the contract pays.
    payout: str
    secret: Optional[str] = None  # hex, once known
    #: Where the search for the secret resumes on the reveal chain (a few blocks back for reorgs).
    reveal_scan_from: Optional[int] = None
    #: Bitcoin: index into the pre-signed ladder; EVM: how many times the fee was bumped.
    spend_level: int = 0
    spend_raw: Optional[str] = None  # the signed spend, hex, recorded before it is broadcast
    spend_tx: Optional[str] = None
    #: Legacy: every txid/hash this job broadcast, comma separated, as versions before the
    #: ``spend_version`` table kept them; ``WatchStore`` copies them into that table on open and never
    #: writes this column.  The versions sent are read with ``WatchStore.spend_versions``.
    spend_history: str = ""
    #: EVM: the unsigned fields of our transaction (JSON) so a bump re-signs the same nonce.
    evm_tx: Optional[str] = None
    #: Height of the spend chain when the current spend was sent: stuck is measured from here.
    sent_height: Optional[int] = None
    #: Height when this job's first spend went out: where the search for its mined spend starts.
    first_sent_height: Optional[int] = None
    created_at: float
    updated_at: float
    #: Failed attempts in the current state (the runtime's retry counter, ``bridge.runtime``).
    attempts: int = 0
    last_error: Optional[str] = None
    #: When the runtime steps the job again (unix seconds; 0: at once).
    next_attempt_at: float = Field(default=0.0, index=True)


class WatchAction(SQLModel, table=True):
    __tablename__ = "watch_action"

    seq: Optional[int] = Field(default=None, primary_key=True)
    job_id: str = Field(index=True, foreign_key="watch_job.id")
    at: float
    from_state: Optional[str] = None
    to_state: str
    note: str = ""
    #: Which attempt in ``from_state`` made the move (1: the first); None on rows older than the column.
    attempt: Optional[int] = None


def create_tables(engine: Engine) -> None:
    """Only the watcher's tables (and the runtime's spend versions): the database may be shared
    with a party's other tables."""
    init_db(engine, [WatchJob.__table__, WatchAction.__table__, SpendVersion.__table__])
