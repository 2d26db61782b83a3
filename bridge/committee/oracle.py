"""Async Python bindings for the price oracle (``htlc/contracts/PriceOracle.sol``) and the devnet's
Chainlink-style feeds (``htlc/contracts/MockAggregator.sol``), and the oracle's part of
``committee.json``.  ``../shared/DESIGN.md``, "Prices, margin and liquidation".

    feed = await MockAggregator.deploy(chain, key, "BTC / USD", 95_000 * 10**8)
    await feed.set_answer(key, 94_000 * 10**8)
    (await feed.latest_round_data()).answer                 # 9_400_000_000_000
    oracle = await PriceOracle.deploy(chain, key, bridge_address, max_age=300, max_spread_bps=200, breaker_step_bps=2000)
    await oracle.post_prices(relayer_key, BTC_ASSET, reports, committee, indices, signatures)
    await oracle.price(BTC_ASSET)                           # OraclePrice(price, time, tripped)

Reports are ``messages.Message`` values of kind PRICE_REPORT signed under the BRIDGE's domain
(``bridge.committee.prices`` builds them); ``indices`` are the reporters' indices into
``committee.signers``, strictly ascending, one per report in the same order, and ``signatures``
their 65-byte ``r || s || v``.  The binding checks nothing the contract checks: a refusal raises
``ContractReverted`` whose ``reason`` is the custom error's name (``"PricesDisagree"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from eth_utils import to_checksum_address

from bridge.committee.contract import BoundContract, BridgeEvent, checksum_address, committee_args, decode_events, message_tuple, named_revert, pack_quorum
from bridge.committee.contract import revert_reason as bridge_revert_reason
from bridge.committee.messages import BTC_ASSET, ETH_ASSET, Committee, Message
from bridge.core.errors import ConfigError
from bridge.core.errors import ContractReverted, InputError
from bridge.core.jsonconfig import Fields
from chains.base import ChainEvent
from chains.evm import EvmAdapter, EvmLogFilter, EvmReceipt
from htlc.evm import decode_result, encode_call, load_artifact

__all__ = [
    "DEVNET_FEEDS",
    "FeedConfig",
    "MockAggregator",
    "OracleConfig",
    "OraclePrice",
    "PriceOracle",
    "RoundData",
    "decode_oracle_events",
    "create_address",
    "deploy_devnet_feeds",
    "deploy_devnet_oracle",
    "feeds_of",
    "load_oracle_config",
    "parse_usd",
    "set_devnet_price",
]

ORACLE = "PriceOracle"
AGGREGATOR = "MockAggregator"
#: Prices are USD with this many decimals, per whole unit of the asset (the aggregators' too).
PRICE_DECIMALS = 8
#: The devnet's oracle parameters (``devnet up``): reports fresh for 5 minutes, a quorum agreeing
#: within 2 %, a 20 % move trips the breaker; attesters report every 10 s (a moved devnet price
#: counts within seconds; on mainnet a minute or more).
DEVNET_MAX_AGE = 300
DEVNET_MAX_SPREAD_BPS = 200
DEVNET_BREAKER_STEP_BPS = 2000
DEVNET_INTERVAL = 10
#: symbol -> (asset as the bridge names it, description, first answer in whole USD).
DEVNET_FEEDS: dict[str, tuple[bytes, str, int]] = {"BTC": (BTC_ASSET, "BTC / USD", 95_000), "ETH": (ETH_ASSET, "ETH / USD", 3_500)}
#: An attester does not sign a price its source last updated longer ago than this (Chainlink's
#: longest heartbeat for the major feeds is a day).
DEFAULT_SOURCE_MAX_AGE = 86_400


#: The custom errors a refusal of the oracle or a feed is named by.
_ERRORS = (ORACLE, AGGREGATOR)


@dataclass(frozen=True)
class OraclePrice:
    """An asset's price on chain: USD with 8 decimals (0: none yet), its observation time, and
    whether the breaker is tripped (the price is then the last one before the trip)."""

    price: int
    time: int
    tripped: bool


@dataclass(frozen=True)
class RoundData:
    """``latestRoundData()`` of a Chainlink-style feed."""

    round_id: int
    answer: int
    started_at: int
    updated_at: int
    answered_in_round: int


# --- events ---------------------------------------------------------------------------------


def decode_oracle_events(logs: Iterable[ChainEvent | dict[str, Any]], address: str | bytes | None = None) -> list[BridgeEvent]:
    """The oracle's events among logs (``PriceUpdated``, ``BreakerTripped``, ``BreakerCleared``),
    as ``contract.BridgeEvent`` values; with ``address``, only the logs that contract emitted
    (anyone can emit logs with these topics)."""
    want = None if address is None else _address(address, "oracle address").lower()
    mine = (item for item in logs if want is None or str((item.data if isinstance(item, ChainEvent) else item).get("address", "")).lower() == want)
    return decode_events(mine, ORACLE)


# --- the oracle -----------------------------------------------------------------------------


class PriceOracle(BoundContract):
    """One deployed ``PriceOracle``, reached through an ``EvmAdapter``."""

    ARTIFACT, ERRORS, WHAT = ORACLE, _ERRORS, "oracle address"

    @classmethod
    async def deploy(cls, chain: EvmAdapter, key: str, bridge: str | bytes, *, max_age: int, max_spread_bps: int, breaker_step_bps: int) -> "PriceOracle":
        """Deploy for ``bridge`` (its committee signs, its domain is the reports'); ``BadConfig``
        for a bridge address without the bridge's domain or parameters out of range."""
        art = load_artifact(ORACLE)
        try:
            address = await chain.deploy(key, art["abi"], art["bytecode"], _address(bridge, "bridge"), max_age, max_spread_bps, breaker_step_bps)
        except ContractReverted as exc:
            raise _named(exc, "deploy") from None
        return cls(chain, address)

    # --- transactions (any relayer's key may send them) ---

    async def post_prices(
        self, key: str, asset: str | bytes, reports: Sequence[Message], committee: Committee, indices: Sequence[int], signatures: Sequence[bytes]
    ) -> EvmReceipt:
        """``postPrices``: one report per signer index, in the same order."""
        return await self._transact(key, "postPrices", *self._post_args(asset, reports, committee, indices, signatures))

    def post_prices_calldata(
        self, asset: str | bytes, reports: Sequence[Message], committee: Committee, indices: Sequence[int], signatures: Sequence[bytes]
    ) -> bytes:
        """The ``postPrices`` call's data (for gas estimates and raw sends)."""
        return encode_call(self.abi, "postPrices", *self._post_args(asset, reports, committee, indices, signatures))

    async def clear_breaker(self, key: str, message: Message, committee: Committee, indices: Sequence[int], signatures: Sequence[bytes]) -> EvmReceipt:
        """``clearBreaker`` on a CLEAR_BREAKER message and a quorum of its signatures."""
        return await self._transact(key, "clearBreaker", message_tuple(message), *committee_args(committee), pack_quorum(indices, signatures))

    @staticmethod
    def _post_args(asset: str | bytes, reports: Sequence[Message], committee: Committee, indices: Sequence[int], signatures: Sequence[bytes]) -> tuple:
        if len(reports) != len(indices):
            raise InputError(f"{len(reports)} reports for {len(indices)} signer indices: one signature per report")
        return (_address(asset, "asset"), [message_tuple(m) for m in reports], *committee_args(committee), pack_quorum(indices, signatures))

    # --- reads ---

    async def price(self, asset: str | bytes) -> OraclePrice:
        raw = await self._call("price", _address(asset, "asset"))
        price, time, tripped = decode_result(self.abi, "price", raw)
        return OraclePrice(price, time, tripped)

    async def trips(self, asset: str | bytes) -> int:
        """Breaker trips of ``asset`` so far: the ``source_index`` of the CLEAR_BREAKER of the current one."""
        return await self._read("trips", _address(asset, "asset"))

    async def consumed(self, message_id: bytes) -> bool:
        return await self._read("consumed", bytes(message_id))

    async def message_id(self, message: Message) -> bytes:
        """The contract's id of a message (the bridge's EIP-712 digest), to cross-check the signers'."""
        return await self._read("messageId", message_tuple(message))

    async def domain_separator(self) -> bytes:
        return await self._read("domainSeparator")

    async def bridge(self) -> str:
        return to_checksum_address(await self._read("bridge"))

    async def params(self) -> tuple[int, int, int]:
        """``(max_age, max_spread_bps, breaker_step_bps)``."""
        return await self._read("maxAge"), await self._read("maxSpreadBps"), await self._read("breakerStepBps")

    async def events(self, from_block: int = 0, to_block: int | None = None) -> list[BridgeEvent]:
        last = await self.chain.height() if to_block is None else to_block
        return decode_oracle_events(await self.chain.events(from_block, last, EvmLogFilter(self.address, [None])), self.address)

    def events_in(self, receipt: EvmReceipt) -> list[BridgeEvent]:
        """This contract's events among a receipt's logs."""
        return decode_oracle_events(receipt.logs, self.address)


# --- the devnet's feeds -----------------------------------------------------------------------


class MockAggregator(BoundContract):
    """One ``MockAggregator`` (a Chainlink-style feed: ``latestRoundData``, 8 decimals)."""

    ARTIFACT, ERRORS, WHAT = AGGREGATOR, _ERRORS, "aggregator address"

    @classmethod
    async def deploy(cls, chain: EvmAdapter, key: str, description: str, initial: int = 0) -> "MockAggregator":
        """Deploy with a first answer (none if 0); the deployer alone may set answers."""
        art = load_artifact(AGGREGATOR)
        try:
            address = await chain.deploy(key, art["abi"], art["bytecode"], description, initial)
        except ContractReverted as exc:
            raise _named(exc, "deploy") from None
        return cls(chain, address)

    async def set_answer(self, key: str, answer: int) -> EvmReceipt:
        """A new round with ``answer`` (8 decimals), updated at the block's time."""
        if type(answer) is not int or not -(1 << 255) <= answer < 1 << 255:
            raise InputError(f"an answer is an int256, got {answer!r}", field="answer")
        return await self._transact(key, "setAnswer", answer)

    async def latest_round_data(self) -> RoundData:
        raw = await self._call("latestRoundData")
        return RoundData(*decode_result(self.abi, "latestRoundData", raw))

    async def decimals(self) -> int:
        return decode_result(self.abi, "decimals", await self._call("decimals"))[0]

    async def description(self) -> str:
        return decode_result(self.abi, "description", await self._call("description"))[0]


# --- committee.json's "oracle" ------------------------------------------------------------------


@dataclass(frozen=True)
class FeedConfig:
    """One priced asset: the bridge's name for it (20 bytes: BTC_ASSET, the zero address for ETH,
    a token) and the Chainlink-style feed the attesters read."""

    asset: bytes
    aggregator: str


@dataclass(frozen=True)
class OracleConfig:
    """``committee.json``'s ``"oracle"``:

        "oracle": {"address": "0x...", "deploy_block": 14, "max_age": 300, "max_spread_bps": 200,
                   "breaker_step_bps": 2000, "interval": 10, "source_max_age": 86400,
                   "feeds": {"BTC": {"asset": "0x...", "aggregator": "0x..."}, "ETH": {...}}}

    ``max_age``, ``max_spread_bps`` and ``breaker_step_bps`` are the contract's (checked against
    it by whoever connects); ``interval`` is the attesters' reporting slot in seconds."""

    address: str
    deploy_block: int
    max_age: int
    max_spread_bps: int
    breaker_step_bps: int
    interval: int = DEVNET_INTERVAL
    source_max_age: int = DEFAULT_SOURCE_MAX_AGE
    feeds: dict[str, FeedConfig] = field(default_factory=dict)

    def feed(self, symbol: str) -> tuple[str, FeedConfig]:
        """``(symbol as configured, feed)`` of ``symbol``, matched case-insensitively."""
        for name, feed in self.feeds.items():
            if name.lower() == symbol.strip().lower():
                return name, feed
        raise InputError(f"no price feed for {symbol[:40]!r} (feeds: {', '.join(self.feeds) or 'none'})", field="asset")

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "deploy_block": self.deploy_block,
            "max_age": self.max_age,
            "max_spread_bps": self.max_spread_bps,
            "breaker_step_bps": self.breaker_step_bps,
            "interval": self.interval,
            "source_max_age": self.source_max_age,
            "feeds": {sym: {"asset": to_checksum_address(f.asset), "aggregator": f.aggregator} for sym, f in self.feeds.items()},
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "committee config oracle") -> "OracleConfig":
        fields = Fields(where)
        need, address = fields.need, fields.address

        feeds = {}
        for symbol, spec in need(data, "feeds", dict, "feeds").items():
            asset = address(need(spec, "asset", str, f"feeds.{symbol}.asset"), f"feeds.{symbol}.asset")
            feeds[symbol] = FeedConfig(
                bytes.fromhex(asset[2:]), address(need(spec, "aggregator", str, f"feeds.{symbol}.aggregator"), f"feeds.{symbol}.aggregator")
            )
        config = cls(
            address=address(need(data, "address", str, "address"), "address"),
            deploy_block=need(data, "deploy_block", int, "deploy_block"),
            max_age=need(data, "max_age", int, "max_age"),
            max_spread_bps=need(data, "max_spread_bps", int, "max_spread_bps"),
            breaker_step_bps=need(data, "breaker_step_bps", int, "breaker_step_bps"),
            interval=data.get("interval", DEVNET_INTERVAL),
            source_max_age=data.get("source_max_age", DEFAULT_SOURCE_MAX_AGE),
            feeds=feeds,
        )
        for name in ("deploy_block", "max_age", "max_spread_bps", "breaker_step_bps", "interval", "source_max_age"):
            value = getattr(config, name)
            if type(value) is not int or value < (0 if name in ("deploy_block", "max_spread_bps") else 1):
                raise ConfigError(
                    f"{where}: {name} must be a {'non-negative' if name in ('deploy_block', 'max_spread_bps') else 'positive'} integer", field=name
                )
        return config


