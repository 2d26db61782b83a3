"""The mempool: bitcoind's acceptance policy for what the project sends, with Core's reject reasons.

Checks run in the order Core's ``MemPoolAccept::PreChecks``/``PolicyScriptChecks`` runs them, so a
transaction breaking several rules is refused for the same reason bitcoind would give.  Scripts are
verified by the kernel (consensus flags; the C API offers no policy-only flags).

Over 400 lines on purpose: acceptance, replacement and eviction share the pool's indexes.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable, Protocol

import pbk

from chains.btc import primitives as p
from chains.btc import script as sc
from devnets.regtest.script_errors import diagnose, policy_failure, witness_standard

MIN_RELAY_FEERATE = sc.DEFAULT_MIN_RELAY_TX_FEE  # sat/kvB
INCREMENTAL_RELAY_FEERATE = sc.DEFAULT_INCREMENTAL_RELAY_FEE  # sat/kvB
MAX_REPLACEMENT_CANDIDATES = 100
BLOCK_MIN_TX_FEERATE = 1000  # sat/kvB, Core's DEFAULT_BLOCK_MIN_TX_FEE
DEFAULT_MAX_FEERATE = 10_000_000  # sat/kvB (0.10 BTC/kvB), sendrawtransaction's default maxfeerate
SEQUENCE_LOCKTIME_DISABLE_FLAG = 1 << 31
SEQUENCE_LOCKTIME_TYPE_FLAG = 1 << 22
SEQUENCE_LOCKTIME_MASK = 0x0000FFFF
SCRIPT_FLAGS = pbk.ScriptVerificationFlags.ALL


class Rejected(Exception):
    """A refusal: ``reason`` is Core's reject reason, ``debug`` its detail; ``kind`` picks the RPC error."""

    def __init__(self, reason: str, debug: str = "", kind: str = "rejected") -> None:
        super().__init__(f"{reason}, {debug}" if debug else reason)
        self.reason = reason
        self.debug = debug
        self.kind = kind  # "rejected" (-26), "missing-inputs" (-25), "already-in-utxo-set" (-27), "max-fee" (-25)

    @property
    def text(self) -> str:
        """Core's ``TxValidationState::ToString()``."""
        return f"{self.reason}, {self.debug}" if self.debug else self.reason


class ChainView(Protocol):
    height: int

    def coin(self, txid: str, vout: int): ...

    def median_time_past(self, height: int | None = None) -> int: ...

    def has_outputs_of(self, txid: str) -> bool: ...


@dataclass
class Entry:
    tx: p.Tx
    fee: int
    vsize: int
    time: int
    height: int
    parents: set[str]
    children: set[str] = field(default_factory=set)

    @property
    def txid(self) -> str:
        return self.tx.txid


def _fmt_feerate(sat_per_kvb_num: int, vsize: int) -> str:
    """Core's ``CFeeRate::ToString()``: ``<BTC>.<8 digits> BTC/kvB``."""
    rate = sat_per_kvb_num * 1000 // vsize if vsize else 0
    return f"{rate // 100_000_000}.{rate % 100_000_000:08d} BTC/kvB"


