"""Bitcoin Core's consensus engine (libbitcoinkernel through ``pbk``) for one regtest datadir.

Every block goes through ``ChainstateManager.process_block``; the kernel picks the most-work
valid chain itself (so a longer competing branch makes it reorganise).  The C API tells us *that*
a block was invalid (``block_checked``) but not *why*; Core's reason string only appears in its
log line ``BlockChecked: block hash=<h> state=<reason>, <debug>``, so we capture the kernel log.
"""

from __future__ import annotations

import ctypes
import gc
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import pbk
import pbk.capi.bindings as k

_LOG_CHECKED = re.compile(r"BlockChecked: block hash=([0-9a-f]{64}) state=(.*)$")
_LOG_ACCEPT_FAILED = re.compile(r"AcceptBlock FAILED \((.*)\)")

# The kernel's logger is process-global: one connection serves every Kernel in the process, and
# reasons are filed by block hash so concurrent in-process nodes never read each other's.
_log_lock = threading.Lock()
_reasons: dict[str, str] = {}
_last_accept_failure: list[str] = []
_log_connection: pbk.LoggingConnection | None = None


def _on_kernel_log(message: str) -> None:
    line = message.strip()
    m = _LOG_CHECKED.search(line)
    if m:
        with _log_lock:
            _reasons[m.group(1)] = m.group(2)
            if len(_reasons) > 1000:
                _reasons.pop(next(iter(_reasons)))
        return
    m = _LOG_ACCEPT_FAILED.search(line)
    if m:
        with _log_lock:
            _last_accept_failure[:] = [m.group(1)]


def _ensure_logging() -> None:
    global _log_connection
    if _log_connection is not None:
        return
    pbk.logging_set_options(pbk.LoggingOptions(log_timestamps=False, always_print_category_levels=False))
    pbk.set_log_level_category(pbk.LogCategory.ALL, pbk.LogLevel.DEBUG)
    pbk.enable_log_category(pbk.LogCategory.VALIDATION)
    _log_connection = pbk.LoggingConnection(cb=_on_kernel_log)


def _kernel_block(raw: bytes) -> pbk.Block | None:
    """``pbk.Block(raw)`` copies the bytes one Python int at a time (50 ms for a 2,000-tx block);
    hand the C constructor a buffer copy instead."""
    ptr = k.btck_block_create((ctypes.c_ubyte * len(raw)).from_buffer_copy(raw), len(raw))
    return pbk.Block._from_handle(ptr) if ptr else None


#: Core's ``BlockValidationResult::BLOCK_MUTATED`` reasons: the bytes do not match the header (a
#: witness stripped or added, a duplicated transaction), so the verdict is about this copy, not
#: the block hash.  Core never marks the block index failed for them (``AcceptBlock``), and
#: ``submitblock`` of the real block afterwards is accepted, then "duplicate".
MUTATED_REASONS = frozenset(
    {
        "bad-txnmrklroot",
        "bad-txns-duplicate",
        "bad-witness-nonce-size",
        "bad-witness-merkle-match",
        "unexpected-witness",
    }
)


def reject_reason(state_text: str) -> str:
    """Core's ``BlockValidationState::ToString`` is ``reason, debug``; RPCs report only the reason."""
    return state_text.split(",", 1)[0].strip()


@dataclass
class BlockOutcome:
    """What the kernel did with one block."""

    block_hash: str
    is_new: bool
    valid: bool
    reason: str | None  # Core's reject reason when invalid ("bad-cb-amount", "high-hash", ...)


