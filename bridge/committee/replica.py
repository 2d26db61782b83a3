"""A replica of the margin ledger: the bridge contract's events folded in chain order.

``../shared/DESIGN.md``, "Attested messages and the committee": the EVM chain orders everything,
so the margin ledger is a deterministic fold of the bridge contract's events at the confirmation
depth.  Every attester keeps one in its own database and signs only what it justifies; the
service's ledger (``bridgectl ledger``) is one more.  Two replicas that folded the same blocks
hold the same rows, whatever crashed in between: the fold runs inside the indexer's transaction
(``chains.indexer``: the cursor moves with the writes), and reads nothing but the chain and its
own rows (the block's timestamp is its clock).

The rules, per event in chain order:

1. ``Deposited(account, asset, amount)`` and ``Credited`` (BTC): ``amount`` credited to the
   account's margin (``user`` account of that asset) from the bridge's ``custody`` account
   (allowed negative: minus what the contract holds), then netted against its debt;
2. ``WithdrawalRequested(account, asset, amount, nonce)``: held (pending transfer to custody)
   if the account can spend it (beyond its balance only as a borrow, booked from its ``debt``
   account, that leaves it ``initial_bps`` healthy: the contract's own rule), else refused with
   the reason; a held request's RELEASE message is fixed here (expiry = block time +
   ``release_ttl``), so every replica signs the same bytes;
3. ``Released(id, ...)``: the hold of the request with that message id is posted; a release
   this replica never held is an anomaly, recorded and booked against ``unexplained`` so the
   books still match the chain (honest replicas never sign one);
4. ``WithdrawalCancelled``: an expired request's hold is voided (the contract gave it back);
5. ``Liquidated`` and its ``Seized`` positions: recorded with the replica's own health figure
   beside the contract's; each position moves to the liquidator (debt included);
6. ``Rotated``: the new committee becomes current, the previous one valid until the block's
   time plus the contract's grace window; ``Paused`` / ``Unpaused`` are recorded.

An account's position in an asset (the contract's ``balanceOf``) is its ``user`` account's
available balance plus its ``debt`` account's (never positive; the two are netted after every
change, so at most one of them is non-zero).

A reorg deeper than the confirmation depth reached the fold: the replica stops
(``ReplicaReorg``, not retryable) rather than sign on books the chain no longer backs; choose
the depth above any plausible reorg.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field, Session, SQLModel

from bridge.committee.contract import BridgeEvent, MarginTerms, decode_events
from bridge.committee.oracle import decode_oracle_events
from bridge.committee.health import Figure, figure, owes
from bridge.committee.prices import PRICE_TABLES, fold_price_event, prices_in, replica_prices
from bridge.committee.messages import (
    BTC_ASSET,
    ZERO32,
    Committee,
    Domain,
    Kind,
    Message,
    digest,
    encode_message,
    evm_source,
)
from bridge.core.db import init_db
from bridge.core.errors import BridgeError, InputError, NotFound, Overdraft, PriceRejected
from bridge.ledger import ids
from bridge.ledger.assets import Asset
from bridge.ledger.core import Ledger, Transfer
from chains.base import BlockRef, ChainEvent
from chains.btc.script import classify
from chains.cursor_store import OrphanedBlock

__all__ = ["Replica", "ReplicaConfig", "ReplicaReorg", "Request", "owner_of"]

#: Seconds a RELEASE message stays valid after its request's block.
DEFAULT_RELEASE_TTL = 3600
#: The owner of the bridge's side of every transfer, and of releases no replica held.
CUSTODY_OWNER = "bridge"
UNEXPLAINED_OWNER = "unexplained"


class ReplicaReorg(BridgeError):
    """The chain reorganised below the replica's confirmation depth: its books no longer follow
    the chain, and it must not sign on them.  Operator action: raise the depth, rebuild."""

    retryable = False


class ReplicaRequest(SQLModel, table=True):
    __tablename__ = "replica_request"

    nonce: int = Field(primary_key=True)  # the contract's request nonce
    source: str = Field(index=True, unique=True)  # txhash:logindex
    account: str  # 0x + 40 hex, lowercase
    asset: str  # 0x + 40 hex, lowercase
    amount: str  # decimal
    block_height: int
    block_time: int
    state: str  # held, refused, released, expired
    reason: str = ""
    message_id: str = Field(default="", index=True)  # hex, without 0x
    message: str = ""  # encode_message, hex
    expiry: int = 0
    closed_height: int | None = None
    #: BTC requests: the Bitcoin output script to pay, hex.
    destination: str = ""


class ReplicaCommittee(SQLModel, table=True):
    __tablename__ = "replica_committee"

    epoch: int = Field(primary_key=True)
    hash: str
    packed: str  # hex
    since_height: int
    since_time: int
    #: When the next committee took over, this one stays valid until then (unix seconds).
    valid_until: int | None = None


class ReplicaFact(SQLModel, table=True):
    __tablename__ = "replica_fact"

    name: str = Field(primary_key=True)
    value: str


class ReplicaBtcKey(SQLModel, table=True):
    """Keys accounts registered as the refund key of their Bitcoin deposit addresses."""

    __tablename__ = "replica_btc_key"

    account: str = Field(primary_key=True)  # 0x + 40 hex, lowercase
    pubkey: str = Field(primary_key=True)  # compressed, hex
    block_height: int


class ReplicaEvent(SQLModel, table=True):
    """Events folded, by log key: an event delivered twice is folded once."""

    __tablename__ = "replica_event"

    key: str = Field(primary_key=True)  # txhash:logindex
    block_height: int


class ReplicaLiquidation(SQLModel, table=True):
    """A liquidation as the contract reported it, beside this replica's own figure."""

    __tablename__ = "replica_liquidation"

    key: str = Field(primary_key=True)  # txhash:logindex of Liquidated
    account: str = Field(index=True)
    liquidator: str
    block_height: int
    block_time: int
    chain_health_bps: str
    chain_collateral: str
    chain_liabilities: str
    #: This replica's figures at the same point of the same block ("" if it could not price).
    health_bps: str = ""
    collateral: str = ""
    liabilities: str = ""


