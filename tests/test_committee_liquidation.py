"""Borrowing, health and liquidation on the margin book (``CollateralBridge.sol``'s ``balanceOf``,
``health``, ``liquidate``), with prices a committee attests (``PriceOracle.sol``).  DESIGN.md,
"Prices, margin and liquidation": health = haircut collateral value * 10,000 / liabilities value,
rounded for the bridge; anyone may liquidate an account below the threshold; one lying attester
must not move the price at all.

Each test deploys a bridge of its own on the session Anvil (``support.committee.own_bridge``: a
3-of-4 committee, TUSD, an oracle over fresh feeds; haircuts BTC 20 %, ETH 10 %; liquidation
below 11,000 bps, borrowing down to 12,500 bps, prices count for an hour).  Prices reach the
oracle only as committee-signed PRICE_REPORTs, BTC margin only as a quorum's DEPOSIT_CREDIT,
TUSD leaves only by a quorum's RELEASE; every signature is made with the committee's keys.
Replicas fold the bridge's and the oracle's events into SQLite files through an indexer the test
steps itself, so every comparison with the chain is at a known block.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pytest
from eth_utils import to_canonical_address

from bridge.committee.crypto import sign
from bridge.committee.messages import BTC_ASSET, ETH_ASSET, ZERO32, ZERO_ADDRESS, Kind, Message, digest
from bridge.committee.oracle import PriceOracle
from bridge.committee.prices import clear_breaker_message, report_source
from bridge.committee.replica import Replica
from bridge.core.db import make_engine
from bridge.core.errors import ContractReverted, PriceRejected
from chains.evm import EvmLogFilter, EvmReceipt
from chains.indexer import Indexer
from devnets.controls import AnvilControls
from devnets.presets import ONE_ETH
from htlc.evm import encode_call
from support.committee import TUSD, own_bridge

if TYPE_CHECKING:
    from support.committee import TestBridge

log = logging.getLogger("test.committee.liquidation")

USD = 10**8  # the oracle's prices: USD with 8 decimals
BTC = 10**8  # sats
#: A standard P2WPKH output script: where BTC withdrawals go.
P2WPKH = bytes.fromhex("0014") + bytes(range(20))
REPORT_TTL = 600


# --- the desk: one bridge, its committee's keys, its users ---------------------------------------


@dataclass(frozen=True)
class Party:
    name: str
    address: str
    key: str


class Follower:
    """A replica on its own SQLite file, folding the bridge's and the oracle's events through an
    indexer the test steps itself."""

    def __init__(self, bridge: TestBridge, path: Path, name: str = "replica") -> None:
        config = bridge.config
        assert config.oracle is not None
        self.replica = Replica(make_engine(f"sqlite:///{path}"), config.replica_config())
        self.indexer = Indexer(
            name,
            bridge.evm,
            self.replica.engine,
            self.replica,
            selector=EvmLogFilter(address=[config.bridge, config.oracle.address]),
            confirmations=1,
            poll_interval=0.1,
            start_height=config.deploy_block,
        )

    async def catch_up(self) -> int:
        """Step until the indexer is at the head it read; the height folded to."""
        for _ in range(10_000):
            if (await self.indexer.step()).caught_up:
                return self.indexer.cursor().height
        raise AssertionError("the indexer never caught up")


class Desk:
    """One bridge with prices: users, prices and quorum messages signed with the committee's keys."""

    def __init__(self, bridge: TestBridge, where: Path) -> None:
        assert bridge.config.oracle is not None
        self.bridge, self.evm, self.contract, self.where = bridge, bridge.evm, bridge.contract, where
        self.domain = bridge.config.domain
        self.chain_id = self.domain.chain_id
        self.oracle = PriceOracle(bridge.evm, bridge.config.oracle.address)
        self.assets = {"BTC": BTC_ASSET, "ETH": ETH_ASSET, "TUSD": to_canonical_address(bridge.token.address)}
        self.prices: dict[str, int] = {}  # the last price posted per symbol
        self._observed: dict[bytes, int] = {}  # the newest report time used per asset
        self.parties: list[Party] = []

    # --- signatures and time ---

    def quorum(self, m: Message, signers: Sequence[int] = (0, 1, 2)) -> tuple[list[int], list[bytes]]:
        mid = digest(self.domain, m)
        return list(signers), [sign(mid, self.bridge.keys[i]) for i in signers]

    async def now(self) -> int:
        return (await self.evm.head()).timestamp

    async def _next_time(self, asset: bytes, back: int) -> int:
        """A report time newer than any used for ``asset``, not in the chain's future."""
        now = await self.now()
        at = max(now - back, self._observed.get(asset, 0) + 1)
        assert at <= now, "too many reports in one second of chain time"
        return at

    # --- prices ---

    async def report(self, symbol: str, prices: Sequence[int], indices: Sequence[int] | None = None) -> EvmReceipt:
        """One PRICE_REPORT per price (USD, 8 decimals), the i-th signed by member ``indices[i]``
        (default 0, 1, 2, ...), posted together."""
        asset = self.assets[symbol]
        reports, indices, sigs = await self.signed_reports(symbol, prices, indices)
        receipt = await self.oracle.post_prices(self.bridge.relayer_key, asset, reports, self.bridge.committee, indices, sigs)
        self._observed[asset] = reports[0].nonce
        return receipt

    async def signed_reports(self, symbol: str, prices: Sequence[int], indices: Sequence[int] | None = None) -> tuple[list[Message], list[int], list[bytes]]:
        asset = self.assets[symbol]
        indices = list(indices if indices is not None else range(len(prices)))
        at = await self._next_time(asset, 60)
        reports = [
            Message(1, Kind.PRICE_REPORT, self.chain_id, report_source(asset), 0, self.chain_id, ZERO_ADDRESS, asset, p, at, at + REPORT_TTL, ZERO32)
            for p in prices
        ]
        return reports, indices, [sign(digest(self.domain, m), self.bridge.keys[i]) for m, i in zip(reports, indices)]

    async def price_and_liquidate_in_one_block(self, symbol: str, price: int, liquidator: Party, account: Party) -> tuple[EvmReceipt, EvmReceipt]:
        """A quorum's price report and a liquidation mined together in one block, in that order
        (the report pays the higher priority fee)."""
        asset = self.assets[symbol]
        reports, indices, sigs = await self.signed_reports(symbol, [price] * 3)
        post = self.oracle.post_prices_calldata(asset, reports, self.bridge.committee, indices, sigs)
        liquidate = encode_call(self.contract.abi, "liquidate", account.address)
        controls = AnvilControls(self.evm)
        gwei = 10**9
        await controls.set_automine(False)
        try:
            first = await self.evm.transact(self.bridge.relayer_key, self.oracle.address, 0, post, gas=1_000_000, max_fee=100 * gwei, priority_fee=3 * gwei)
            second = await self.evm.transact(liquidator.key, self.contract.address, 0, liquidate, gas=1_000_000, max_fee=100 * gwei, priority_fee=gwei)
            await controls.mine(1)
        finally:
            await controls.set_automine(True)
        receipts = (await self.evm.wait_for_receipt(first), await self.evm.wait_for_receipt(second))
        self._observed[asset] = reports[0].nonce
        self.prices[symbol] = price
        return receipts

    async def set_price(self, symbol: str, price: int) -> None:
        """Three honest members report ``price``; the oracle takes it (no breaker trip)."""
        receipt = await self.report(symbol, [price] * 3)
        events = [(e.name, e["price"]) for e in self.oracle.events_in(receipt)]
        assert events == [("PriceUpdated", price)], events
        self.prices[symbol] = price

    async def move_price(self, symbol: str, target: int, step_bps: int = 1_500) -> None:
        """Walk the price to ``target`` in steps of at most ``step_bps`` (inside the 20 % breaker)."""
        price = self.prices[symbol]
        while price != target:
            limit = price * step_bps // 10_000
            price = max(target, price - limit) if target < price else min(target, price + limit)
            await self.set_price(symbol, price)

    async def clear_breaker(self, symbol: str, price: int, signers: Sequence[int] = (0, 1, 2)) -> EvmReceipt:
        """A quorum's CLEAR_BREAKER of the current trip, with ``price`` as the new reference."""
        asset = self.assets[symbol]
        trip = await self.oracle.trips(asset)
        at = await self._next_time(asset, 30)
        m = clear_breaker_message(self.domain, asset, price, trip, at, at + REPORT_TTL)
        receipt = await self.oracle.clear_breaker(self.bridge.relayer_key, m, self.bridge.committee, *self.quorum(m, signers))
        self._observed[asset] = at
        self.prices[symbol] = price
        return receipt

    # --- users and margin ---

    async def party(self, name: str, *, btc: int = 0, tusd: int = 0, eth: int = 0, wei: int = 10 * ONE_ETH) -> Party:
        """A funded account (``wei`` ETH and 1,000,000 TUSD in its wallet) with ``btc`` sats of BTC
        margin credited by a quorum and ``tusd`` / ``eth`` deposited."""
        address, key = await self.bridge.user(wei)
        who = Party(name, address, key)
        self.parties.append(who)
        if btc:
            await self.credit_btc(who, btc)
        if tusd:
            await self.contract.deposit_erc20(key, self.bridge.token.address, tusd)
        if eth:
            await self.contract.deposit_eth(key, eth)
        return who

    async def credit_btc(self, who: Party, sats: int) -> EvmReceipt:
        """BTC margin the only way there is: a DEPOSIT_CREDIT for one Bitcoin output, by a quorum."""
        now = await self.now()
        m = Message(
            1, Kind.DEPOSIT_CREDIT, 0, secrets.token_bytes(32), 0, self.chain_id, to_canonical_address(who.address), BTC_ASSET, sats, 0, now + 600, ZERO32
        )
        return await self.contract.credit_deposit(self.bridge.relayer_key, m, self.bridge.committee, *self.quorum(m))

    async def borrow(self, who: Party, symbol: str, amount: int) -> EvmReceipt:
        return await self.contract.request_withdrawal(who.key, self._address(symbol), amount)

    def _address(self, symbol: str) -> str:
        return "0x" + self.assets[symbol].hex()

    def symbol(self, asset: str) -> str:
        """The symbol of an event's asset address."""
        return {symbol: s for s, symbol in ((s, "0x" + a.hex()) for s, a in self.assets.items())}[asset.lower()]

    async def positions(self, who: Party) -> dict[str, int]:
        """The chain's margin book of ``who``: symbol -> signed position (zeros left out)."""
        out = {}
        for symbol in self.assets:
            position = await self.contract.balance_of(who.address, self._address(symbol))
            if position:
                out[symbol] = position
        return out

    def replica_positions(self, replica: Replica, who: Party) -> dict[str, int]:
        symbol_of = {asset: symbol for symbol, asset in self.assets.items()}
        return {symbol_of[asset]: p for (_owner, asset), p in replica.positions(who.address).items()}

    async def same_health(self, who: Party, *followers: Follower) -> tuple[int, int, int | None]:
        """``contract.health`` of ``who``, checked equal (to the unit) to every replica's figure with
        the replica folded to the chain's head and judged at the head's time."""
        head = await self.evm.head()
        chain = await self.contract.health(who.address)
        for f in followers:
            assert await f.catch_up() == head.height
            mine = f.replica.health(who.address, head.timestamp)
            assert (mine.collateral, mine.liabilities, mine.bps) == chain, f"{who.name}: replica {mine} != chain {chain}"
        return chain

    async def books_match(self, *followers: Follower) -> None:
        """Every replica, folded to the head, holds the chain's ``balanceOf`` for every account and asset."""
        head = await self.evm.head()
        owners = {p.address.lower() for p in self.parties}
        for f in followers:
            assert await f.catch_up() == head.height
            assert {owner for owner, _asset in f.replica.positions()} <= owners
        for who in self.parties:
            chain = await self.positions(who)
            for f in followers:
                assert self.replica_positions(f.replica, who) == chain, f"{who.name}: replica != chain {chain}"


