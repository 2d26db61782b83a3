"""Custody proposals: PSBTs any relayer proposes and every attester checks and signs, in one round.

Kept beside the signatures in the attestation store's database (the shared PostgreSQL when
attesters run on several machines).  A proposal is keyed by its unsigned transaction's txid and
belongs to a *group*: ``payout:<request nonce>`` or ``sweep:<its first outpoint>``, and a later
proposal of a group replaces the earlier ones (it spends all their inputs).  Each attester leaves its copy of
the PSBT with its partial signatures (``custody_proposal_sig``); whoever proposed combines them
and finalizes.  Nothing read back is trusted: the attester decodes and checks every PSBT itself
(``bridge.custody.policy``), the proposer's ``finalize`` verifies every partial signature.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Field, SQLModel

from bridge.core.db import init_db
from bridge.core.dbapi import Db
from bridge.core.errors import InputError, NotFound
from chains.btc import psbt as P

__all__ = ["Proposal", "ProposalStore"]


class CustodyProposal(SQLModel, table=True):
    __tablename__ = "custody_proposal"

    id: str = Field(primary_key=True)  # txid of the unsigned transaction
    grp: str = Field(index=True)  # payout:<nonce> or sweep
    psbt: str  # base64
    round: int = 0  # 0, then one more per fee bump of the group
    created_at: float = Field(index=True)


class CustodyProposalSig(SQLModel, table=True):
    __tablename__ = "custody_proposal_sig"

    proposal_id: str = Field(primary_key=True)
    signer: str = Field(primary_key=True)  # the attester's address, hex
    psbt: str  # base64, with the signer's partial signatures
    at: float


_TABLES = [CustodyProposal.__table__, CustodyProposalSig.__table__]
_GROUP = re.compile(r"payout:\d{1,20}|sweep:[0-9a-f]{64}:\d{1,10}")


@dataclass(frozen=True)
class Proposal:
    id: str
    group: str
    psbt: P.Psbt
    round: int
    created_at: float

    @property
    def inputs(self) -> list[str]:
        return [f"{txin.prevout.txid_hex}:{txin.prevout.n}" for txin in self.psbt.tx.vin]


class ProposalStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        init_db(engine, _TABLES)
        self.db = Db(engine)

    def propose(self, group: str, psbt: P.Psbt, round: int = 0) -> str:
        """Keep ``psbt`` for the attesters (idempotent: the same transaction is one proposal)."""
        if not _GROUP.fullmatch(group):
            raise InputError(f"a proposal group is 'payout:<nonce>' or 'sweep:<txid>:<vout>', got {group[:80]!r}")
        txid = psbt.tx.txid
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO custody_proposal (id, grp, psbt, round, created_at) VALUES (:id, :g, :p, :r, :t) ON CONFLICT DO NOTHING",
                {"id": txid, "g": group, "p": psbt.to_base64(), "r": round, "t": time.time()},
            )
        return txid

    def get(self, proposal_id: str) -> Proposal:
        with self.db.transaction() as tx:
            row = tx.one("SELECT * FROM custody_proposal WHERE id = :id", {"id": proposal_id})
        if row is None:
            raise NotFound(f"no custody proposal {proposal_id[:64]}")
        return _proposal(row)

    def proposals(self, group: str | None = None, since: float = 0.0) -> list[Proposal]:
        """Proposals (of one group), oldest first; a row that is no PSBT is skipped (never signed)."""
        sql, params = "SELECT * FROM custody_proposal WHERE created_at >= :t", {"t": since}
        if group is not None:
            sql, params["g"] = sql + " AND grp = :g", group
        with self.db.transaction() as tx:
            rows = tx.rows(sql + " ORDER BY created_at, id", params)
        out = []
        for row in rows:
            try:
                out.append(_proposal(row))
            except (P.PsbtError, InputError, ValueError):
                continue
        return out

    def add_signed(self, proposal_id: str, signer: bytes, psbt: P.Psbt) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO custody_proposal_sig (proposal_id, signer, psbt, at) VALUES (:id, :s, :p, :t) ON CONFLICT DO NOTHING",
                {"id": proposal_id, "s": signer.hex(), "p": psbt.to_base64(), "t": time.time()},
            )

    def signed(self, proposal_id: str) -> dict[str, P.Psbt]:
        """The members' signed copies, by signer address (hex); copies that do not parse are dropped."""
        with self.db.transaction() as tx:
            rows = tx.rows("SELECT signer, psbt FROM custody_proposal_sig WHERE proposal_id = :id", {"id": proposal_id})
        out = {}
        for row in rows:
            try:
                out[row["signer"]] = P.Psbt.from_base64(row["psbt"])
            except (P.PsbtError, InputError, ValueError):
                continue
        return out


def _proposal(row: dict) -> Proposal:
    return Proposal(row["id"], row["grp"], P.Psbt.from_base64(row["psbt"]), row["round"], row["created_at"])
