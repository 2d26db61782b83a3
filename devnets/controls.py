"""Devnet-only controls, kept out of the production chain adapters.

A production node offers none of these: mining on demand, Anvil's balance, automine, snapshot and
reorg calls, the embedded regtest node's ``devnetreorg`` and ``devnetautomine``.  Each wrapper takes an
adapter the code already holds and sends the devnet RPCs through it:

    await BitcoinDevnet(btc).mine(6)                 # blocks to a throwaway key (or to ``address``)
    await BitcoinDevnet(btc).reorg(2)                # the embedded node's devnetreorg
    anvil = AnvilControls(evm)
    snap = await anvil.snapshot(); ...; await anvil.revert(snap)
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Sequence

from eth_account.datastructures import SignedTransaction
from eth_utils import is_address, to_checksum_address

from bridge.core.errors import InputError, NotFound, Unsupported
from chains.base import BlockRef
from chains.bitcoin import BitcoinAdapter
from chains.bitcoin_wallet import BtcKey
from chains.evm import EvmAdapter


class BitcoinDevnet:
    """Mining, reorgs and automine on a regtest node (the embedded one; ``mine`` also on bitcoind)."""

    def __init__(self, adapter: BitcoinAdapter) -> None:
        self.adapter = adapter

    async def mine(self, blocks: int = 1, address: str | None = None) -> list[str]:
        """Mine ``blocks`` to ``address`` (default: a throwaway key's address); their hashes."""
        if blocks < 1:
            raise InputError(f"blocks must be >= 1, got {blocks}")
        address = address or BtcKey.generate().p2wpkh_address(self.adapter.network)
        return await self.adapter.rpc.call("generatetoaddress", blocks, address)

    async def mine_to(self, height: int, address: str | None = None) -> list[str]:
        """Mine until the tip is at ``height`` (nothing when it already is or is above)."""
        missing = height - await self.adapter.height()
        return await self.mine(missing, address) if missing > 0 else []

    async def reorg(self, depth: int, nblocks: int | None = None, address: str | None = None) -> dict[str, Any]:
        """``devnetreorg``: replace the top ``depth`` blocks with a longer branch of ``nblocks`` empty
        blocks (default ``depth + 1``); the replaced blocks' transactions go back to the mempool."""
        params: list[Any] = [depth]
        if nblocks is not None or address is not None:
            params.append(nblocks)
        if address is not None:
            params.append(address)
        return await self.adapter.rpc.call("devnetreorg", *params)

    async def set_automine(self, enabled: bool, address: str | None = None) -> dict[str, Any]:
        """``devnetautomine``: mine a block on every transaction the node accepts (as Anvil does)."""
        params: list[Any] = [enabled] + ([address] if address is not None else [])
        return await self.adapter.rpc.call("devnetautomine", *params)

    @contextlib.asynccontextmanager
    async def mining_mempool(self, interval: float = 0.05) -> AsyncIterator[None]:
        """Inside the block, a task mines a block whenever a transaction waits in the mempool."""

        async def loop() -> None:
            while True:
                if await self.adapter.rpc.call("getrawmempool"):
                    await self.mine(1)
                await asyncio.sleep(interval)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _address(value: Any, what: str) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise InputError(f"{what} is not an EVM address: {value!r}")
    return to_checksum_address(value)


def _raw_hex(tx: bytes | str | SignedTransaction) -> str:
    if isinstance(tx, SignedTransaction):
        return "0x" + bytes(tx.raw_transaction).hex()
    if isinstance(tx, (bytes, bytearray)):
        return "0x" + bytes(tx).hex()
    if isinstance(tx, str):
        body = tx[2:] if tx.startswith("0x") else tx
        try:
            bytes.fromhex(body)
        except ValueError:
            raise InputError("a raw transaction must be hex") from None
        return "0x" + body.lower()
    raise InputError(f"a raw transaction is bytes, hex or a SignedTransaction, got {type(tx).__name__}")


class AnvilControls:
    """Anvil's devnet RPCs (Hardhat-style names as fallback) through an ``EvmAdapter``."""

    def __init__(self, adapter: EvmAdapter) -> None:
        self.adapter = adapter

    async def _read(self, method: str, *params: Any) -> Any:
        adapter = self.adapter
        return await adapter.retry.run(lambda: adapter.rpc.call(method, params), what=method)

    async def _first(self, methods: Sequence[str], *params: Any) -> Any:
        for method in methods:
            try:
                return await self._read(method, *params)
            except Unsupported:
                continue
        raise Unsupported(f"{self.adapter.url} offers none of {', '.join(methods)}")

    async def mine(self, blocks: int = 1) -> list[str]:
        """Mine ``blocks`` blocks; their hashes."""
        if blocks < 1:
            raise InputError(f"blocks must be >= 1, got {blocks}")
        try:
            await self._read("anvil_mine", hex(blocks))
        except Unsupported:
            for _ in range(blocks):
                await self._first(["evm_mine"])
        top = await self.adapter.height()
        adapter = self.adapter
        calls = [("eth_getBlockByNumber", (hex(h), False)) for h in range(top - blocks + 1, top + 1)]
        found = await adapter.retry.run(lambda: adapter.rpc.batch(calls), what=f"batch of {len(calls)}")
        return [b["hash"] for b in found]

    async def set_automine(self, enabled: bool) -> None:
        await self._first(["evm_setAutomine", "anvil_setAutomine"], enabled)

    async def set_balance(self, address: str, wei: int) -> None:
        if not isinstance(wei, int) or isinstance(wei, bool) or wei < 0:
            raise InputError(f"wei must be a non-negative int (wei), got {wei!r}")
        await self._first(["anvil_setBalance", "hardhat_setBalance"], _address(address, "address"), hex(wei))

    async def snapshot(self) -> str:
        return await self._first(["evm_snapshot"])

    async def revert(self, snapshot_id: str) -> None:
        """Back to ``snapshot_id`` (which, as on Anvil, is then used up)."""
        if not await self._first(["evm_revert"], snapshot_id):
            raise NotFound(f"no snapshot {snapshot_id} on {self.adapter.url}", snapshot_id=snapshot_id)
        self.adapter.nonces.forget_all()

    async def reorg(self, depth: int, txs: Sequence[tuple[bytes | str | SignedTransaction, int]] = ()) -> BlockRef:
        """Replace the top ``depth`` blocks (``anvil_reorg``); ``txs`` are (signed tx, block offset) pairs
        to include in the new blocks.  Returns the new head."""
        if depth < 1:
            raise InputError(f"reorg depth must be >= 1, got {depth}")
        pairs = [[_raw_hex(tx), offset] for tx, offset in txs]
        await self._first(["anvil_reorg"], depth, pairs)
        self.adapter.nonces.forget_all()
        return await self.adapter.head()

    async def increase_time(self, seconds: int) -> None:
        """Move the clock of the next blocks ``seconds`` ahead (``evm_increaseTime``) and mine one."""
        await self._read("evm_increaseTime", seconds)
        await self.mine(1)

    async def set_next_block_timestamp(self, timestamp: int) -> None:
        await self._read("evm_setNextBlockTimestamp", timestamp)
