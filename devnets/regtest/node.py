"""``RegtestNode``: the embedded node, usable in-process (tests) or behind ``python -m devnets.regtest``.

All state changes happen on the event loop thread, one call at a time (bitcoind serialises them
behind ``cs_main`` the same way), so the kernel, the index and the mempool never disagree.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Callable

from chains.btc import primitives as p
from devnets.regtest.chainstate import ChainChange, ChainState
from devnets.regtest.kernel import BlockOutcome
from devnets.regtest.mempool import Entry, Mempool, Rejected
from devnets.regtest.miner import COINBASE_RESERVED_WEIGHT, MAX_BLOCK_WEIGHT, assemble

log = logging.getLogger("devnets.regtest")

COOKIE_USER = "__cookie__"


class DatadirInUse(RuntimeError):
    """Another node holds the data directory's lock (bitcoind's ``LockDataDirectory`` failure)."""


class RegtestNode:
    """An embedded Bitcoin regtest node whose blocks and scripts are validated by libbitcoinkernel.

    ``datadir`` is the directory given to ``--datadir``; the chain lives in ``datadir/regtest``
    like bitcoind's.  Without ``rpcuser``/``rpcpassword`` a ``.cookie`` is written there.
    """

    def __init__(
        self,
        datadir: Path | str,
        rpcport: int = 0,
        rpcbind: str = "127.0.0.1",
        rpcuser: str | None = None,
        rpcpassword: str | None = None,
        rest: bool = False,
    ) -> None:
        self.datadir = Path(datadir)
        self.netdir = self.datadir / "regtest"
        self.rpcport = rpcport
        self.rpcbind = rpcbind
        self.rpcuser = rpcuser
        self.rpcpassword = rpcpassword
        #: bitcoind's ``-rest``: serve the unauthenticated REST interface under ``/rest/``.
        self.rest = rest
        self.chain: ChainState | None = None
        self.mempool: Mempool | None = None
        self.started_at = 0.0
        #: The RPC calls under way (``getrpcinfo``): a token each -> (method, monotonic start).
        self.active_commands: dict[object, tuple[str, float]] = {}
        self.mocktime = 0
        #: Payout script of the block mined on every accepted transaction (``devnetautomine``), or None.
        self.automine: bytes | None = None
        self.stopped = asyncio.Event()
        self._server = None
        self._cookie: Path | None = None
        # Mempool changes not yet written (batched: one commit per RPC request, not per tx).
        self._mempool_added: dict[str, tuple[str, bytes, int]] = {}
        self._mempool_removed: set[str] = set()
        # Set (and replaced) whenever the tip changes: the ``waitfor*`` RPCs wait on it.
        self._tip_changed = asyncio.Event()
        self._lock_fd: int | None = None

    # --- life cycle -------------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the datadir, then load the chain and the mempool (no RPC server)."""
        self.netdir.mkdir(parents=True, exist_ok=True)
        self._lock_datadir()
        try:
            self.chain = ChainState(self.netdir)
            self.chain.recover()
            self.mempool = Mempool(self.chain_view, self.now)
            self._load_mempool()
        except BaseException:
            self.close()
            raise
        self.started_at = time.time()

    def _lock_datadir(self) -> None:
        """bitcoind's ``.lock``: a second node on this datadir would die inside the kernel (LevelDB's
        own lock) and overwrite the first one's cookie, so it is refused before it touches anything.
        flock is per open file, so a second node in the same process is refused too; the kernel
        drops the lock if the process dies."""
        fd = os.open(self.netdir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DatadirInUse(f"Cannot obtain a lock on data directory {self.netdir}. Bitcoin Core is probably already running.") from None
        self._lock_fd = fd

    async def start(self) -> None:
        """Open the datadir and serve JSON-RPC on ``rpcbind:rpcport`` (0 picks a free port)."""
        from devnets.regtest.rpc import RpcServer

        self.open()
        if self.rpcuser is None or self.rpcpassword is None:
            self.rpcuser = COOKIE_USER
            self.rpcpassword = secrets.token_hex(32)
            self._cookie = self.netdir / ".cookie"
            self._cookie.write_text(f"{COOKIE_USER}:{self.rpcpassword}")
            self._cookie.chmod(0o600)
        self._server = RpcServer(self)
        self.rpcport = await self._server.start(self.rpcbind, self.rpcport)
        log.info("init message: Done loading; JSON-RPC on %s", self.rpc_url)

    async def stop(self) -> None:
        self.stopped.set()  # ends long polls first: the server waits for its open requests
        if self._server is not None:
            await self._server.stop()
            self._server = None
        self.close()

    async def wait_for_tip(self, done: Callable[[], bool], timeout_ms: int) -> None:
        """Return once ``done()`` holds after a tip change (or already holds), the node stops,
        or ``timeout_ms`` passes (0: no limit), as bitcoind's ``waitfor*`` RPCs do."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000 if timeout_ms > 0 else None
        while self.chain is not None and not done() and not self.stopped.is_set():
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return
            changed = asyncio.ensure_future(self._tip_changed.wait())
            stopping = asyncio.ensure_future(self.stopped.wait())
            try:
                await asyncio.wait({changed, stopping}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                stopping.cancel()

    def close(self) -> None:
        if self.chain is not None:
            self.flush_mempool()
            self.chain.close()
            self.chain = None
        if self._cookie is not None:
            self._cookie.unlink(missing_ok=True)
            self._cookie = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        self.stopped.set()

    def request_stop(self) -> None:
        """The ``stop`` RPC: answer first, then shut down (the process entry point waits on this)."""
        self.stopped.set()

    @property
    def rpc_url(self) -> str:
        return f"http://{self.rpcbind}:{self.rpcport}"

    @property
    def rpc_auth(self) -> tuple[str, str]:
        assert self.rpcuser is not None and self.rpcpassword is not None
        return self.rpcuser, self.rpcpassword

    # --- clock ---------------------------------------------------------------------------------

    def now(self) -> int:
        return self.mocktime or int(time.time())

    def set_mocktime(self, t: int) -> None:
        """Like bitcoind, mocktime lives in memory only: a restart goes back to the system clock."""
        self.mocktime = t

    # --- views the mempool needs -----------------------------------------------------------

    @property
    def chain_view(self) -> "_ChainView":
        return _ChainView(self)

    # --- transactions ----------------------------------------------------------------------------

    def accept_tx(self, tx: p.Tx, max_feerate: int | None = None, check_fee: bool = True) -> Entry:
        """Into the mempool; persisted at the next ``flush_mempool`` (the RPC server flushes before
        it answers, so an acknowledged transaction is on disk)."""
        entry, removed = self.mempool.accept(tx, max_feerate, check_fee)
        for txid in removed:
            self._mempool_added.pop(txid, None)
            self._mempool_removed.add(txid)
        self._mempool_added[tx.txid] = (tx.txid, tx.serialize(), entry.time)
        self._mempool_removed.discard(tx.txid)
        return entry

    def flush_mempool(self) -> None:
        if self._mempool_added or self._mempool_removed:
            self.chain.store.mempool_replace(list(self._mempool_added.values()), list(self._mempool_removed))
            self._mempool_added.clear()
            self._mempool_removed.clear()

    def _load_mempool(self) -> None:
        rows = list(self.chain.store.mempool_rows())
        dropped = []
        for txid, raw, t in rows:
            try:
                entry, _ = self.mempool.accept(p.Tx.parse(raw))
                entry.time = t
            except (Rejected, p.DecodeError):
                dropped.append(txid)
        if dropped:
            self.chain.store.mempool_replace([], dropped)
        log.info("Imported mempool transactions from disk: %d succeeded, %d failed", len(rows) - len(dropped), len(dropped))

    # --- blocks ------------------------------------------------------------------------------------

    def submit_block(self, block: p.Block) -> BlockOutcome:
        outcome, change = self.chain.submit(block)
        self._after_chain_change(change)
        return outcome

    def _after_chain_change(self, change: ChainChange) -> None:
        if not change.disconnected and not change.connected:
            return
        self._tip_changed.set()
        self._tip_changed = asyncio.Event()
        self.flush_mempool()
        before = set(self.mempool.entries)
        if not change.disconnected:
            for block in change.connected:
                self.mempool.remove_for_block(block)
        else:
            self._rebuild_mempool(change)
        after = set(self.mempool.entries)
        gone = list(before - after)
        added = [(t, self.mempool.entries[t].tx.serialize(), self.mempool.entries[t].time) for t in after - before]
        self.chain.store.mempool_replace(added, gone)

    def _rebuild_mempool(self, change: ChainChange) -> None:
        """After a reorg, like Core: the disconnected blocks' transactions go back in first (oldest
        block first), then the old mempool on top; whatever the new chain makes invalid is dropped."""
        old = sorted(self.mempool.entries.values(), key=lambda e: e.time)
        confirmed = {tx.txid for block in change.connected for tx in block.txs}
        deltas = self.mempool.deltas
        self.mempool = Mempool(self.chain_view, self.now)
        self.mempool.deltas = deltas
        for block in reversed(change.disconnected):
            for tx in block.txs[1:]:
                if tx.txid in confirmed:
                    continue
                try:
                    self.mempool.accept(tx)
                except Rejected:
                    pass
        for e in old:
            if e.txid in confirmed or e.txid in self.mempool:
                continue
            try:
                entry, _ = self.mempool.accept(e.tx)
                entry.time = e.time
            except Rejected:
                pass

    def mine(
        self, payout_script: bytes, txs: list[p.Tx] | None = None, prev_hash: str | None = None, height: int | None = None, time_: int | None = None
    ) -> tuple[p.Block, BlockOutcome]:
        """Build, solve and submit one block; ``txs`` None takes the mempool by ancestor feerate."""
        if txs is None:
            entries = self.mempool.select_for_block(MAX_BLOCK_WEIGHT - COINBASE_RESERVED_WEIGHT)
            txs = [e.tx for e in entries]
            fees = sum(e.fee for e in entries)
        else:
            fees = self._fees_of(txs)
        tip = self.chain.tip_hash()
        if prev_hash is None:
            prev_hash, height = tip, self.chain.height + 1
        prev_mtp = self.chain.median_time_past() if prev_hash == tip else self.chain.kernel_mtp(prev_hash)
        now = time_ if time_ is not None else self.now()
        block = assemble(prev_hash, height, prev_mtp, now, payout_script, txs, fees)
        outcome = self.submit_block(block)
        return block, outcome

    def _fees_of(self, txs: list[p.Tx]) -> int:
        """Fees of an explicit transaction list (inputs from the UTXO set or earlier in the list)."""
        created = {}
        total = 0
        for tx in txs:
            value_in = 0
            for txin in tx.vin:
                key = (txin.prevout.txid_hex, txin.prevout.n)
                if key in created:
                    value_in += created[key]
                    continue
                coin = self.chain.store.coin(*key)
                if coin is None:
                    mem = self.mempool.mempool_coin(*key)
                    value_in += mem[0] if mem else 0
                else:
                    value_in += coin.value
            for n, out in enumerate(tx.vout):
                created[(tx.txid, n)] = out.value
            total += max(0, value_in - tx.total_out)
        return total

    def replace_tip(self, depth: int, payout_script: bytes, blocks: int | None = None) -> list[str]:
        """Devnet reorg: build ``blocks`` (default depth+1) empty blocks on the ancestor ``depth``
        below the tip, so the kernel sees a branch with more work and reorganises to it."""
        tip = self.chain.height
        if not 1 <= depth <= tip:
            raise ValueError(f"depth must be between 1 and {tip}")
        count = depth + 1 if blocks is None else blocks
        if count <= depth:
            raise ValueError("the new branch must be longer than the replaced blocks")
        base_height = tip - depth
        prev = self.chain.store.hash_at(base_height)
        old_tip_time = self.chain.store.times(tip, tip)[0]
        hashes = []
        for i in range(count):
            height = base_height + 1 + i
            # Later than the replaced blocks so the new branch never reuses a replaced block's hash.
            t = max(self.now(), old_tip_time + 1 + i)
            block, outcome = self.mine(payout_script, [], prev_hash=prev, height=height, time_=t)
            if not outcome.valid:
                raise RuntimeError(f"competing block rejected: {outcome.reason}")
            prev = block.hash
            hashes.append(block.hash)
        return hashes


class _ChainView:
    """What the mempool reads from the chain: the indexed UTXO set, tip height and times."""

    def __init__(self, node: RegtestNode) -> None:
        self._node = node

    @property
    def height(self) -> int:
        return self._node.chain.height

    def coin(self, txid: str, vout: int):
        return self._node.chain.store.coin(txid, vout)

    def has_outputs_of(self, txid: str) -> bool:
        return self._node.chain.store.has_outputs_of(txid)

    def median_time_past(self, height: int | None = None) -> int:
        return self._node.chain.median_time_past(height)