class Mempool:
    def __init__(self, chain: ChainView, now: Callable[[], int]) -> None:
        self.chain = chain
        self.now = now
        self.entries: dict[str, Entry] = {}
        self.spenders: dict[tuple[str, int], str] = {}
        self.wtxids: dict[str, str] = {}
        self.sequence = 0
        #: ``prioritisetransaction`` fee deltas (sat) by txid, kept for txids not (yet) in the pool too.
        self.deltas: dict[str, int] = {}

    def modified_fee(self, txid: str) -> int:
        """Core's modified fee: the base fee plus the ``prioritisetransaction`` delta."""
        return self.entries[txid].fee + self.deltas.get(txid, 0)

    # --- lookups ------------------------------------------------------------------------------

    def __contains__(self, txid: str) -> bool:
        return txid in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def ancestors(self, txid: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.entries[txid].parents)
        while stack:
            t = stack.pop()
            if t not in seen:
                seen.add(t)
                stack.extend(self.entries[t].parents)
        return seen

    def descendants(self, txid: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.entries[txid].children)
        while stack:
            t = stack.pop()
            if t not in seen:
                seen.add(t)
                stack.extend(self.entries[t].children)
        return seen

    def mempool_coin(self, txid: str, vout: int) -> tuple[int, bytes] | None:
        e = self.entries.get(txid)
        if e is None or vout >= len(e.tx.vout):
            return None
        out = e.tx.vout[vout]
        return out.value, out.script_pubkey

    # --- acceptance ---------------------------------------------------------------------------

    def check(self, tx: p.Tx, max_feerate: int | None = None, check_fee: bool = True) -> tuple[Entry, set[str]]:
        """Run every check; return the would-be entry and the txids it would replace. Changes nothing.
        ``check_fee`` False skips the min relay fee (a package's members are judged by its feerate)."""
        _check_transaction(tx)
        if tx.is_coinbase:
            raise Rejected("coinbase")
        reason = sc.standard_tx_reject_reason(tx)
        if reason is not None:
            raise Rejected(reason)
        height = self.chain.height + 1
        mtp = self.chain.median_time_past()
        if not _is_final(tx, height, mtp):
            raise Rejected("non-final")
        txid = tx.txid
        if tx.wtxid in self.wtxids:
            raise Rejected("txn-already-in-mempool")
        if txid in self.entries:
            raise Rejected("txn-same-nonwitness-data-in-mempool")

        conflicts: set[str] = set()
        for txin in tx.vin:
            spender = self.spenders.get((txin.prevout.txid_hex, txin.prevout.n))
            if spender is not None:
                conflicts.add(spender)

        spent: list[tuple[int, bytes]] = []
        coin_heights: list[int] = []
        coinbase_depths: list[int] = []
        parents: set[str] = set()
        missing = False
        for txin in tx.vin:
            ptxid, n = txin.prevout.txid_hex, txin.prevout.n
            mem = self.mempool_coin(ptxid, n)
            if mem is not None:
                spent.append(mem)
                coin_heights.append(height)
                parents.add(ptxid)
                continue
            coin = self.chain.coin(ptxid, n)
            if coin is None:
                missing = True
                break
            spent.append((coin.value, coin.script))
            coin_heights.append(coin.height)
            if coin.coinbase:
                coinbase_depths.append(height - coin.height)
        if missing:
            if self.chain.has_outputs_of(txid):
                raise Rejected("txn-already-known", kind="already-in-utxo-set")
            raise Rejected("bad-txns-inputs-missingorspent", kind="missing-inputs")

        if not _sequence_locks_ok(tx, coin_heights, height, mtp, self.chain.median_time_past):
            raise Rejected("non-BIP68-final")

        # Consensus.CheckTxInputs
        for depth in coinbase_depths:
            if depth < p.COINBASE_MATURITY:
                raise Rejected("bad-txns-premature-spend-of-coinbase", f"tried to spend coinbase at depth {depth}")
        value_in = sum(v for v, _ in spent)
        value_out = tx.total_out
        if value_in < value_out:
            raise Rejected("bad-txns-in-belowout", f"value in ({_btc(value_in)}) < value out ({_btc(value_out)})")
        fee = value_in - value_out

        for _, script in spent:
            if sc.classify(script) in ("nonstandard", "witness_unknown"):
                raise Rejected("bad-txns-nonstandard-inputs")
        if not witness_standard(tx, [script for _, script in spent]):
            raise Rejected("bad-witness-nonstandard")
        vsize = tx.vsize
        min_fee = sc.fee_for_size(MIN_RELAY_FEERATE, vsize)
        if check_fee and fee < min_fee:
            raise Rejected("min relay fee not met", f"{fee} < {min_fee}")

        ancestors = set(parents)
        for parent in parents:
            ancestors |= self.ancestors(parent)
        if len(ancestors) + 1 > sc.DEFAULT_ANCESTOR_LIMIT:
            raise Rejected("too-long-mempool-chain", f"too many unconfirmed ancestors [limit: {sc.DEFAULT_ANCESTOR_LIMIT}]")
        for ancestor in ancestors:
            if len(self.descendants(ancestor)) + 2 > sc.DEFAULT_DESCENDANT_LIMIT:
                raise Rejected("too-long-mempool-chain", f"too many descendants for tx {ancestor} [limit: {sc.DEFAULT_DESCENDANT_LIMIT}]")

        if conflicts:
            _check_replacement(self, tx, txid, fee, vsize, conflicts, parents)

        self._verify_scripts(tx, spent)

        if max_feerate is not None and max_feerate > 0 and fee > sc.fee_for_size(max_feerate, vsize):
            raise Rejected("max-fee-exceeded", kind="max-fee")
        entry = Entry(tx, fee, vsize, self.now(), self.chain.height, parents)
        return entry, conflicts | {d for c in conflicts for d in self.descendants(c)}

    def _verify_scripts(self, tx: p.Tx, spent: list[tuple[int, bytes]]) -> None:
        ktx = pbk.Transaction(tx.serialize())
        outputs = [pbk.TransactionOutput(pbk.ScriptPubkey(script), value) for value, script in spent]
        precomputed = pbk.script.PrecomputedTransactionData(ktx, outputs)
        for i, (value, script) in enumerate(spent):
            ok = outputs[i].script_pubkey.verify(value, ktx, precomputed, i, SCRIPT_FLAGS)
            if not ok:
                # Core 28 puts the script error inside the reason itself, with no debug part.
                raise Rejected(f"mandatory-script-verify-flag-failed ({diagnose(tx, i, script)})")
            policy = policy_failure(tx, i, script)
            if policy is not None:
                raise Rejected(f"non-mandatory-script-verify-flag ({policy})")

    def add(self, entry: Entry, replaced: set[str]) -> list[str]:
        removed = [t for t in replaced if t in self.entries]
        for t in removed:
            self._remove_one(t)
        txid = entry.txid
        self.entries[txid] = entry
        self.wtxids[entry.tx.wtxid] = txid
        for txin in entry.tx.vin:
            self.spenders[(txin.prevout.txid_hex, txin.prevout.n)] = txid
        for parent in entry.parents:
            self.entries[parent].children.add(txid)
        self.sequence += 1
        return removed

    def accept(self, tx: p.Tx, max_feerate: int | None = None, check_fee: bool = True) -> tuple[Entry, list[str]]:
        entry, replaced = self.check(tx, max_feerate, check_fee)
        return entry, self.add(entry, replaced)

    # --- removal --------------------------------------------------------------------------------

    def _remove_one(self, txid: str) -> None:
        e = self.entries.pop(txid)
        self.wtxids.pop(e.tx.wtxid, None)
        for txin in e.tx.vin:
            key = (txin.prevout.txid_hex, txin.prevout.n)
            if self.spenders.get(key) == txid:
                del self.spenders[key]
        for parent in e.parents:
            if parent in self.entries:
                self.entries[parent].children.discard(txid)
        for child in e.children:
            if child in self.entries:
                self.entries[child].parents.discard(txid)

    def remove_with_descendants(self, txid: str) -> list[str]:
        if txid not in self.entries:
            return []
        gone = [txid, *self.descendants(txid)]
        for t in gone:
            self._remove_one(t)
        return gone

    def remove_for_block(self, block: p.Block) -> list[str]:
        """Drop what the block confirmed (children stay, now spending confirmed coins) and what it
        conflicts with (with their descendants)."""
        removed: list[str] = []
        for tx in block.txs:
            if tx.txid in self.entries:
                e = self.entries[tx.txid]
                for child in e.children:
                    if child in self.entries:
                        self.entries[child].parents.discard(tx.txid)
                e.children = set()
                self._remove_one(tx.txid)
                removed.append(tx.txid)
        for tx in block.txs[1:]:
            for txin in tx.vin:
                spender = self.spenders.get((txin.prevout.txid_hex, txin.prevout.n))
                if spender is not None:
                    removed.extend(self.remove_with_descendants(spender))
        return removed

    # --- block assembly ------------------------------------------------------------------------

    def select_for_block(self, max_weight: int) -> list[Entry]:
        """Core's ancestor-feerate selection: repeatedly take the best package (tx plus its
        not-yet-selected ancestors) by fee / vsize, parents first."""
        selected: set[str] = set()
        result: list[Entry] = []
        weight = 0

        def package(t: str) -> tuple[int, int, set[str]]:
            anc = {a for a in self.ancestors(t) if a not in selected} | {t}
            return sum(self.modified_fee(a) for a in anc), sum(self.entries[a].vsize for a in anc), anc

        heap = []
        for t, e in self.entries.items():
            fee, size, _ = package(t) if e.parents else (self.modified_fee(t), e.vsize, None)
            heapq.heappush(heap, (-fee / size, e.time, t, fee, size))
        skipped: set[str] = set()
        while heap:
            _neg, _t, txid, fee, size = heapq.heappop(heap)
            if txid in selected or txid in skipped:
                continue
            cur_fee, cur_size, anc = package(txid)
            if (cur_fee, cur_size) != (fee, size):
                heapq.heappush(heap, (-cur_fee / cur_size, _t, txid, cur_fee, cur_size))
                continue
            if cur_fee < sc.fee_for_size(BLOCK_MIN_TX_FEERATE, cur_size):
                break  # Core's BlockAssembler: every package left pays less (e.g. a negative fee delta)
            pkg_weight = sum(self.entries[a].tx.weight for a in anc)
            if weight + pkg_weight > max_weight:
                skipped.add(txid)
                continue
            for a in self.topological_subset(anc):
                selected.add(a)
                result.append(self.entries[a])
            weight += pkg_weight
        return result

    def topological_subset(self, txids: set[str]) -> list[str]:
        order: list[str] = []
        remaining = set(txids)
        while remaining:
            ready = sorted(t for t in remaining if not (self.entries[t].parents & remaining))
            order.extend(ready)
            remaining -= set(ready)
        return order


