"""Async Python bindings for the EVM HTLC (``htlc/contracts/HTLC.sol``) and the devnet tokens.

    chain = await connect(url)
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

import asyncio
import json
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from eth_account import Account
from eth_utils import (
    collapse_if_tuple,
    event_abi_to_log_topic,
    function_abi_to_4byte_selector,
    function_signature_to_4byte_selector,
    is_address,
    keccak,
    to_checksum_address,
)
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractLogicError, TimeExhausted

from bridge.errors import ChainUnavailable, ConfirmationTimeout, ContractReverted, InputError, NotFound

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

    @property
    def is_eth(self) -> bool:
        return self.token == ETH


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


def _topics() -> dict[bytes, dict[str, Any]]:
    return {event_abi_to_log_topic(e): e for e in load_artifact("HTLC")["abi"] if e["type"] == "event"}


def decode_events(logs: Iterable[dict[str, Any]]) -> list[HtlcEvent]:
    """HTLC events among raw logs (``eth_getLogs`` / receipt shape); other logs are skipped."""
    by_topic = _topics()
    out: list[HtlcEvent] = []
    for log in logs:
        topics = [_hexbytes(t) for t in log.get("topics", [])]
        event = by_topic.get(topics[0]) if topics else None
        if event is None:
            continue
        indexed = [i for i in event["inputs"] if i["indexed"]]
        plain = [i for i in event["inputs"] if not i["indexed"]]
        values: dict[str, Any] = {}
        for param, topic in zip(indexed, topics[1:]):
            values[param["name"]] = abi_decode([param["type"]], topic)[0]
        for param, value in zip(plain, abi_decode([p["type"] for p in plain], _hexbytes(log["data"]))):
            values[param["name"]] = value
        where = LogRef(_int(log["blockNumber"]), "0x" + _hexbytes(log["transactionHash"]).hex(), _int(log["logIndex"]))
        name = event["name"]
        if name == "Locked":
            swap = SwapParams(
                values["sender"], values["recipient"], values["token"], values["amount"],
                values["hashlock"], values["expiry"], values["nonce"],
            )
            out.append(Locked(values["id"], swap, where))
        elif name == "Claimed":
            out.append(Claimed(values["id"], values["preimage"], where))
        else:
            out.append(Refunded(values["id"], where))
    return out


def _hexbytes(value: Any) -> bytes:
    return bytes(value) if isinstance(value, (bytes, bytearray)) else bytes.fromhex(str(value).removeprefix("0x"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) else int(str(value), 16)


# --- ABI encoding and revert decoding ----------------------------------------------------


def _function(abi: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    for item in abi:
        if item.get("type") == "function" and item["name"] == name:
            return item
    raise NotFound(f"no function {name} in the ABI")


def encode_call(abi: Sequence[dict[str, Any]], name: str, *args: Any) -> bytes:
    fn = _function(abi, name)
    types = [collapse_if_tuple(i) for i in fn["inputs"]]
    return function_abi_to_4byte_selector(fn) + abi_encode(types, list(args))


def decode_result(abi: Sequence[dict[str, Any]], name: str, data: bytes) -> tuple[Any, ...]:
    return tuple(abi_decode([collapse_if_tuple(o) for o in _function(abi, name)["outputs"]], data))


@cache
def _known_errors() -> dict[bytes, tuple[str, list[str]]]:
    known = {
        function_signature_to_4byte_selector("Error(string)"): ("Error", ["string"]),
        function_signature_to_4byte_selector("Panic(uint256)"): ("Panic", ["uint256"]),
    }
    for name in ("HTLC", *TOKEN_KINDS):
        for item in load_artifact(name)["abi"]:
            if item["type"] == "error":
                types = [collapse_if_tuple(i) for i in item["inputs"]]
                known[function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})")] = (item["name"], types)
    return known


def revert_reason(data: bytes) -> str | None:
    """The custom error's name (``WrongPreimage``), ``Error: msg``, ``Panic(0x11)``, or None."""
    entry = _known_errors().get(data[:4])
    if entry is None:
        return None
    name, types = entry
    try:
        args = abi_decode(types, data[4:])
    except DecodingError:
        return None
    if name == "Error":
        return f"Error: {args[0]}"
    if name == "Panic":
        return f"Panic({args[0]:#x})"
    return name


def _reverted(what: str, data: Any) -> ContractReverted:
    raw = _hexbytes(data) if isinstance(data, (str, bytes, bytearray)) else b""
    reason = revert_reason(raw)
    return ContractReverted(f"{what} reverted: {reason or 'no reason given'}", reason=reason, data="0x" + raw.hex())


# --- the chain access the bindings need ------------------------------------------------