async def refused(reason: str, call) -> None:
    with pytest.raises(ContractReverted) as caught:
        await call
    assert caught.value.reason == reason, caught.value.message


async def desk_with_prices(evm, where: Path, btc: int = 95_000 * USD, eth: int = 3_500 * USD) -> Desk:
    desk = Desk(await own_bridge(evm, where, prices={"BTC": 95_000, "ETH": 3_500, "TUSD": 1}), where)
    await desk.set_price("BTC", btc)
    await desk.set_price("ETH", eth)
    await desk.set_price("TUSD", USD)
    return desk


# --- 1. borrowing within the initial margin --------------------------------------------------------


async def test_btc_margin_borrows_tusd_within_the_initial_margin_only(evm, tmp_path):
    log.info("declare: a bridge with prices (BTC 95,000, TUSD 1); a lender's TUSD; a trader with 1 BTC credited by a quorum")
    desk = await desk_with_prices(evm, tmp_path)
    replica = Follower(desk.bridge, tmp_path / "replica.sqlite")
    lender = await desk.party("lender", tusd=200_000 * TUSD)
    trader = await desk.party("trader", btc=1 * BTC)
    assert await desk.positions(trader) == {"BTC": 1 * BTC}
    # Owing nothing, an account's health is no ratio: 1 BTC * 95,000 less 20 % is 76,000 USD of collateral.
    assert await desk.same_health(trader, replica) == (76_000 * USD, 0, None)

    log.info("act: the trader borrows 50,000 TUSD against the BTC; a quorum releases it")
    wallet = await desk.bridge.token.balance(trader.address)
    nonce = await desk.contract.request_nonce()
    receipt = await desk.borrow(trader, "TUSD", 50_000 * TUSD)
    (event,) = desk.contract.events_in(receipt)
    assert (event.name, event["account"], event["amount"], event["requestNonce"]) == ("WithdrawalRequested", trader.address, 50_000 * TUSD, nonce)
    assert await desk.positions(trader) == {"BTC": 1 * BTC, "TUSD": -50_000 * TUSD}
    assert await desk.same_health(trader, replica) == (76_000 * USD, 50_000 * USD, 15_200)
    (request,) = replica.replica.requests(account=trader.address)
    assert (request.nonce, request.state, request.amount) == (nonce, "held", 50_000 * TUSD)
    message = request.message
    assert message is not None and message.kind == Kind.RELEASE and message.nonce == nonce
    await desk.contract.release(desk.bridge.relayer_key, message, desk.bridge.committee, *desk.quorum(message, (1, 2, 3)))

    log.info("check: the TUSD left the bridge into the trader's wallet; the debt stays on the book")
    assert await desk.bridge.token.balance(trader.address) == wallet + 50_000 * TUSD
    assert await desk.contract.released(nonce)
    await replica.catch_up()
    assert replica.replica.request(nonce=nonce).state == "released"
    assert await desk.positions(trader) == {"BTC": 1 * BTC, "TUSD": -50_000 * TUSD}

    log.info("act: borrows that would leave health below 12,500 bps; then exactly down to it")
    # Borrowing stops at 76,000 / 1.25 = 60,800 USD of debt: 10,800 TUSD more, not one unit beyond.
    for amount in (11_000 * TUSD, 10_800 * TUSD + 1):
        await refused("InsufficientMargin", desk.borrow(trader, "TUSD", amount))
        assert await desk.positions(trader) == {"BTC": 1 * BTC, "TUSD": -50_000 * TUSD}
        assert await desk.contract.request_nonce() == nonce + 1
    # BTC is never borrowed, whatever the collateral: the lender's 200,000 TUSD do not lend it 10,000 sats.
    await refused("InsufficientMargin", desk.contract.request_btc_withdrawal(lender.key, 10_000, P2WPKH))
    assert await desk.positions(lender) == {"TUSD": 200_000 * TUSD}
    assert await desk.same_health(trader, replica) == (76_000 * USD, 50_000 * USD, 15_200)
    assert [r.nonce for r in replica.replica.requests()] == [nonce]
    await desk.borrow(trader, "TUSD", 10_800 * TUSD)

    log.info("check: the last borrow left exactly the initial margin; the replicas agree; nothing odd")
    assert await desk.same_health(trader, replica) == (76_000 * USD, 60_800 * USD, 12_500)
    assert [(r.nonce, r.state) for r in replica.replica.requests(account=trader.address)] == [(nonce, "released"), (nonce + 1, "held")]
    await desk.books_match(replica)
    assert replica.replica.anomalies() == []


