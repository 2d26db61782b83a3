"""Async Python bindings for the EVM HTLC (``htlc/contracts/HTLC.sol``) and the devnet tokens.

    chain = await EvmAdapter.connect(url)
    htlc = await EvmHtlc.deploy(chain, key)                  # or EvmHtlc(chain, address)
    swap_id, tx = await htlc.lock(key, recipient, ETH, amount, hashlock, expiry)
    await htlc.claim(relayer_key, swap_id, preimage)         # funds go to the recipient
    await htlc.swap(swap_id)                                 # SwapStatus.CLAIMED

A swap's parameters are not stored on chain (one status slot per swap); ``claim`` and
``refund`` take either the ``SwapParams`` or just the id, in which case the parameters
are read back from the swap's ``Locked`` event.  Refusals by the contract raise
``ContractReverted`` whose ``reason`` is the custom error's name (``"WrongPreimage"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import (
    collapse_if_tuple,
    event_abi_to_log_topic,
    function_abi_to_4byte_selector,
    is_address,
    keccak,
    to_checksum_address,
)

from bridge.core.errors import ContractReverted, InputError, NotFound
from chains.base import ChainEvent
from chains.evm import EvmAdapter, EvmLogFilter, EvmReceipt
from chains.evm_revert import decode_revert, describe_revert

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
ETH = "0x0000000000000000000000000000000000000000"
TOKEN_KINDS = ("TestToken", "NoReturnToken", "FeeOnTransferToken")


@cache
def load_artifact(name: str) -> dict[str, Any]:
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.exists():
        raise NotFound(f"no compiled contract {name!r} in {ARTIFACTS_DIR}", contract=name)
    return json.loads(path.read_text())


# --- parameters and ids ---------------------------------------------------------------


class SwapStatus(IntEnum):
    NONE = 0  # never locked here (or a wrong id)
    LOCKED = 1
    CLAIMED = 2
    REFUNDED = 3


_SWAP_TYPES = ["address", "address", "address", "uint256", "bytes32", "uint256", "uint256"]


@dataclass(frozen=True)
class SwapParams:
    """Everything the contract hashes into a swap id, in the contract's order."""

    sender: str
    recipient: str
    token: str
    amount: int
    hashlock: bytes
    expiry: int
    nonce: int

    def __post_init__(self) -> None:
        for field in ("sender", "recipient", "token"):
            object.__setattr__(self, field, _address(getattr(self, field), field))
        for field in ("amount", "expiry", "nonce"):
            _uint(getattr(self, field), field)
        object.__setattr__(self, "hashlock", _bytes32(self.hashlock, "hashlock"))

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.sender, self.recipient, self.token, self.amount, self.hashlock, self.expiry, self.nonce)

    @property
    def id(self) -> bytes:
        return compute_swap_id(self)


def compute_swap_id(params: SwapParams) -> bytes:
    """The id the contract gives these parameters: keccak256 of their ABI encoding."""
    return keccak(abi_encode(_SWAP_TYPES, list(params.as_tuple())))


def _address(value: Any, what: str) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise InputError(f"{what} is not an EVM address: {value!r}", field=what)
    return to_checksum_address(value)


