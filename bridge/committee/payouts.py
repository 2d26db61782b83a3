"""Custody spends as long operations on the runtime: payouts of BTC withdrawals, and sweeps.

A relayer (the deliverer daemon) proposes, collects the attesters' signatures, finalizes and
broadcasts; the chains decide the rest.  One row per payout (``payout:<request nonce>``) or
sweep (``sweep:<first outpoint>``) in ``custody_payout``, with its status history.  States
(stored; never renamed):

    proposing --(PSBT built from unreserved custody coins, kept in the proposal store)--> collecting
    collecting --(M members signed: finalized, raw tx recorded before it is sent)--> broadcast
    broadcast --(seen spending our coins at depth by our own Bitcoin fold)--> confirmed
    broadcast --(unconfirmed for ``bump_after`` blocks)--> collecting  (a replacement: the same
        inputs at twice the feerate, one more round for the attesters)
    confirmed --(payout: the PAYOUT_DONE folded, the hold posted)--> done;  sweeps are done once confirmed
    proposing --(nothing owed any more: the request is closed, no coins to sweep)--> done

Every transaction of one operation spends the same inputs, so at most one of them confirms;
the attesters enforce the same rule on their side (``Attester._expected``).  Confirmation is
read from the proposer's own fold of Bitcoin (``btc_deposits.BtcDepositWatcher``), so a
payout whose output the user already spent is still seen.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Collection, Optional

from sqlalchemy import Column, Integer
from sqlalchemy.engine import Engine
from sqlmodel import Field, SQLModel

from bridge.committee.btc_deposits import BtcDepositWatcher
from bridge.committee.messages import BTC_ASSET
from bridge.committee.proposals import ProposalStore
from bridge.committee.replica import Replica
from bridge.core.db import init_db
from bridge.core.dbapi import Db
from bridge.core.errors import InputError, InsufficientFunds, NotFound
from bridge.custody.scripts import CustodyRefused
from bridge.custody.spend import CustodyCoin, build_sweep, build_withdrawal_payout, combine, finalize
from bridge.runtime import OpStore, OpTable, Wait, record, transition
from chains.bitcoin import BitcoinAdapter

__all__ = ["PAYOUTS", "Payouts"]

log = logging.getLogger("bridge.committee.payouts")

STATES = ("proposing", "collecting", "broadcast", "confirmed", "done", "failed")
TERMINAL = frozenset({"done", "failed"})
PAYOUTS = OpTable("custody payout", "custody_payout", "custody_payout_history", "payout_id", STATES, TERMINAL)


class CustodyPayout(SQLModel, table=True):
    __tablename__ = "custody_payout"

    id: str = Field(primary_key=True)
    state: str = Field(index=True)
    created_at: float
    updated_at: float
    retries: int = 0
    last_error: Optional[str] = None
    next_attempt_at: float = Field(index=True)
    proposal_id: Optional[str] = None
    inputs: str = ""  # outpoints the operation's transactions spend, comma-separated
    raw_tx: Optional[str] = None
    txid: Optional[str] = None
    feerate: int = 0
    sent_height: int = 0
    bumps: int = 0


class CustodyPayoutHistory(SQLModel, table=True):
    __tablename__ = "custody_payout_history"

    seq: Optional[int] = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    payout_id: str = Field(index=True)
    at: float
    from_state: Optional[str] = None
    to_state: str
    note: str = ""
    attempt: Optional[int] = None


class Payouts(OpStore):
    """The proposer's side of custody spends, on ``engine`` (the service's database)."""

    def __init__(
        self,
        engine: Engine,
        replica: Replica,
        watcher: BtcDepositWatcher,
        proposals: ProposalStore,
        btc: BitcoinAdapter,
        *,
        bump_after: int = 3,
        poll_interval: float = 0.5,
        max_feerate: int | None = None,
    ) -> None:
        init_db(engine, [CustodyPayout.__table__, CustodyPayoutHistory.__table__])
        super().__init__(Db(engine), PAYOUTS)
        self.replica, self.watcher, self.proposals, self.btc = replica, watcher, proposals, btc
        self.terms = watcher.terms
        self.bump_after, self.poll_interval = bump_after, poll_interval
        self.max_feerate = max_feerate or self.terms.max_feerate

    # --- finding work -----------------------------------------------------------------------

    def discover(self) -> list[str]:
        """A payout for every held BTC request with its destination; the new ids."""
        new = []
        for request in self.replica.requests(state="held", limit=10_000):
            if request.asset == "0x" + BTC_ASSET.hex() and request.destination and self._create(f"payout:{request.nonce}"):
                new.append(f"payout:{request.nonce}")
        return new

    def plan_sweep(self) -> str | None:
        """A sweep of the deposits no open operation spends, if there are any; its id."""
        coins = [c for c in self.watcher.coins(kind="deposit") if f"{c.txid}:{c.vout}" not in self.reserved()]
        if not coins:
            return None
        op_id = f"sweep:{coins[0].txid}:{coins[0].vout}"
        return op_id if self._create(op_id) else None

    def _create(self, op_id: str) -> bool:
        now = time.time()
        with self.db.transaction() as tx:
            created = tx.execute(
                "INSERT INTO custody_payout (id, state, created_at, updated_at, retries, next_attempt_at, inputs, feerate, sent_height, bumps) "
                "VALUES (:id, 'proposing', :now, :now, 0, :now, '', 0, 0, 0) ON CONFLICT DO NOTHING",
                {"id": op_id, "now": now},
            )
            if created:
                record(tx, PAYOUTS, op_id, None, "proposing", "planned", now)
        return bool(created)

    def reserved(self) -> set[str]:
        """Outpoints promised to an unfinished operation."""
        with self.db.transaction() as tx:
            rows = tx.column(f"SELECT inputs FROM custody_payout WHERE state IN ({PAYOUTS.open_sql})")
        return {o for row in rows for o in row.split(",") if o}

    # --- the runtime's Operations -----------------------------------------------------------

    def due(self, *, limit: int, among: Collection[str] | None = None) -> list[str]:  # type: ignore[override]
        return OpStore.due(self, limit=limit, among=among, first="collecting")

    async def step(self, op_id: str) -> None:
        row = self._row(op_id)
        state = row["state"]
        if state == "proposing":
            await self._propose(op_id, row)
        elif state == "collecting":
            await self._collect(op_id, row)
        elif state == "broadcast":
            await self._follow(op_id, row)
        elif state == "confirmed":
            self._finish(op_id)

    async def _propose(self, op_id: str, row: dict[str, Any]) -> None:
        earlier = self.proposals.proposals(group=_group(op_id))
        if earlier:
            # Proposed before a crash that came before this row recorded it: take it up, as the
            # attesters that signed it sign only replacements of it from now on.
            last = earlier[-1]
            inputs = ",".join(last.inputs)
            self._move(op_id, "proposing", "collecting", f"took up {last.id}, proposed before a restart", proposal_id=last.id, inputs=inputs)
            return
        feerate = min(await self.btc.estimate_feerate(), self.max_feerate)
        taken = self.reserved()
        coins = [c for c in self.watcher.coins() if f"{c.txid}:{c.vout}" not in taken]
        try:
            if op_id.startswith("sweep:"):
                coins = [c for c in coins if c.witness_script != self.terms.custody_witness_script]
                if not coins:
                    self._move(op_id, "proposing", "done", "nothing left to sweep")
                    return
                psbt = build_sweep(coins, self.terms.policy, feerate, max_fee=self.terms.max_fee)
            else:
                request = self.replica.request(nonce=int(op_id.split(":")[1]))
                if request.state != "held":
                    self._move(op_id, "proposing", "done", f"request {request.nonce} is {request.state}: nothing to pay")
                    return
                chosen = _choose(coins, request.amount)
                psbt = build_withdrawal_payout(chosen, bytes.fromhex(request.destination), request.amount, self.terms.policy, feerate, self.terms.max_fee)
        except InsufficientFunds as exc:
            raise Wait(f"custody cannot pay yet: {exc.message}", delay=5 * self.poll_interval) from None
        except (InputError, CustodyRefused) as exc:
            self._move(op_id, "proposing", "failed", f"cannot build: {getattr(exc, 'message', exc)}")
            return
        proposal = self.proposals.propose(_group(op_id), psbt, row["bumps"])
        inputs = ",".join(f"{i.prevout.txid_hex}:{i.prevout.n}" for i in psbt.tx.vin)
        self._move(op_id, "proposing", "collecting", f"proposed {proposal} at {feerate} sat/vB", proposal_id=proposal, inputs=inputs, feerate=feerate)

    async def _collect(self, op_id: str, row: dict[str, Any]) -> None:
        if await self._confirmed(op_id, row):
            return
        proposal = self.proposals.get(row["proposal_id"])
        signed = self.proposals.signed(proposal.id)
        try:
            combined = combine([proposal.psbt, *signed.values()]) if signed else proposal.psbt
            tx = finalize(combined.copy())
        except CustodyRefused as exc:
            raise Wait(f"{len(signed)} attesters signed {proposal.id[:16]}: {exc.message}", delay=self.poll_interval) from None
        height = await self.btc.height()
        note = f"finalized {tx.txid} with {len(signed)} signed copies"
        self._move(op_id, "collecting", "broadcast", note, raw_tx=tx.serialize().hex(), txid=tx.txid, sent_height=height)
        await self.btc.send(tx.serialize().hex())

    async def _follow(self, op_id: str, row: dict[str, Any]) -> None:
        if await self._confirmed(op_id, row):
            return
        status = await self.btc.tx_status(row["txid"])
        if status.confirmations < 0:
            await self.btc.send(row["raw_tx"])  # dropped from the mempool (or a restart): again
            raise Wait(f"{row['txid'][:16]} sent again", on_block="bitcoin")
        height = await self.btc.height()
        if status.confirmations == 0 and height - row["sent_height"] >= self.bump_after:
            await self._bump(op_id, row)
            return
        raise Wait(f"{row['txid'][:16]}: {max(status.confirmations, 0)} confirmations, our fold waits for depth", on_block="bitcoin")

    async def _bump(self, op_id: str, row: dict[str, Any]) -> None:
        """Replace a stuck spend: the same inputs at twice the feerate (BIP-125)."""
        feerate = min(max(row["feerate"] * 2, row["feerate"] + 1), self.max_feerate)
        if feerate <= row["feerate"]:
            raise Wait(f"{row['txid'][:16]} stuck at the feerate cap {self.max_feerate} sat/vB", on_block="bitcoin")
        coins = self._coins_of(row["inputs"].split(","))
        if op_id.startswith("sweep:"):
            psbt = build_sweep(coins, self.terms.policy, feerate, max_fee=self.terms.max_fee)
        else:
            request = self.replica.request(nonce=int(op_id.split(":")[1]))
            psbt = build_withdrawal_payout(coins, bytes.fromhex(request.destination), request.amount, self.terms.policy, feerate, self.terms.max_fee)
        proposal = self.proposals.propose(_group(op_id), psbt, row["bumps"] + 1)
        note = f"fee bump: {row['feerate']} -> {feerate} sat/vB, proposed {proposal}"
        self._move(op_id, "broadcast", "collecting", note, proposal_id=proposal, feerate=feerate, bumps=row["bumps"] + 1)

    async def _confirmed(self, op_id: str, row: dict[str, Any]) -> bool:
        """Whether one of the operation's transactions is at depth in our fold (then: confirmed)."""
        for proposal in self.proposals.proposals(group=_group(op_id)):
            seen = self.watcher.spend(proposal.id)
            if seen is not None:
                self._move(op_id, row["state"], "confirmed", f"{proposal.id} at depth in block {seen[1]}", txid=proposal.id)
                if op_id.startswith("sweep:"):
                    self._move(op_id, "confirmed", "done", "swept into custody")
                return True
        return False

    def _finish(self, op_id: str) -> None:
        request = self.replica.request(nonce=int(op_id.split(":")[1]))
        if request.state == "held":
            raise Wait(f"request {request.nonce}: waiting for its PAYOUT_DONE to land", delay=self.poll_interval)
        self._move(op_id, "confirmed", "done", f"request {request.nonce} {request.state}")

    def _coins_of(self, outpoints: list[str]) -> list[CustodyCoin]:
        known = {f"{c.txid}:{c.vout}": c for c in self.watcher.coins()}
        missing = [o for o in outpoints if o not in known]
        if missing:
            raise Wait(f"coin {missing[0]} is spent or unknown: waiting for the spend that took it to show", on_block="bitcoin")
        return [known[o] for o in outpoints]

    # --- reads ------------------------------------------------------------------------------

    def view(self, op_id: str) -> dict[str, Any]:
        row = self._row(op_id)
        return {**row, "history": self.history(op_id)}

    def _row(self, op_id: str) -> dict[str, Any]:
        with self.db.transaction() as tx:
            row = tx.one("SELECT * FROM custody_payout WHERE id = :id", {"id": op_id})
        if row is None:
            raise NotFound(f"no custody payout {op_id[:80]}")
        return row

    def _move(self, op_id: str, expect: str, to: str, note: str, **fields: Any) -> None:
        with self.db.transaction() as tx:
            transition(tx, PAYOUTS, op_id, expect, to, note, fields or None)
        log.info("%s: %s -> %s (%s)", op_id[:40], expect, to, note)


def _group(op_id: str) -> str:
    """The proposal group of an operation: its id (``payout:<nonce>``, ``sweep:<outpoint>``)."""
    return op_id


def _choose(coins: list[CustodyCoin], amount: int) -> list[CustodyCoin]:
    """Largest coins first until they cover the amount and leave custody change above dust."""
    chosen, total = [], 0
    for coin in sorted(coins, key=lambda c: -c.amount):
        chosen.append(coin)
        total += coin.amount
        if total >= amount + 1_000:
            return chosen
    raise InsufficientFunds(f"custody coins of {total} sats cannot pay {amount} sats", needed=amount)
