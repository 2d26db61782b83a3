"""The EVM adapter's values: what it accepts (addresses, topics, data, wei, block tags, signed
transactions) checked once at the edge, and what it hands back (log filters, receipts, block refs,
logs as plain dicts).  Kept apart from ``chains.evm`` so the adapter module holds the adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.datastructures import SignedTransaction
from eth_account.signers.local import LocalAccount
from eth_utils import is_address, keccak, to_checksum_address

from bridge.core.errors import InputError
from chains.base import BlockRef

Key = str | bytes | LocalAccount
_BLOCK_TAGS = {"latest", "pending", "earliest", "safe", "finalized"}


@dataclass(frozen=True)
class EvmLogFilter:
    """Which logs ``events`` returns: emitting contract(s) and topic positions (``None`` = any).

    ``topics`` follows ``eth_getLogs``: position i matches a topic, a list of
    alternatives, or ``None`` for any value.
    """

    address: str | list[str] | None = None
    topics: list[str | list[str] | None] | None = None

    def to_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.address is not None:
            addresses = [self.address] if isinstance(self.address, str) else list(self.address)
            params["address"] = [_address(a, "log filter address") for a in addresses]
        if self.topics is not None:
            params["topics"] = [_topic(t) for t in self.topics]
        return params


@dataclass(frozen=True)
class EvmReceipt:
    tx_hash: str
    status: int  # 1 success, 0 reverted
    block_number: int
    block_hash: str
    gas_used: int
    effective_gas_price: int
    contract_address: str | None
    #: Each log in the same shape as ``ChainEvent.data`` from ``events``.
    logs: list[dict[str, Any]]


def _address(value: Any, what: str) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise InputError(f"{what} is not an EVM address: {value!r}")
    return to_checksum_address(value)


def _topic(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_topic(v) for v in value]
    if isinstance(value, bytes) and len(value) == 32:
        return "0x" + value.hex()
    if isinstance(value, str) and value.startswith("0x") and len(value) == 66:
        return value.lower()
    raise InputError(f"a log topic must be 32 bytes (0x + 64 hex digits), got {value!r}")


def _data(value: bytes | str) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, str):
        body = value[2:] if value.startswith("0x") else value
        try:
            bytes.fromhex(body)
        except ValueError:
            raise InputError(f"data is not hex: {value[:20]!r}...") from None
        return "0x" + body.lower()
    raise InputError(f"data must be bytes or a hex string, got {type(value).__name__}")


def _wei(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"{what} must be a non-negative int (wei), got {value!r}")
    return value


def _block_param(block: int | str) -> str:
    if isinstance(block, int) and not isinstance(block, bool):
        if block < 0:
            raise InputError(f"block height must be >= 0, got {block}")
        return hex(block)
    if isinstance(block, str) and (block in _BLOCK_TAGS or (block.startswith("0x") and len(block) == 66)):
        return block
    raise InputError(f"block must be a height, a 0x block hash or one of {sorted(_BLOCK_TAGS)}, got {block!r}")


def block_ref(block: dict[str, Any]) -> BlockRef:
    return BlockRef(
        height=int(block["number"], 16),
        hash=block["hash"],
        parent_hash=block["parentHash"],
        timestamp=int(block["timestamp"], 16),
    )


def log_data(log: dict[str, Any]) -> dict[str, Any]:
    """A node log as the bridge passes it on: hex strings for bytes, ints for positions."""
    return {
        "address": log["address"].lower(),
        "topics": log["topics"],
        "data": log["data"],
        "tx_hash": log["transactionHash"],
        "tx_index": int(log["transactionIndex"], 16),
        "log_index": int(log["logIndex"], 16),
        "block_number": int(log["blockNumber"], 16),
        "block_hash": log["blockHash"],
    }


def raw_tx_hash(raw: bytes) -> str:
    """The hash a node will give a signed transaction (keccak of its network encoding)."""
    return "0x" + keccak(raw).hex()


def _raw_bytes(tx: bytes | str | SignedTransaction) -> bytes:
    if isinstance(tx, SignedTransaction):
        return bytes(tx.raw_transaction)
    if isinstance(tx, (bytes, bytearray)):
        return bytes(tx)
    if isinstance(tx, str):
        try:
            return bytes.fromhex(tx[2:] if tx.startswith("0x") else tx)
        except ValueError:
            raise InputError("a raw transaction must be hex") from None
    raise InputError(f"send takes signed transaction bytes, hex or a SignedTransaction, got {type(tx).__name__}")
