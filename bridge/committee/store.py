"""The attestation store: where attesters leave their signatures and any relayer aggregates a
quorum.  ``../shared/DESIGN.md``, "Attested messages and the committee"; issue 14.

The embedded default is the bridge database; attesters on several machines share one PostgreSQL.
Every store on the same database (threads, processes, machines) sees the others' signatures, and
the primary keys decide every race, so concurrent puts of one signature end with one row.

- ``committee_message``: each message once, keyed by its id (the EIP-712 digest), with its
  canonical bytes (``messages.encode_message``), its kind, source reference, domain and first seen.
- ``committee_signature``: one signature per (message id, signer), accepted only if it recovers
  (strictly) to that signer and the signer is in the committee given.  It also holds the signer's
  *slot* (kind, sourceTx, sourceIndex, nonce), unique per signer: a second message from one signer
  for the same slot is an equivocation.
- ``committee_equivocation``: the evidence (both messages, both signatures); the second
  signature is refused (``Equivocation``) and never counts towards a quorum.

Nothing read back is trusted: ``quorum`` decodes the stored bytes strictly, checks they hash to
the id under the caller's domain and recovers every signature again, so a writer that bypasses
``put`` (a compromised attester with access to the shared database) can delay a quorum of its
own messages but never make one.  Identifiers are lowercase hex without ``0x``; integers wider
than a signed 64-bit column (nonce, domain chain id) are stored as decimal text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import BigInteger, UniqueConstraint
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Field, SQLModel

from bridge.committee.crypto import Refused, SignatureRefused, keccak256, recover
from bridge.committee.messages import (
    ZERO32,
    Bundle,
    Committee,
    Domain,
    Message,
    QuorumRefused,
    decode_message,
    digest,
    encode_message,
    verify_quorum,
)
from bridge.core.db import init_db
from bridge.core.dbapi import Db
from bridge.core.errors import NotFound

__all__ = ["Accepted", "AttestationRefused", "AttestationStore", "Equivocation", "Evidence", "Quorum", "Stored", "Tally"]

_INT64_MAX = (1 << 63) - 1


class CommitteeMessage(SQLModel, table=True):
    __tablename__ = "committee_message"

    id: str = Field(primary_key=True)  # the EIP-712 digest, hex
    body: str  # messages.encode_message, hex
    kind: int
    source_tx: str
    source_index: int = Field(sa_type=BigInteger)
    nonce: str  # uint64, decimal
    expires_at: int = Field(sa_type=BigInteger, index=True)  # the expiry, capped at 2^63 - 1
    domain_chain_id: str  # uint256, decimal
    verifying_contract: str
    first_seen: float = Field(index=True)


class CommitteeSignature(SQLModel, table=True):
    __tablename__ = "committee_signature"
    __table_args__ = (UniqueConstraint("signer", "kind", "source_tx", "source_index", "nonce", name="committee_signature_slot"),)

    message_id: str = Field(primary_key=True)
    signer: str = Field(primary_key=True)
    signature: str
    kind: int
    source_tx: str
    source_index: int = Field(sa_type=BigInteger)
    nonce: str
    stored_at: float


class CommitteeEquivocation(SQLModel, table=True):
    __tablename__ = "committee_equivocation"

    signer: str = Field(primary_key=True)
    first_message_id: str = Field(primary_key=True)
    second_message_id: str = Field(primary_key=True)
    first_signature: str
    second_signature: str
    second_body: str  # the refused message's canonical bytes (the first one's are in committee_message)
    recorded_at: float


class CommitteePayload(SQLModel, table=True):
    """Bytes a message commits to by hash (a ROTATION's new committee), for whoever delivers it."""

    __tablename__ = "committee_payload"

    hash: str = Field(primary_key=True)  # keccak256(body), hex
    body: str  # hex


_TABLES = [CommitteeMessage.__table__, CommitteeSignature.__table__, CommitteeEquivocation.__table__, CommitteePayload.__table__]


class AttestationRefused(Refused):
    """A signature the store does not take: ``reason`` names the rule (outside the committee, not
    recovering to its signer, an expired message or a zero id)."""


class Equivocation(AttestationRefused):
    """The signer already signed another message for the same (kind, sourceTx, sourceIndex,
    nonce): recorded as evidence, the second signature refused."""


@dataclass(frozen=True)
class Accepted:
    message_id: bytes
    signer: bytes
    #: False when this very (message, signer) was already stored: the put changed nothing.
    new: bool


@dataclass(frozen=True)
class Stored:
    message_id: bytes
    message: Message
    domain: Domain
    first_seen: float
    #: signer address -> signature, as stored (``quorum`` checks them again).
    signatures: dict[bytes, bytes]


@dataclass(frozen=True)
class Quorum:
    """Exactly ``threshold`` signatures of distinct members, ascending indices, verified."""

    message_id: bytes
    message: Message
    committee: Committee
    indices: tuple[int, ...]
    signatures: tuple[bytes, ...]

    def bundle(self) -> Bundle:
        return Bundle(self.message, self.committee, self.indices, self.signatures)


@dataclass(frozen=True)
class Tally:
    """What ``quorum`` found: ``quorum`` is the quorum, or None and ``reason`` says why; ``signed``
    and ``missing`` partition the committee's members (ascending); ``invalid`` are members whose
    stored signature no longer verifies (a store written past ``put``), counted as missing."""

    message_id: bytes
    quorum: Optional[Quorum]
    signed: tuple[bytes, ...]
    missing: tuple[bytes, ...]
    invalid: tuple[bytes, ...]
    needed: int  # valid signatures still wanted (0 once enough are there; an expired message still has no quorum)
    reason: Optional[str]


@dataclass(frozen=True)
class Evidence:
    signer: bytes
    first_message_id: bytes
    first_signature: bytes
    second_message_id: bytes
    second_signature: bytes
    second_message: Message
    recorded_at: float


def _insert(table: str, names: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)}) ON CONFLICT DO NOTHING"