def load_oracle_config(path: str | Path) -> OracleConfig | None:
    """The ``"oracle"`` of ``committee.json`` at ``path``; None when the bridge has no oracle."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no bridge committee config at {path}: `bridgectl devnet up` writes one for the devnet", path=str(path)) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}", path=str(path)) from None
    if not isinstance(data, dict) or "oracle" not in data:
        return None
    return OracleConfig.from_json(data["oracle"], f"{path}: oracle")


async def deploy_devnet_feeds(chain: EvmAdapter, key: str, extra: Mapping[str, tuple[bytes, str, int]] | None = None) -> dict[str, FeedConfig]:
    """The devnet's feeds (BTC at 95,000 and ETH at 3,500 USD, and ``extra``: symbol -> (asset,
    description, whole USD)), each a ``MockAggregator`` the devnet deployer moves."""
    feeds = {}
    for symbol, (asset, description, usd) in {**DEVNET_FEEDS, **(extra or {})}.items():
        aggregator = await MockAggregator.deploy(chain, key, description, usd * 10**PRICE_DECIMALS)
        feeds[symbol] = FeedConfig(asset, aggregator.address)
    return feeds


async def deploy_devnet_oracle(chain: EvmAdapter, key: str, bridge: str | bytes, feeds: Mapping[str, FeedConfig] | None = None) -> OracleConfig:
    """An oracle for ``bridge`` over ``feeds`` (default: fresh devnet feeds), with the ``DEVNET_*``
    parameters: what ``devnet up`` records under committee.json's ``"oracle"``."""
    if feeds is None:
        feeds = await deploy_devnet_feeds(chain, key)
    oracle = await PriceOracle.deploy(
        chain, key, bridge, max_age=DEVNET_MAX_AGE, max_spread_bps=DEVNET_MAX_SPREAD_BPS, breaker_step_bps=DEVNET_BREAKER_STEP_BPS
    )
    limits = (DEVNET_MAX_AGE, DEVNET_MAX_SPREAD_BPS, DEVNET_BREAKER_STEP_BPS, DEVNET_INTERVAL, DEFAULT_SOURCE_MAX_AGE)
    return OracleConfig(oracle.address, await chain.height(), *limits, dict(feeds))