def _uint(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**256:
        raise InputError(f"{what} must be an integer in 0..2**256-1, got {value!r}", field=what)
    return value


def _bytes32(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            raise InputError(f"{what} is not hex: {value!r}", field=what) from None
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise InputError(f"{what} must be 32 bytes", field=what)
    return bytes(value)


# --- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class LogRef:
    """Where an event sits on chain: its unique key is ``tx_hash:log_index``."""

    block_number: int
    tx_hash: str
    log_index: int


@dataclass(frozen=True)
class Locked:
    id: bytes
    swap: SwapParams
    where: LogRef


@dataclass(frozen=True)
class Claimed:
    id: bytes
    preimage: bytes
    where: LogRef


@dataclass(frozen=True)
class Refunded:
    id: bytes
    where: LogRef


HtlcEvent = Locked | Claimed | Refunded


@cache
def _events_by_topic() -> dict[bytes, dict[str, Any]]:
    return events_by_topic("HTLC")


@cache
def events_by_topic(contract: str) -> dict[bytes, dict[str, Any]]:
    """A compiled contract's event ABIs by their topic 0."""
    return {event_abi_to_log_topic(e): e for e in load_artifact(contract)["abi"] if e["type"] == "event"}


def decode_log(events: dict[bytes, dict[str, Any]], item: ChainEvent | dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], LogRef] | None:
    """One log as (event ABI, argument values by name, where), if it is one of ``events``; else None."""
    log = item.data if isinstance(item, ChainEvent) else item
    topics = [hexbytes(t) for t in log["topics"]]
    event = events.get(topics[0]) if topics else None
    if event is None:
        return None
    indexed = [i for i in event["inputs"] if i["indexed"]]
    plain = [i for i in event["inputs"] if not i["indexed"]]
    values: dict[str, Any] = {}
    for param, topic in zip(indexed, topics[1:]):
        values[param["name"]] = abi_decode([param["type"]], topic)[0]
    for param, value in zip(plain, abi_decode([p["type"] for p in plain], hexbytes(log["data"]))):
        values[param["name"]] = value
    return event, values, LogRef(log["block_number"], log["tx_hash"], log["log_index"])


def decode_events(logs: Iterable[ChainEvent | dict[str, Any]]) -> list[HtlcEvent]:
    """HTLC events among logs (``EvmAdapter.events`` results or receipt logs); others are skipped.

    The caller picks the emitting contract (by filter or by address): anyone can emit
    logs with these topics from another contract.
    """
    out: list[HtlcEvent] = []
    for item in logs:
        decoded = decode_log(_events_by_topic(), item)
        if decoded is None:
            continue
        event, values, where = decoded
        if event["name"] == "Locked":
            swap = SwapParams(
                values["sender"],
                values["recipient"],
                values["token"],
                values["amount"],
                values["hashlock"],
                values["expiry"],
                values["nonce"],
            )
            out.append(Locked(values["id"], swap, where))
        elif event["name"] == "Claimed":
            out.append(Claimed(values["id"], values["preimage"], where))
        else:
            out.append(Refunded(values["id"], where))
    return out


def hexbytes(value: bytes | str) -> bytes:
    return bytes(value) if isinstance(value, (bytes, bytearray)) else bytes.fromhex(value.removeprefix("0x"))


# --- ABI encoding and revert reasons ------------------------------------------------------


def _function(abi: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    for item in abi:
        if item.get("type") == "function" and item["name"] == name:
            return item
    raise NotFound(f"no function {name} in the ABI")


def encode_call(abi: Sequence[dict[str, Any]], name: str, *args: Any) -> bytes:
    fn = _function(abi, name)
    return function_abi_to_4byte_selector(fn) + abi_encode([collapse_if_tuple(i) for i in fn["inputs"]], list(args))


def decode_result(abi: Sequence[dict[str, Any]], name: str, data: bytes) -> tuple[Any, ...]:
    return tuple(abi_decode([collapse_if_tuple(o) for o in _function(abi, name)["outputs"]], data))


@cache
def _error_abi() -> tuple[dict[str, Any], ...]:
    return tuple(i for name in ("HTLC", *TOKEN_KINDS) for i in load_artifact(name)["abi"] if i["type"] == "error")


def revert_reason(data: str | None) -> str | None:
    """The custom error's bare name (``WrongPreimage``), else the adapter's description."""
    decoded = decode_revert(data, _error_abi())
    if decoded is not None and decoded[0] not in ("Error", "Panic"):
        return decoded[0]
    return describe_revert(data, _error_abi()) if data else None


def _named(exc: ContractReverted, what: str) -> ContractReverted:
    reason = revert_reason(exc.data) or exc.reason
    return ContractReverted(f"{what} refused: {reason}", reason=reason, data=exc.data, **{k: v for k, v in exc.details.items() if k not in ("reason", "data")})


async def _transact(chain: EvmAdapter, key: str, to: str, value: int, data: bytes, what: str) -> EvmReceipt:
    """Send and wait for the receipt; a refusal (at estimate or mined) names the custom error."""
    try:
        return await chain.wait_for_receipt(await chain.transact(key, to, value, data))
    except ContractReverted as exc:
        raise _named(exc, what) from None


async def _call(chain: EvmAdapter, to: str, data: bytes, what: str) -> bytes:
    try:
        return await chain.call(to, data)
    except ContractReverted as exc:
        raise _named(exc, what) from None


# --- contracts -------------------------------------------------------------------------


class EvmHtlc:
    """One deployed HTLC contract, reached through an ``EvmAdapter``."""

    def __init__(self, chain: EvmAdapter, address: str) -> None:
        self.chain = chain
        self.address = _address(address, "HTLC address")
        self.abi = load_artifact("HTLC")["abi"]

    @classmethod
    async def deploy(cls, chain: EvmAdapter, key: str) -> "EvmHtlc":
        art = load_artifact("HTLC")
        return cls(chain, await chain.deploy(key, art["abi"], art["bytecode"]))

    async def lock(self, key: str, recipient: str, token: str, amount: int, hashlock: bytes | str, expiry: int) -> tuple[bytes, str]:
        """Lock ETH (``token=ETH``, sent as value) or an approved ERC-20; returns ``(id, tx hash)``."""
        recipient, token = _address(recipient, "recipient"), _address(token, "token")
        data = encode_call(self.abi, "lock", recipient, token, _uint(amount, "amount"), _bytes32(hashlock, "hashlock"), _uint(expiry, "expiry"))
        receipt = await _transact(self.chain, key, self.address, amount if token == ETH else 0, data, "lock")
        (locked,) = self.locked_in(receipt.logs)
        return locked.id, receipt.tx_hash

    async def claim(self, key: str, swap: SwapParams | bytes | str, preimage: bytes) -> str:
        """Pay the swap to its recipient, whoever ``key`` is; returns the tx hash.

        The preimage length is left to the contract to refuse (``PreimageNot32Bytes``).
        """
        if not isinstance(preimage, (bytes, bytearray)):
            raise InputError("preimage must be bytes", field="preimage")
        params = await self._params(swap)
        data = encode_call(self.abi, "claim", params.as_tuple(), bytes(preimage))
        return (await _transact(self.chain, key, self.address, 0, data, "claim")).tx_hash

    async def refund(self, key: str, swap: SwapParams | bytes | str) -> str:
        """Return the swap to its sender, whoever ``key`` is; returns the tx hash."""
        params = await self._params(swap)
        data = encode_call(self.abi, "refund", params.as_tuple())
        return (await _transact(self.chain, key, self.address, 0, data, "refund")).tx_hash

    async def swap(self, swap_id: bytes | str) -> SwapStatus:
        return SwapStatus(await self._read("swaps", _bytes32(swap_id, "swap id")))

    async def nonce(self, sender: str) -> int:
        """How many swaps ``sender`` has locked: the nonce its next swap will get."""
        return await self._read("nonces", _address(sender, "sender"))

    async def contract_swap_id(self, params: SwapParams) -> bytes:
        """The contract's own id for ``params`` (to cross-check ``compute_swap_id``)."""
        return await self._read("swapId", params.as_tuple())

    async def events(self, from_block: int = 0, to_block: int | None = None, swap_id: bytes | str | None = None) -> list[HtlcEvent]:
        topics: list[str | None] = [None]
        if swap_id is not None:
            topics.append("0x" + _bytes32(swap_id, "swap id").hex())
        last = await self.chain.height() if to_block is None else to_block
        return decode_events(await self.chain.events(from_block, last, EvmLogFilter(self.address, topics)))

    async def locked_swap(self, swap_id: bytes | str, from_block: int = 0) -> Locked:
        """The ``Locked`` event of a swap: its parameters, which the contract does not store."""
        for event in await self.events(from_block, swap_id=swap_id):
            if isinstance(event, Locked):
                return event
        raise NotFound(f"no swap 0x{_bytes32(swap_id, 'swap id').hex()} was locked in {self.address}")

    async def _params(self, swap: SwapParams | bytes | str) -> SwapParams:
        return swap if isinstance(swap, SwapParams) else (await self.locked_swap(swap)).swap

    async def _read(self, name: str, *args: Any) -> Any:
        raw = await _call(self.chain, self.address, encode_call(self.abi, name, *args), name)
        return decode_result(self.abi, name, raw)[0]

    def locked_in(self, logs: Iterable[dict[str, Any]]) -> list[Locked]:
        """The ``Locked`` events this contract emitted among a receipt's logs."""
        return [e for e in decode_events(self._own(logs)) if isinstance(e, Locked)]

    def _own(self, logs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return [log for log in logs if log["address"].lower() == self.address.lower()]


class Erc20:
    """The ERC-20 calls the swaps need, plus ``mint`` on the devnet tokens."""

    def __init__(self, chain: EvmAdapter, address: str, kind: str = "TestToken") -> None:
        self.chain = chain
        self.address = _address(address, "token address")
        self.abi = load_artifact(kind)["abi"]

    @classmethod
    async def deploy(cls, chain: EvmAdapter, key: str, kind: str = "TestToken", name: str = "Test Token", symbol: str = "TST", decimals: int = 18) -> "Erc20":
        if kind not in TOKEN_KINDS:
            raise InputError(f"unknown token kind {kind!r}; one of {', '.join(TOKEN_KINDS)}", field="kind")
        if decimals not in (6, 18):
            raise InputError(f"decimals must be 6 or 18, got {decimals!r}", field="decimals")
        art = load_artifact(kind)
        return cls(chain, await chain.deploy(key, art["abi"], art["bytecode"], name, symbol, decimals), kind)

    async def balance(self, owner: str) -> int:
        return await self._read("balanceOf", _address(owner, "owner"))

    async def decimals(self) -> int:
        return await self._read("decimals")

    async def approve(self, key: str, spender: str, amount: int) -> str:
        data = encode_call(self.abi, "approve", _address(spender, "spender"), _uint(amount, "amount"))
        return (await _transact(self.chain, key, self.address, 0, data, "approve")).tx_hash

    async def mint(self, key: str, to: str, amount: int) -> str:
        data = encode_call(self.abi, "mint", _address(to, "to"), _uint(amount, "amount"))
        return (await _transact(self.chain, key, self.address, 0, data, "mint")).tx_hash

    async def _read(self, name: str, *args: Any) -> Any:
        raw = await _call(self.chain, self.address, encode_call(self.abi, name, *args), name)
        return decode_result(self.abi, name, raw)[0]
