"""Deliveries: a quorum message taken to the bridge contract, as a long operation on the runtime.

One row per message id (``committee_delivery``) and its status history; any number of
deliverers may run, on one database or several: the contract acts on a message once, and a
delivery that finds it acted (by anyone) is done.  States (stored; never renamed):

    waiting_quorum --(a quorum of a valid committee)--> submitting --(sent)--> submitted
    submitted --(mined, confirmed)--> delivered
    submitted --(reverted, not acted)--> waiting_quorum       (a rotation or a pause came between)
    any open --(acted on chain already)--> delivered
    any open --(its expiry passed)--> expired
    submitting --(refused for good: no such request, wrong signer, ...)--> refused

The transaction is only sent from ``submitting``, which is written before sending; a crash after
the send finds it in ``submitting`` and looks at the chain first (acted: delivered) before it
sends again, and a second send of one message reverts without effect.  Time is the chain's:
the newest block's timestamp or the wall clock, whichever is later (the contract compares
``block.timestamp``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Optional

from sqlalchemy import BigInteger, Column, Integer
from sqlalchemy.engine import Engine
from sqlmodel import Field, SQLModel

from bridge.committee.contract import CollateralBridge, committee_args, message_tuple, pack_quorum, revert_reason
from bridge.committee.crypto import Refused
from bridge.committee.messages import Kind, Message, digest
from bridge.committee.replica import Replica
from bridge.committee.store import AttestationStore, Quorum
from bridge.core.db import init_db
from bridge.core.dbapi import Db
from bridge.core.errors import ContractReverted, NotFound
from bridge.runtime import OpStore, OpTable, Wait, record, transition
from htlc.evm import encode_call

__all__ = ["DELIVERIES", "Deliverer", "DeliveryView", "STATES", "TERMINAL"]

log = logging.getLogger("bridge.committee.delivery")

STATES = ("waiting_quorum", "submitting", "submitted", "delivered", "expired", "refused")
TERMINAL = frozenset({"delivered", "expired", "refused"})
DELIVERIES = OpTable("delivery", "committee_delivery", "committee_delivery_history", "delivery_id", STATES, TERMINAL)

#: Kinds a deliverer takes to the contract, and the entry point each goes to.
ENTRY_POINTS = {
    Kind.RELEASE: "release",
    Kind.DEPOSIT_CREDIT: "creditDeposit",
    Kind.PAYOUT_DONE: "payoutDone",
    Kind.ROTATION: "rotate",
    Kind.UNPAUSE: "unpause",
}
#: Refusals that only time or others can lift: the delivery waits and tries again.
_WAIT_REASONS = {"IsPaused": 30.0, "CapExceeded": 60.0}
#: Refusals after which the same quorum may still act once the committee is gathered again.
_REQUORUM_REASONS = {"UnknownCommittee", "CommitteeExpired"}
_DISCOVER_BATCH = 500
_DISCOVER_SLACK = 5.0


class CommitteeDelivery(SQLModel, table=True):
    __tablename__ = "committee_delivery"

    id: str = Field(primary_key=True)  # the message id, hex
    kind: int
    state: str = Field(index=True)
    expiry: int = Field(sa_type=BigInteger)
    created_at: float
    updated_at: float
    retries: int = 0
    last_error: Optional[str] = None
    next_attempt_at: float = Field(index=True)
    tx_hash: Optional[str] = None
    epoch: Optional[int] = Field(default=None, sa_type=BigInteger)
    signers: str = ""  # the quorum's signers, hex, comma-separated


class CommitteeDeliveryHistory(SQLModel, table=True):
    __tablename__ = "committee_delivery_history"

    seq: Optional[int] = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    delivery_id: str = Field(index=True)
    at: float
    from_state: Optional[str] = None
    to_state: str
    note: str = ""
    attempt: Optional[int] = None


@dataclass(frozen=True)
class DeliveryView:
    id: str
    kind: str
    state: str
    expiry: int
    tx_hash: str | None
    epoch: int | None
    signers: tuple[str, ...]
    last_error: str | None
    history: list[dict[str, Any]]


class Deliverer(OpStore):
    """Deliveries on ``engine`` of the messages in ``store``, judged against ``replica``'s committees."""

    def __init__(
        self,
        engine: Engine,
        store: AttestationStore,
        replica: Replica,
        bridge: CollateralBridge,
        key: str | None,
        *,
        confirmations: int = 1,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        init_db(engine, [CommitteeDelivery.__table__, CommitteeDeliveryHistory.__table__])
        super().__init__(Db(engine), DELIVERIES)
        self.engine, self.store, self.replica, self.bridge, self.key = engine, store, replica, bridge, key
        self.domain = replica.config.domain
        self.confirmations = max(confirmations, 1)
        self.poll_interval = poll_interval
        self.clock = clock
        self._seen_since = 0.0
        self._chain_time = 0

    # --- finding work -----------------------------------------------------------------------

    def discover(self) -> list[str]:
        """Open a delivery for every message of a kind the contract takes that has none yet; the new ids."""
        new: list[str] = []
        while True:
            batch = self.store.messages_since(self._seen_since, limit=_DISCOVER_BATCH)
            for mid, kind, _seen in batch:
                try:
                    if kind in ENTRY_POINTS and not self._known(mid) and self._open(mid, kind):
                        new.append(mid.hex())
                except (Refused, ValueError) as exc:  # a row written past ``put``: never delivered
                    log.warning("message %s in the store does not decode: skipped (%s)", mid.hex()[:16], exc)
            if not batch:
                return new
            # Rows of concurrent writers can commit a little out of first_seen order: look back a bit.
            last = max(batch[-1][2] - _DISCOVER_SLACK, self._seen_since)
            if len(batch) < _DISCOVER_BATCH or last == self._seen_since:
                self._seen_since = last
                return new
            self._seen_since = last

    def _known(self, mid: bytes) -> bool:
        with self.db.transaction() as tx:
            return bool(tx.column("SELECT 1 FROM committee_delivery WHERE id = :id", {"id": mid.hex()}))

    def _open(self, mid: bytes, kind: int) -> bool:
        stored = self.store.get(mid)
        message = stored.message
        if digest(stored.domain, message) != mid or stored.domain != self.domain:
            raise Refused("stored message is not its id under this bridge's domain")
        now = time.time()
        with self.db.transaction() as tx:
            created = tx.execute(
                "INSERT INTO committee_delivery (id, kind, state, expiry, created_at, updated_at, retries, next_attempt_at, signers) "
                "VALUES (:id, :kind, 'waiting_quorum', :expiry, :now, :now, 0, :now, '') ON CONFLICT DO NOTHING",
                {"id": mid.hex(), "kind": int(kind), "expiry": min(message.expiry, (1 << 63) - 1), "now": now},
            )
            if created:
                record(tx, DELIVERIES, mid.hex(), None, "waiting_quorum", f"{Kind(kind).name} seen in the attestation store", now)
        return bool(created)

    # --- the runtime's Operations -----------------------------------------------------------

    def due(self, *, limit: int, among: Collection[str] | None = None) -> list[str]:  # type: ignore[override]
        return OpStore.due(self, limit=limit, among=among, first="submitting")

    async def cancel_expired(self, now: int) -> list[int]:
        """Give back the margin of every EVM request this replica holds whose release expired
        unused by ``now`` (chain time): ``cancelWithdrawal``, which anyone may send.  The chain is
        the record (a request is open or not), read before each send, so a repeat or a race
        with another sender changes nothing.  The request nonces cancelled."""
        if self.key is None:
            return []
        done = []
        for request in self.replica.requests(state="held"):
            if not request.expiry or request.expiry > now or not await self.bridge.request_open(request.nonce):
                continue
            try:
                await self.bridge.cancel_withdrawal(self.key, request.nonce, request.account, request.asset, request.amount)
            except ContractReverted as exc:
                if exc.reason not in ("AlreadyConsumed", "NotExpired"):  # else: released or cancelled meanwhile, or too early
                    log.warning("cancelling request %d refused: %s", request.nonce, exc.reason)
                continue
            log.info("request %d expired unreleased: cancelled, %d of %s back to %s", request.nonce, request.amount, request.asset, request.account)
            done.append(request.nonce)
        return done

    async def step(self, op_id: str) -> None:
        state = self._state(op_id)
        if state in TERMINAL:
            return
        message = self.store.get(bytes.fromhex(op_id)).message
        now = await self.now()
        if await self.acted(message, bytes.fromhex(op_id)):
            self._move(op_id, state, "delivered", "acted on chain")
            return
        if now >= message.expiry:
            self._move(op_id, state, "expired", f"expired at {message.expiry} before it acted")
            return
        if state == "waiting_quorum":
            quorum = self.quorum(op_id, now)
            if isinstance(quorum, str):
                raise Wait(quorum, delay=self.poll_interval)
            self._move(
                op_id,
                state,
                "submitting",
                f"quorum of epoch {quorum.committee.epoch}: {len(quorum.indices)} of {len(quorum.committee.signers)}",
                epoch=quorum.committee.epoch,
                signers=",".join(quorum.committee.signers[i].hex() for i in quorum.indices),
            )
            state = "submitting"
        if state == "submitting":
            await self._submit(op_id, message, now)
        elif state == "submitted":
            await self._confirm(op_id)

    def quorum(self, op_id: str, now: int) -> Quorum | str:
        """A quorum of a committee valid at ``now``, or why there is none (who is missing)."""
        reasons = []
        for committee in self.replica.committees(now):
            tally = self.store.quorum(bytes.fromhex(op_id), committee, self.domain, now)
            if tally.quorum is not None:
                return tally.quorum
            missing = ", ".join("0x" + m.hex()[:8] for m in tally.missing)
            reasons.append(f"epoch {committee.epoch}: {len(tally.signed)} of {committee.threshold} signatures (missing {missing})")
        return "; ".join(reasons) or "no valid committee"

    async def _submit(self, op_id: str, message: Message, now: int) -> None:
        quorum = self.quorum(op_id, now)
        if isinstance(quorum, str):
            self._move(op_id, "submitting", "waiting_quorum", f"quorum lost: {quorum}")
            raise Wait(quorum, delay=self.poll_interval)
        if self.key is None:
            raise Wait("no key to send deliveries with (read-only deliverer)", delay=60.0)
        try:
            data = self.calldata(quorum)
            tx_hash = await self.bridge.chain.transact(self.key, self.bridge.address, 0, data)
        except ContractReverted as exc:
            reason = revert_reason(exc.data) or exc.reason or "reverted"
            if reason in _WAIT_REASONS:
                raise Wait(f"the contract refuses for now: {reason}", delay=_WAIT_REASONS[reason]) from None
            if reason in _REQUORUM_REASONS:
                self._move(op_id, "submitting", "waiting_quorum", f"refused ({reason}): gathering a quorum of the current committee")
                # The contract judges by the next block's time: until one comes, the same quorum
                # would be picked and refused again.
                raise Wait(f"the contract refused the quorum ({reason}): waiting for a block", on_block="evm") from None
            if reason in ("AlreadyConsumed", "MessageExpired"):
                raise  # the next step reads the chain and ends it (delivered / expired)
            self._move(op_id, "submitting", "refused", f"the contract refuses it: {reason}")
            return
        self._move(op_id, "submitting", "submitted", f"sent {tx_hash}", tx_hash=tx_hash)

    async def _confirm(self, op_id: str) -> None:
        tx_hash = self._row(op_id)["tx_hash"]
        status = await self.bridge.chain.tx_status(tx_hash)
        if status.confirmations < self.confirmations:
            if status.confirmations < 0:  # dropped: send again
                self._move(op_id, "submitted", "submitting", f"{tx_hash} is unknown to the node: sending again")
                return
            raise Wait(f"{tx_hash}: {max(status.confirmations, 0)} of {self.confirmations} confirmations", on_block="evm")
        try:
            await self.bridge.chain.receipt(tx_hash)
        except ContractReverted as exc:
            self._move(op_id, "submitted", "waiting_quorum", f"{tx_hash} reverted: {revert_reason(exc.data) or exc.reason}")
            return
        self._move(op_id, "submitted", "delivered", f"{tx_hash} confirmed in block {status.block.height if status.block else '?'}")

    def calldata(self, quorum: Quorum) -> bytes:
        message = quorum.message
        name = ENTRY_POINTS[Kind(message.kind)]
        args: list[Any] = [message_tuple(message), *committee_args(quorum.committee), pack_quorum(quorum.indices, quorum.signatures)]
        if message.kind == Kind.ROTATION:
            args.append(self.store.payload(message.payload_hash))
        return encode_call(self.bridge.abi, name, *args)

    async def acted(self, message: Message, mid: bytes) -> bool:
        """Whether the contract already acted on this message (whoever delivered it)."""
        if message.kind in (Kind.RELEASE, Kind.PAYOUT_DONE):
            return await self.bridge.released(message.nonce)  # the request is closed
        if message.kind == Kind.DEPOSIT_CREDIT:
            return await self.bridge.credited_output(message.source_tx, message.source_index)
        return await self.bridge.consumed(mid)

    async def now(self) -> int:
        """The chain's time as the contract will see it: at least the newest block's timestamp."""
        head = self.bridge.chain.announced_head()
        if head is None or head.timestamp <= self._chain_time:
            head = await self.bridge.chain.head()
        self._chain_time = max(self._chain_time, head.timestamp)
        return max(int(self.clock()), self._chain_time)

    # --- reads ------------------------------------------------------------------------------

    def view(self, op_id: str) -> DeliveryView:
        row = self._row(op_id)
        return DeliveryView(
            row["id"],
            Kind(row["kind"]).name,
            row["state"],
            row["expiry"],
            row["tx_hash"],
            row["epoch"],
            tuple("0x" + s for s in row["signers"].split(",") if s),
            row["last_error"],
            self.history(op_id),
        )

    def list(self, state: str | None = None, limit: int = 100) -> list[DeliveryView]:
        sql, params = "SELECT id FROM committee_delivery", {"n": limit}
        if state is not None:
            sql, params["state"] = sql + " WHERE state = :state", state
        with self.db.transaction() as tx:
            ids = tx.column(sql + " ORDER BY created_at DESC, id LIMIT :n", params)
        return [self.view(i) for i in ids]

    # --- plumbing ---------------------------------------------------------------------------

    def _row(self, op_id: str) -> dict[str, Any]:
        with self.db.transaction() as tx:
            row = tx.one("SELECT * FROM committee_delivery WHERE id = :id", {"id": op_id})
        if row is None:
            raise NotFound(f"no delivery of message {op_id}", delivery_id=op_id)
        return row

    def _state(self, op_id: str) -> str:
        return self._row(op_id)["state"]

    def _move(self, op_id: str, expect: str, to: str, note: str, **fields: Any) -> None:
        with self.db.transaction() as tx:
            transition(tx, DELIVERIES, op_id, expect, to, note, fields or None)
        log.info("delivery %s: %s -> %s (%s)", op_id[:16], expect, to, note)
