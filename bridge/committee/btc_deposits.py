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

Only outputs of accounts registered before the block that pays them are watched: register first
(``bridgectl deposit btc`` does), then pay.  A reorg below the depth stops the attester, as on
the EVM side (``replica.ReplicaReorg``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlmodel import Field, Session, SQLModel

from bridge.committee.messages import BTC_ASSET, ZERO32, Kind, Message, bitcoin_source
from bridge.committee.replica import Replica, ReplicaReorg
from bridge.core.db import init_db
from bridge.custody.scripts import CustodyPolicy, deposit_script_pubkey
from chains.base import BlockRef, ChainEvent
from chains.bitcoin import BitcoinTxFilter
from chains.btc.primitives import Tx
from chains.btc.script import dust_threshold
from chains.cursor_store import OrphanedBlock

__all__ = ["BtcDeposit", "BtcDepositWatcher", "BtcTerms"]

#: Seconds a DEPOSIT_CREDIT stays valid after the block that paid the deposit.
DEFAULT_CREDIT_TTL = 7 * 86_400


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
        init_db(replica.engine, [BtcDepositRow.__table__])
        self._scripts: dict[bytes, str] = {}
        self._keys_seen = -1

    def selector(self) -> BitcoinTxFilter:
        """The deposit scripts of every registered account (refreshed when registrations change)."""
        keys = self.replica.btc_keys()
        if len(keys) != self._keys_seen:
            self._scripts = {deposit_script_pubkey(self.terms.policy, account, pubkey): account for account, pubkey in keys}
            self._keys_seen = len(keys)
        return BitcoinTxFilter(scripts=list(self._scripts))

    async def on_events(self, events: list[ChainEvent], block: BlockRef, *, session: Session) -> None:
        conn = session.connection()
        for event in events:
            tx = Tx.parse(event.data["tx"].raw)
            txid = event.data["txid"]
            for vout, out in enumerate(tx.vout):
                account = self._scripts.get(bytes(out.script_pubkey))
                if account is None:
                    continue
                state, reason = "seen", ""
                floor = max(self.terms.min_deposit, dust_threshold(out.script_pubkey))
                if out.value < floor:
                    state, reason = "refused", f"{out.value} sats is below the minimum deposit of {floor} sats"
                conn.execute(
                    text(
                        "INSERT INTO btc_deposit (outpoint, account, amount, block_height, block_hash, block_time, state, reason) "
                        "VALUES (:o, :a, :v, :h, :bh, :t, :s, :r) ON CONFLICT DO NOTHING"
                    ),
                    {"o": f"{txid}:{vout}", "a": account, "v": out.value, "h": block.height, "bh": block.hash, "t": block.timestamp, "s": state, "r": reason},
                )

    async def on_revert(self, orphaned: list[OrphanedBlock], *, session: Session) -> None:
        heights = sorted({o.height for o in orphaned})
        raise ReplicaReorg(f"Bitcoin reorganised below the confirmation depth (blocks {heights[0]}..{heights[-1]} held deposits)", heights=heights)

    def credit_message(self, deposit: BtcDeposit) -> Message:
        """The DEPOSIT_CREDIT every honest attester signs for a deposit: all from the chains."""
        source_tx, source_index = bitcoin_source(deposit.txid, deposit.vout)
        account = bytes.fromhex(deposit.account[2:])
        expiry = deposit.block_time + self.terms.credit_ttl
        return Message(1, Kind.DEPOSIT_CREDIT, 0, source_tx, source_index, self.evm_chain_id, account, BTC_ASSET, deposit.amount, 0, expiry, ZERO32)

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
