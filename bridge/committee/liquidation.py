"""Liquidations: an account below the bridge's liquidation threshold taken over by one key, as a
long operation on the runtime (``bridge.runtime``; ``../shared/DESIGN.md``, "Prices, margin and
liquidation").

One row per attempt (``committee_liquidation``: the account and the block at which the chain
showed it below the threshold) and its status history.  States (stored; never renamed):

    planned --(the chain still shows it below; liquidate sent)--> submitted
    submitted --(mined, confirmed)--> done                         outcome "liquidated"
    planned | submitted --(the chain says not liquidatable)--> done     outcome "liquidated" when
                           the Liquidated event is this key's, "elsewhere" when another's, else
                           "recovered" (repaid, topped up, or the price came back)
    submitted --(unknown to the node, or reverted on a price or a pause)--> planned
    planned | submitted --(refused for good: SelfLiquidation, NoOracle, ...)--> refused

The intent is written before anything is sent, and the chain is read (``health``) before every
send: a crash after a send finds the account no longer liquidatable and ends the operation
without a second transaction; a duplicate that got through anyway reverts with
``NotLiquidatable`` and ends the same way.  A price that does not count (``PriceStale``,
``PriceHalted``, ``NoPrice``), a pause, or a liquidator short of margin is a wait, never a
failure: the operation stays open and is tried again later.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterable, Optional

from eth_account import Account
from eth_utils import to_checksum_address
from sqlalchemy import BigInteger, Column, Integer
from sqlalchemy.engine import Engine
from sqlmodel import Field, SQLModel

from bridge.committee.contract import CollateralBridge, revert_reason
from bridge.core.db import init_db
from bridge.core.dbapi import Db
from bridge.core.errors import ChainUnavailable, ContractReverted, NotFound
from bridge.ledger.assets import MAX_BPS
from bridge.runtime import OpStore, OpTable, Wait, record, transition
from chains.evm_revert import decode_revert
from htlc.evm import encode_call

__all__ = [
    "LIQUIDATIONS",
    "PRICE_REFUSALS",
    "STATES",
    "TERMINAL",
    "ChainHealth",
    "Liquidator",
    "chain_health",
    "refusal_text",
]

log = logging.getLogger("bridge.committee.liquidation")

STATES = ("planned", "submitted", "done", "refused")
TERMINAL = frozenset({"done", "refused"})
LIQUIDATIONS = OpTable("liquidation", "committee_liquidation", "committee_liquidation_history", "liquidation_id", STATES, TERMINAL)

#: The contract's refusals of a price: the account cannot be judged (nor liquidated) until it counts again.
PRICE_REFUSALS = frozenset({"PriceStale", "PriceHalted", "NoPrice"})
#: Refusals only time or others lift (seconds before the next look).
_WAIT_REASONS = {"IsPaused": 30.0, "InsufficientMargin": 60.0, **{r: 10.0 for r in PRICE_REFUSALS}}
_WAIT_HINTS = {
    "IsPaused": "the bridge is paused",
    "InsufficientMargin": "this key's own margin would be below the initial level after taking the positions over: deposit more collateral into it",
}
#: An account whose liquidation was refused for good is not planned again for this long.
REFUSED_COOLDOWN = 300.0


class CommitteeLiquidation(SQLModel, table=True):
    __tablename__ = "committee_liquidation"

    id: str = Field(primary_key=True)  # "<account>@<block height>"
    account: str = Field(index=True)  # 0x + 40 hex, lowercase
    state: str = Field(index=True)
    planned_height: int = Field(sa_type=BigInteger)
    planned_bps: str = ""  # the chain's health when planned
    created_at: float
    updated_at: float
    retries: int = 0
    last_error: Optional[str] = None
    next_attempt_at: float = Field(index=True)
    tx_hash: Optional[str] = None
    outcome: str = ""  # liquidated | elsewhere | recovered (state done)
    liquidator: str = ""  # who took the positions over, when known
    seized: str = ""  # JSON {asset address: signed base units} of this key's liquidation


class CommitteeLiquidationHistory(SQLModel, table=True):
    __tablename__ = "committee_liquidation_history"

    seq: Optional[int] = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    liquidation_id: str = Field(index=True)
    at: float
    from_state: Optional[str] = None
    to_state: str
    note: str = ""
    attempt: Optional[int] = None


# --- the chain's health figure ------------------------------------------------------------------


@dataclass(frozen=True)
class ChainHealth:
    """``CollateralBridge.health`` now: USD (8 decimals) and bps (None: owes nothing); or why the
    contract cannot judge the account (``refusal``: ``PriceStale``, ``PriceHalted``, ``NoPrice``,
    ``NoOracle``; ``asset``: the price's asset address)."""

    collateral: int = 0
    liabilities: int = 0
    bps: int | None = None
    refusal: str | None = None
    asset: str | None = None

    def below(self, bps: int) -> bool:
        """Whether the contract would liquidate at threshold ``bps`` (its own comparison)."""
        return self.refusal is None and self.liabilities != 0 and self.collateral * MAX_BPS < bps * self.liabilities


async def chain_health(bridge: CollateralBridge, account: str) -> ChainHealth:
    """The contract's figure for ``account``; a price refusal is returned, other reverts raised."""
    try:
        collateral, liabilities, bps = await bridge.health(account)
    except ContractReverted as exc:
        decoded = decode_revert(exc.data, bridge.abi)
        name = decoded[0] if decoded is not None else exc.reason
        if name in PRICE_REFUSALS or name == "NoOracle":
            asset = decoded[1][0] if decoded is not None and decoded[1] else None
            return ChainHealth(refusal=name, asset=str(asset) if asset is not None else None)
        raise
    return ChainHealth(collateral, liabilities, bps)


def refusal_text(reason: str, symbol: str | None, max_price_age: int | None = None) -> str:
    """A price refusal in words: which price, and why it does not count."""
    what = f"the {symbol} price" if symbol else "a price"
    if reason == "PriceStale":
        age = f" (older than {max_price_age} s)" if max_price_age else ""
        return f"{what} does not count: stale{age}"
    if reason == "PriceHalted":
        return f"{what} does not count: halted (its circuit breaker tripped; a quorum must clear it)"
    if reason == "NoPrice":
        return f"{what} does not count: none posted yet"
    if reason == "NoOracle":
        return "the bridge has no price oracle: nothing is priced"
    return f"{what} does not count: {reason}"


# --- the operations -----------------------------------------------------------------------------


class Liquidator(OpStore):
    """Liquidations on ``engine`` sent from ``key`` (None: plans and reads, never sends)."""

    def __init__(
        self,
        engine: Engine,
        bridge: CollateralBridge,
        key: str | None,
        liquidation_bps: int,
        *,
        confirmations: int = 1,
        poll_interval: float = 0.5,
        count: Callable[[str], None] | None = None,
        symbol_of: Callable[[str], str] | None = None,
    ) -> None:
        init_db(engine, [CommitteeLiquidation.__table__, CommitteeLiquidationHistory.__table__])
        super().__init__(Db(engine), LIQUIDATIONS)
        self.engine, self.bridge, self.key = engine, bridge, key
        self.address = Account.from_key(key).address.lower() if key is not None else None
        self.liquidation_bps = liquidation_bps
        self.confirmations = max(confirmations, 1)
        self.poll_interval = poll_interval
        self.count = count or (lambda _name: None)
        self.symbol_of = symbol_of or (lambda address: address)
        #: account -> why the chain cannot judge it now (a price refusal), as last logged.
        self.refusals: dict[str, str] = {}

    # --- finding work -----------------------------------------------------------------------

    async def scan(self, accounts: Iterable[str], height: int) -> list[str]:
        """Read the chain's health of every account (never this key's own, nor one with an open
        operation) and plan a liquidation for each below the threshold; the new ids."""
        new = []
        for account in accounts:
            account = account.lower()
            if account == self.address or self.busy(account):
                continue
            try:
                health = await chain_health(self.bridge, account)
            except ContractReverted as exc:  # not a price's refusal: said once, the others scanned all the same
                if self.refusals.get(account) != exc.message:
                    self.refusals[account] = exc.message
                    log.warning("%s: reading its health on chain: %s", account, exc.message)
                continue
            if health.refusal is not None:
                self._refused_price(account, health)
                continue
            if self.refusals.pop(account, None) is not None:
                log.info("%s: its prices count again", account)
            if health.below(self.liquidation_bps):
                op = self.plan(account, height, health.bps)
                if op is not None:
                    new.append(op)
        return new

    def _refused_price(self, account: str, health: ChainHealth) -> None:
        text = refusal_text(health.refusal or "", self.symbol_of(health.asset) if health.asset else None)
        self.count("price_refusals")
        if self.refusals.get(account) != text:
            self.refusals[account] = text
            log.warning("%s cannot be judged now: %s; looking again later", account, text)

    def busy(self, account: str) -> bool:
        """Whether ``account`` has an open operation, or one refused for good lately."""
        with self.db.transaction() as tx:
            return bool(
                tx.column(
                    f"SELECT 1 FROM committee_liquidation WHERE account = :a AND (state IN ({LIQUIDATIONS.open_sql}) "
                    "OR (state = 'refused' AND updated_at > :since))",
                    {"a": account.lower(), "since": time.time() - REFUSED_COOLDOWN},
                )
            )

    def plan(self, account: str, height: int, bps: int | None) -> str | None:
        """Record the intent to liquidate ``account`` (seen below the threshold at block ``height``)
        before anything is sent; its id, or None when one is open already."""
        account = account.lower()
        op_id, now = f"{account}@{height}", time.time()
        with self.db.transaction() as tx:
            if tx.column(f"SELECT 1 FROM committee_liquidation WHERE account = :a AND state IN ({LIQUIDATIONS.open_sql})", {"a": account}):
                return None
            created = tx.execute(
                "INSERT INTO committee_liquidation (id, account, state, planned_height, planned_bps, created_at, updated_at, retries, "
                "next_attempt_at, outcome, liquidator, seized) VALUES (:id, :a, 'planned', :h, :bps, :now, :now, 0, :now, '', '', '') "
                "ON CONFLICT DO NOTHING",
                {"id": op_id, "a": account, "h": height, "bps": "" if bps is None else str(bps), "now": now},
            )
            if created:
                record(tx, LIQUIDATIONS, op_id, None, "planned", f"health {bps} bps < {self.liquidation_bps} at block {height}", now)
        if created:
            log.info("liquidation %s planned: health %s bps < %s", op_id, bps, self.liquidation_bps)
        return op_id if created else None

    # --- the runtime's Operations -----------------------------------------------------------

    def due(self, *, limit: int, among: Collection[str] | None = None) -> list[str]:  # type: ignore[override]
        return OpStore.due(self, limit=limit, among=among, first="submitted")

    async def step(self, op_id: str) -> None:
        row = self._row(op_id)
        if row["state"] == "planned":
            await self._send(row)
        elif row["state"] == "submitted":
            await self._confirm(row)

    async def _send(self, row: dict[str, Any]) -> None:
        op_id, account = row["id"], row["account"]
        health = await chain_health(self.bridge, account)  # the chain first, before every send
        if health.refusal is not None:
            self._refused_price(account, health)
            raise Wait(f"the contract cannot judge {account}: {self.refusals[account]}", delay=_WAIT_REASONS.get(health.refusal, 10.0))
        if not health.below(self.liquidation_bps):
            why = "it owes nothing on chain" if health.bps is None else f"health {_bps(health.bps)} >= {self.liquidation_bps:,} bps on chain"
            await self._not_liquidatable(row, why)
            return
        if self.key is None:
            raise Wait("no key to liquidate with (read-only)", delay=60.0)
        data = encode_call(self.bridge.abi, "liquidate", to_checksum_address(account))
        try:
            tx_hash = await self.bridge.chain.transact(self.key, self.bridge.address, 0, data)
        except ContractReverted as exc:
            reason = revert_reason(exc.data) or exc.reason or "reverted"
            if reason == "NotLiquidatable":
                await self._not_liquidatable(row, "the contract refuses: NotLiquidatable")
                return
            if reason in _WAIT_REASONS:
                hint = _WAIT_HINTS.get(reason, "a price does not count")
                raise Wait(f"the contract refuses for now: {reason} ({hint})", delay=_WAIT_REASONS[reason]) from None
            self._move(op_id, "planned", "refused", f"the contract refuses it: {reason}")
            self.count("liquidations_refused")
            return
        except ChainUnavailable as exc:
            sent = exc.details.get("tx_hash")
            if not sent:
                raise
            self._move(op_id, "planned", "submitted", f"sent {sent} (the node's answer was lost)", tx_hash=sent)
            self.count("liquidations_sent")
            return
        self._move(op_id, "planned", "submitted", f"sent {tx_hash} (health {_bps(health.bps)} < {self.liquidation_bps:,} bps)", tx_hash=tx_hash)
        self.count("liquidations_sent")

    async def _confirm(self, row: dict[str, Any]) -> None:
        op_id, tx_hash = row["id"], row["tx_hash"]
        status = await self.bridge.chain.tx_status(tx_hash)
        if status.confirmations < 0:
            self._move(op_id, "submitted", "planned", f"{tx_hash} is unknown to the node: reading the chain again")
            return
        if status.confirmations < self.confirmations:
            raise Wait(f"{tx_hash}: {max(status.confirmations, 0)} of {self.confirmations} confirmations", on_block="evm")
        try:
            receipt = await self.bridge.chain.receipt(tx_hash)
        except ContractReverted as exc:
            reason = revert_reason(exc.data) or exc.reason or "reverted"
            if reason == "NotLiquidatable":
                await self._not_liquidatable(row, f"{tx_hash} reverted: NotLiquidatable")
            elif reason in _WAIT_REASONS:
                self._move(op_id, "submitted", "planned", f"{tx_hash} reverted: {reason}: planning again")
            else:
                self._move(op_id, "submitted", "refused", f"{tx_hash} reverted: {reason}")
                self.count("liquidations_refused")
            return
        seized = self._seized(receipt)
        block = status.block.height if status.block else receipt.block_number
        note = f"{tx_hash} confirmed in block {block}: {len(seized)} position(s) taken over"
        self._move(op_id, "submitted", "done", note, outcome="liquidated", liquidator=self.address or "", seized=json.dumps(seized))
        self.count("liquidations_done")

    async def _not_liquidatable(self, row: dict[str, Any], why: str) -> None:
        """The chain says the account cannot be liquidated (now): whose liquidation took it, if any."""
        account = row["account"]
        events = [e for e in await self.bridge.events(from_block=row["planned_height"]) if e.name == "Liquidated" and str(e["account"]).lower() == account]
        if not events:
            self._move(row["id"], row["state"], "done", f"{why}: it recovered (repaid, topped up, or the price came back)", outcome="recovered")
            self.count("liquidations_not_needed")
            return
        event = events[-1]
        by, tx = str(event["liquidator"]).lower(), event.where.tx_hash
        tx = tx if tx.startswith("0x") else "0x" + tx
        if by == self.address:  # ours after all (sent before a crash, or a duplicate's twin)
            seized = self._seized(await self.bridge.chain.receipt(tx))
            note = f"{why}: liquidated by this key in {tx} (block {event.where.block_number})"
            self._move(row["id"], row["state"], "done", note, outcome="liquidated", liquidator=by, tx_hash=tx, seized=json.dumps(seized))
            self.count("liquidations_done")
            return
        note = f"{why}: liquidated by {by} in {tx} (block {event.where.block_number})"
        self._move(row["id"], row["state"], "done", note, outcome="elsewhere", liquidator=by)
        self.count("liquidations_not_needed")

    def _seized(self, receipt: Any) -> dict[str, str]:
        return {"0x" + _raw_hex(e["asset"]): str(e["amount"]) for e in self.bridge.events_in(receipt) if e.name == "Seized"}

    # --- reads ------------------------------------------------------------------------------

    def view(self, op_id: str) -> dict[str, Any]:
        row = self._row(op_id)
        return {**row, "seized": json.loads(row["seized"]) if row["seized"] else {}, "history": self.history(op_id)}

    def list(self, account: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT id FROM committee_liquidation WHERE 1 = 1", {}
        if account is not None:
            sql, params["a"] = sql + " AND account = :a", account.lower()
        if state is not None:
            sql, params["s"] = sql + " AND state = :s", state
        with self.db.transaction() as tx:
            ids = tx.column(sql + " ORDER BY created_at, id", params)
        return [self.view(i) for i in ids]

    # --- plumbing ---------------------------------------------------------------------------

    def _row(self, op_id: str) -> dict[str, Any]:
        with self.db.transaction() as tx:
            row = tx.one("SELECT * FROM committee_liquidation WHERE id = :id", {"id": op_id})
        if row is None:
            raise NotFound(f"no liquidation {op_id}", liquidation_id=op_id)
        return row

    def _move(self, op_id: str, expect: str, to: str, note: str, **fields: Any) -> None:
        with self.db.transaction() as tx:
            transition(tx, LIQUIDATIONS, op_id, expect, to, note, fields or None)
        log.info("liquidation %s: %s -> %s (%s)", op_id, expect, to, note)


def _bps(bps: int | None) -> str:
    return "-" if bps is None else f"{bps:,}"


def _raw_hex(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return str(value).lower().removeprefix("0x")
