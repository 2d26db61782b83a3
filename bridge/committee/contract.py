"""Async Python binding for the bridge contract (``htlc/contracts/CollateralBridge.sol``).

    chain = await EvmAdapter.connect(url)
    committee = Committee(0, signers, 3)                     # messages.Committee: 20-byte signers, ascending
    bridge = await CollateralBridge.deploy(chain, key, committee, guardians=[g], caps={ETH: 10**20})
    await bridge.deposit_eth(user_key, 10**18)               # -> Deposited
    await bridge.request_withdrawal(user_key, ETH, 10**18)   # -> WithdrawalRequested, request nonce n
    await bridge.release(relayer_key, message, committee, indices, signatures)  # message.nonce == n
    await bridge.events()                                    # decoded, in chain order

A RELEASE pays exactly one open withdrawal request: its nonce is the request's, its account, asset
and amount the request's (else ``RequestMismatch``, ``NoSuchRequest``, or ``AlreadyConsumed`` once
released); ``request_open`` and ``released`` tell a request's state.  An UNPAUSE's nonce is the
number of the pause it lifts (``pauses()`` while paused, else ``WrongPause``).

A quorum is given as the signer indices (ascending, into ``committee.signers``) and one 65-byte
``r || s || v`` signature per index; the binding packs them into the contract's ``quorum`` bytes
(66 bytes an entry: index || r || s || v), see ``pack_quorum``.  Signatures are not checked here:
the contract refuses, and a refusal raises ``ContractReverted`` whose ``reason`` is the custom
error's name (``"NotEnoughSignatures"``).

Messages and committees are the types of ``bridge.committee.messages`` (the one definition of the
wire format, its kinds, ``BTC_ASSET`` and the committee hash); this module only lays them out as
the contract's calldata.  Addresses may be given as hex strings or as 20 raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any, Iterable, Mapping, Sequence

from eth_utils import is_address, keccak, to_canonical_address, to_checksum_address

from bridge.committee.messages import BTC_ASSET, Committee, Message, pack_committee
from bridge.core.errors import ContractReverted, InputError
from chains.base import ChainEvent
from chains.evm import EvmAdapter, EvmLogFilter, EvmReceipt
from chains.evm_revert import decode_revert, describe_revert
from htlc.evm import ETH, TOKEN_KINDS, LogRef, decode_log, decode_result, encode_call, events_by_topic, load_artifact

CONTRACT = "CollateralBridge"
DEFAULT_GRACE = 3600
QUORUM_ENTRY = 66  # index (1) || r (32) || s (32) || v (1)
#: ``requests(nonce)`` of a cancelled request.
CANCELLED = (1).to_bytes(32, "big")


@dataclass(frozen=True)
class MarginTerms:
    """The contract's margin terms (``MarginTerms`` in the contract): the same in committee.json,
    so every replica judges health as the contract does.  Without an oracle nobody borrows and
    nobody is liquidated; haircuts are per listed asset in the bridge's order, then BTC."""

    oracle: str | None = None
    release_ttl: int = 3600
    liquidation_bps: int = 11_000
    initial_bps: int = 12_500
    max_price_age: int = 3600
    min_btc_withdrawal: int = 0
    #: symbol -> bps (listed symbols and "BTC"); missing ones are 0.
    haircuts: Mapping[str, int] = field(default_factory=dict)

    def args(self, listed: Sequence[tuple[str, int]]) -> tuple[Any, ...]:
        """The constructor's tuple for the listed ``(symbol, decimals)`` in cap order."""
        rows = [*listed, ("BTC", 8)]
        oracle = checksum_address(self.oracle, "oracle") if self.oracle else "0x" + "00" * 20
        return (
            oracle,
            self.release_ttl,
            self.liquidation_bps,
            self.initial_bps,
            self.max_price_age,
            self.min_btc_withdrawal,
            [int(self.haircuts.get(sym, 0)) for sym, _d in rows],
            [d for _s, d in rows],
        )


def message_tuple(m: Message) -> tuple[Any, ...]:
    """The contract's ``Message`` tuple (ABI values, checksummed addresses) of a ``messages.Message``.

    The message's rules are not re-checked here: the contract is the judge of what it accepts."""
    if not isinstance(m, Message):
        raise InputError(f"not a bridge.committee.messages.Message: {type(m).__name__}")
    return m.as_tuple()