# --- 2. liquidation only below the threshold, exactly once ----------------------------------------


async def test_liquidation_only_below_the_threshold_and_exactly_once(evm, tmp_path):
    log.info("declare: a trader with 1 BTC owing 50,000 TUSD; a liquidator with 20,000 TUSD, a poor one with 1,000")
    desk = await desk_with_prices(evm, tmp_path)
    replica = Follower(desk.bridge, tmp_path / "replica.sqlite")
    trader = await desk.party("trader", btc=1 * BTC)
    await desk.borrow(trader, "TUSD", 50_000 * TUSD)
    liquidator = await desk.party("liquidator", tusd=20_000 * TUSD)
    poor = await desk.party("poor", tusd=1_000 * TUSD)
    stranger = await desk.party("stranger")
    assert await desk.same_health(trader, replica) == (76_000 * USD, 50_000 * USD, 15_200)

    log.info("act: liquidation at healthy prices, down to exactly 11,000 bps")
    await refused("NotLiquidatable", desk.contract.liquidate(liquidator.key, trader.address))
    await desk.move_price("BTC", 80_000 * USD)
    assert (await desk.same_health(trader, replica))[2] == 12_800
    await refused("NotLiquidatable", desk.contract.liquidate(liquidator.key, trader.address))
    # 1 BTC at 68,750 less 20 % is 55,000 USD: 11,000 bps, the threshold itself, is not below it.
    await desk.move_price("BTC", 68_750 * USD)
    assert await desk.same_health(trader, replica) == (55_000 * USD, 50_000 * USD, 11_000)
    await refused("NotLiquidatable", desk.contract.liquidate(liquidator.key, trader.address))
    # An account that owes nothing is never liquidatable.
    await refused("NotLiquidatable", desk.contract.liquidate(trader.key, liquidator.address))

    log.info("act: BTC at 68,000: 10,880 bps; the trader itself, then a liquidator without the margin")
    await desk.move_price("BTC", 68_000 * USD)
    before = await desk.same_health(trader, replica)
    assert before == (54_400 * USD, 50_000 * USD, 10_880)
    await refused("SelfLiquidation", desk.contract.liquidate(trader.key, trader.address))
    # The poor liquidator would hold 54,400 USD against 49,000 owed: 11,102 bps, short of 12,500.
    await refused("InsufficientMargin", desk.contract.liquidate(poor.key, trader.address))
    # So would one with no margin at all.
    await refused("InsufficientMargin", desk.contract.liquidate(stranger.key, trader.address))
    assert await desk.positions(trader) == {"BTC": 1 * BTC, "TUSD": -50_000 * TUSD}
    assert await desk.positions(poor) == {"TUSD": 1_000 * TUSD}

    log.info("act: the liquidator with enough TUSD of its own liquidates")
    receipt = await desk.contract.liquidate(liquidator.key, trader.address)

    log.info("check: the events, the book: the trader's positions all zero, the liquidator holds the BTC and the debt")
    events = desk.contract.events_in(receipt)
    assert [(e.name, e["account"], e["liquidator"]) for e in events] == [
        ("Liquidated", trader.address, liquidator.address),
        ("Seized", trader.address, liquidator.address),
        ("Seized", trader.address, liquidator.address),
    ]
    assert (events[0]["healthBps"], events[0]["collateralValue"], events[0]["liabilityValue"]) == (10_880, 54_400 * USD, 50_000 * USD)
    assert {desk.symbol(e["asset"]): e["amount"] for e in events[1:]} == {"TUSD": -50_000 * TUSD, "BTC": 1 * BTC}
    assert await desk.positions(trader) == {}
    assert await desk.positions(liquidator) == {"BTC": 1 * BTC, "TUSD": -30_000 * TUSD}
    assert await desk.same_health(liquidator, replica) == (54_400 * USD, 30_000 * USD, 18_133)
    assert await desk.same_health(trader, replica) == (0, 0, None)

    log.info("act: liquidate again, by anyone")
    await refused("NotLiquidatable", desk.contract.liquidate(liquidator.key, trader.address))
    await refused("NotLiquidatable", desk.contract.liquidate(poor.key, trader.address))

    log.info("check: exactly one liquidation on chain and in the replica, the same figure, no anomaly")
    assert [e.name for e in await desk.contract.events() if e.name in ("Liquidated", "Seized")] == ["Liquidated", "Seized", "Seized"]
    await desk.books_match(replica)
    (row,) = replica.replica.liquidations(trader.address)
    assert (row["liquidator"], row["chain_health_bps"], row["health_bps"]) == (liquidator.address.lower(), "10880", "10880")
    assert replica.replica.anomalies() == []

    log.info("act: the trader's borrow was never released; its request expires and anyone cancels it")
    (request,) = replica.replica.requests(account=trader.address)
    await AnvilControls(evm).increase_time(desk.bridge.config.release_ttl + 1)
    await AnvilControls(evm).mine(1)
    await desk.contract.cancel_withdrawal(stranger.key, request.nonce, trader.address, desk.bridge.token.address, 50_000 * TUSD)

    log.info("check: the TUSD it never received is the trader's again; the liquidator keeps the debt; the replica agrees")
    assert await desk.positions(trader) == {"TUSD": 50_000 * TUSD}
    assert await desk.positions(liquidator) == {"BTC": 1 * BTC, "TUSD": -30_000 * TUSD}
    await desk.books_match(replica)
    assert replica.replica.request(nonce=request.nonce).state == "expired"
    assert replica.replica.anomalies() == []