# --- the individual rules -------------------------------------------------------------------


def _btc(sats: int) -> str:
    """Core's ``FormatMoney``: at least two decimals, trailing zeros trimmed."""
    s = f"{sats // p.COIN}.{sats % p.COIN:08d}".rstrip("0")
    if len(s.split(".")[1]) < 2:
        s = s + "0" * (2 - len(s.split(".")[1]))
    return s


def _check_transaction(tx: p.Tx) -> None:
    """Consensus ``CheckTransaction``."""
    if not tx.vin:
        raise Rejected("bad-txns-vin-empty")
    if not tx.vout:
        raise Rejected("bad-txns-vout-empty")
    if tx.stripped_size * p.WITNESS_SCALE_FACTOR > 4_000_000:
        raise Rejected("bad-txns-oversize")
    total = 0
    for out in tx.vout:
        if out.value < 0:
            raise Rejected("bad-txns-vout-negative")
        if out.value > p.MAX_MONEY:
            raise Rejected("bad-txns-vout-toolarge")
        total += out.value
        if total > p.MAX_MONEY:
            raise Rejected("bad-txns-txouttotal-toolarge")
    seen = set()
    for txin in tx.vin:
        if txin.prevout in seen:
            raise Rejected("bad-txns-inputs-duplicate")
        seen.add(txin.prevout)
    if tx.is_coinbase:
        if not 2 <= len(tx.vin[0].script_sig) <= 100:
            raise Rejected("bad-cb-length")
    elif any(txin.prevout.is_null() for txin in tx.vin):
        raise Rejected("bad-txns-prevout-null")