def committee_args(c: Committee) -> tuple[bytes]:
    """The packed committee as the contract takes it (``epoch || threshold || signers``; its hash
    is ``c.hash``), built from the fields so that a set the rules refuse reaches the contract too."""
    if not isinstance(c, Committee):
        raise InputError(f"not a bridge.committee.messages.Committee: {type(c).__name__}")
    return (pack_committee(c.epoch, c.signers, c.threshold),)


def request_commitment(account: str | bytes, asset: str | bytes, amount: int) -> bytes:
    """What ``requestWithdrawal`` stores for a request: keccak256(abi.encode(account, asset, amount))."""
    if type(amount) is not int or not 0 <= amount < 1 << 256:
        raise InputError(f"amount is not a uint256: {amount!r}", field="amount")
    words = (to_canonical_address(_address(a, what)).rjust(32, b"\0") for a, what in ((account, "account"), (asset, "asset")))
    return keccak(b"".join(words) + amount.to_bytes(32, "big"))


def btc_request_commitment(account: str | bytes, amount: int, destination: bytes) -> bytes:
    """What ``requestBtcWithdrawal`` stores: keccak256(abi.encode(account, BTC_ASSET, amount, keccak256(destination)))."""
    if type(amount) is not int or not 0 <= amount < 1 << 256:
        raise InputError(f"amount is not a uint256: {amount!r}", field="amount")
    return keccak(_word(account) + _word(BTC_ASSET) + amount.to_bytes(32, "big") + keccak(bytes(destination)))


def _word(address: str | bytes) -> bytes:
    return to_canonical_address(_address(address, "address")).rjust(32, b"\0")


def pack_quorum(indices: Sequence[int], signatures: Sequence[bytes]) -> bytes:
    """The contract's packed quorum: per signature ``index (1 byte) || r || s || v``."""
    if len(indices) != len(signatures):
        raise InputError(f"{len(indices)} indices for {len(signatures)} signatures")
    out = bytearray()
    for index, sig in zip(indices, signatures):
        if not isinstance(index, int) or not 0 <= index <= 255:
            raise InputError(f"a signer index is one byte, got {index!r}")
        if not isinstance(sig, (bytes, bytearray)) or len(sig) != 65:
            raise InputError("a signature is 65 bytes r || s || v")
        out.append(index)
        out += sig
    return bytes(out)


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BridgeEvent:
    """One event of the contract: ``name`` (``Deposited``, ``Released``, ...) and its arguments."""

    name: str
    args: Mapping[str, Any] = field(hash=False)
    where: LogRef

    def __getitem__(self, key: str) -> Any:
        return self.args[key]


def decode_events(logs: Iterable[ChainEvent | dict[str, Any]], contract: str = CONTRACT) -> list[BridgeEvent]:
    """``contract``'s events among logs (an artifact's name; default the bridge's); others are
    skipped.  The caller picks the emitting contract (by filter or by address): anyone can emit
    logs with these topics."""
    out: list[BridgeEvent] = []
    for item in logs:
        decoded = decode_log(events_by_topic(contract), item)
        if decoded is None:
            continue
        event, values, where = decoded
        for name, value in values.items():
            if isinstance(value, str) and is_address(value):
                values[name] = to_checksum_address(value)
            elif isinstance(value, tuple):
                values[name] = tuple(to_checksum_address(v) if isinstance(v, str) else v for v in value)
        out.append(BridgeEvent(event["name"], values, where))
    return out


# --- the contract ---------------------------------------------------------------------------