# --- 3. the chain's health figure and the replicas' ------------------------------------------------


async def test_replicas_compute_the_chains_health_to_the_unit(evm, tmp_path):
    log.info("declare: odd amounts and prices; two replicas on two SQLite files")
    desk = await desk_with_prices(evm, tmp_path, btc=95_000_12345678, eth=3_456_78901234)
    a = Follower(desk.bridge, tmp_path / "replica-a.sqlite", "replica-a")
    b = Follower(desk.bridge, tmp_path / "replica-b.sqlite", "replica-b")
    # Collateral in BTC and TUSD, debt in ETH: every figure rounds somewhere.
    trader = await desk.party("trader", btc=123_456_789, tusd=10_000_123_456)
    await desk.borrow(trader, "ETH", 21_123_456_789_012_345_678)
    liquidator = await desk.party("liquidator", eth=15 * ONE_ETH, wei=20 * ONE_ETH)
    saver = await desk.party("saver", btc=7_777_777, tusd=1)

    log.info("act: prices move (within the breaker); check: the chain's figure is every replica's, at every step")
    figures = []
    for btc, eth, tusd in (
        (95_000_12345678, 3_456_78901234, USD),
        (88_888_88888888, 3_456_78901234, 99_990_001),
        (81_234_56780000, 3_612_34567891, 100_000_007),
        (76_543_21098765, 3_612_34567891, 100_000_007),
    ):
        await desk.set_price("BTC", btc)
        await desk.set_price("ETH", eth)
        await desk.set_price("TUSD", tusd)
        figure = await desk.same_health(trader, a, b)
        await desk.same_health(liquidator, a, b)
        await desk.same_health(saver, a, b)
        figures.append(figure[2])
        await refused("NotLiquidatable", desk.contract.liquidate(liquidator.key, trader.address))
    assert figures == sorted(figures, reverse=True) and figures[-1] < 12_500, figures

    log.info("act: in one block, BTC falls below the threshold and the liquidator liquidates")
    await desk.same_health(trader, a, b)
    posted, receipt = await desk.price_and_liquidate_in_one_block("BTC", 70_000_00000001, liquidator, trader)
    assert (posted.status, receipt.status, posted.block_number) == (1, 1, receipt.block_number)
    (liquidated,) = [e for e in desk.contract.events_in(receipt) if e.name == "Liquidated"]
    chain = (liquidated["collateralValue"], liquidated["liabilityValue"], liquidated["healthBps"])
    assert chain[2] < 11_000, chain

    log.info("check: the replicas' own figure at that point of the block is the chain's; identical books")
    await desk.books_match(a, b)
    for f in (a, b):
        (row,) = f.replica.liquidations()
        assert row["account"] == trader.address.lower() and row["block_height"] == receipt.block_number
        assert (row["health_bps"], row["collateral"], row["liabilities"]) == (row["chain_health_bps"], row["chain_collateral"], row["chain_liabilities"])
        assert (int(row["chain_collateral"]), int(row["chain_liabilities"]), int(row["chain_health_bps"])) == chain
        assert f.replica.anomalies() == []
    assert a.replica.positions() == b.replica.positions()
    assert a.replica.balances() == b.replica.balances()
    assert await desk.positions(trader) == {}
    assert await desk.positions(liquidator) == {"BTC": 123_456_789, "TUSD": 10_000_123_456, "ETH": 15 * ONE_ETH - 21_123_456_789_012_345_678}
    for who in desk.parties:
        await desk.same_health(who, a, b)