def create_address(sender: str, nonce: int) -> str:
    """The address a contract created by ``sender``'s transaction ``nonce`` gets (CREATE)."""
    import rlp
    from eth_utils import keccak, to_canonical_address

    return to_checksum_address(keccak(rlp.encode([to_canonical_address(sender), nonce]))[12:])


def parse_usd(text: str) -> int:
    """A price in whole USD (``95000``, ``95000.5``, ``95_000``) as 8-decimal base units, exactly;
    positive, at most 8 decimals, and within the oracle's range (a uint128)."""
    cleaned = str(text).strip().replace("_", "").replace(",", "")
    problem = f"a price is a positive number of USD with at most {PRICE_DECIMALS} decimals, got {str(text)[:40]!r}"
    if not cleaned or len(cleaned) > 40:
        raise InputError(problem, field="price")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        raise InputError(problem, field="price") from None
    if not value.is_finite() or value <= 0 or value.adjusted() > 38:
        raise InputError(problem, field="price")
    scaled = value.scaleb(PRICE_DECIMALS)
    if scaled != scaled.to_integral_value() or int(scaled) >= 1 << 128:
        raise InputError(problem, field="price")
    return int(scaled)


async def set_devnet_price(chain: EvmAdapter, key: str, config: OracleConfig, symbol: str, usd: str | int) -> tuple[str, RoundData]:
    """``bridgectl devnet price BTC 95000``: move the devnet feed of ``symbol`` (its owner's key:
    the devnet deployer).  Returns the feed's symbol as configured and its new round."""
    name, feed = config.feed(symbol)
    aggregator = MockAggregator(chain, feed.aggregator)
    await aggregator.set_answer(key, parse_usd(str(usd)))
    return name, await aggregator.latest_round_data()


# --- revert reasons -----------------------------------------------------------------------------


def revert_reason(data: str | None) -> str | None:
    """The custom error's bare name (``PricesDisagree``), else the adapter's description."""
    return bridge_revert_reason(data, _ERRORS)


def _named(exc: ContractReverted, what: str) -> ContractReverted:
    return named_revert(exc, what, _ERRORS)


_address = checksum_address


def feeds_of(config: OracleConfig, chain: EvmAdapter) -> Mapping[bytes, MockAggregator]:
    """asset -> its feed's binding, for a ``prices.Reporter``."""
    return {f.asset: MockAggregator(chain, f.aggregator) for f in config.feeds.values()}