class BoundContract:
    """One deployed contract of ours reached through an ``EvmAdapter``: reads and transactions by
    function name, a refusal raised with the custom error's name among ``ERRORS``' errors."""

    ARTIFACT = CONTRACT
    ERRORS: tuple[str, ...] = (CONTRACT, *TOKEN_KINDS)
    WHAT = "bridge address"

    def __init__(self, chain: EvmAdapter, address: str | bytes) -> None:
        self.chain = chain
        self.address = checksum_address(address, self.WHAT)
        self.abi = load_artifact(self.ARTIFACT)["abi"]

    async def _read(self, name: str, *args: Any) -> Any:
        return decode_result(self.abi, name, await self._call(name, *args))[0]

    async def _call(self, name: str, *args: Any) -> bytes:
        try:
            return await self.chain.call(self.address, encode_call(self.abi, name, *args))
        except ContractReverted as exc:
            raise named_revert(exc, name, self.ERRORS) from None

    async def _transact(self, key: str, name: str, *args: Any, value: int = 0) -> EvmReceipt:
        """Send and wait for the receipt; a refusal (at estimate or mined) names the custom error."""
        data = encode_call(self.abi, name, *args)
        try:
            return await self.chain.wait_for_receipt(await self.chain.transact(key, self.address, value, data))
        except ContractReverted as exc:
            raise named_revert(exc, name, self.ERRORS) from None