class _Web3Chain:
    """The few EVM calls the bindings use, over web3's AsyncWeb3.

    Same method names as the project's EVM chain adapter, so the bindings move onto it
    unchanged once it lands.  One local nonce lock per account keeps concurrent sends
    from one process from reusing a nonce.
    """

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self.w3 = AsyncWeb3(AsyncHTTPProvider(url, request_kwargs={"timeout": timeout}))
        self.timeout = timeout
        self._nonce_locks: dict[str, asyncio.Lock] = {}

    async def chain_id(self) -> int:
        return await self._rpc(self.w3.eth.chain_id)

    async def balance(self, address: str) -> int:
        return await self._rpc(self.w3.eth.get_balance(_address(address, "address")))

    async def timestamp(self) -> int:
        return (await self._rpc(self.w3.eth.get_block("latest")))["timestamp"]

    async def call(self, to: str, data: bytes, sender: str | None = None) -> bytes:
        tx: dict[str, Any] = {"to": to, "data": data}
        if sender:
            tx["from"] = sender
        try:
            return bytes(await self._rpc(self.w3.eth.call(tx)))
        except ContractLogicError as exc:
            raise _reverted(f"call to {to}", exc.data) from None

    async def transact(self, key: str, to: str | None, value: int, data: bytes) -> dict[str, Any]:
        """Sign, send and wait for one transaction; a revert raises ``ContractReverted``."""
        sender = Account.from_key(key).address
        tx: dict[str, Any] = {"from": sender, "value": value, "data": data, "chainId": await self.chain_id()}
        if to is not None:
            tx["to"] = to
        try:
            # Estimating runs the call first: a refusal surfaces here with its revert data,
            # before anything is signed or sent.
            gas = await self._rpc(self.w3.eth.estimate_gas(tx))
        except ContractLogicError as exc:
            raise _reverted(f"transaction to {to}", exc.data) from None
        block = await self._rpc(self.w3.eth.get_block("latest"))
        tip = await self._rpc(self.w3.eth.max_priority_fee)
        tx.update(gas=gas + gas // 10, maxPriorityFeePerGas=tip, maxFeePerGas=2 * block["baseFeePerGas"] + tip, type=2)
        lock = self._nonce_locks.setdefault(sender, asyncio.Lock())
        async with lock:
            tx["nonce"] = await self._rpc(self.w3.eth.get_transaction_count(sender, "pending"))
            signed = Account.sign_transaction(tx, key)
            tx_hash = await self._rpc(self.w3.eth.send_raw_transaction(signed.raw_transaction))
        receipt = await self.receipt(tx_hash)
        if receipt["status"] != 1:
            # Mined but reverted (the state moved between estimate and inclusion): replay it
            # on the parent state to recover the reason.
            replay = {k: tx[k] for k in ("from", "value", "data") if k in tx} | ({"to": to} if to else {})
            try:
                await self._rpc(self.w3.eth.call(replay, receipt["blockNumber"] - 1))
            except ContractLogicError as exc:
                raise _reverted(f"transaction {tx_hash.to_0x_hex()}", exc.data) from None
            raise ContractReverted(f"transaction {tx_hash.to_0x_hex()} reverted", reason=None, data=None)
        return dict(receipt)

    async def receipt(self, tx_hash: Any) -> dict[str, Any]:
        try:
            return dict(await self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.timeout, poll_latency=0.05))
        except TimeExhausted:
            raise ConfirmationTimeout(f"no receipt for {tx_hash!r} after {self.timeout:.0f}s", txid=str(tx_hash)) from None

    async def deploy(self, key: str, abi: Sequence[dict[str, Any]], bytecode: str, *args: Any) -> str:
        ctor = next((i for i in abi if i["type"] == "constructor"), {"inputs": []})
        data = _hexbytes(bytecode) + abi_encode([collapse_if_tuple(i) for i in ctor["inputs"]], list(args))
        receipt = await self.transact(key, None, 0, data)
        return to_checksum_address(receipt["contractAddress"])

    async def logs(self, address: str, topics: Sequence[Any], from_block: int = 0, to_block: int | str = "latest") -> list[dict[str, Any]]:
        params = {"address": address, "topics": list(topics), "fromBlock": from_block, "toBlock": to_block}
        return [dict(log) for log in await self._rpc(self.w3.eth.get_logs(params))]

    async def _rpc(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            raise ChainUnavailable(f"EVM node at {self.url} did not answer: {exc}") from exc

    async def close(self) -> None:
        await self.w3.provider.disconnect()


async def connect(url: str, timeout: float = 30.0) -> _Web3Chain:
    chain = _Web3Chain(url, timeout)
    await chain.chain_id()  # fail here, clearly, rather than on the first real call
    return chain


# --- contracts -------------------------------------------------------------------------


class EvmHtlc:
    """One deployed HTLC contract."""

    def __init__(self, chain: _Web3Chain, address: str) -> None:
        self.chain = chain
        self.address = _address(address, "HTLC address")
        self.abi = load_artifact("HTLC")["abi"]

    @classmethod
    async def deploy(cls, chain: _Web3Chain, key: str) -> "EvmHtlc":
        art = load_artifact("HTLC")
        return cls(chain, await chain.deploy(key, art["abi"], art["bytecode"]))

    async def lock(self, key: str, recipient: str, token: str, amount: int, hashlock: bytes | str, expiry: int) -> tuple[bytes, str]:
        """Lock ETH (``token=ETH``, sent as value) or an approved ERC-20; returns ``(id, tx hash)``."""
        recipient, token = _address(recipient, "recipient"), _address(token, "token")
        _uint(amount, "amount")
        _uint(expiry, "expiry")
        hashlock = _bytes32(hashlock, "hashlock")
        data = encode_call(self.abi, "lock", recipient, token, amount, hashlock, expiry)
        receipt = await self.chain.transact(key, self.address, amount if token == ETH else 0, data)
        locked = [e for e in decode_events(self._own(receipt["logs"])) if isinstance(e, Locked)]
        return locked[0].id, locked[0].where.tx_hash

    async def claim(self, key: str, swap: SwapParams | bytes | str, preimage: bytes) -> str:
        """Pay the swap to its recipient (whoever ``key`` is); returns the tx hash."""
        if not isinstance(preimage, (bytes, bytearray)):
            raise InputError("preimage must be bytes", field="preimage")
        params = await self._params(swap)
        data = encode_call(self.abi, "claim", params.as_tuple(), bytes(preimage))
        return _tx_hash(await self.chain.transact(key, self.address, 0, data))

    async def refund(self, key: str, swap: SwapParams | bytes | str) -> str:
        """Return the swap to its sender (whoever ``key`` is); returns the tx hash."""
        params = await self._params(swap)
        data = encode_call(self.abi, "refund", params.as_tuple())
        return _tx_hash(await self.chain.transact(key, self.address, 0, data))

    async def swap(self, swap_id: bytes | str) -> SwapStatus:
        raw = await self.chain.call(self.address, encode_call(self.abi, "swaps", _bytes32(swap_id, "swap id")))
        return SwapStatus(decode_result(self.abi, "swaps", raw)[0])

    async def nonce(self, sender: str) -> int:
        raw = await self.chain.call(self.address, encode_call(self.abi, "nonces", _address(sender, "sender")))
        return decode_result(self.abi, "nonces", raw)[0]

    async def contract_swap_id(self, params: SwapParams) -> bytes:
        """The contract's own id for ``params`` (to cross-check ``compute_swap_id``)."""
        raw = await self.chain.call(self.address, encode_call(self.abi, "swapId", params.as_tuple()))
        return decode_result(self.abi, "swapId", raw)[0]

    async def events(self, from_block: int = 0, to_block: int | str = "latest", swap_id: bytes | str | None = None) -> list[HtlcEvent]:
        topics: list[Any] = [None]
        if swap_id is not None:
            topics.append("0x" + _bytes32(swap_id, "swap id").hex())
        return decode_events(await self.chain.logs(self.address, topics, from_block, to_block))

    async def locked_swap(self, swap_id: bytes | str, from_block: int = 0) -> Locked:
        """The ``Locked`` event of a swap: its parameters, which the contract does not store."""
        for event in await self.events(from_block, swap_id=swap_id):
            if isinstance(event, Locked):
                return event
        raise NotFound(f"no swap {_bytes32(swap_id, 'swap id').hex()} locked in {self.address}")

    async def _params(self, swap: SwapParams | bytes | str) -> SwapParams:
        return swap if isinstance(swap, SwapParams) else (await self.locked_swap(swap)).swap

    def _own(self, logs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return [log for log in logs if to_checksum_address(log["address"]) == self.address]


def _tx_hash(receipt: dict[str, Any]) -> str:
    return "0x" + _hexbytes(receipt["transactionHash"]).hex()


class Erc20:
    """The ERC-20 calls the swaps need, plus ``mint`` on the devnet tokens."""

    def __init__(self, chain: _Web3Chain, address: str, kind: str = "TestToken") -> None:
        self.chain = chain
        self.address = _address(address, "token address")
        self.abi = load_artifact(kind)["abi"]

    @classmethod
    async def deploy(cls, chain: _Web3Chain, key: str, kind: str = "TestToken", name: str = "Test Token", symbol: str = "TST", decimals: int = 18) -> "Erc20":
        if kind not in TOKEN_KINDS:
            raise InputError(f"unknown token kind {kind!r}; one of {', '.join(TOKEN_KINDS)}", field="kind")
        if decimals not in (6, 18):
            raise InputError(f"decimals must be 6 or 18, got {decimals!r}", field="decimals")
        art = load_artifact(kind)
        return cls(chain, await chain.deploy(key, art["abi"], art["bytecode"], name, symbol, decimals), kind)

    async def balance(self, owner: str) -> int:
        raw = await self.chain.call(self.address, encode_call(self.abi, "balanceOf", _address(owner, "owner")))
        return decode_result(self.abi, "balanceOf", raw)[0]

    async def decimals(self) -> int:
        return decode_result(self.abi, "decimals", await self.chain.call(self.address, encode_call(self.abi, "decimals")))[0]

    async def approve(self, key: str, spender: str, amount: int) -> str:
        data = encode_call(self.abi, "approve", _address(spender, "spender"), _uint(amount, "amount"))
        return _tx_hash(await self.chain.transact(key, self.address, 0, data))

    async def mint(self, key: str, to: str, amount: int) -> str:
        data = encode_call(self.abi, "mint", _address(to, "to"), _uint(amount, "amount"))
        return _tx_hash(await self.chain.transact(key, self.address, 0, data))