# --- 4. the oracle guards liquidation ---------------------------------------------------------------


async def test_the_oracle_guards_liquidation_and_borrowing(evm, tmp_path):
    log.info("declare: a trader owing 50,000 TUSD on 1 BTC, a careful borrower, a saver owing nothing, a liquidator")
    desk = await desk_with_prices(evm, tmp_path)
    replica = Follower(desk.bridge, tmp_path / "replica.sqlite")
    trader = await desk.party("trader", btc=1 * BTC)
    await desk.borrow(trader, "TUSD", 50_000 * TUSD)
    careful = await desk.party("careful", btc=2 * BTC)
    await desk.borrow(careful, "TUSD", 10_000 * TUSD)
    saver = await desk.party("saver", btc=1 * BTC, tusd=5_000 * TUSD)
    liquidator = await desk.party("liquidator", tusd=20_000 * TUSD)

    log.info("act: one attester reports BTC at 1/10 (the trader would be liquidatable), then at 10x")
    receipt = await desk.report("BTC", [95_000 * USD, 95_000 * USD, 9_500 * USD, 95_000 * USD])
    assert [(e.name, e["price"], e["reporters"]) for e in desk.oracle.events_in(receipt)] == [("PriceUpdated", 95_000 * USD, 4)]
    await desk.report("BTC", [950_000 * USD, 95_000 * USD, 95_000 * USD, 95_000 * USD])
    # With only three reports the liar leaves no quorum that agrees: nothing is posted.
    await refused("PricesDisagree", desk.report("BTC", [95_000 * USD, 9_500 * USD, 95_000 * USD], indices=[0, 2, 3]))

    log.info("check: the price did not move; the trader is not liquidatable")
    assert (await desk.oracle.price(BTC_ASSET)).price == 95_000 * USD
    assert await desk.same_health(trader, replica) == (76_000 * USD, 50_000 * USD, 15_200)
    await refused("NotLiquidatable", desk.contract.liquidate(liquidator.key, trader.address))

    log.info("act: an honest quorum reports a 36 % fall in one step: the breaker trips")
    receipt = await desk.report("BTC", [60_000 * USD] * 4)
    assert [(e.name, e["proposed"]) for e in desk.oracle.events_in(receipt)] == [("BreakerTripped", 60_000 * USD)]
    assert (await desk.oracle.price(BTC_ASSET)).tripped

    log.info("check: liquidation, borrowing and the health view halt until a quorum clears the breaker")
    await refused("PriceHalted", desk.contract.liquidate(liquidator.key, trader.address))
    await refused("PriceHalted", desk.borrow(careful, "TUSD", 1 * TUSD))
    await refused("PriceHalted", desk.contract.health(trader.address))
    await refused("BreakerIsTripped", desk.report("BTC", [95_000 * USD] * 3))
    await replica.catch_up()
    with pytest.raises(PriceRejected) as caught:
        replica.replica.health(trader.address, await desk.now())
    assert caught.value.details.get("reason") == "halted"
    # Owing nothing, the saver withdraws whatever the oracle says.
    await desk.borrow(saver, "TUSD", 1_000 * TUSD)
    # Two members cannot clear it.
    await refused("NotEnoughSignatures", desk.clear_breaker("BTC", 60_000 * USD, signers=(0, 1)))
    await desk.clear_breaker("BTC", 60_000 * USD)
    assert not (await desk.oracle.price(BTC_ASSET)).tripped
    # 1 BTC at 60,000 less 20 % is 48,000 USD against 50,000 owed: 9,600 bps.
    assert await desk.same_health(trader, replica) == (48_000 * USD, 50_000 * USD, 9_600)
    await desk.contract.liquidate(liquidator.key, trader.address)
    assert await desk.positions(trader) == {}
    assert await desk.positions(liquidator) == {"BTC": 1 * BTC, "TUSD": -30_000 * TUSD}

    log.info("act: no report for longer than the price age (3,600 s): a borrow in its last second, one after it")
    # 2 BTC at 60,000 less 20 % is 96,000 USD against 10,000 owed: the careful borrower's health is
    # fine, only its prices age.  A price counts while at most 3,600 s old at the block's time.
    assert (await desk.same_health(careful, replica))[2] == 96_000
    oldest = min([(await desk.oracle.price(desk.assets[s])).time for s in ("BTC", "TUSD")])
    await AnvilControls(evm).set_next_block_timestamp(oldest + 3_600)
    receipt = await desk.borrow(careful, "TUSD", 1 * TUSD)
    assert (await evm.block_by_height(receipt.block_number)).timestamp == oldest + 3_600
    await AnvilControls(evm).set_next_block_timestamp(oldest + 3_601)
    await refused("PriceStale", desk.borrow(careful, "TUSD", 1 * TUSD))
    # The replica judged the borrow at its block's time as the contract did: held, not refused.
    await replica.catch_up()
    assert [(r.amount, r.state) for r in replica.replica.requests(account=careful.address)] == [(10_000 * TUSD, "held"), (1 * TUSD, "held")]
    assert replica.replica.health(careful.address, oldest + 3_600).liabilities == 10_001 * USD
    await AnvilControls(evm).increase_time(3_700)

    log.info("check: liquidation, borrowing and withdrawing while owing are refused PriceStale; a saver's withdrawal is not")
    await refused("PriceStale", desk.contract.liquidate(liquidator.key, careful.address))
    await refused("PriceStale", desk.borrow(careful, "TUSD", 1 * TUSD))
    await refused("PriceStale", desk.contract.request_btc_withdrawal(careful.key, 10_000_000, P2WPKH))
    await refused("PriceStale", desk.contract.health(careful.address))
    await replica.catch_up()
    with pytest.raises(PriceRejected) as caught:
        replica.replica.health(careful.address, await desk.now())
    assert caught.value.details.get("reason") == "stale"
    nonce = await desk.contract.request_nonce()
    await desk.borrow(saver, "TUSD", 4_000 * TUSD)
    await desk.contract.request_btc_withdrawal(saver.key, 50_000_000, P2WPKH)
    assert await desk.positions(saver) == {"BTC": 50_000_000}
    assert await desk.contract.request_nonce() == nonce + 2
    # Borrowing beyond its balance is a borrow all the same: it needs prices.
    await refused("PriceStale", desk.borrow(saver, "TUSD", 1))
    await desk.books_match(replica)
    assert [r.state for r in replica.replica.requests(account=saver.address)] == ["held"] * 3
    assert replica.replica.anomalies() == []

    log.info("act: fresh prices again; check: the careful borrower is judged as before")
    await desk.set_price("BTC", 60_000 * USD)
    await desk.set_price("TUSD", USD)
    assert await desk.same_health(careful, replica) == (96_000 * USD, 10_001 * USD, 95_990)