class CollateralBridge(BoundContract):
    """One deployed bridge contract, reached through an ``EvmAdapter``."""

    @classmethod
    async def deploy(
        cls,
        chain: EvmAdapter,
        key: str,
        committee: Committee,
        guardians: Sequence[str],
        caps: Mapping[str, int],
        cap_window: int = 86_400,
        grace: int = DEFAULT_GRACE,
        terms: MarginTerms = MarginTerms(),
        listed: Sequence[tuple[str, int]] | None = None,
    ) -> "CollateralBridge":
        """Deploy with the first committee (its epoch must be 0), a release cap per listed asset and
        the margin terms; ``listed`` names each cap's asset ``(symbol, decimals)`` in order (default:
        ETH and 6-decimal tokens named by address, no haircuts)."""
        if committee.epoch != 0:
            raise InputError("the first committee's epoch is 0")
        art = load_artifact(CONTRACT)
        assets = [_address(a, "asset") for a in caps]
        if listed is None:
            listed = [("ETH", 18) if int(a, 16) == 0 else (a, 6) for a in assets]
        if len(listed) != len(assets):
            raise InputError(f"{len(listed)} listed assets described for {len(assets)} caps", field="listed")
        guardian_list = [_address(g, "guardian") for g in guardians]
        args = (*committee_args(committee), guardian_list, grace, assets, list(caps.values()), cap_window, terms.args(listed))
        try:
            address = await chain.deploy(key, art["abi"], art["bytecode"], *args)
        except ContractReverted as exc:
            raise _named(exc, "deploy") from None
        return cls(chain, address)

    # --- user transactions ---

    async def deposit_eth(self, key: str, amount: int) -> EvmReceipt:
        return await self._transact(key, "depositETH", value=amount)

    async def deposit_erc20(self, key: str, token: str, amount: int) -> EvmReceipt:
        """Deposit an approved ERC-20; the credit (the event's amount) is what arrived."""
        return await self._transact(key, "depositERC20", _address(token, "token"), amount)

    async def request_btc_withdrawal(self, key: str, amount: int, destination: bytes) -> EvmReceipt:
        """Ask for ``amount`` sats of BTC margin paid to the output script ``destination``."""
        return await self._transact(key, "requestBtcWithdrawal", amount, bytes(destination))

    async def payout_done(self, key: str, message: Message, committee: Committee, indices: Sequence[int], signatures: Sequence[bytes]) -> EvmReceipt:
        return await self._transact(key, "payoutDone", *self._quorum_args(message, committee, indices, signatures))

    async def request_withdrawal(self, key: str, asset: str, amount: int) -> EvmReceipt:
        return await self._transact(key, "requestWithdrawal", _address(asset, "asset"), amount)

    async def cancel_withdrawal(self, key: str, nonce: int, account: str | bytes, asset: str | bytes, amount: int) -> EvmReceipt:
        """Give an expired EVM request's margin back (anyone may send it)."""
        return await self._transact(key, "cancelWithdrawal", nonce, _address(account, "account"), _address(asset, "asset"), amount)

    async def liquidate(self, key: str, account: str | bytes) -> EvmReceipt:
        """Take over every position of ``account`` (below the liquidation threshold) into the sender's."""
        return await self._transact(key, "liquidate", _address(account, "account"))

    async def pause(self, key: str) -> EvmReceipt:
        return await self._transact(key, "pause")

    async def register_btc_key(self, key: str) -> EvmReceipt:
        """Register the sender's own public key: the refund key of its Bitcoin deposit address."""
        return await self._transact(key, "registerBtcKey", evm_public_key(key))

    # --- quorum messages (any relayer's key may send them) ---

    async def release(self, key: str, message: Message, committee: Committee, indices: Sequence[int], signatures: Sequence[bytes]) -> EvmReceipt:
        return await self._transact(key, "release", *self._quorum_args(message, committee, indices, signatures))

    async def credit_deposit(self, key: str, message: Message, committee: Committee, indices: Sequence[int], signatures: Sequence[bytes]) -> EvmReceipt:
        return await self._transact(key, "creditDeposit", *self._quorum_args(message, committee, indices, signatures))

    async def rotate(self, key: str, message: Message, committee: Committee, indices: Sequence[int], signatures: Sequence[bytes], new: Committee) -> EvmReceipt:
        args = self._quorum_args(message, committee, indices, signatures)
        return await self._transact(key, "rotate", *args, *committee_args(new))

    async def unpause(self, key: str, message: Message, committee: Committee, indices: Sequence[int], signatures: Sequence[bytes]) -> EvmReceipt:
        return await self._transact(key, "unpause", *self._quorum_args(message, committee, indices, signatures))

    def release_calldata(self, message: Message, committee: Committee, indices: Sequence[int], signatures: Sequence[bytes]) -> bytes:
        """The ``release`` call's data (for gas estimates and raw sends)."""
        return encode_call(self.abi, "release", *self._quorum_args(message, committee, indices, signatures))

    @staticmethod
    def _quorum_args(message: Message, committee: Committee, indices: Sequence[int], signatures: Sequence[bytes]) -> tuple[Any, ...]:
        return (message_tuple(message), *committee_args(committee), pack_quorum(indices, signatures))

    # --- reads ---

    async def committee_hash(self) -> bytes:
        return await self._read("committeeHash")

    async def previous_committee(self) -> tuple[bytes, int]:
        """The replaced committee's hash and the time until which it is still valid."""
        return await self._read("previousCommitteeHash"), await self._read("previousValidUntil")

    async def epoch(self) -> int:
        return await self._read("epoch")

    async def paused(self) -> bool:
        return await self._read("paused")

    async def pauses(self) -> int:
        """Pauses so far; while paused, the nonce of the UNPAUSE that lifts the current one."""
        return await self._read("pauses")

    async def request_nonce(self) -> int:
        """The nonce the next withdrawal request gets (so the number of requests so far)."""
        return await self._read("requestNonce")

    async def request_commitment(self, nonce: int) -> bytes:
        """The open request's ``request_commitment(account, asset, amount)``; zero bytes once
        released, or for a request never made."""
        return await self._read("requests", nonce)

    async def request_open(self, nonce: int) -> bool:
        """Whether withdrawal request ``nonce`` was made and is neither released nor cancelled."""
        return await self.request_commitment(nonce) not in (bytes(32), CANCELLED)

    async def cancelled(self, nonce: int) -> bool:
        """Whether withdrawal request ``nonce`` was cancelled after its expiry."""
        return await self._read("cancelled", nonce)

    async def released(self, nonce: int) -> bool:
        """Whether withdrawal request ``nonce`` was released on this chain."""
        return await self._read("released", nonce)

    async def balance_of(self, account: str | bytes, asset: str | bytes) -> int:
        """The margin book's signed position (negative: owed)."""
        return await self._read("balanceOf", _address(account, "account"), _address(asset, "asset"))

    async def health(self, account: str | bytes) -> tuple[int, int, int | None]:
        """``(haircut collateral, liabilities, health bps or None when owing nothing)`` as the
        contract computes them now (USD, 8 decimals); a refusal names the price that does not count."""
        raw = await self._call("health", _address(account, "account"))
        collateral, liabilities, bps = decode_result(self.abi, "health", raw)
        return collateral, liabilities, None if liabilities == 0 else bps

    async def request_expiry(self, nonce: int) -> int:
        """When an open EVM request becomes cancellable (0: BTC, closed, or never made)."""
        return await self._read("requestExpiry", nonce)

    async def margin_terms(self) -> dict[str, int]:
        """The deployed terms, to check committee.json against."""
        names = ("liquidationBps", "initialBps", "maxPriceAge", "minBtcWithdrawal", "releaseTtl")
        out = {n: await self._read(n) for n in names}
        out["oracle"] = await self._read("oracle")
        return out

    async def credited_output(self, txid: bytes, vout: int) -> bool:
        """Whether the Bitcoin output was credited (``txid`` as a message's ``source_tx``)."""
        return await self._read("creditedOutput", _bytes32(txid, "txid"), vout)

    async def consumed(self, message_id: bytes) -> bool:
        """Whether a ROTATION's or an UNPAUSE's id acted; always false for a RELEASE (see ``released``)."""
        return await self._read("consumed", _bytes32(message_id, "message id"))

    async def message_id(self, message: Message) -> bytes:
        """The contract's own id (EIP-712 digest) of a message, to cross-check the signers'."""
        return await self._read("messageId", message_tuple(message))

    async def domain_separator(self) -> bytes:
        return await self._read("domainSeparator")

    async def cap(self, asset: str) -> tuple[int, int, int]:
        """``(limit, used, window)`` of an asset's release cap (limit 0: not listed)."""
        raw = await self._call("caps", _address(asset, "asset"))
        return tuple(decode_result(self.abi, "caps", raw))  # type: ignore[return-value]

    async def is_guardian(self, address: str) -> bool:
        return await self._read("isGuardian", _address(address, "address"))

    async def events(self, from_block: int = 0, to_block: int | None = None) -> list[BridgeEvent]:
        last = await self.chain.height() if to_block is None else to_block
        return decode_events(await self.chain.events(from_block, last, EvmLogFilter(self.address, [None])))

    def events_in(self, receipt: EvmReceipt) -> list[BridgeEvent]:
        """This contract's events among a receipt's logs."""
        return decode_events(log for log in receipt.logs if log["address"].lower() == self.address.lower())


