"""The kernel's chain and our indexes, kept in step.

The kernel is the authority on which chain is active.  After every block we hand it (and on
start-up) ``sync`` walks our index from its tip down to the last block both agree on, undoes ours
above it and applies the kernel's: the same code covers new blocks, reorgs, and an index that
fell behind or ahead because the process died between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chains.btc import primitives as p
from devnets.regtest.kernel import BlockOutcome, Kernel
from devnets.regtest.store import IndexedBlock, Store

REGTEST_BLOCK_WORK = 2  # 2**256 // (target(0x207fffff) + 1); every regtest block has these bits


@dataclass
class ChainChange:
    disconnected: list[p.Block]  # top first
    connected: list[p.Block]  # bottom first


def index_block(block: p.Block, raw: bytes, height: int) -> IndexedBlock:
    txs = []
    for i, tx in enumerate(block.txs):
        inputs = [] if i == 0 else [(txin.prevout.txid_hex, txin.prevout.n) for txin in tx.vin]
        # Like Core, the genesis coinbase is not spendable: it never enters the UTXO set.
        outputs = [] if height == 0 else [(o.value, o.script_pubkey) for o in tx.vout]
        txs.append((tx.txid, inputs, outputs))
    return IndexedBlock(block.hash, height, block.header.time, raw, txs)


class ChainState:
    def __init__(self, datadir: Path) -> None:
        self.datadir = Path(datadir)
        self.kernel = Kernel(self.datadir)
        self.store = Store(self.datadir / "indexes.sqlite")
        self._tip: tuple[int, int] | None = None  # (height, median time past), dropped on every change

    def close(self) -> None:
        self.kernel.close()
        self.store.close()

    # --- start-up ------------------------------------------------------------------------------

    def recover(self) -> ChainChange:
        """Feed the kernel blocks our journal holds beyond what it remembers, then sync."""
        k = self.kernel
        top = self.store.tip_height()
        h = min(top, k.height)
        while h > 0 and self.store.hash_at(h) != k.hash_at(h):
            h -= 1
        for height in range(h + 1, top + 1):
            raw = self.store.raw_at(height)
            if raw is not None:
                k.process_block(raw)
        return self.sync()

    # --- following the kernel ---------------------------------------------------------------

    def sync(self, known: p.Block | None = None) -> ChainChange:
        """``known``: a block just handed to the kernel, so it need not be read back from disk."""
        k, s = self.kernel, self.store
        ours = s.tip_height()
        theirs = k.height
        if ours == theirs and ours >= 0 and s.hash_at(ours) == k.hash_at(theirs):
            return ChainChange([], [])
        fork = min(ours, theirs)
        while fork >= 0 and s.hash_at(fork) != k.hash_at(fork):
            fork -= 1
        disconnect = []
        disconnected = []
        for height in range(ours, fork, -1):
            raw = s.raw_at(height)
            assert raw is not None
            block = p.Block.parse(raw)
            entry = k.entry(block.hash)
            undo = k.spent_outputs(entry) if entry is not None else []
            disconnect.append((index_block(block, raw, height), undo))
            disconnected.append(block)
        connect = []
        connected = []
        for height in range(fork + 1, theirs + 1):
            entry = k.entry_at(height)
            if known is not None and str(entry.block_hash) == known.hash:
                block, raw = known, known.serialize()
            else:
                raw = k.read_block(entry)
                block = p.Block.parse(raw)
            connect.append(index_block(block, raw, height))
            connected.append(block)
        s.apply(disconnect, connect)
        self._tip = None
        return ChainChange(disconnected, connected)

    def submit(self, block: p.Block) -> tuple[BlockOutcome, ChainChange]:
        outcome = self.kernel.process_block(block.serialize())
        return outcome, self.sync(block)

    # --- chain facts --------------------------------------------------------------------------

    def _tip_facts(self) -> tuple[int, int]:
        # Read on every mempool acceptance; cached so a burst of transactions costs no queries.
        if self._tip is None:
            height = self.store.tip_height()
            self._tip = (height, self._mtp_at(height))
        return self._tip

    @property
    def height(self) -> int:
        return self._tip_facts()[0]

    def tip_hash(self) -> str:
        return self.store.hash_at(self.height) or ""

    def median_time_past(self, height: int | None = None) -> int:
        """Median of the 11 header times ending at ``height`` (Core's GetMedianTimePast)."""
        if height is None:
            return self._tip_facts()[1]
        return self._mtp_at(height)

    def _mtp_at(self, height: int) -> int:
        if height < 0:
            return 0
        times = sorted(self.store.times(max(0, height - 10), height))
        return times[len(times) // 2]

    def kernel_mtp(self, block_hash: str) -> int:
        """Median time past at any block the kernel knows, active or not (for building a branch)."""
        entry = self.kernel.entry(block_hash)
        assert entry is not None
        times = []
        for _ in range(11):
            times.append(int(entry.block_header.timestamp.timestamp()))
            if entry.height == 0:
                break
            entry = entry.previous
        times.sort()
        return times[len(times) // 2]

    def block_raw(self, block_hash: str) -> tuple[bytes, int | None] | None:
        """Raw block and its active-chain height (None when it is known but not active)."""
        height = self.store.height_of(block_hash)
        if height is not None:
            raw = self.store.raw_at(height)
            assert raw is not None
            return raw, height
        entry = self.kernel.entry(block_hash)
        if entry is None or not self.kernel.has_block_data(entry):
            return None
        return self.kernel.read_block(entry), None

    def header_height(self, block_hash: str) -> int | None:
        entry = self.kernel.entry(block_hash)
        return None if entry is None else entry.height

    @staticmethod
    def chainwork(height: int) -> str:
        return f"{(height + 1) * REGTEST_BLOCK_WORK:064x}"