def _is_final(tx: p.Tx, height: int, mtp: int) -> bool:
    if tx.locktime == 0:
        return True
    limit = height if tx.locktime < sc.LOCKTIME_THRESHOLD else mtp
    if tx.locktime < limit:
        return True
    return all(txin.sequence == p.SEQUENCE_FINAL for txin in tx.vin)


def _sequence_locks_ok(tx: p.Tx, coin_heights: list[int], height: int, mtp: int, mtp_at: Callable[[int], int]) -> bool:
    """BIP68 for a transaction to be mined in the next block (height ``height``, prev MTP ``mtp``)."""
    if tx.version < 2:
        return True
    min_height = -1
    min_time = -1
    for txin, coin_height in zip(tx.vin, coin_heights):
        seq = txin.sequence
        if seq & SEQUENCE_LOCKTIME_DISABLE_FLAG:
            continue
        value = seq & SEQUENCE_LOCKTIME_MASK
        if seq & SEQUENCE_LOCKTIME_TYPE_FLAG:
            coin_mtp = mtp_at(max(coin_height - 1, 0))
            min_time = max(min_time, coin_mtp + (value << 9) - 1)
        else:
            min_height = max(min_height, coin_height + value - 1)
    return min_height < height and min_time < mtp


def _check_replacement(pool: Mempool, tx: p.Tx, txid: str, fee: int, vsize: int, conflicts: set[str], parents: set[str]) -> None:
    """Full-RBF replacement (Core 28+: every transaction is replaceable), BIP125 rules 2-5."""
    all_conflicting: set[str] = set()
    for c in conflicts:
        all_conflicting |= {c} | pool.descendants(c)
    if parents & all_conflicting:
        spent = next(iter(parents & all_conflicting))
        raise Rejected("bad-txns-spends-conflicting-tx", f"{txid} spends conflicting transaction {spent}")
    if len(all_conflicting) > MAX_REPLACEMENT_CANDIDATES:
        raise Rejected(
            "too many potential replacements",
            f"rejecting replacement {txid}; too many potential replacements ({len(all_conflicting)} > {MAX_REPLACEMENT_CANDIDATES})",
        )
    # Rule 2: no new unconfirmed inputs.
    conflict_parents = set().union(*(pool.entries[c].parents for c in conflicts))
    for i, txin in enumerate(tx.vin):
        ptxid = txin.prevout.txid_hex
        if ptxid in pool.entries and ptxid not in conflict_parents:
            raise Rejected("replacement-adds-unconfirmed", f"replacement {txid} adds unconfirmed input, idx {i}")
    # Rule "feerate": higher than each directly conflicting tx.
    for c in conflicts:
        e = pool.entries[c]
        if fee * e.vsize <= e.fee * vsize:
            raise Rejected(
                "insufficient fee",
                f"rejecting replacement {txid}; new feerate {_fmt_feerate(fee, vsize)} <= old feerate {_fmt_feerate(e.fee, e.vsize)}",
            )
    # Rules 3 and 4: pay for everything evicted plus our own relay.
    old_fees = sum(pool.entries[c].fee for c in all_conflicting)
    if fee < old_fees:
        raise Rejected(
            "insufficient fee",
            f"rejecting replacement {txid}, less fees than conflicting txs; {_btc(fee)} < {_btc(old_fees)}",
        )
    additional = fee - old_fees
    relay = sc.fee_for_size(INCREMENTAL_RELAY_FEERATE, vsize)
    if additional < relay:
        raise Rejected(
            "insufficient fee",
            f"rejecting replacement {txid}, not enough additional fees to relay; {_btc(additional)} < {_btc(relay)}",
        )