# --- 5. withdrawing more than the free margin --------------------------------------------------------


async def test_withdrawing_beyond_the_free_margin_is_refused_and_holds_nothing(evm, tmp_path):
    log.info("declare: a trader with 1 BTC owing 50,000 TUSD (15,200 bps); a saver with 100 TUSD and nothing else")
    desk = await desk_with_prices(evm, tmp_path)
    replica = Follower(desk.bridge, tmp_path / "replica.sqlite")
    trader = await desk.party("trader", btc=1 * BTC)
    await desk.borrow(trader, "TUSD", 50_000 * TUSD)
    saver = await desk.party("saver", tusd=100 * TUSD)

    log.info("act: the trader withdraws 0.1 BTC (health 13,680), then 0.1 BTC more (it would be 12,160)")
    await desk.contract.request_btc_withdrawal(trader.key, 10_000_000, P2WPKH)
    assert await desk.same_health(trader, replica) == (68_400 * USD, 50_000 * USD, 13_680)
    nonce = await desk.contract.request_nonce()
    await refused("InsufficientMargin", desk.contract.request_btc_withdrawal(trader.key, 10_000_000, P2WPKH))

    log.info("check: nothing held: balance, requests and the replica unchanged")
    assert await desk.positions(trader) == {"BTC": 90_000_000, "TUSD": -50_000 * TUSD}
    assert await desk.contract.request_nonce() == nonce
    await replica.catch_up()
    assert [(r.asset, r.amount, r.state) for r in replica.replica.requests(account=trader.address)] == [
        ("0x" + desk.assets["TUSD"].hex(), 50_000 * TUSD, "held"),
        ("0x" + BTC_ASSET.hex(), 10_000_000, "held"),
    ]

    log.info("act: the free margin to the sat: 82,236,843 sats keep 12,500 bps, one fewer does not")
    # 12,500 bps of 50,000 USD is 62,500 USD of haircut collateral: 62,500 / 76,000 BTC, rounded up.
    await refused("InsufficientMargin", desk.contract.request_btc_withdrawal(trader.key, 90_000_000 - 82_236_842, P2WPKH))
    await desk.contract.request_btc_withdrawal(trader.key, 90_000_000 - 82_236_843, P2WPKH)
    collateral, liabilities, bps = await desk.same_health(trader, replica)
    assert (collateral, liabilities, bps) == (82_236_843 * 76_000, 50_000 * USD, 12_500)
    # 0.001 ETH or 1 TUSD more would be a borrow below the initial margin (the slack left is
    # 680,000,000 / 12,500 = 54,400 units of 10^-8 USD of debt).
    await refused("InsufficientMargin", desk.borrow(trader, "ETH", 10**15))
    await refused("InsufficientMargin", desk.borrow(trader, "TUSD", 1 * TUSD))
    # The saver has no collateral beyond its 100 TUSD: not a unit more leaves, and once they are
    # gone, not a wei of ETH either.
    await refused("InsufficientMargin", desk.borrow(saver, "TUSD", 100 * TUSD + 1))
    await desk.borrow(saver, "TUSD", 100 * TUSD)
    await refused("InsufficientMargin", desk.borrow(saver, "ETH", 1))
    await refused("InsufficientMargin", desk.borrow(saver, "TUSD", 1))

    log.info("check: only the accepted requests exist, on chain and in the replica; the books agree")
    assert await desk.positions(trader) == {"BTC": 82_236_843, "TUSD": -50_000 * TUSD}
    assert await desk.positions(saver) == {}
    assert await desk.contract.request_nonce() == nonce + 2
    await desk.books_match(replica)
    assert [r.nonce for r in replica.replica.requests()] == list(range(nonce + 2))
    assert {r.state for r in replica.replica.requests()} == {"held"}
    assert replica.replica.anomalies() == []