def evm_public_key(key: str | bytes) -> bytes:
    """The 64-byte public key (x || y) of an EVM private key, as ``registerBtcKey`` takes it."""
    import coincurve

    raw = bytes.fromhex(key.removeprefix("0x")) if isinstance(key, str) else bytes(key)
    return coincurve.PrivateKey(raw).public_key.format(compressed=False)[1:]


@cache
def _error_abi(contracts: tuple[str, ...] = (CONTRACT, *TOKEN_KINDS)) -> tuple[dict[str, Any], ...]:
    return tuple(i for name in contracts for i in load_artifact(name)["abi"] if i["type"] == "error")


def revert_reason(data: str | None, contracts: tuple[str, ...] = (CONTRACT, *TOKEN_KINDS)) -> str | None:
    """The custom error's bare name (``WrongSigner``) among ``contracts``' errors, else the
    adapter's description."""
    decoded = decode_revert(data, _error_abi(contracts))
    if decoded is not None and decoded[0] not in ("Error", "Panic"):
        return decoded[0]
    return describe_revert(data, _error_abi(contracts)) if data else None


def named_revert(exc: ContractReverted, what: str, contracts: tuple[str, ...] = (CONTRACT, *TOKEN_KINDS)) -> ContractReverted:
    """``exc`` again, its reason the custom error's name (``release refused: WrongSigner``)."""
    reason = revert_reason(exc.data, contracts) or exc.reason
    extra = {k: v for k, v in exc.details.items() if k not in ("reason", "data")}
    return ContractReverted(f"{what} refused: {reason}", reason=reason, data=exc.data, **extra)


_named = named_revert


def checksum_address(value: Any, what: str) -> str:
    """A checksummed address from a hex string or 20 raw bytes (as ``messages`` holds them)."""
    if isinstance(value, (bytes, bytearray)) and len(value) == 20:
        return to_checksum_address(bytes(value))
    if not isinstance(value, str) or not is_address(value):
        raise InputError(f"{what} is not an EVM address: {value!r}", field=what)
    return to_checksum_address(value)


_address = checksum_address


def _bytes32(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            raise InputError(f"{what} is not hex: {value!r}", field=what) from None
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise InputError(f"{what} must be 32 bytes", field=what)
    return bytes(value)


__all__ = [
    "ETH",
    "BoundContract",
    "BridgeEvent",
    "CollateralBridge",
    "MarginTerms",
    "btc_request_commitment",
    "committee_args",
    "decode_events",
    "message_tuple",
    "pack_quorum",
    "request_commitment",
]