class Kernel:
    """One chainstate manager on ``<datadir>/regtest/{blocks,chainstate}``."""

    def __init__(self, datadir: Path) -> None:
        _ensure_logging()
        self.datadir = Path(datadir)
        self.datadir.mkdir(parents=True, exist_ok=True)
        self._checked: dict[str, bool] = {}  # the last process_block's verdicts
        self._invalid: set[str] = set()  # blocks found invalid, for submitblock's "duplicate-invalid"
        self._callbacks = pbk.ValidationInterfaceCallbacks(block_checked=self._on_block_checked)
        params = pbk.ChainParameters(pbk.ChainType.REGTEST)
        opts = pbk.ContextOptions()
        opts.set_chainparams(params)
        opts.set_validation_interface(self._callbacks)
        self.context = pbk.Context(opts)
        cm_opts = pbk.ChainstateManagerOptions(self.context, str(self.datadir.absolute()), str((self.datadir / "blocks").absolute()))
        cm_opts.set_worker_threads_num(2)
        self.chainman: pbk.ChainstateManager | None = pbk.ChainstateManager(cm_opts)
        self.chain = self.chainman.get_active_chain()

    def _on_block_checked(self, _user_data, block: pbk.Block, state: pbk.BlockValidationState) -> None:
        self._checked[str(block.block_hash)] = state.validation_mode == pbk.ValidationMode.VALID

    # --- chain views -------------------------------------------------------------------------

    @property
    def height(self) -> int:
        return self.chain.height

    def entry_at(self, height: int) -> pbk.BlockTreeEntry:
        return self.chain.block_tree_entries[height]

    def hash_at(self, height: int) -> str:
        return str(self.entry_at(height).block_hash)

    def entry(self, block_hash: str) -> pbk.BlockTreeEntry | None:
        key = pbk.BlockHash(bytes.fromhex(block_hash)[::-1])
        try:
            return self.chainman.block_tree_entries[key]
        except KeyError:
            return None

    def read_block(self, entry: pbk.BlockTreeEntry) -> bytes:
        return bytes(self.chainman.blocks[entry])

    def has_block_data(self, entry: pbk.BlockTreeEntry) -> bool:
        return entry in self.chainman.blocks

    def spent_outputs(self, entry: pbk.BlockTreeEntry) -> list[list[tuple[int, bytes, int, bool]]]:
        """Undo data: per non-coinbase tx, per input, (value, script, height, coinbase)."""
        if entry.height == 0:
            return []
        undo = self.chainman.block_spent_outputs[entry]
        result = []
        for tx_spent in undo.transactions:
            coins = []
            for coin in tx_spent.coins:
                out = coin.output
                coins.append((out.amount, bytes(out.script_pubkey), coin.confirmation_height, coin.is_coinbase))
            result.append(coins)
        return result

    # --- validation ----------------------------------------------------------------------------

    def process_block(self, raw: bytes) -> BlockOutcome:
        """Hand a serialized block to the kernel; report whether it became valid and why not."""
        block = _kernel_block(raw)
        if block is None:
            return BlockOutcome("", False, False, "Block decode failed")
        block_hash = str(block.block_hash)
        with _log_lock:
            _last_accept_failure.clear()
        try:
            is_new = self.chainman.process_block(block)
        except pbk.ProcessBlockException:
            self._checked.clear()
            with _log_lock:
                text = _reasons.pop(block_hash, None) or (_last_accept_failure[0] if _last_accept_failure else "rejected")
            return self._rejected(block_hash, False, reject_reason(text))
        valid = self._checked.get(block_hash)
        self._checked.clear()
        if valid is False:
            with _log_lock:
                text = _reasons.pop(block_hash, "rejected")
            return self._rejected(block_hash, is_new, reject_reason(text))
        self._invalid.discard(block_hash)
        return BlockOutcome(block_hash, is_new, True, None)

    def _rejected(self, block_hash: str, is_new: bool, reason: str) -> BlockOutcome:
        if reason not in MUTATED_REASONS:
            self._invalid.add(block_hash)
        return BlockOutcome(block_hash, is_new, False, reason)

    def known_invalid(self, block_hash: str) -> bool:
        """Whether this process saw the kernel reject this block."""
        return block_hash in self._invalid

    def close(self) -> None:
        """Destroy the chainstate manager: the kernel flushes its block index and UTXO set."""
        if self.chainman is None:
            return
        self.chain = None  # type: ignore[assignment]
        self.chainman = None
        self.context = None  # type: ignore[assignment]
        gc.collect()
