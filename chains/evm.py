"""The ``ChainAdapter`` for EVM chains (Anvil in development, any JSON-RPC node otherwise).

Keys are local (eth_account) and every transaction is signed here as EIP-1559
(type 2).  Reads go through the bridge's retry policy; a broadcast is retried only
after checking whether the previous attempt landed, and never re-signed blindly.

    async with await EvmAdapter.connect("http://127.0.0.1:8545") as chain:
        txhash = await chain.transact(key, to, value=10**18)
        await chain.wait_for_confirmations(txhash, 1)
        events = await chain.events(100, 200, EvmLogFilter(address=htlc, topics=[LOCKED_TOPIC]))

Over 400 lines because it is one class, the family's one door to its node: reads, log scans,
sending and outcomes share its retry rules and nonce allocator.  Its values are in
``chains.evm_values``, the RPC client in ``chains.evm_rpc``, fees and nonces in their own modules.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from eth_account import Account
from eth_account.datastructures import SignedTransaction
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from web3 import AsyncWeb3

from bridge.core.errors import (
    AlreadyInChain,
    ChainUnavailable,
    ConfigError,
    ContractReverted,
    InputError,
    NonceConflict,
    NotFound,
    ReorgDetected,
    Unsupported,
)
from bridge.core.retry import DEFAULT_RETRY, RetryPolicy
from chains.base import EVM, BlockRef, ChainAdapter, ChainEvent, TxStatus
from chains.evm_fees import FEE_HISTORY_BLOCKS, TIP_PERCENTILE, Fees, choose_fees, fees_from_history
from chains.evm_nonce import NonceManager
from chains.evm_revert import describe_revert
from chains.evm_rpc import EvmRpc, LogRangeTooLarge, follow_new_heads, is_already_known, is_nonce_too_low, ws_url_for
from chains.evm_values import (  # noqa: F401 - EvmLogFilter, EvmReceipt, block_ref, log_data, raw_tx_hash: importable from here too
    Key,
    EvmLogFilter,
    EvmReceipt,
    _address,
    _block_param,
    _data,
    _raw_bytes,
    _wei,
    block_ref,
    log_data,
    raw_tx_hash,
)
from chains.fee_bump import EvmTxFields, evm_bump
from chains.heads import HeadFollower

if TYPE_CHECKING:
    from bridge.core.settings import EvmSettings

#: ``eth_estimateGas`` is exact for the state it ran on; the margin absorbs state moving underneath.
GAS_MARGIN_NUM, GAS_MARGIN_DEN = 6, 5
#: Headers fetched per batch request when attaching blocks to logs.
HEADER_BATCH = 250
#: Log chunks in flight at once: the node builds one reply while we decode another.
LOG_CONCURRENCY = 3


class EvmAdapter(ChainAdapter):
    family = EVM

    def __init__(
        self,
        url: str,
        chain_id: int | None = None,
        confirmations: int = 1,
        log_chunk_size: int = 2000,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: float = 30.0,
        push_blocks: bool = True,
        ws_url: str | None = None,
    ) -> None:
        if log_chunk_size < 1:
            raise InputError(f"log_chunk_size must be >= 1, got {log_chunk_size}")
        if confirmations < 0:
            raise InputError(f"confirmations must be >= 0, got {confirmations}")
        self.url = url
        self.confirmations = confirmations
        self.log_chunk_size = log_chunk_size
        self.retry = retry
        self.rpc = EvmRpc(url, timeout=timeout)
        #: New blocks pushed over the node's websocket (``push_blocks=False``: poll).
        self.ws_url = ws_url or ws_url_for(url)
        self.heads = (
            HeadFollower(f"evm {self.ws_url}", lambda publish: follow_new_heads(self.ws_url, lambda header: publish(block_ref(header))))
            if push_blocks
            else None
        )
        self._expected_chain_id = chain_id
        self._chain_id: int | None = None
        #: The one nonce allocator of this process for every sender on this chain (``chains.evm_nonce``).
        self.nonces = NonceManager(lambda address: self.nonce(address, "pending"), self.nonce)
        self._accounts: dict[bytes, LocalAccount] = {}
        # Sends retry only on NonceConflict (fresh nonce, fresh signature); an unknown
        # outcome is never re-signed, since a new nonce could spend twice.
        self._nonce_retry = dataclasses.replace(retry, retry_on=lambda e: isinstance(e, NonceConflict))
        # A broadcast retries on transport errors only, checking each time whether it landed.
        self._broadcast_retry = dataclasses.replace(retry, retry_on=lambda e: isinstance(e, ChainUnavailable))

    @classmethod
    def from_settings(cls, settings: "EvmSettings", retry: RetryPolicy = DEFAULT_RETRY) -> "EvmAdapter":
        return cls(
            settings.rpc_url,
            chain_id=settings.chain_id,
            confirmations=settings.confirmations,
            log_chunk_size=settings.log_chunk_size,
            retry=retry,
            timeout=settings.rpc_timeout,
            push_blocks=settings.push_blocks,
            ws_url=settings.ws_url,
        )

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> "EvmAdapter":
        """An adapter whose chain id is already read (and checked against ``chain_id`` if given)."""
        adapter = cls(url, **kwargs)
        await adapter.chain_id_int()
        return adapter

    @property
    def w3(self) -> AsyncWeb3:
        """The AsyncWeb3 instance (for ABI encoding; the adapter's own calls bypass its formatters)."""
        return self.rpc.w3

    # --- identity ------------------------------------------------------------

    async def chain_id_int(self) -> int:
        if self._chain_id is None:
            found = int(await self._read("eth_chainId"), 16)
            if self._expected_chain_id is not None and found != self._expected_chain_id:
                raise ConfigError(f"{self.url} serves chain id {found}, configured {self._expected_chain_id}")
            self._chain_id = found
        return self._chain_id

    @property
    def chain_id(self) -> str:
        known = self._chain_id if self._chain_id is not None else self._expected_chain_id
        if known is None:
            raise ConfigError("the chain id is not known yet: pass chain_id= or use `await EvmAdapter.connect(url)`")
        return f"evm:{known}"

    # --- reads ---------------------------------------------------------------

    async def _read(self, method: str, *params: Any) -> Any:
        return await self.retry.run(lambda: self.rpc.call(method, params), what=method)

    async def _read_batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        return await self.retry.run(lambda: self.rpc.batch(calls), what=f"batch of {len(calls)}")

    async def head(self) -> BlockRef:
        return block_ref(await self._read("eth_getBlockByNumber", "latest", False))

    async def height(self) -> int:
        return int(await self._read("eth_blockNumber"), 16)

    async def block_by_height(self, height: int) -> BlockRef:
        block = await self._read("eth_getBlockByNumber", _block_param(height), False)
        if block is None:
            raise NotFound(f"no block at height {height} on {self.url}", height=height)
        return block_ref(block)

    async def block_by_hash(self, block_hash: str) -> BlockRef:
        block = await self._read("eth_getBlockByHash", _block_param(block_hash), False)
        if block is None:
            raise NotFound(f"no block {block_hash} on {self.url}", block_hash=block_hash)
        return block_ref(block)

    async def balance(self, address: str, block: int | str = "latest") -> int:
        return int(await self._read("eth_getBalance", _address(address, "address"), _block_param(block)), 16)

    async def code(self, address: str, block: int | str = "latest") -> bytes:
        return bytes.fromhex((await self._read("eth_getCode", _address(address, "address"), _block_param(block)))[2:])

    async def call(self, to: str, data: bytes | str, block: int | str = "latest", sender: str | None = None, value: int = 0) -> bytes:
        """``eth_call``; a revert raises ``ContractReverted`` with the revert data."""
        request: dict[str, Any] = {"to": _address(to, "to"), "data": _data(data)}
        if sender is not None:
            request["from"] = _address(sender, "sender")
        if _wei(value, "value"):
            request["value"] = hex(value)
        return bytes.fromhex((await self._read("eth_call", request, _block_param(block)))[2:])

    async def nonce(self, address: str, block: int | str = "latest") -> int:
        """``address``'s transaction count at ``block``: "latest" counts the mined ones, "pending"
        those in the node's pool too.  Choosing a nonce is ``nonces``' job."""
        return int(await self._read("eth_getTransactionCount", address, _block_param(block)), 16)

    async def mined_block(self, tx_hash: str) -> int | None:
        """The height of the block holding ``tx_hash`` on the node's chain now; None while it is
        pending or unknown (a reorg may have dropped it).  One ``eth_getTransactionReceipt``."""
        receipt = await self._read("eth_getTransactionReceipt", tx_hash)
        if receipt is None or receipt.get("blockNumber") is None:
            return None
        return int(receipt["blockNumber"], 16)

    # --- events --------------------------------------------------------------

    async def events(
        self,
        from_height: int,
        to_height: int,
        selector: EvmLogFilter | None = None,
        blocks: Sequence[BlockRef] | None = None,
    ) -> list[ChainEvent]:
        """Logs in ``from_height..to_height`` as events keyed ``txhash:logindex``, in chain order.

        The range is asked for in ``log_chunk_size`` blocks, a few chunks in flight
        at once; a chunk the node calls too large is halved (and later chunks use
        the smaller size).  Each event carries the block its log came from (looked
        up by the log's block hash, so parent hashes are exact for reorg checks).
        """
        if selector is not None and not isinstance(selector, EvmLogFilter):
            raise InputError(f"the EVM selector is an EvmLogFilter, got {type(selector).__name__}")
        if from_height < 0 or to_height < from_height:
            raise InputError(f"bad block range {from_height}..{to_height}")
        base = selector.to_params() if selector else {}
        known = {b.hash: b for b in blocks or ()}
        chunk = [self.log_chunk_size]  # shrinks for the whole call once the node says "too large"
        gate = asyncio.Semaphore(LOG_CONCURRENCY)

        async def one(start: int, end: int) -> list[ChainEvent]:
            async with gate:
                logs = await self._logs(start, end, base, chunk)
                refs = await self._blocks_for(logs, known)
            return [ChainEvent(f"{log['transactionHash']}:{int(log['logIndex'], 16)}", refs[log["blockHash"]], log_data(log)) for log in logs]

        step = self.log_chunk_size
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(start, min(to_height, start + step - 1))) for start in range(from_height, to_height + 1, step)]
        events = [event for task in tasks for event in task.result()]
        events.sort(key=lambda e: (e.block.height, e.data["log_index"]))
        return events

    async def _logs(self, from_height: int, to_height: int, base: dict[str, Any], chunk: list[int]) -> list[dict[str, Any]]:
        """Logs of one planned chunk, in sub-chunks of ``chunk[0]`` blocks, halving it on "too large"."""
        logs: list[dict[str, Any]] = []
        start = from_height
        while start <= to_height:
            end = min(to_height, start + chunk[0] - 1)
            params = {**base, "fromBlock": hex(start), "toBlock": hex(end)}
            try:
                part = await self._read("eth_getLogs", params)
            except LogRangeTooLarge:
                if end == start:
                    raise
                chunk[0] = min(chunk[0], max(1, (end - start + 1) // 2))
                continue
            # A log flagged removed belongs to a block that was reorged away.
            logs.extend(log for log in part if not log.get("removed"))
            start = end + 1
        return logs

    async def _blocks_for(self, logs: list[dict[str, Any]], known: dict[str, BlockRef]) -> dict[str, BlockRef]:
        """The headers (by hash, so each is exactly the block its logs came from) of blocks with logs;
        those in ``known`` are not asked for."""
        hashes = [h for h in dict.fromkeys(log["blockHash"] for log in logs) if h not in known]
        groups = [hashes[i : i + HEADER_BATCH] for i in range(0, len(hashes), HEADER_BATCH)]
        replies = await asyncio.gather(*(self._read_batch([("eth_getBlockByHash", (h, False)) for h in group]) for group in groups))
        found: dict[str, BlockRef] = dict(known)
        for group, blocks in zip(groups, replies):
            for block_hash, block in zip(group, blocks):
                if block is None:
                    raise ReorgDetected(f"block {block_hash} holding logs is gone from {self.url}", block_hash=block_hash)
                found[block_hash] = block_ref(block)
        return found

    # --- accounts and fees ---------------------------------------------------

    def account(self, key: Key) -> LocalAccount:
        """The local account for a private key (hex, bytes, or an eth_account ``LocalAccount``)."""
        if isinstance(key, LocalAccount):
            return key
        raw = bytes.fromhex(key[2:] if key.startswith("0x") else key) if isinstance(key, str) else bytes(key)
        if raw not in self._accounts:
            try:
                self._accounts[raw] = Account.from_key(raw)
            except (ValueError, TypeError):
                raise InputError("not a valid secp256k1 private key") from None
        return self._accounts[raw]

    async def suggest_fees(self) -> Fees:
        try:
            history = await self._read("eth_feeHistory", hex(FEE_HISTORY_BLOCKS), "latest", [TIP_PERCENTILE])
        except Unsupported:
            price = int(await self._read("eth_gasPrice"), 16)
            return Fees(max_fee=2 * price, priority_fee=min(price, 10**9))
        return fees_from_history(history)

    async def estimate_gas(self, sender: str, to: str | None, value: int = 0, data: bytes | str = b"") -> int:
        """``eth_estimateGas`` plus a margin; a revert raises ``ContractReverted`` with its data."""
        request: dict[str, Any] = {"from": sender, "value": hex(value), "data": _data(data)}
        if to is not None:
            request["to"] = to
        estimate = int(await self._read("eth_estimateGas", request), 16)
        return estimate * GAS_MARGIN_NUM // GAS_MARGIN_DEN

    # --- sending -------------------------------------------------------------

    async def transact(
        self,
        key: Key,
        to: str | None,
        value: int = 0,
        data: bytes | str = b"",
        gas: int | None = None,
        max_fee: int | None = None,
        priority_fee: int | None = None,
    ) -> str:
        """Sign and broadcast an EIP-1559 transaction from ``key``; returns its hash.

        ``to=None`` creates a contract.  A ``ChainUnavailable`` from here means the
        outcome is unknown: the signed transaction's hash is in
        ``exc.details["tx_hash"]``; check ``tx_status`` before sending anything new.
        """
        sender = self.account(key)
        target = None if to is None else _address(to, "to")
        _wei(value, "value")
        payload = _data(data)
        if gas is not None:
            _wei(gas, "gas")
        fees = choose_fees(await self.suggest_fees(), max_fee, priority_fee)
        if gas is None:
            gas = await self.estimate_gas(sender.address, target, value, payload)
        chain_id = await self.chain_id_int()

        async def attempt() -> str:
            async with self.nonces.reserve(sender.address) as nonce:
                raw, _ = EvmTxFields(chain_id, nonce, target, payload, gas, fees.max_fee, fees.priority_fee, value).sign(self, sender)
                return await self.send(raw)

        return await self._nonce_retry.run(attempt, what=f"transact from {sender.address}")

    async def send(self, tx: bytes | str | SignedTransaction) -> str:
        """Broadcast signed bytes; idempotent: the same bytes twice give the same hash, one spend."""
        raw = _raw_bytes(tx)
        tx_hash = raw_tx_hash(raw)
        attempts = 0

        async def attempt() -> str:
            nonlocal attempts
            attempts += 1
            # After a transport failure the first broadcast may have landed: look before resending.
            if attempts > 1 and await self._tx_known(tx_hash):
                return tx_hash
            try:
                return (await self.rpc.call("eth_sendRawTransaction", ["0x" + raw.hex()])).lower()
            except NonceConflict as exc:
                if is_already_known(exc) or (is_nonce_too_low(exc) and await self._tx_known(tx_hash)):
                    return tx_hash
                raise

        try:
            return await self._broadcast_retry.run(attempt, what=f"broadcast {tx_hash}")
        except ChainUnavailable as exc:
            raise ChainUnavailable(f"{exc.message}; {tx_hash} may or may not have been received", tx_hash=tx_hash) from exc

    async def _tx_known(self, tx_hash: str) -> bool:
        return await self._read("eth_getTransactionByHash", tx_hash) is not None

    async def replace(self, key: Key, original_txhash: str, fee_multiplier: float | int | str = 1.125) -> str:
        """Re-sign a pending transaction (same nonce, to, value, data, gas) with higher fees.

        Both fees rise by at least 10% (nodes refuse less) and at least to today's
        suggestion (``fee_bump.evm_bump``).  Returns the replacement's hash; whichever of the
        two is mined, the other becomes invalid.
        """
        sender = self.account(key)
        original = await self._read("eth_getTransactionByHash", original_txhash)
        if original is None:
            raise NotFound(f"transaction {original_txhash} is unknown to {self.url}", tx_hash=original_txhash)
        if original.get("blockNumber") is not None:
            raise AlreadyInChain(f"{original_txhash} is already mined; nothing to replace", tx_hash=original_txhash)
        if original["from"].lower() != sender.address.lower():
            raise InputError(f"{original_txhash} was sent by {original['from']}, not by the given key {sender.address}")
        if "maxFeePerGas" in original:
            old = Fees(int(original["maxFeePerGas"], 16), int(original["maxPriorityFeePerGas"], 16))
        else:
            price = int(original["gasPrice"], 16)
            old = Fees(price, price)
        fields = EvmTxFields(
            await self.chain_id_int(),
            int(original["nonce"], 16),
            original.get("to") and to_checksum_address(original["to"]),
            original["input"],
            int(original["gas"], 16),
            old.max_fee,
            old.priority_fee,
            int(original["value"], 16),
        )
        raw, _ = (await evm_bump(self, fields, fee_multiplier)).sign(self, sender)
        return await self.send(raw)

    # --- outcomes ------------------------------------------------------------

    async def tx_status(self, txid: str) -> TxStatus:
        tx, head = await self._read_batch([("eth_getTransactionByHash", (txid,)), ("eth_blockNumber", ())])
        if tx is None:
            return TxStatus(txid=txid, confirmations=-1)
        if tx.get("blockHash") is None:
            return TxStatus(txid=txid, confirmations=0)
        try:
            block = await self.block_by_hash(tx["blockHash"])
        except NotFound:  # reorged out between the two calls; it is pending again or gone
            return TxStatus(txid=txid, confirmations=0)
        return TxStatus(txid=txid, confirmations=int(head, 16) - block.height + 1, block=block)

    async def wait_for_confirmations(self, txid: str, confirmations: int | None = None, timeout: float = 60.0, poll: float = 0.2) -> TxStatus:
        """As ``ChainAdapter.wait_for_confirmations``; the default depth is the adapter's ``confirmations``."""
        wanted = self.confirmations if confirmations is None else confirmations
        return await super().wait_for_confirmations(txid, wanted, timeout, poll)

    async def receipt(self, txhash: str, abi: Iterable[dict[str, Any]] = ()) -> EvmReceipt:
        """The mined receipt; ``NotFound`` while pending; ``ContractReverted`` when it failed.

        For a failed transaction the call is replayed with ``eth_call`` on the state
        before its block, to recover the revert data (pass ``abi`` to name custom errors).
        """
        raw = await self._read("eth_getTransactionReceipt", txhash)
        if raw is None:
            raise NotFound(f"no receipt for {txhash} (unknown or not mined yet)", tx_hash=txhash)
        receipt = EvmReceipt(
            tx_hash=raw["transactionHash"],
            status=int(raw["status"], 16),
            block_number=int(raw["blockNumber"], 16),
            block_hash=raw["blockHash"],
            gas_used=int(raw["gasUsed"], 16),
            effective_gas_price=int(raw.get("effectiveGasPrice") or "0x0", 16),
            contract_address=raw.get("contractAddress") and to_checksum_address(raw["contractAddress"]),
            logs=[log_data(log) for log in raw.get("logs", [])],
        )
        if receipt.status == 0:
            data = await self._replay_revert(txhash, receipt.block_number)
            reason = describe_revert(data, abi) if data is not None else "reverted (replay could not reproduce the revert data)"
            raise ContractReverted(f"{txhash} reverted in block {receipt.block_number}: {reason}", reason=reason, data=data, tx_hash=txhash)
        return receipt

    async def _replay_revert(self, txhash: str, block_number: int) -> str | None:
        tx = await self._read("eth_getTransactionByHash", txhash)
        if tx is None:
            return None
        request = {"from": tx["from"], "value": tx["value"], "data": tx["input"], "gas": tx["gas"]}
        if tx.get("to"):
            request["to"] = tx["to"]
        try:
            await self._read("eth_call", request, hex(max(block_number - 1, 0)))
        except ContractReverted as exc:
            return exc.data
        return None

    async def wait_for_receipt(self, txhash: str, timeout: float = 60.0, abi: Iterable[dict[str, Any]] = (), confirmations: int = 1) -> EvmReceipt:
        """Wait until mined (or ``confirmations`` deep), then ``receipt``."""
        await self.wait_for_confirmations(txhash, max(confirmations, 1), timeout=timeout)
        return await self.receipt(txhash, abi)

    async def deploy(self, key: Key, abi: list[dict[str, Any]], bytecode: bytes | str, *args: Any, timeout: float = 60.0) -> str:
        """Create a contract and wait for it; returns its checksum address."""
        try:
            init = self.w3.eth.contract(abi=abi, bytecode=_data(bytecode)).constructor(*args).data_in_transaction
        except (TypeError, ValueError) as exc:
            raise InputError(f"constructor arguments do not match the ABI: {exc}") from exc
        txhash = await self.transact(key, None, data=init)
        receipt = await self.wait_for_receipt(txhash, timeout=timeout, abi=abi)
        if receipt.contract_address is None:
            raise ContractReverted(f"{txhash} created no contract", tx_hash=txhash)
        return receipt.contract_address

    async def close(self) -> None:
        await super().close()
        await self.rpc.close()