_INSERT_MESSAGE = _insert("committee_message", tuple(CommitteeMessage.model_fields))
_INSERT_SIGNATURE = _insert("committee_signature", tuple(CommitteeSignature.model_fields))
_INSERT_EVIDENCE = _insert("committee_equivocation", tuple(CommitteeEquivocation.model_fields))
_INSERT_PAYLOAD = _insert("committee_payload", ("hash", "body"))
_SLOT = "signer = :signer AND kind = :kind AND source_tx = :source_tx AND source_index = :source_index AND nonce = :nonce"


def _slot(message: Message) -> dict[str, Any]:
    return {"kind": int(message.kind), "source_tx": message.source_tx.hex(), "source_index": message.source_index, "nonce": str(message.nonce)}


class AttestationStore:
    """Signatures of committee messages on one database (``bridge.core.dbapi`` statements,
    portable between SQLite and PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            init_db(engine, _TABLES)
        except DBAPIError:  # another process created the tables between the check and the CREATE
            init_db(engine, _TABLES)
        self.db = Db(engine)

    # --- writing ------------------------------------------------------------------------------

    def put(self, domain: Domain, message: Message, signer: bytes, signature: bytes, committee: Committee, now: int | None = None) -> Accepted:
        """Store ``signer``'s ``signature`` of ``message`` under ``domain``.  Refused (nothing
        written) unless it recovers strictly to ``signer`` and ``signer`` is a member of
        ``committee``; with ``now``, an expired message is refused too.  The same signature again
        is a no-op (``new`` False); another message for the signer's slot is an ``Equivocation``."""
        if not isinstance(domain, Domain) or not isinstance(message, Message) or not isinstance(committee, Committee):
            raise AttestationRefused("not a Domain, Message and Committee")
        message.check()
        if type(signer) is not bytes or len(signer) != 20:
            raise AttestationRefused("signer: not 20 bytes")
        if signer not in committee.members:
            raise AttestationRefused("signer outside the committee", signer=signer.hex())
        if now is not None and now >= message.expiry:
            raise AttestationRefused("expired")
        message_id = digest(domain, message)
        if message_id == ZERO32:
            raise AttestationRefused("zero id")
        if recover(message_id, signature) != signer:  # SignatureRefused for any malformed signature
            raise AttestationRefused("signature does not recover to the signer", signer=signer.hex())
        mid, who, slot, at = message_id.hex(), signer.hex(), _slot(message), time.time()
        with self.db.transaction() as tx:
            # The signature first: a refused one leaves no message row behind.  The primary key
            # and the slot's unique key decide races (a loser waits for the winner's commit).
            if tx.execute(_INSERT_SIGNATURE, {"message_id": mid, "signer": who, "signature": signature.hex(), "stored_at": at, **slot}) == 1:
                tx.execute(_INSERT_MESSAGE, self._message_row(domain, message, mid, at))
                return Accepted(message_id, signer, True)
            mine = tx.one("SELECT signature FROM committee_signature WHERE message_id = :m AND signer = :s", {"m": mid, "s": who})
            if mine is not None:
                if _verifies(mid, mine["signature"], signer):
                    return Accepted(message_id, signer, False)
                # A row under this signer that is not its signature (written past ``put``): ours wins.
                self._replace(tx, mid, who, signature, slot, at)
                tx.execute(_INSERT_MESSAGE, self._message_row(domain, message, mid, at))
                return Accepted(message_id, signer, True)
            held = tx.one(f"SELECT message_id, signature FROM committee_signature WHERE {_SLOT}", {"signer": who, **slot})
            if held is None:  # lost a race with a delete (written past ``put``): try again
                raise AttestationRefused("signature row conflicts with another slot", message_id=mid)
            if not self._genuine(tx, held["message_id"], held["signature"], signer, slot):
                # Not the signer's signature of a message in this slot: no evidence against it.
                tx.execute("DELETE FROM committee_signature WHERE message_id = :m AND signer = :s", {"m": held["message_id"], "s": who})
                tx.execute(_INSERT_SIGNATURE, {"message_id": mid, "signer": who, "signature": signature.hex(), "stored_at": at, **slot})
                tx.execute(_INSERT_MESSAGE, self._message_row(domain, message, mid, at))
                return Accepted(message_id, signer, True)
            tx.execute(
                _INSERT_EVIDENCE,
                {
                    "signer": who,
                    "first_message_id": held["message_id"],
                    "second_message_id": mid,
                    "first_signature": held["signature"],
                    "second_signature": signature.hex(),
                    "second_body": encode_message(message).hex(),
                    "recorded_at": at,
                },
            )
        raise Equivocation(
            f"equivocation: {who} already signed message {held['message_id']} for kind {slot['kind']}, source {slot['source_tx']}:{slot['source_index']}, "
            f"nonce {slot['nonce']}; message {mid} refused and recorded as evidence",
            signer=who,
            first_message_id=held["message_id"],
            second_message_id=mid,
        )

    @staticmethod
    def _replace(tx: Any, mid: str, who: str, signature: bytes, slot: dict[str, Any], at: float) -> None:
        tx.execute("DELETE FROM committee_signature WHERE message_id = :m AND signer = :s", {"m": mid, "s": who})
        tx.execute(_INSERT_SIGNATURE, {"message_id": mid, "signer": who, "signature": signature.hex(), "stored_at": at, **slot})

    @staticmethod
    def _genuine(tx: Any, mid: str, signature: str, signer: bytes, slot: dict[str, Any]) -> bool:
        """Whether a held row is the signer's signature of a stored message of this very slot."""
        if not _verifies(mid, signature, signer):
            return False
        row = tx.one("SELECT body FROM committee_message WHERE id = :m", {"m": mid})
        try:
            held = decode_message(bytes.fromhex(row["body"])) if row is not None else None
        except (Refused, ValueError):
            return False
        return held is not None and _slot(held) == slot

    def put_encoded(self, domain: Domain, body: bytes, signer: bytes, signature: bytes, committee: Committee, now: int | None = None) -> Accepted:
        """``put`` from the canonical bytes of the message (as they arrive from another process)."""
        return self.put(domain, decode_message(body), signer, signature, committee, now)

    @staticmethod
    def _message_row(domain: Domain, message: Message, mid: str, at: float) -> dict[str, Any]:
        return {
            "id": mid,
            "body": encode_message(message).hex(),
            **_slot(message),
            "expires_at": min(message.expiry, _INT64_MAX),
            "domain_chain_id": str(domain.chain_id),
            "verifying_contract": domain.verifying_contract.hex(),
            "first_seen": at,
        }

    # --- reading ------------------------------------------------------------------------------

    def get(self, message_id: bytes) -> Stored:
        """The message and its signatures as stored; ``NotFound`` for an id never put."""
        with self.db.transaction() as tx:
            row = tx.one("SELECT * FROM committee_message WHERE id = :id", {"id": _hex_id(message_id)})
            if row is None:
                raise NotFound(f"no committee message {_hex_id(message_id)}", message_id=_hex_id(message_id))
            sigs = tx.rows("SELECT signer, signature FROM committee_signature WHERE message_id = :id", {"id": row["id"]})
        signatures = {}
        for s in sigs:  # a row that does not decode (written past ``put``) is no signature
            try:
                signatures[bytes.fromhex(s["signer"])] = bytes.fromhex(s["signature"])
            except (TypeError, ValueError):
                continue
        try:
            body, domain = bytes.fromhex(row["body"]), Domain(int(row["domain_chain_id"]), bytes.fromhex(row["verifying_contract"]))
        except (TypeError, ValueError):
            raise AttestationRefused("stored message does not decode", message_id=row["id"]) from None
        return Stored(bytes.fromhex(row["id"]), decode_message(body), domain, row["first_seen"], signatures)

    def quorum(self, message_id: bytes, committee: Committee, domain: Domain, now: int) -> Tally:
        """A quorum of ``committee`` for the message when the store holds one: the ``threshold``
        lowest-indexed members whose signatures verify, checked again by ``verify_quorum``; else
        ``Tally.quorum`` is None and the tally says who signed and who is missing.  ``NotFound``
        for an unknown id; ``AttestationRefused`` if the stored message is not ``message_id``
        under ``domain``."""
        stored = self.get(message_id)
        message_id = stored.message_id
        if digest(domain, stored.message) != message_id:
            raise AttestationRefused("message id does not match this domain", message_id=message_id.hex())
        valid: list[int] = []
        invalid: list[bytes] = []
        for index, member in enumerate(committee.signers):
            sig = stored.signatures.get(member)
            if sig is None:
                continue
            try:
                ok = recover(message_id, sig) == member
            except SignatureRefused:
                ok = False
            if ok:
                valid.append(index)
            else:
                invalid.append(member)
        signed = tuple(committee.signers[i] for i in valid)
        missing = tuple(m for m in committee.signers if m not in signed)
        needed = max(committee.threshold - len(valid), 0)

        def tally(quorum: Quorum | None, reason: str | None) -> Tally:
            return Tally(message_id, quorum, signed, missing, tuple(invalid), needed, reason)

        if needed:
            return tally(None, f"below quorum: {len(valid)} of {committee.threshold}")
        indices = tuple(valid[: committee.threshold])
        signatures = tuple(stored.signatures[committee.signers[i]] for i in indices)
        try:
            verify_quorum(domain, stored.message, committee, indices, signatures, now)
        except (QuorumRefused, SignatureRefused) as exc:
            return tally(None, exc.reason)
        return tally(Quorum(message_id, stored.message, committee, indices, signatures), None)

    def pending(self, committee: Committee, now: int | None = None) -> list[Tally]:
        """Messages without a quorum of ``committee`` yet, oldest first (with ``now``, expired ones
        left out), each with its tally (who signed, who is missing).  Every message is tallied as
        ``quorum`` does: a count in SQL would take rows written past ``put`` at their word."""
        sql, params = "SELECT id, domain_chain_id, verifying_contract FROM committee_message", {}
        if now is not None:
            sql, params = sql + " WHERE expires_at > :now", {"now": min(now, _INT64_MAX)}
        with self.db.transaction() as tx:
            rows = tx.rows(sql + " ORDER BY first_seen, id", params)
        out = []
        for row in rows:
            try:
                domain = Domain(int(row["domain_chain_id"]), bytes.fromhex(row["verifying_contract"]))
                tally = self.quorum(bytes.fromhex(row["id"]), committee, domain, now if now is not None else 0)
            except (Refused, ValueError):  # a row written past ``put`` that is no message: it never acts
                continue
            if tally.quorum is None:
                out.append(tally)
        return out

    def evidence(self, signer: bytes | None = None) -> list[Evidence]:
        """Equivocations recorded, oldest first (of one signer, if given)."""
        sql, params = "SELECT * FROM committee_equivocation", {}
        if signer is not None:
            sql, params = sql + " WHERE signer = :signer", {"signer": signer.hex()}
        with self.db.transaction() as tx:
            rows = tx.rows(sql + " ORDER BY recorded_at, signer, first_message_id, second_message_id", params)
        return [
            Evidence(
                bytes.fromhex(r["signer"]),
                bytes.fromhex(r["first_message_id"]),
                bytes.fromhex(r["first_signature"]),
                bytes.fromhex(r["second_message_id"]),
                bytes.fromhex(r["second_signature"]),
                decode_message(bytes.fromhex(r["second_body"])),
                r["recorded_at"],
            )
            for r in rows
        ]

    def put_payload(self, body: bytes) -> bytes:
        """Keep ``body`` under its keccak256 (idempotent); returns the hash."""
        h = keccak256(bytes(body))
        with self.db.transaction() as tx:
            tx.execute(_INSERT_PAYLOAD, {"hash": h.hex(), "body": bytes(body).hex()})
        return h

    def payload(self, payload_hash: bytes) -> bytes:
        """The bytes kept under ``payload_hash``, checked against it; ``NotFound`` if none."""
        with self.db.transaction() as tx:
            found = tx.column("SELECT body FROM committee_payload WHERE hash = :h", {"h": payload_hash.hex()})
        body = bytes.fromhex(found[0]) if found else b""
        if not found or keccak256(body) != payload_hash:
            raise NotFound(f"no payload {payload_hash.hex()}")
        return body

    def messages_since(self, first_seen: float, limit: int = 1000) -> list[tuple[bytes, int, float]]:
        """``(id, kind, first_seen)`` of messages first seen at or after ``first_seen``, oldest first."""
        with self.db.transaction() as tx:
            rows = tx.rows(
                "SELECT id, kind, first_seen FROM committee_message WHERE first_seen >= :t ORDER BY first_seen, id LIMIT :n",
                {"t": first_seen, "n": limit},
            )
        return [(bytes.fromhex(r["id"]), int(r["kind"]), float(r["first_seen"])) for r in rows]

    def signature_count(self) -> int:
        """Rows in ``committee_signature`` (for checks and metrics)."""
        with self.db.transaction() as tx:
            return int(tx.column("SELECT COUNT(*) FROM committee_signature")[0])


def _verifies(mid: str, signature: str, signer: bytes) -> bool:
    try:
        return recover(bytes.fromhex(mid), bytes.fromhex(signature)) == signer
    except (SignatureRefused, TypeError, ValueError):
        return False


def _hex_id(message_id: bytes) -> str:
    if type(message_id) is not bytes or len(message_id) != 32:
        raise AttestationRefused("message id: not 32 bytes")
    return message_id.hex()