class ReplicaAnomaly(SQLModel, table=True):
    __tablename__ = "replica_anomaly"

    key: str = Field(primary_key=True)
    block_height: int
    what: str
    detail: str


TABLES = [
    ReplicaRequest.__table__,
    ReplicaCommittee.__table__,
    ReplicaFact.__table__,
    ReplicaBtcKey.__table__,
    ReplicaEvent.__table__,
    ReplicaAnomaly.__table__,
    ReplicaLiquidation.__table__,
    *PRICE_TABLES,
]


def owner_of(address: bytes | str) -> str:
    """A margin account's owner name in the ledger: its EVM address, 0x and lowercase."""
    if isinstance(address, bytes):
        return "0x" + address.hex()
    return address.lower()


@dataclass(frozen=True)
class ReplicaConfig:
    """What every replica of one bridge must agree on (else they fold different books)."""

    domain: Domain
    #: The assets the contract lists: 20-byte address -> the ledger's asset.
    assets: Mapping[bytes, Asset]
    #: The first committee (epoch 0), checked against the contract's hash at start.
    committee: Committee
    #: The contract's grace window (seconds a replaced committee stays valid).
    grace: int
    release_ttl: int = DEFAULT_RELEASE_TTL
    #: The price oracle whose events the replica folds too (None: no prices).
    oracle: bytes | None = None
    #: BTC withdrawals below this are refused: a payout must cover its fee and stay above dust.
    min_btc_withdrawal: int = 0
    #: The contract's margin terms (health thresholds, price age): health is judged as it judges.
    margin: MarginTerms = MarginTerms()

    def __post_init__(self) -> None:
        if not 60 <= self.release_ttl <= 30 * 86_400:
            raise InputError(f"release_ttl must be 60 s to 30 days, got {self.release_ttl}", field="release_ttl")


