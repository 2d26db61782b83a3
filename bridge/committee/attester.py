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
from bridge.committee.crypto import keccak256
from bridge.committee.messages import BTC_ASSET, ZERO32, Committee, Kind, Message, bitcoin_source, decode_message, digest
from bridge.committee.proposals import Proposal, ProposalStore
from bridge.committee.replica import Replica
from bridge.committee.store import AttestationRefused, AttestationStore
from bridge.core.db import init_db
from bridge.core.errors import BridgeError, InputError, NotFound
from bridge.custody.policy import ExpectedPayout, PayoutRefused, sign_payout

__all__ = ["Attester", "RotationPlan"]

log = logging.getLogger("bridge.committee.attester")

#: A RELEASE with less validity left than this is not signed: it could not be delivered in time.
DEFAULT_MIN_VALIDITY = 30
#: Refusals that may only mean this attester's views are behind: judged again next round.
_LOOK_AGAIN = frozenset({"unknown input", "not owed", "witness_utxo amount mismatch"})
#: An UNPAUSE may act this long after the pause it lifts.
UNPAUSE_VALIDITY = 7 * 86_400


class AttesterPsbt(SQLModel, table=True):
    """Custody proposals this key judged: signed, or refused with the reason (judged once)."""

    __tablename__ = "attester_psbt"

    proposal_id: str = Field(primary_key=True)
    grp: str = Field(index=True)
    inputs: str  # outpoints, comma-separated
    signed: bool
    reason: str = ""
    at: float


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
        proposals: ProposalStore | None = None,
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
        self.proposals = proposals
        #: The Bitcoin tip this attester's fold last read (set by its daemon before each round).
        self.btc_tip: int | None = None
        self.min_validity = min_validity
        self.clock = clock
        init_db(replica.engine, [AttesterSigned.__table__, AttesterPsbt.__table__])
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
            todo += [m for m in map(self.btc.credit_message, self.btc.creditable(self.btc_tip)) if m.expiry > now + self.min_validity]
            if self.proposals is not None:
                todo += [m for m in self._payouts_done() if m.expiry > now + self.min_validity]
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

    # --- custody: PSBTs and confirmed payouts -------------------------------------------------

    def sign_proposals(self, tip_height: int) -> list[str]:
        """Judge every custody proposal not judged yet; sign those this replica and this Bitcoin
        view justify; returns the ids signed.  A refusal is recorded with its reason."""
        if self.btc is None or self.proposals is None:
            return []
        judged = self._judged()
        out = []
        for proposal in self.proposals.proposals():
            if proposal.id in judged:
                continue
            try:
                expected = self._expected(proposal, tip_height)
                psbt = proposal.psbt.copy()
                sign_payout(psbt, self.key, expected)
                self._check_gives_up_exactly(proposal, expected)
            except BridgeError as exc:
                reason = getattr(exc, "reason", None) or exc.message
                if isinstance(exc, NotFound):
                    reason = "not owed"
                self._judge(proposal, False, str(reason))
                log.warning("attester %s refuses custody proposal %s: %s", "0x" + self.address.hex()[:8], proposal.id[:16], reason)
                continue
            self.proposals.add_signed(proposal.id, self.address, psbt)
            self._judge(proposal, True, "")
            out.append(proposal.id)
        return out

    def _expected(self, proposal: Proposal, tip_height: int) -> ExpectedPayout:
        """What this attester allows the proposal to do, or a refusal."""
        terms = self.btc.terms  # type: ignore[union-attr]
        coins = {c.txid + ":" + str(c.vout): (c.amount, c.witness_script) for c in self.btc.coins()}  # type: ignore[union-attr]
        inputs = proposal.inputs
        # A coin goes into one group's proposals only, and a later proposal of a group replaces
        # (spends every input of) each earlier one: of one group's transactions one confirms.
        for other_group, other_inputs in self._signed_inputs():
            shared = set(inputs) & set(other_inputs)
            if shared and other_group != proposal.group:
                raise PayoutRefused("coin promised elsewhere", f"{sorted(shared)[0]} is in a {other_group} this key signed")
            if other_group == proposal.group and not set(other_inputs) <= set(inputs):
                raise PayoutRefused("not a replacement", f"a {proposal.group} was signed already; a new one must spend all its inputs")
        custody = terms.custody_script_pubkey
        outputs = proposal.psbt.tx.vout
        if proposal.group.startswith("sweep:"):
            if any(o.script_pubkey != custody for o in outputs):
                raise PayoutRefused("extra output", "a sweep pays custody only")
            owed: dict[bytes, int] = {}
        else:
            request = self.replica.request(nonce=int(proposal.group.split(":")[1]))
            if request.state != "held" or request.asset != "0x" + BTC_ASSET.hex() or not request.destination:
                raise PayoutRefused("not owed", f"request {request.nonce} is {request.state}, not a held BTC withdrawal")
            destination = bytes.fromhex(request.destination)
            paid = [o.value for o in outputs if o.script_pubkey == destination]
            if len(paid) != 1:
                raise PayoutRefused("missing owed output", f"request {request.nonce}'s destination must be paid exactly once")
            # The owed output's value is checked below against the coins, once the rules passed.
            owed = {destination: paid[0]}
        return ExpectedPayout(coins, owed, custody, terms.max_fee, terms.max_feerate, tip_height, terms.policy.network)

    def _check_gives_up_exactly(self, proposal: Proposal, expected: ExpectedPayout) -> None:
        """A payout takes from custody exactly the amount its request debited: the fee comes out of
        the destination's output, never out of the coins that back other accounts."""
        if proposal.group.startswith("sweep:"):
            return
        request = self.replica.request(nonce=int(proposal.group.split(":")[1]))
        spent = sum(expected.coins[i][0] for i in proposal.inputs)
        kept = sum(o.value for o in proposal.psbt.tx.vout if o.script_pubkey == expected.change_script)
        if spent - kept != request.amount:
            raise PayoutRefused("owed amount mismatch", f"custody would give up {spent - kept} sats for a request of {request.amount}")

    def _payouts_done(self) -> list[Message]:
        """PAYOUT_DONE of every held BTC request one of whose proposals this Bitcoin view saw
        confirmed at depth, paying the request's destination exactly what it owes."""
        out = []
        for request in self.replica.requests(state="held", limit=10_000):
            if request.asset != "0x" + BTC_ASSET.hex() or not request.destination:
                continue
            for proposal in self.proposals.proposals(group=f"payout:{request.nonce}"):  # type: ignore[union-attr]
                seen = self.btc.spend(proposal.id)  # type: ignore[union-attr]
                if seen is None:
                    continue
                tx, _height, block_time = seen
                message = self._payout_message(request, tx, block_time)
                if message is not None:
                    out.append(message)
                break
        return out

    def _payout_message(self, request, tx, block_time: int) -> Message | None:
        destination = bytes.fromhex(request.destination)
        terms = self.btc.terms  # type: ignore[union-attr]
        spent = self.btc.coin_amounts([f"{i.prevout.txid_hex}:{i.prevout.n}" for i in tx.vin])  # type: ignore[union-attr]
        kept = sum(o.value for o in tx.vout if o.script_pubkey == terms.custody_script_pubkey)
        paid = [n for n, o in enumerate(tx.vout) if o.script_pubkey == destination]
        if len(spent) != len(tx.vin) or sum(spent.values()) - kept != request.amount or len(paid) != 1:
            log.warning("payout %s of request %s does not pay what was owed: no PAYOUT_DONE", tx.txid, request.nonce)
            return None
        source_tx, source_index = bitcoin_source(tx.txid, paid[0])
        chain = self.domain.chain_id
        account = bytes.fromhex(request.account[2:])
        expiry, payload = block_time + terms.credit_ttl, keccak256(destination)
        return Message(1, Kind.PAYOUT_DONE, 0, source_tx, source_index, chain, account, BTC_ASSET, request.amount, request.nonce, expiry, payload)

    def _judged(self) -> set[str]:
        """Proposals judged for good: signed, or refused for a reason no later view can change (a
        refusal that may only mean this view is behind, ``_LOOK_AGAIN``, is judged again)."""
        with self.replica.engine.connect() as conn:
            rows = conn.execute(text("SELECT proposal_id, signed, reason FROM attester_psbt")).all()
        return {p for p, signed, reason in rows if signed or reason not in _LOOK_AGAIN}

    def _signed_inputs(self) -> list[tuple[str, list[str]]]:
        with self.replica.engine.connect() as conn:
            rows = conn.execute(text("SELECT grp, inputs FROM attester_psbt WHERE signed = :t"), {"t": True}).all()
        return [(g, i.split(",")) for g, i in rows]

    def _judge(self, proposal: Proposal, signed: bool, reason: str) -> None:
        with self.replica.engine.begin() as conn:
            conn.execute(text("DELETE FROM attester_psbt WHERE proposal_id = :p AND signed = :f"), {"p": proposal.id, "f": False})
            conn.execute(
                text("INSERT INTO attester_psbt (proposal_id, grp, inputs, signed, reason, at) VALUES (:p, :g, :i, :s, :r, :a) ON CONFLICT DO NOTHING"),
                {"p": proposal.id, "g": proposal.group, "i": ",".join(proposal.inputs), "s": signed, "r": reason[:500], "a": time.time()},
            )

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
