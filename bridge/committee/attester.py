"""An attester: signs what its own replica justifies, and nothing else.

``../shared/DESIGN.md``, "Every attester is a replica".  After each step of its replica's fold,
the attester signs

* the RELEASE of every request its replica holds (the bytes the replica fixed when it held the
  margin, so every honest replica signs the same message), while it has at least
  ``min_validity`` seconds left;
* a ROTATION to the committee its operator configured (``RotationPlan``), once its replica is at
  the epoch before it;
* the DEPOSIT_CREDIT of every Bitcoin deposit it saw at depth itself (``btc_deposits``);
* an UNPAUSE of the pause its operator approved (``approve_unpause``: the contract's pause count),
  while its replica sees the contract paused that many times.

Signatures go to the attestation store (``store.AttestationStore``) under the current committee,
or the previous one while it is still valid and this key is no member of the current.  What it
signed is kept in its own database (``attester_signed``), so a restart signs nothing twice; the
store's put is idempotent anyway, and the store refuses a second message for one slot
(equivocation), whoever tries.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlmodel import Field, SQLModel

from bridge.committee.btc_deposits import BtcDepositWatcher
from bridge.committee.crypto import address_of, sign
from bridge.committee.messages import ZERO32, Committee, Kind, Message, decode_message, digest
from bridge.committee.replica import Replica
from bridge.committee.store import AttestationRefused, AttestationStore
from bridge.core.db import init_db
from bridge.core.errors import InputError

__all__ = ["Attester", "RotationPlan"]

log = logging.getLogger("bridge.committee.attester")

#: A RELEASE with less validity left than this is not signed: it could not be delivered in time.
DEFAULT_MIN_VALIDITY = 30
#: An UNPAUSE may act this long after the pause it lifts.
UNPAUSE_VALIDITY = 7 * 86_400


class AttesterSigned(SQLModel, table=True):
    __tablename__ = "attester_signed"

    message_id: str = Field(primary_key=True)
    signer: str
    kind: int
    at: float


@dataclass(frozen=True)
class RotationPlan:
    """The next committee an operator approved, and until when its ROTATION may act.  Every
    attester of the current committee given the same plan signs the same message."""

    committee: Committee
    expiry: int

    def message(self, chain_id: int) -> Message:
        return Message(1, Kind.ROTATION, chain_id, ZERO32, 0, chain_id, bytes(20), bytes(20), 0, self.committee.epoch, self.expiry, self.committee.hash)


class Attester:
    def __init__(
        self,
        replica: Replica,
        store: AttestationStore,
        key: bytes,
        *,
        rotation: RotationPlan | None = None,
        approve_unpause: int | None = None,
        btc: BtcDepositWatcher | None = None,
        min_validity: int = DEFAULT_MIN_VALIDITY,
        clock=time.time,
    ) -> None:
        if type(key) is not bytes or len(key) != 32:
            raise InputError("an attester key is 32 bytes")
        self.replica, self.store, self.key = replica, store, key
        self.address = address_of(key)
        self.domain = replica.config.domain
        self.rotation, self.approve_unpause = rotation, approve_unpause
        self.btc = btc
        self.min_validity = min_validity
        self.clock = clock
        init_db(replica.engine, [AttesterSigned.__table__])
        self._not_member_logged = False

    def signing_committee(self, now: int) -> Committee | None:
        """The committee this key signs for now: the current one, else a replaced one still valid."""
        for committee in self.replica.committees(now):
            if self.address in committee.members:
                return committee
        return None

    def sign_due(self) -> list[bytes]:
        """Sign everything the replica justifies and this key has not signed; the new ids."""
        now = int(self.clock())
        committee = self.signing_committee(now)
        if committee is None:
            if not self._not_member_logged:
                log.warning("attester %s is no member of a valid committee: signing nothing", "0x" + self.address.hex())
                self._not_member_logged = True
            return []
        self._not_member_logged = False
        todo = self._unsigned_releases(now + self.min_validity)
        if self.btc is not None:
            todo += [m for m in map(self.btc.credit_message, self.btc.deposits(state="seen")) if m.expiry > now + self.min_validity]
        current = self.replica.current_committee()
        if self.rotation is not None and self.rotation.committee.epoch == current.epoch + 1 and now < self.rotation.expiry:
            todo.append(self.rotation.message(self.domain.chain_id))
        paused, pauses, paused_at = self.replica.pause_state()
        if self.approve_unpause is not None and paused and pauses == self.approve_unpause:
            todo.append(self.unpause_message(pauses, paused_at))
        out = []
        signed = self._signed_other() if len(todo) else set()
        for message in todo:
            mid = digest(self.domain, message)
            if message.kind != Kind.RELEASE and mid.hex() in signed:  # releases: filtered in SQL
                continue
            self._put(message, mid, committee, now)
            out.append(mid)
        return out

    def unpause_message(self, pauses: int, paused_at: int) -> Message:
        """The UNPAUSE of the ``pauses``-th pause, valid for ``UNPAUSE_VALIDITY`` after the pause's
        block: fixed by the chain, so every attester approving it signs the same bytes."""
        chain = self.domain.chain_id
        return Message(1, Kind.UNPAUSE, chain, ZERO32, 0, chain, bytes(20), bytes(20), 0, pauses, paused_at + UNPAUSE_VALIDITY, ZERO32)

    def _unsigned_releases(self, valid_past: int) -> list[Message]:
        """Held requests whose RELEASE this key has not signed and that stay valid past ``valid_past``."""
        with self.replica.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT r.message FROM replica_request r WHERE r.state = 'held' AND r.expiry > :t "
                    "AND NOT EXISTS (SELECT 1 FROM attester_signed s WHERE s.message_id = r.message_id) ORDER BY r.nonce"
                ),
                {"t": valid_past},
            ).all()
        return [decode_message(bytes.fromhex(m)) for (m,) in rows]

    def _signed_other(self) -> set[str]:
        """Ids of the messages other than releases this key signed."""
        with self.replica.engine.connect() as conn:
            return {r[0] for r in conn.execute(text("SELECT message_id FROM attester_signed WHERE kind <> :k"), {"k": int(Kind.RELEASE)})}

    def _put(self, message: Message, mid: bytes, committee: Committee, now: int) -> None:
        try:
            self.store.put(self.domain, message, self.address, sign(mid, self.key), committee, now)
        except AttestationRefused as exc:
            # Refused for good (expired, equivocation): remember it, so it is not tried at every block.
            log.warning("attester %s: signature of %s refused: %s", "0x" + self.address.hex(), mid.hex(), exc.reason)
        if message.kind == Kind.ROTATION and self.rotation is not None:
            self.store.put_payload(self.rotation.committee.packed)
        with self.replica.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO attester_signed (message_id, signer, kind, at) VALUES (:m, :s, :k, :a) ON CONFLICT DO NOTHING"),
                {"m": mid.hex(), "s": self.address.hex(), "k": int(message.kind), "a": time.time()},
            )