@dataclass(frozen=True)
class Request:
    """A withdrawal request as this replica judged it."""

    nonce: int
    source: str
    account: str
    asset: str
    amount: int
    block_height: int
    block_time: int
    state: str
    reason: str
    message_id: bytes | None
    message: Message | None
    expiry: int
    destination: str = ""  # BTC requests: the output script to pay, hex

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> "Request":
        from bridge.committee.messages import decode_message

        return cls(
            row["nonce"],
            row["source"],
            row["account"],
            row["asset"],
            int(row["amount"]),
            row["block_height"],
            row["block_time"],
            row["state"],
            row["reason"],
            bytes.fromhex(row["message_id"]) if row["message_id"] else None,
            decode_message(bytes.fromhex(row["message"])) if row["message"] else None,
            row["expiry"],
            row.get("destination") or "",
        )


class Replica:
    """The fold (``IndexerConsumer``) and the reads of one replica on ``engine``."""

    def __init__(self, engine: Engine, config: ReplicaConfig) -> None:
        self.engine = engine
        self.config = config
        self.ledger = Ledger(engine, assets=list(config.assets.values()))
        init_db(engine, TABLES)
        self._asset_codes = {address: asset.code for address, asset in config.assets.items()}
        self._ids: dict[tuple[str, str, str], int] = {}
        with engine.begin() as conn:
            if conn.execute(text("SELECT 1 FROM replica_committee WHERE epoch = 0")).first() is None:
                self._add_committee(conn, config.committee, 0, 0)

    # --- the fold -------------------------------------------------------------------------

    async def on_events(self, events: list[ChainEvent], block: BlockRef, *, session: Session) -> None:
        oracle = self.config.oracle
        if oracle is None:
            decoded = decode_events(events)
        else:  # the bridge's and the oracle's events, in chain order
            mine = "0x" + oracle.hex()
            decoded = decode_events(e for e in events if str(e.data.get("address", "")).lower() != mine) + decode_oracle_events(events, mine)
            decoded.sort(key=lambda ev: ev.where.log_index)
        self.fold(session.connection(), decoded, block)

    async def on_revert(self, orphaned: list[OrphanedBlock], *, session: Session) -> None:
        heights = sorted({o.height for o in orphaned})
        raise ReplicaReorg(
            f"the chain reorganised below the confirmation depth (blocks {heights[0]}..{heights[-1]} held bridge events)",
            heights=heights,
        )

    def fold(self, conn: Connection, events: Iterable[BridgeEvent], block: BlockRef) -> None:
        """Apply one block's bridge events (in chain order) in ``conn``'s transaction."""
        # Account ids looked up in this transaction only: one rolled back may not leave ids behind.
        self._ids = {}
        try:
            for event in events:
                handler = getattr(self, f"_on_{event.name}", None)
                if handler is None:
                    continue
                key = _key(event)
                sql = "INSERT INTO replica_event (key, block_height) VALUES (:k, :h) ON CONFLICT DO NOTHING"
                first = conn.execute(text(sql), {"k": key, "h": block.height})
                if first.rowcount == 1:  # the same event again (a replay) changes nothing
                    handler(conn, event, block)
        finally:
            self._ids = {}

    def _account_id(self, conn: Connection, owner: str, kind: str, code: str) -> int:
        cached = self._ids
        key = (owner, kind, code)
        if key not in cached:
            cached[key] = self.ledger.open_account_in(conn, owner, kind, code).id
        return cached[key]

    def _accounts(self, conn: Connection, account: str, asset: bytes) -> tuple[int, int] | None:
        code = self._asset_codes.get(asset)
        if code is None:
            return None
        return self._account_id(conn, account, "user", code), self._account_id(conn, CUSTODY_OWNER, "custody", code)

    def _debt(self, conn: Connection, account: str, asset: bytes) -> int:
        return self._account_id(conn, account, "debt", self._asset_codes[asset])

    def _positions_in(self, conn: Connection, account: str) -> dict[bytes, tuple[int, int]]:
        """asset address -> (available in ``user``, balance of ``debt``) of one account."""
        rows = conn.execute(
            text(
                "SELECT a.kind, a.asset, b.credits_posted, b.debits_posted, b.debits_pending "
                "FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id WHERE a.owner = :o AND a.kind IN ('user', 'debt')"
            ),
            {"o": account},
        ).all()
        by_code = {code: address for address, code in self._asset_codes.items()}
        out: dict[bytes, tuple[int, int]] = {}
        for kind, code, cp, dp, pend in rows:
            address = by_code.get(code)
            if address is None:
                continue
            available, debt = out.get(address, (0, 0))
            if kind == "user":
                available = int(cp) - int(dp) - int(pend)
            else:
                debt = int(cp) - int(dp)
            out[address] = (available, debt)
        return out

    def _settle(self, conn: Connection, account: str, asset: bytes, tag: str, at: int) -> None:
        """Net the account's available balance of ``asset`` against its debt of it (a repayment)."""
        available, debt = self._positions_in(conn, account).get(asset, (0, 0))
        if available > 0 and debt < 0:
            user, _custody = self._accounts(conn, account, asset)  # type: ignore[misc]
            amount = min(available, -debt)
            self.ledger.apply_in(conn, [Transfer(f"repay:{tag}:{self._asset_codes[asset]}", user, self._debt(conn, account, asset), amount, cause="repay")], at)

    def _figure_in(self, conn: Connection, positions: Mapping[bytes, int], at: int) -> Figure:
        return figure(positions, self.config.assets, prices_in(conn), at, self.config.margin.max_price_age)

    def _judge(self, conn: Connection, account: str, asset: bytes, amount: int, at: int) -> tuple[str, int]:
        """Why the contract's rule refuses this withdrawal (else ""), and how much of it is a borrow."""
        held = self._positions_in(conn, account)
        available, debt = held.get(asset, (0, 0))
        after = available + debt - amount
        if after < 0 and (asset == BTC_ASSET or self.config.oracle is None):
            return f"margin too low: {max(available + debt, 0)} available, {amount} requested", 0
        positions = {a: av + d for a, (av, d) in held.items()}
        positions[asset] = after
        if not owes(positions):
            return "", 0
        try:
            fig = self._figure_in(conn, positions, at)
        except PriceRejected as exc:
            return f"health cannot be judged: {exc.message}", 0
        if fig.below(self.config.margin.initial_bps):
            return f"margin too low: health after would be {fig.bps} bps, {self.config.margin.initial_bps} needed", 0
        return "", max(amount - max(available, 0), 0)

    def _on_Deposited(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        key = _key(event)
        account, asset = owner_of(event["account"]), _raw(event["asset"])
        accounts = self._accounts(conn, account, asset)
        if accounts is None:  # the contract lists its assets: a deposit of another is its bug
            self._anomaly(conn, key, block, "deposit of an asset this replica does not list", event)
            return
        user, custody = accounts
        self.ledger.apply_in(conn, [Transfer(ids.evm_log(*_where(event)), custody, user, event["amount"], cause="deposit")], block.timestamp)
        self._settle(conn, account, asset, key, block.timestamp)

    def _on_WithdrawalRequested(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        nonce, amount = event["requestNonce"], event["amount"]
        account, asset = owner_of(event["account"]), _raw(event["asset"])
        row = {
            "nonce": nonce,
            "source": _key(event),
            "account": account,
            "asset": "0x" + asset.hex(),
            "amount": str(amount),
            "block_height": block.height,
            "block_time": block.timestamp,
            "state": "refused",
            "reason": "",
            "message_id": "",
            "message": "",
            "expiry": 0,
        }
        accounts = self._accounts(conn, account, asset)
        if accounts is None:
            row["reason"] = "asset not listed on this bridge"
        elif asset == BTC_ASSET and amount < self.config.min_btc_withdrawal:
            row["reason"] = f"{amount} sats is below the minimum BTC withdrawal of {self.config.min_btc_withdrawal} sats"
        elif (verdict := self._judge(conn, account, asset, amount, block.timestamp))[0]:
            row["reason"] = verdict[0]
        else:
            user, custody = accounts
            borrow = verdict[1]
            moves = [Transfer(f"borrow:req:{nonce}", self._debt(conn, account, asset), user, borrow, cause="borrow")] if borrow else []
            try:
                self.ledger.apply_in(conn, [*moves, Transfer.hold(f"req:{nonce}", user, custody, amount, cause="withdrawal request")], block.timestamp)
            except Overdraft as exc:
                row["reason"] = f"margin too low: {exc.details.get('available', 0)} available, {amount} requested"
            else:
                row["state"] = "held"
                if asset != BTC_ASSET:  # BTC is paid on Bitcoin: its message comes once the payout confirms
                    message = self.release_message(event, block)
                    row.update(message_id=digest(self.config.domain, message).hex(), message=encode_message(message).hex(), expiry=message.expiry)
        conn.execute(text(_INSERT_REQUEST), row)

    def _on_BtcDestination(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        nonce, script = event["requestNonce"], _raw(event["destination"])
        row = conn.execute(text("SELECT state FROM replica_request WHERE nonce = :n"), {"n": nonce}).first()
        if row is None:
            return
        conn.execute(text("UPDATE replica_request SET destination = :d WHERE nonce = :n"), {"d": script.hex(), "n": nonce})
        if row.state == "held" and classify(script) not in PAYABLE_SCRIPTS:
            self.ledger.apply_in(conn, [Transfer.void(f"void:req:{nonce}", f"req:{nonce}", cause="destination not payable")], block.timestamp)
            conn.execute(
                text("UPDATE replica_request SET state = 'refused', reason = :r, closed_height = :h WHERE nonce = :n"),
                {"r": f"destination is not a standard output script ({classify(script)})", "h": block.height, "n": nonce},
            )

    def _on_PaidOut(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        nonce = event["requestNonce"]
        row = conn.execute(text("SELECT state FROM replica_request WHERE nonce = :n"), {"n": nonce}).first()
        txid = _raw(event["payoutTx"]).hex()
        if row is not None and row.state == "held":
            self.ledger.apply_in(conn, [Transfer.post(f"post:req:{nonce}", f"req:{nonce}", cause=f"paid on Bitcoin by {txid}")], block.timestamp)
            conn.execute(
                text("UPDATE replica_request SET state = 'released', message_id = :m, closed_height = :h WHERE nonce = :n"),
                {"m": _raw(event["id"]).hex(), "h": block.height, "n": nonce},
            )
            return
        self._anomaly(conn, _key(event), block, f"payout of request {nonce} this replica did not hold ({row.state if row else 'unknown'})", event)

    def release_message(self, event: BridgeEvent, block: BlockRef) -> Message:
        """The RELEASE every honest replica signs for a request: all from the chain."""
        source_tx, source_index = evm_source(*_where(event))
        chain = self.config.domain.chain_id
        return Message(
            1,
            Kind.RELEASE,
            chain,
            source_tx,
            source_index,
            chain,
            _raw(event["account"]),
            _raw(event["asset"]),
            event["amount"],
            event["requestNonce"],
            block.timestamp + self.config.release_ttl,
            ZERO32,
        )

    def _on_Released(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        mid = _raw(event["id"]).hex()
        row = conn.execute(text("SELECT nonce, state FROM replica_request WHERE message_id = :m"), {"m": mid}).first()
        if row is not None and row.state == "held":
            self.ledger.apply_in(conn, [Transfer.post(f"post:req:{row.nonce}", f"req:{row.nonce}", cause=f"released by message {mid}")], block.timestamp)
            conn.execute(text("UPDATE replica_request SET state = 'released', closed_height = :h WHERE nonce = :n"), {"h": block.height, "n": row.nonce})
            return
        # Released without this replica's hold: the chain paid, so the books say so, and why not.
        self._anomaly(conn, _key(event), block, f"release of message {mid} this replica never held ({row.state if row else 'unknown'})", event)
        code = self._asset_codes.get(_raw(event["asset"]))
        if code is not None:
            source = self.ledger.open_account_in(conn, UNEXPLAINED_OWNER, "external", code)
            custody = self.ledger.open_account_in(conn, CUSTODY_OWNER, "custody", code)
            booked = Transfer(ids.evm_log(*_where(event)), source.id, custody.id, event["amount"], cause="unexplained release")
            self.ledger.apply_in(conn, [booked], block.timestamp)

    def _on_Credited(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        account, asset = owner_of(event["account"]), _raw(event["asset"])
        accounts = self._accounts(conn, account, asset)
        if accounts is None:
            self._anomaly(conn, _key(event), block, "credit of an asset this replica does not list", event)
            return
        user, custody = accounts
        transfer = Transfer(ids.btc_output(_raw(event["sourceTx"]).hex(), event["sourceIndex"]), custody, user, event["amount"], cause="bitcoin deposit")
        self.ledger.apply_in(conn, [transfer], block.timestamp)
        self._settle(conn, account, asset, _key(event), block.timestamp)

    def _on_WithdrawalCancelled(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        nonce = event["requestNonce"]
        row = conn.execute(text("SELECT state, account FROM replica_request WHERE nonce = :n"), {"n": nonce}).first()
        if row is None or row.state != "held":
            # Nothing held here, so nothing to give back: the chain's take and return net out.
            self._anomaly(conn, _key(event), block, f"cancel of request {nonce} this replica did not hold ({row.state if row else 'unknown'})", event)
            return
        self.ledger.apply_in(conn, [Transfer.void(f"void:req:{nonce}", f"req:{nonce}", cause="cancelled after its release expired")], block.timestamp)
        self._settle(conn, row.account, _raw(event["asset"]), _key(event), block.timestamp)
        conn.execute(
            text("UPDATE replica_request SET state = 'expired', reason = 'release expired unused; cancelled', closed_height = :h WHERE nonce = :n"),
            {"h": block.height, "n": nonce},
        )

    def _on_Liquidated(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        account = owner_of(event["account"])
        positions = {a: av + d for a, (av, d) in self._positions_in(conn, account).items()}
        mine = {"health_bps": "", "collateral": "", "liabilities": ""}
        try:
            fig = self._figure_in(conn, positions, block.timestamp)
            mine = {"health_bps": str(fig.bps if fig.bps is not None else ""), "collateral": str(fig.collateral), "liabilities": str(fig.liabilities)}
        except PriceRejected:
            fig = None
        if fig is None or fig.bps != event["healthBps"] or not fig.below(self.config.margin.liquidation_bps):
            what = f"liquidation of {account} at {event['healthBps']} bps; this replica computes {mine['health_bps'] or 'no figure'}"
            self._anomaly(conn, _key(event), block, what, event)
        conn.execute(
            text(
                "INSERT INTO replica_liquidation (key, account, liquidator, block_height, block_time, chain_health_bps, chain_collateral, "
                "chain_liabilities, health_bps, collateral, liabilities) VALUES (:k, :a, :l, :h, :t, :cb, :cc, :cl, :health_bps, :collateral, :liabilities)"
            ),
            {
                "k": _key(event),
                "a": account,
                "l": owner_of(event["liquidator"]),
                "h": block.height,
                "t": block.timestamp,
                "cb": str(event["healthBps"]),
                "cc": str(event["collateralValue"]),
                "cl": str(event["liabilityValue"]),
                **mine,
            },
        )

    def _on_Seized(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        account, liquidator, asset = owner_of(event["account"]), owner_of(event["liquidator"]), _raw(event["asset"])
        amount, key = event["amount"], _key(event)
        if asset not in self._asset_codes:
            self._anomaly(conn, key, block, "seizure of an asset this replica does not list", event)
            return
        if amount > 0:
            source, dest = self._accounts(conn, account, asset)[0], self._accounts(conn, liquidator, asset)[0]  # type: ignore[index]
            move = Transfer(f"seize:{key}", source, dest, amount, cause="liquidation")
        else:
            source, dest = self._debt(conn, liquidator, asset), self._debt(conn, account, asset)
            move = Transfer(f"seize:{key}", source, dest, -amount, cause="liquidation: debt taken over")
        try:
            self.ledger.apply_in(conn, [move], block.timestamp)
        except Overdraft:
            self._anomaly(conn, key, block, f"seizure of {amount} from {account}, which this replica does not hold", event)
            return
        self._settle(conn, liquidator, asset, key, block.timestamp)

    def _on_BtcKeyRegistered(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        raw = _raw(event["pubkey"])
        compressed = bytes([2 + (raw[63] & 1)]) + raw[:32]
        conn.execute(
            text("INSERT INTO replica_btc_key (account, pubkey, block_height) VALUES (:a, :p, :h) ON CONFLICT DO NOTHING"),
            {"a": owner_of(event["account"]), "p": compressed.hex(), "h": block.height},
        )

    def _on_Rotated(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        packed = _raw(event["committee"])
        committee = Committee.unpack(packed)
        conn.execute(
            text("UPDATE replica_committee SET valid_until = :u WHERE valid_until IS NULL AND epoch < :e"),
            {"u": block.timestamp + self.config.grace, "e": committee.epoch},
        )
        self._add_committee(conn, committee, block.height, block.timestamp)

    def _on_PriceUpdated(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        fold_price_event(conn, event, block)

    _on_BreakerTripped = _on_BreakerCleared = _on_PriceUpdated

    def _on_Paused(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        self._set(conn, "paused", "1")
        self._set(conn, "paused_at", str(block.timestamp))
        self._set(conn, "pauses", str(int(self._get(conn, "pauses", "0")) + 1))

    def _on_Unpaused(self, conn: Connection, event: BridgeEvent, block: BlockRef) -> None:
        self._set(conn, "paused", "0")

    def _add_committee(self, conn: Connection, committee: Committee, height: int, at: int) -> None:
        conn.execute(
            text(
                "INSERT INTO replica_committee (epoch, hash, packed, since_height, since_time, valid_until) "
                "VALUES (:e, :h, :p, :sh, :st, NULL) ON CONFLICT DO NOTHING"
            ),
            {"e": committee.epoch, "h": committee.hash.hex(), "p": committee.packed.hex(), "sh": height, "st": at},
        )

    def _anomaly(self, conn: Connection, key: str, block: BlockRef, what: str, event: BridgeEvent) -> None:
        detail = json.dumps({k: _plain(v) for k, v in event.args.items()}, sort_keys=True)
        conn.execute(
            text("INSERT INTO replica_anomaly (key, block_height, what, detail) VALUES (:k, :h, :w, :d) ON CONFLICT DO NOTHING"),
            {"k": key, "h": block.height, "w": what, "d": detail},
        )

    @staticmethod
    def _set(conn: Connection, name: str, value: str) -> None:
        conn.execute(text("DELETE FROM replica_fact WHERE name = :n"), {"n": name})
        conn.execute(text("INSERT INTO replica_fact (name, value) VALUES (:n, :v)"), {"n": name, "v": value})

    @staticmethod
    def _get(conn: Connection, name: str, default: str) -> str:
        row = conn.execute(text("SELECT value FROM replica_fact WHERE name = :n"), {"n": name}).first()
        return default if row is None else row[0]

    # --- reads ----------------------------------------------------------------------------

    def committees(self, now: int) -> list[Committee]:
        """The committees whose quorum counts at ``now``: the current one first, then a replaced one
        still inside its grace window."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT packed, valid_until FROM replica_committee ORDER BY epoch DESC")).all()
        out = []
        for packed, valid_until in rows:
            if valid_until is None or now < valid_until:
                out.append(Committee.unpack(bytes.fromhex(packed)))
        return out

    def current_committee(self) -> Committee:
        with self.engine.connect() as conn:
            packed = conn.execute(text("SELECT packed FROM replica_committee ORDER BY epoch DESC LIMIT 1")).scalar_one()
        return Committee.unpack(bytes.fromhex(packed))

    def requests(self, state: str | None = None, account: str | None = None, limit: int = 1000) -> list[Request]:
        sql, params = "SELECT * FROM replica_request WHERE 1 = 1", {"limit": limit}
        if state is not None:
            sql, params["state"] = sql + " AND state = :state", state
        if account is not None:
            sql, params["account"] = sql + " AND account = :account", account.lower()
        with self.engine.connect() as conn:
            return [Request.of(r) for r in conn.execute(text(sql + " ORDER BY nonce LIMIT :limit"), params).mappings()]

    def request(self, *, nonce: int | None = None, message_id: bytes | None = None) -> Request:
        sql, params = ("nonce = :v", {"v": nonce}) if nonce is not None else ("message_id = :v", {"v": (message_id or b"").hex()})
        with self.engine.connect() as conn:
            row = conn.execute(text(f"SELECT * FROM replica_request WHERE {sql}"), params).mappings().first()
        if row is None:
            raise NotFound(f"no withdrawal request with {'nonce ' + str(nonce) if nonce is not None else 'message ' + params['v']}")
        return Request.of(row)

    def balances(self) -> dict[tuple[str, str], tuple[int, int]]:
        """``(owner, asset code) -> (posted balance, pending debits)`` of every margin account:
        what two replicas at the same height must agree on."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT a.owner, a.asset, b.credits_posted, b.debits_posted, b.debits_pending "
                    "FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id WHERE a.kind = 'user' ORDER BY a.owner, a.asset"
                )
            ).all()
        return {(o, a): (int(cp) - int(dp), int(pend)) for o, a, cp, dp, pend in rows}

    def positions(self, account: str | None = None) -> dict[tuple[str, bytes], int]:
        """``(owner, asset address) -> signed position`` (the contract's ``balanceOf``) of every
        margin account, or of one; zero positions left out."""
        sql = "SELECT DISTINCT owner FROM ledger_accounts WHERE kind IN ('user', 'debt')"
        with self.engine.connect() as conn:
            owners = [account.lower()] if account is not None else [o for (o,) in conn.execute(text(sql + " ORDER BY owner"))]
            out = {}
            for owner in owners:
                for asset, (available, debt) in self._positions_in(conn, owner).items():
                    if available + debt:
                        out[(owner, asset)] = available + debt
        return out

    def health(self, account: str, now: int) -> Figure:
        """The account's health figure from this replica's book and folded prices, judged at ``now``
        (a block's time: prices older than the contract's ``max_price_age`` then do not count)."""
        positions = {asset: p for (_o, asset), p in self.positions(account).items()}
        with self.engine.connect() as conn:
            return self._figure_in(conn, positions, now)

    def liquidations(self, account: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM replica_liquidation", {}
        if account is not None:
            sql, params = sql + " WHERE account = :a", {"a": account.lower()}
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(text(sql + " ORDER BY block_height, key"), params).mappings()]

    def btc_keys(self, account: str | None = None) -> list[tuple[str, bytes]]:
        """``(account, compressed pubkey)`` registrations, oldest first."""
        sql, params = "SELECT account, pubkey FROM replica_btc_key", {}
        if account is not None:
            sql, params = sql + " WHERE account = :a", {"a": account.lower()}
        with self.engine.connect() as conn:
            return [(a, bytes.fromhex(p)) for a, p in conn.execute(text(sql + " ORDER BY block_height, account, pubkey"), params)]

    def prices(self) -> dict[str, Any]:
        """The oracle's prices as folded: asset -> price, time, tripped."""
        return replica_prices(self.engine)

    def anomalies(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(text("SELECT * FROM replica_anomaly ORDER BY block_height, key")).mappings()]

    def pause_state(self) -> tuple[bool, int, int]:
        """Whether the contract is paused, how many pauses it saw, and the last one's block time."""
        with self.engine.connect() as conn:
            return self._get(conn, "paused", "0") == "1", int(self._get(conn, "pauses", "0")), int(self._get(conn, "paused_at", "0"))


#: Output scripts a payout may pay (what Bitcoin Core relays as standard destinations).
PAYABLE_SCRIPTS = frozenset({"pubkeyhash", "scripthash", "witness_v0_keyhash", "witness_v0_scripthash", "witness_v1_taproot"})

_INSERT_REQUEST = (
    "INSERT INTO replica_request (nonce, source, account, asset, amount, block_height, block_time, state, reason, message_id, message, expiry, destination) "
    "VALUES (:nonce, :source, :account, :asset, :amount, :block_height, :block_time, :state, :reason, :message_id, :message, :expiry, '')"
)


def _where(event: BridgeEvent) -> tuple[str, int]:
    tx = event.where.tx_hash
    return (tx if tx.startswith("0x") else "0x" + tx), event.where.log_index


def _key(event: BridgeEvent) -> str:
    tx, index = _where(event)
    return f"{tx}:{index}"


def _raw(value: Any) -> bytes:
    """Event values as raw bytes: addresses (checksummed hex) and bytes32."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return bytes.fromhex(value.removeprefix("0x"))


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value
