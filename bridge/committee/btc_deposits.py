"""Bitcoin deposits as one attester sees them: outputs to its accounts' deposit addresses, at depth.

``../shared/DESIGN.md``: "signs only ... a deposit it saw at depth with the right script and
amount".  Each attester follows Bitcoin through its own indexer (``chains.indexer``, at
``bitcoin.confirmations``) and watches the deposit scripts of every account that registered its
key on the bridge contract (``Replica.btc_keys``; the address is derived from the committee's
custody keys, the account and that key: ``bridge.custody.scripts``).  An output to one of them
is recorded in the indexer's transaction (so once, across crashes): ``seen`` when it is worth
crediting, ``refused`` (with the reason) when it is dust or below the bridge's minimum, so the
depositor can see why nothing was credited.  The attester signs a DEPOSIT_CREDIT for each
``seen`` output (``Attester.sign_due``); the contract credits an output once.

Registering first (``bridgectl deposit btc`` does), then paying, is the normal order, but what
an attester records does not depend on when its EVM fold sees the registration: the Bitcoin fold
watches a key from the moment it adopts it (``btc_watched_key``), and adopting a key folded late
rescans the blocks the fold already passed (``chains.indexer`` backfill, in the fold's next step
and in one transaction with the adoption: once, across crashes) for outputs to its script and
the spends of those outputs, recorded exactly as the fold records them.  The rescan goes back
``RESCAN_DELAYS`` refund delays below the cursor (not below ``bitcoin_start``): one delay covers
every deposit that could still be credited (``creditable``; one close to its refund path is
recorded, then refused, as in order), the other those whose refund path opened since, so one the
depositor took back is recorded as taken back.  Two attesters, one that folded the registration
before the paying block and one after, hold the same rows for those deposits.

A reorg below the depth stops the attester, as on the EVM side (``replica.ReplicaReorg``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlmodel import Field, Session, SQLModel

from bridge.committee.messages import BTC_ASSET, ZERO32, Kind, Message, bitcoin_source
from bridge.committee.replica import Replica, ReplicaReorg
from bridge.core.db import init_db
from bridge.custody.scripts import CustodyPolicy, custody_script, deposit_script
from bridge.custody.spend import CustodyCoin
from chains.base import BlockRef, ChainEvent
from chains.bitcoin import BitcoinTxFilter
from chains.btc.primitives import Tx
from chains.btc.script import dust_threshold, p2wsh_script
from chains.cursor_store import OrphanedBlock
from chains.indexer import Backfill

__all__ = ["BtcDeposit", "BtcDepositWatcher", "BtcTerms"]

#: Seconds a DEPOSIT_CREDIT stays valid after the block that paid the deposit.
DEFAULT_CREDIT_TTL = 7 * 86_400
#: How many refund delays below its cursor the fold rescans for a key it adopts late.
RESCAN_DELAYS = 2


class CustodyCoinRow(SQLModel, table=True):
    """An output the committee can spend: a deposit worth crediting, or custody change."""

    __tablename__ = "custody_coin"

    outpoint: str = Field(primary_key=True)  # txid:vout
    amount: int
    witness_script: str  # hex
    kind: str  # deposit, custody
    account: str = ""  # deposits: the account credited
    block_height: int
    block_time: int
    spent_by: str | None = Field(default=None, index=True)  # txid
    spent_height: int | None = None


class CustodySpendRow(SQLModel, table=True):
    """A transaction at depth spending committee coins (a sweep or a payout), kept whole."""

    __tablename__ = "custody_spend"

    txid: str = Field(primary_key=True)
    block_height: int
    block_time: int
    raw: str  # hex


class BtcWatchedKeyRow(SQLModel, table=True):
    """A registered key the Bitcoin fold watches: every block from ``scanned_from`` (clamped to
    where the fold began) was looked at for its deposit script, ``since`` on by the fold itself."""

    __tablename__ = "btc_watched_key"

    account: str = Field(primary_key=True)  # 0x + 40 hex, lowercase
    pubkey: str = Field(primary_key=True)  # compressed, hex
    since: int  # the fold's cursor + 1 when it adopted the key
    scanned_from: int  # the rescan's lower limit


class BtcDepositRow(SQLModel, table=True):
    __tablename__ = "btc_deposit"

    outpoint: str = Field(primary_key=True)  # txid:vout
    account: str = Field(index=True)  # 0x + 40 hex
    amount: int
    block_height: int
    block_hash: str
    block_time: int
    state: str  # seen, refused
    reason: str = ""


@dataclass(frozen=True)
class BtcTerms:
    """What every attester of one bridge agrees on about Bitcoin deposits."""

    policy: CustodyPolicy
    min_deposit: int = 10_000  # sats
    credit_ttl: int = DEFAULT_CREDIT_TTL
    #: Kept from each deposit's credit to pay the fee of sweeping it into custody, so custody
    #: always holds what the margin accounts are owed.
    sweep_allowance: int = 1_000
    #: Caps every attester applies to a sweep's or payout's fee.
    max_fee: int = 100_000
    max_feerate: int = 250

    @property
    def custody_witness_script(self) -> bytes:
        return custody_script(self.policy)

    @property
    def custody_script_pubkey(self) -> bytes:
        return p2wsh_script(custody_script(self.policy))


@dataclass(frozen=True)
class BtcDeposit:
    txid: str
    vout: int
    account: str
    amount: int
    block_height: int
    block_time: int
    state: str
    reason: str

    @property
    def outpoint(self) -> str:
        return f"{self.txid}:{self.vout}"


class BtcDepositWatcher:
    """The indexer consumer (and its selector) of one attester's Bitcoin follower."""

    def __init__(self, replica: Replica, terms: BtcTerms, evm_chain_id: int) -> None:
        self.replica, self.terms, self.evm_chain_id = replica, terms, evm_chain_id
        init_db(replica.engine, [BtcDepositRow.__table__, CustodyCoinRow.__table__, CustodySpendRow.__table__, BtcWatchedKeyRow.__table__])
        self._scripts: dict[bytes, tuple[str, bytes]] = {}  # script_pubkey -> (account, witness script)
        #: A deposit is credited only while at least this many blocks remain before its refund
        #: path opens (half the delay): the sweep must win the race against the refund.
        self.refund_margin = max(terms.policy.refund_delay // 2, 1)
        self._keys_seen = -1

    def selector(self) -> BitcoinTxFilter:
        """Outputs to the deposit scripts of every account whose key the fold adopted and to custody,
        and spends of the committee's unspent coins (refreshed at every batch)."""
        keys = self.watched()
        if len(keys) != self._keys_seen:
            self._scripts = self._scripts_of(keys)
            self._keys_seen = len(keys)
        return BitcoinTxFilter(scripts=[*self._scripts, self.terms.custody_script_pubkey], outpoints=[(c.txid, c.vout) for c in self.coins()])

    def _scripts_of(self, keys: list[tuple[str, bytes]]) -> dict[bytes, tuple[str, bytes]]:
        scripts = {}
        for account, pubkey in keys:
            witness = deposit_script(self.terms.policy, account, pubkey)
            scripts[p2wsh_script(witness)] = (account, witness)
        return scripts

    def watched(self) -> list[tuple[str, bytes]]:
        """``(account, compressed pubkey)`` of the keys the fold adopted, oldest first."""
        with self.replica.engine.connect() as conn:
            rows = conn.execute(text("SELECT account, pubkey FROM btc_watched_key ORDER BY since, account, pubkey"))
            return [(a, bytes.fromhex(p)) for a, p in rows]

    def backfill(self, cursor_height: int) -> Backfill | None:
        """The indexer's question at every step: keys the replica folded that the fold does not
        watch yet.  They are rescanned up to ``cursor_height`` (from ``RESCAN_DELAYS`` refund delays
        below it) for outputs to their scripts and the spends of those outputs, then adopted."""
        sql = (
            "SELECT k.account, k.pubkey FROM replica_btc_key k LEFT JOIN btc_watched_key w ON w.account = k.account AND w.pubkey = k.pubkey "
            "WHERE w.account IS NULL ORDER BY k.block_height, k.account, k.pubkey"
        )
        with self.replica.engine.connect() as conn:
            new = [(a, bytes.fromhex(p)) for a, p in conn.execute(text(sql))]
        if not new:
            return None
        scripts = self._scripts_of(new)
        low = cursor_height - RESCAN_DELAYS * self.terms.policy.refund_delay + 1

        def selector(found: list[ChainEvent]) -> BitcoinTxFilter:
            outputs = [(e.data["txid"], n) for e in found for n, out in enumerate(Tx.parse(e.data["tx"].raw).vout) if bytes(out.script_pubkey) in scripts]
            return BitcoinTxFilter(scripts=scripts, outpoints=outputs)

        return Backfill(low, selector, (cursor_height, low, new, scripts))

    async def on_backfill(self, blocks: list[tuple[BlockRef, list[ChainEvent]]], token: Any, *, session: Session) -> None:
        """The rescan of keys adopted late, in the indexer's transaction: their outputs and the spends
        of those outputs, recorded as ``on_events`` records them; then the keys are watched."""
        cursor_height, low, new, scripts = token
        conn = session.connection()
        mine: set[str] = set()
        for block, events in blocks:
            self._fold(conn, events, block, scripts, mine)
        for account, pubkey in new:
            conn.execute(
                text("INSERT INTO btc_watched_key (account, pubkey, since, scanned_from) VALUES (:a, :p, :s, :f) ON CONFLICT DO NOTHING"),
                {"a": account, "p": pubkey.hex(), "s": cursor_height + 1, "f": low},
            )
        self._keys_seen = -1

    async def on_events(self, events: list[ChainEvent], block: BlockRef, *, session: Session) -> None:
        self._fold(session.connection(), events, block, self._scripts, None)

    def _fold(self, conn: Any, events: list[ChainEvent], block: BlockRef, scripts: dict[bytes, tuple[str, bytes]], rescan: set[str] | None) -> None:
        """One block's transactions.  ``rescan``: only outputs to ``scripts`` and the spends of those
        (the outpoints found so far, in the set), custody outputs being the fold's already."""
        custody = self.terms.custody_script_pubkey
        for event in events:
            tx = Tx.parse(event.data["tx"].raw)
            txid = event.data["txid"]
            spent = 0
            for txin in tx.vin:
                outpoint = f"{txin.prevout.txid_hex}:{txin.prevout.n}"
                if rescan is not None and outpoint not in rescan:
                    continue
                spent += conn.execute(
                    text("UPDATE custody_coin SET spent_by = :t, spent_height = :h WHERE outpoint = :o AND spent_by IS NULL"),
                    {"t": txid, "h": block.height, "o": outpoint},
                ).rowcount
            if spent:
                conn.execute(
                    text("INSERT INTO custody_spend (txid, block_height, block_time, raw) VALUES (:t, :h, :bt, :r) ON CONFLICT DO NOTHING"),
                    {"t": txid, "h": block.height, "bt": block.timestamp, "r": bytes(event.data["tx"].raw).hex()},
                )
            for vout, out in enumerate(tx.vout):
                spk = bytes(out.script_pubkey)
                if spk == custody:
                    if rescan is None:
                        self._add_coin(conn, txid, vout, out.value, self.terms.custody_witness_script, "custody", "", block)
                    continue
                found = scripts.get(spk)
                if found is None:
                    continue
                if rescan is not None:
                    rescan.add(f"{txid}:{vout}")
                account, witness = found
                state, reason = "seen", ""
                floor = max(self.terms.min_deposit, dust_threshold(out.script_pubkey), self.terms.sweep_allowance + 1)
                if out.value < floor:
                    state, reason = "refused", f"{out.value} sats is below the minimum deposit of {floor} sats"
                else:
                    self._add_coin(conn, txid, vout, out.value, witness, "deposit", account, block)
                conn.execute(
                    text(
                        "INSERT INTO btc_deposit (outpoint, account, amount, block_height, block_hash, block_time, state, reason) "
                        "VALUES (:o, :a, :v, :h, :bh, :t, :s, :r) ON CONFLICT DO NOTHING"
                    ),
                    {"o": f"{txid}:{vout}", "a": account, "v": out.value, "h": block.height, "bh": block.hash, "t": block.timestamp, "s": state, "r": reason},
                )

    @staticmethod
    def _add_coin(conn: Any, txid: str, vout: int, amount: int, witness: bytes, kind: str, account: str, block: BlockRef) -> None:
        conn.execute(
            text(
                "INSERT INTO custody_coin (outpoint, amount, witness_script, kind, account, block_height, block_time) "
                "VALUES (:o, :v, :w, :k, :a, :h, :t) ON CONFLICT DO NOTHING"
            ),
            {"o": f"{txid}:{vout}", "v": amount, "w": witness.hex(), "k": kind, "a": account, "h": block.height, "t": block.timestamp},
        )

    def coins(self, kind: str | None = None, unspent: bool = True) -> list[CustodyCoin]:
        """The committee's coins this view knows, oldest first."""
        # A deposit refused a credit (below the minimum, too close to its refund) stays the
        # depositor's: never swept, never spent on a payout.
        sql = "SELECT * FROM custody_coin WHERE NOT EXISTS (SELECT 1 FROM btc_deposit d WHERE d.outpoint = custody_coin.outpoint AND d.state = 'refused')"
        params: dict[str, Any] = {}
        if unspent:
            sql += " AND spent_by IS NULL"
        if kind is not None:
            sql, params["kind"] = sql + " AND kind = :kind", kind
        with self.replica.engine.connect() as conn:
            rows = conn.execute(text(sql + " ORDER BY block_height, outpoint"), params).mappings().all()
        out = []
        for r in rows:
            txid, vout = r["outpoint"].split(":")
            out.append(CustodyCoin(txid, int(vout), r["amount"], bytes.fromhex(r["witness_script"])))
        return out

    def spend(self, txid: str) -> tuple[Tx, int, int] | None:
        """A spend of committee coins seen at depth: the transaction, its height and block time."""
        with self.replica.engine.connect() as conn:
            row = conn.execute(text("SELECT raw, block_height, block_time FROM custody_spend WHERE txid = :t"), {"t": txid}).first()
        return None if row is None else (Tx.parse(bytes.fromhex(row[0])), row[1], row[2])

    def coin_amounts(self, outpoints: list[str]) -> dict[str, int]:
        """Amounts of these committee coins (spent or not) as this view recorded them."""
        if not outpoints:
            return {}
        with self.replica.engine.connect() as conn:
            rows = conn.execute(text("SELECT outpoint, amount FROM custody_coin")).all()
        wanted = set(outpoints)
        return {o: a for o, a in rows if o in wanted}

    async def on_revert(self, orphaned: list[OrphanedBlock], *, session: Session) -> None:
        heights = sorted({o.height for o in orphaned})
        raise ReplicaReorg(f"Bitcoin reorganised below the confirmation depth (blocks {heights[0]}..{heights[-1]} held deposits)", heights=heights)

    def creditable(self, tip: int | None) -> list[BtcDeposit]:
        """Deposits worth a DEPOSIT_CREDIT now: seen at depth, their coin still the committee's
        (unspent, or spent by a committee spend that pays custody, i.e. swept), and their refund
        path not about to open (``tip`` is this view's Bitcoin tip; None: not known yet, nothing).
        A deposit the depositor took back, or one too close to its refund, is marked refused."""
        if tip is None:
            return []
        custody = self.terms.custody_script_pubkey.hex()
        closing = tip - (self.terms.policy.refund_delay - self.refund_margin)
        out = []
        with self.replica.engine.begin() as conn:
            rows = conn.execute(
                text(
                    "SELECT d.outpoint, d.block_height, c.spent_by, s.raw FROM btc_deposit d "
                    "LEFT JOIN custody_coin c ON c.outpoint = d.outpoint LEFT JOIN custody_spend s ON s.txid = c.spent_by "
                    "WHERE d.state = 'seen'"
                )
            ).all()
            for outpoint, height, spent_by, raw in rows:
                reason = ""
                if spent_by is not None and (raw is None or not any(o.script_pubkey.hex() == custody for o in Tx.parse(bytes.fromhex(raw)).vout)):
                    reason = f"taken back by {spent_by} before it was credited"
                elif spent_by is None and height <= closing:
                    reason = f"its refund path opens at height {height + self.terms.policy.refund_delay}: too close to credit"
                if reason:
                    sql = "UPDATE btc_deposit SET state = 'refused', reason = :r WHERE outpoint = :o AND state = 'seen'"
                    conn.execute(text(sql), {"r": reason, "o": outpoint})
                else:
                    out.append(outpoint)
        return [d for d in self.deposits(state="seen") if d.outpoint in set(out)]

    def credit_message(self, deposit: BtcDeposit) -> Message:
        """The DEPOSIT_CREDIT every honest attester signs for a deposit: all from the chains."""
        source_tx, source_index = bitcoin_source(deposit.txid, deposit.vout)
        account = bytes.fromhex(deposit.account[2:])
        expiry = deposit.block_time + self.terms.credit_ttl
        credit = deposit.amount - self.terms.sweep_allowance
        return Message(1, Kind.DEPOSIT_CREDIT, 0, source_tx, source_index, self.evm_chain_id, account, BTC_ASSET, credit, 0, expiry, ZERO32)

    def deposits(self, state: str | None = None, account: str | None = None) -> list[BtcDeposit]:
        sql, params = "SELECT * FROM btc_deposit WHERE 1 = 1", {}
        if state is not None:
            sql, params["state"] = sql + " AND state = :state", state
        if account is not None:
            sql, params["account"] = sql + " AND account = :account", account.lower()
        with self.replica.engine.connect() as conn:
            return [_deposit(r) for r in conn.execute(text(sql + " ORDER BY block_height, outpoint"), params).mappings()]


def _deposit(row: Any) -> BtcDeposit:
    txid, vout = row["outpoint"].split(":")
    return BtcDeposit(txid, int(vout), row["account"], row["amount"], row["block_height"], row["block_time"], row["state"], row["reason"])