# --- 6. no liquidation while paused ------------------------------------------------------------------


async def test_no_liquidation_while_paused(evm, tmp_path):
    log.info("declare: a trader owing 50,000 TUSD on 1 BTC, BTC walked down to 68,000 (10,880 bps)")
    desk = await desk_with_prices(evm, tmp_path)
    replica = Follower(desk.bridge, tmp_path / "replica.sqlite")
    trader = await desk.party("trader", btc=1 * BTC)
    await desk.borrow(trader, "TUSD", 50_000 * TUSD)
    liquidator = await desk.party("liquidator", tusd=20_000 * TUSD)
    await desk.move_price("BTC", 68_000 * USD)
    assert (await desk.same_health(trader, replica))[2] == 10_880

    log.info("act: a guardian pauses the bridge; the liquidator tries")
    await desk.contract.pause(desk.bridge.deployer)
    await refused("IsPaused", desk.contract.liquidate(liquidator.key, trader.address))

    log.info("check: nothing moved; the replica saw the pause and no liquidation")
    assert await desk.positions(trader) == {"BTC": 1 * BTC, "TUSD": -50_000 * TUSD}
    assert await desk.positions(liquidator) == {"TUSD": 20_000 * TUSD}
    await replica.catch_up()
    assert replica.replica.pause_state()[0]
    assert replica.replica.liquidations() == []

    log.info("act: a quorum's UNPAUSE lifts the pause; the liquidation goes through")
    pauses = await desk.contract.pauses()
    unpause = Message(1, Kind.UNPAUSE, desk.chain_id, ZERO32, 0, desk.chain_id, ZERO_ADDRESS, ZERO_ADDRESS, 0, pauses, await desk.now() + 600, ZERO32)
    await desk.contract.unpause(desk.bridge.relayer_key, unpause, desk.bridge.committee, *desk.quorum(unpause))
    await desk.contract.liquidate(liquidator.key, trader.address)
    assert await desk.positions(trader) == {}
    await desk.books_match(replica)
    assert not replica.replica.pause_state()[0]
    (row,) = replica.replica.liquidations()
    assert row["health_bps"] == row["chain_health_bps"] == "10880"
    assert replica.replica.anomalies() == []
