"""Gas and speed of the margin book: ``htlc/contracts/CollateralBridge.sol`` (deposits, borrows, liquidation) and ``PriceOracle.sol``.

    python bench/margin.py [--accounts 1000] [--latency 5]

Starts its own Anvil (free port, temp dir) and stops it afterwards.  Each bridge is deployed as
``tests/support/committee.own_bridge(prices=...)`` does (``deploy_bridge``: the bridge, then the
oracle at the address the bridge names; a 3-of-4 committee; ETH and a fresh 6-decimal TUSD
listed; haircuts BTC 20 %, ETH 10 %; liquidation below 11,000 bps, borrowing down to 12,500 bps,
prices count for an hour).  Prices reach the oracle only as committee-signed PRICE_REPORTs (three
members each, ``postPrices``), BTC margin only as a quorum's DEPOSIT_CREDIT: every signature is
made with the committee's keys.  Prices: BTC 95,000, ETH 3,500, TUSD 1 USD.

* gas: each figure is its own receipt's ``gasUsed`` (the whole transaction: 21,000 base,
  calldata, the work, refunds), on one bridge, in the order printed; a borrow is a
  ``requestWithdrawal`` beyond the balance, to about 12,600 bps; the two measured liquidations follow a 15 % drop of BTC and ETH, by a
  liquidator that already holds every asset (it liquidated an account before);
* ``health(account)`` view: ``eth_estimateGas`` of the call (21,000 base included);
* replica: ``--accounts`` accounts (default 1,000) on a second bridge, a third each with 1, 2 and
  3 priced positions (ETH; ETH + borrowed TUSD; BTC + ETH + borrowed TUSD), made by real
  transactions (several per block); a replica (``bridge/committee/replica.py``, SQLite in the
  temp dir) folds their events through the indexer (timed), then ``Replica.health(account,
  now)`` is timed over every account, one pass; one account of each kind is checked equal to
  the contract's ``health``;
* liquidation latency (``--latency`` samples, default 5; 0 skips), no daemons: from the
  receipt of the price report that makes an account liquidatable to the receipt of its
  ``liquidate``, sent at once through the binding (fee history, gas estimate, signing, send,
  receipt): Anvil mines on every transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from eth_account import Account
from eth_utils import keccak, to_canonical_address

# Run as `python bench/margin.py`, this folder is first on sys.path and bench/htlc.py would
# shadow the `htlc` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from bridge.committee.btc_deposits import BtcTerms  # noqa: E402
from bridge.committee.config import ETH_ADDRESS, BridgeConfig  # noqa: E402
from bridge.committee.contract import CollateralBridge, MarginTerms  # noqa: E402
from bridge.committee.crypto import address_of, sign  # noqa: E402
from bridge.committee.deploy import deploy_bridge  # noqa: E402
from bridge.committee.messages import BTC_ASSET, ZERO32, Committee, Kind, Message, digest  # noqa: E402
from bridge.committee.oracle import PRICE_DECIMALS, FeedConfig, MockAggregator, PriceOracle  # noqa: E402
from bridge.committee.prices import price_report  # noqa: E402
from bridge.committee.replica import Replica  # noqa: E402
from bridge.core.db import make_engine  # noqa: E402
from bridge.custody.scripts import CustodyPolicy, refund_pubkey_of_evm_key  # noqa: E402
from chains.evm import EvmAdapter, EvmLogFilter, EvmReceipt  # noqa: E402
from chains.fee_bump import EvmTxFields  # noqa: E402
from chains.indexer import Indexer  # noqa: E402
from devnets.anvil import Anvil  # noqa: E402
from devnets.controls import AnvilControls  # noqa: E402
from htlc.evm import Erc20, encode_call  # noqa: E402

ONE_ETH = 10**18
USD = 10**PRICE_DECIMALS  # the oracle's prices: USD with 8 decimals
BTC = 10**8  # sats
TUSD = 10**6
PRICES = {"BTC": 95_000, "ETH": 3_500, "TUSD": 1}
HAIRCUTS = {"BTC": 2000, "ETH": 1000}
#: Borrows leave this health: above the initial 12,500 bps, below 11,000 after a 15 % drop.
BORROW_BPS = 12_600
DROP_BPS = 1_500
#: A standard P2WPKH output script: where BTC withdrawals go.
P2WPKH = bytes.fromhex("0014") + bytes(range(20))
GWEI = 10**9


def _keys(tag: str, n: int) -> list[bytes]:
    """``n`` committee keys, sorted by address (the signer order)."""
    return sorted((hashlib.sha256(f"bench-margin-{tag}-{i}".encode()).digest() for i in range(n)), key=address_of)


@dataclass
class Desk:
    """One bridge with its oracle, committee keys and TUSD; quorum messages signed here."""

    evm: EvmAdapter
    contract: CollateralBridge
    oracle: PriceOracle
    config: BridgeConfig
    keys: list[bytes]
    token: Erc20
    deployer: str
    relayer: str
    #: The observation time of the last report posted per asset (a report must be newer).
    reported: dict[bytes, int] = field(default_factory=dict)
    credits: Iterator[int] = field(default_factory=itertools.count)

    @property
    def committee(self) -> Committee:
        return self.config.committee

    def asset(self, symbol: str) -> bytes:
        return {"BTC": BTC_ASSET, "ETH": bytes(20), "TUSD": to_canonical_address(self.token.address)}[symbol]

    def quorum(self, m: Message) -> tuple[list[int], list[bytes]]:
        mid = digest(self.config.domain, m)
        indices = list(range(self.committee.threshold))
        return indices, [sign(mid, self.keys[i]) for i in indices]

    async def now(self) -> int:
        return (await self.evm.head()).timestamp

    # --- prices ---

    async def post_price(self, symbol: str, price: int) -> EvmReceipt:
        """Three members report ``price`` (USD, 8 decimals); the oracle must take it (no breaker trip)."""
        asset = self.asset(symbol)
        at, last = await self.now(), self.reported.get(asset, 0)
        if at <= last:
            await AnvilControls(self.evm).increase_time(last + 1 - at)
            at = await self.now()
        m = price_report(self.config.domain, asset, price, at, at + 300, interval=1)
        mid = digest(self.config.domain, m)
        indices = [0, 1, 2]
        receipt = await self.oracle.post_prices(self.relayer, asset, [m] * 3, self.committee, indices, [sign(mid, self.keys[i]) for i in indices])
        events = [e.name for e in self.oracle.events_in(receipt)]
        assert events == ["PriceUpdated"], events
        self.reported[asset] = at
        return receipt

    # --- accounts ---

    async def user(self, wei: int = 10 * ONE_ETH, tusd: int = 0) -> tuple[str, str]:
        """A fresh funded account (with ``tusd`` minted and approved to the bridge): ``(address, key)``."""
        acct = Account.create()
        key = acct.key.to_0x_hex()
        await AnvilControls(self.evm).set_balance(acct.address, wei)
        if tusd:
            await self.evm.wait_for_receipt(await self.token.mint(self.deployer, acct.address, tusd))
            await self.evm.wait_for_receipt(await self.token.approve(key, self.contract.address, 2**256 - 1))
        return acct.address, key

    def credit_message(self, account: str, sats: int, expiry: int) -> Message:
        """A DEPOSIT_CREDIT for one (never made) Bitcoin output of its own."""
        source = keccak(f"bench-margin deposit {next(self.credits)}".encode())
        return Message(1, Kind.DEPOSIT_CREDIT, 0, source, 0, self.config.chain_id, to_canonical_address(account), BTC_ASSET, sats, 0, expiry, ZERO32)

    async def credit_btc(self, account: str, sats: int) -> EvmReceipt:
        m = self.credit_message(account, sats, await self.now() + 600)
        return await self.contract.credit_deposit(self.relayer, m, self.committee, *self.quorum(m))

    async def borrow_limit(self, account: str, symbol: str, bps: int = BORROW_BPS) -> int:
        """Base units of ``symbol`` that, borrowed more, leave ``account`` at about ``bps``."""
        collateral, liabilities, _ = await self.contract.health(account)
        usd = collateral * 10_000 // bps - liabilities  # 8 decimals
        decimals = {"ETH": 18, "TUSD": 6}[symbol]
        price = {"ETH": PRICES["ETH"], "TUSD": 1}[symbol] * USD
        return usd * 10**decimals // price


async def deploy(evm: EvmAdapter, tag: str) -> Desk:
    """A bridge with a fresh 3-of-4 committee, TUSD and an oracle over fresh feeds, with prices posted."""
    controls = AnvilControls(evm)
    deployer, relayer = Account.create(), Account.create()
    for who in (deployer, relayer):
        await controls.set_balance(who.address, 1_000 * ONE_ETH)
    dkey = deployer.key.to_0x_hex()
    keys = _keys(tag, 4)
    committee = Committee(0, tuple(address_of(k) for k in keys), 3)
    token = await Erc20.deploy(evm, dkey, "TestToken", "Test USD", "TUSD", 6)
    assets = {"ETH": (ETH_ADDRESS, 18), "TUSD": (token.address, 6)}
    caps = {"ETH": 1_000_000 * ONE_ETH, "TUSD": 10**12 * TUSD}
    asset_of = {"BTC": BTC_ASSET, "ETH": bytes(20), "TUSD": to_canonical_address(token.address)}
    feeds = {}
    for symbol, usd in PRICES.items():
        aggregator = await MockAggregator.deploy(evm, dkey, f"{symbol} / USD", usd * USD)
        feeds[symbol] = FeedConfig(asset_of[symbol], aggregator.address)
    terms = MarginTerms(liquidation_bps=11_000, initial_bps=12_500, max_price_age=3600, haircuts=HAIRCUTS, release_ttl=3600, min_btc_withdrawal=10_000)
    contract, oracle = await deploy_bridge(evm, dkey, committee, [deployer.address], assets, caps, grace=3600, terms=terms, feeds=feeds)
    assert oracle is not None
    policy = CustodyPolicy.of([refund_pubkey_of_evm_key(k) for k in keys], 3, 20, "regtest")
    config = BridgeConfig(
        await evm.chain_id_int(), contract.address, await evm.height(), committee, 3600, 3600, assets, BtcTerms(policy, min_deposit=10_000), 0, oracle, terms
    )
    desk = Desk(evm, contract, PriceOracle(evm, oracle.address), config, keys, token, dkey, relayer.key.to_0x_hex())
    for symbol, usd in PRICES.items():
        await desk.post_price(symbol, usd * USD)
    return desk


# --- 1 and 2: gas ------------------------------------------------------------------------------


async def _view_gas(evm: EvmAdapter, contract: CollateralBridge, account: str) -> int:
    data = encode_call(contract.abi, "health", account)
    return int(await evm.rpc.call("eth_estimateGas", [{"to": contract.address, "data": "0x" + data.hex()}]), 16)


async def gas(evm: EvmAdapter) -> tuple[list[tuple[str, int, str]], dict[int, int], Desk]:
    """``(label, receipt gas, what it did)`` in the order measured, ``health`` view gas by
    positions, and the desk (its prices stale: time moved past the release TTL at the end)."""
    desk = await deploy(evm, "gas")
    c = desk.contract
    g: list[tuple[str, int, str]] = []

    def note(label: str, receipt: EvmReceipt, what: str) -> None:
        g.append((label, receipt.gas_used, what))

    # Deposits and a request of an account that owes nothing.
    first, first_key = await desk.user()
    note("depositETH, the contract's first", await c.deposit_eth(first_key, ONE_ETH), "the deposit counter written from zero too")
    await c.request_withdrawal(first_key, ETH_ADDRESS, ONE_ETH // 10)  # the contract's first request (its counter from zero): untimed
    saver, saver_key = await desk.user(100 * ONE_ETH, tusd=10_000 * TUSD)
    note("depositETH, an account's first", await c.deposit_eth(saver_key, 10 * ONE_ETH), "its ETH position written from zero")
    note("depositETH, later", await c.deposit_eth(saver_key, ONE_ETH), "the same account again")
    tusd = desk.token.address
    note(
        "depositERC20 (TUSD), an account's first",
        await c.deposit_erc20(saver_key, tusd, 1_000 * TUSD),
        "also the bridge's first TUSD: 2 token-side slots from zero",
    )
    note("depositERC20 (TUSD), later", await c.deposit_erc20(saver_key, tusd, 1_000 * TUSD), "the same account: transferFrom + 2 balanceOf")
    request = await c.request_withdrawal(saver_key, ETH_ADDRESS, ONE_ETH)
    note("requestWithdrawal, owing nothing (ETH)", request, "no price read: it owes nothing after")

    # Borrowers holding BTC; BTC + ETH; BTC + ETH + TUSD, each borrowing TUSD to ~12,600 bps.
    b1, b1_key = await desk.user()
    b2, b2_key = await desk.user(20 * ONE_ETH)
    b3, b3_key = await desk.user(20 * ONE_ETH, tusd=10_000 * TUSD)
    spare, spare_key = await desk.user()
    for who in (b1, b2, b3, spare):
        await desk.credit_btc(who, BTC)
    for key in (b2_key, b3_key):
        await c.deposit_eth(key, 10 * ONE_ETH)
    limit3 = await desk.borrow_limit(b3, "TUSD")  # before its TUSD: that turns into debt
    await c.deposit_erc20(b3_key, tusd, 5_000 * TUSD)
    views = {1: await _view_gas(evm, c, b1), 2: await _view_gas(evm, c, b2), 3: await _view_gas(evm, c, b3)}
    borrows = [
        (b1_key, "1 (BTC)", await desk.borrow_limit(b1, "TUSD"), "TUSD debt written from zero; 2 priced after"),
        (b2_key, "2 (BTC, ETH)", await desk.borrow_limit(b2, "TUSD"), "TUSD debt written from zero; 3 priced after"),
        (b3_key, "3 (BTC, ETH, TUSD)", limit3 + 5_000 * TUSD, "TUSD from +5,000 to a debt (slot not fresh); 3 priced"),
    ]
    for key, holding, amount, what in borrows:
        note(f"borrow TUSD, holding {holding}", await c.request_withdrawal(key, tusd, amount), what)
    note("requestBtcWithdrawal, owing nothing", await c.request_btc_withdrawal(spare_key, BTC // 10, P2WPKH), "BTC only; its destination emitted")
    note(
        "requestBtcWithdrawal, owing (2 priced)",
        await c.request_btc_withdrawal(b1_key, 10_000, P2WPKH),
        "the BTC borrower above: its health checked",
    )

    # A 3-of-4 release of the request that owed nothing, for reference.
    (requested,) = c.events_in(request)
    m = Message(
        1,
        Kind.RELEASE,
        0,
        keccak(b"bench"),
        0,
        desk.config.chain_id,
        to_canonical_address(saver),
        bytes(20),
        ONE_ETH,
        requested["requestNonce"],
        await desk.now() + 600,
        ZERO32,
    )
    note("release, 3-of-4 quorum (ETH), reference", await c.release(desk.relayer, m, desk.committee, *desk.quorum(m)), "3 ecrecover, the cap, the transfer")

    # Liquidation after a 15 % drop; the liquidator liquidates b3 first (untimed) so that it holds every asset.
    liquidator, liquidator_key = await desk.user(1_000 * ONE_ETH)
    await c.deposit_eth(liquidator_key, 500 * ONE_ETH)
    await desk.post_price("BTC", PRICES["BTC"] * USD * (10_000 - DROP_BPS) // 10_000)
    dropped = await desk.post_price("ETH", PRICES["ETH"] * USD * (10_000 - DROP_BPS) // 10_000)
    note("postPrices, 3 reports (a later price)", dropped, "3 signed reports: median, spread, breaker")
    for who in (b1, b2, b3):
        assert (await c.health(who))[2] < 11_000, "not liquidatable after the drop"
    await c.liquidate(liquidator_key, b3)
    what = "positions moved; the liquidator's health after (3 priced)"
    note("liquidate, 2 positions (BTC, TUSD)", await c.liquidate(liquidator_key, b1), f"health (2 priced), 2 {what}")
    note("liquidate, 3 positions (BTC, ETH, TUSD)", await c.liquidate(liquidator_key, b2), f"health (3 priced), 3 {what}")

    # Cancel an expired request (time moves past the release TTL: prices go stale here).
    cancel = await c.request_withdrawal(saver_key, ETH_ADDRESS, ONE_ETH // 2)
    (requested,) = c.events_in(cancel)
    await AnvilControls(evm).increase_time(3601)
    cancelled = await c.cancel_withdrawal(saver_key, requested["requestNonce"], saver, ETH_ADDRESS, ONE_ETH // 2)
    note("cancelWithdrawal (expired ETH request)", cancelled, "after the release TTL: the margin given back")
    return g, views, desk


# --- 3: the replica ------------------------------------------------------------------------------


@dataclass
class Folded:
    accounts: int
    by_positions: dict[int, int]
    txs: int
    blocks: int
    setup_s: float
    events: int
    fold_s: float
    health_s: float
    checked: int


async def _send_all(evm: EvmAdapter, raws: Sequence[str], chunk: int = 250) -> None:
    """Broadcast signed transactions in batches, mine until the pool is empty, check every receipt."""
    controls = AnvilControls(evm)
    hashes = []
    for i in range(0, len(raws), chunk):
        hashes += await evm.rpc.batch([("eth_sendRawTransaction", ["0x" + r]) for r in raws[i : i + chunk]])
    for _ in range(1_000):
        await controls.mine(1)
        status = await evm.rpc.call("txpool_status", [])
        if int(status["pending"], 16) == 0 and int(status["queued"], 16) == 0:
            break
    for i in range(0, len(hashes), chunk):
        for h, r in zip(hashes[i : i + chunk], await evm.rpc.batch([("eth_getTransactionReceipt", [h]) for h in hashes[i : i + chunk]])):
            assert r is not None and int(r["status"], 16) == 1, f"{h} failed: {r}"


async def replica(evm: EvmAdapter, where: Path, accounts: int) -> Folded:
    """``accounts`` accounts by real transactions, folded by a replica; its health timed per account."""
    started = time.perf_counter()
    desk = await deploy(evm, "replica")
    c = desk.contract
    chain_id = await evm.chain_id_int()
    controls = AnvilControls(evm)
    users = [Account.from_key(hashlib.sha256(f"bench-margin-account-{i}".encode()).digest()) for i in range(accounts)]
    for i in range(0, accounts, 250):
        await evm.rpc.batch([("anvil_setBalance", [u.address, hex(10 * ONE_ETH)]) for u in users[i : i + 250]])
    start_height = await evm.height()
    await controls.set_automine(False)
    try:

        def raw(who, nonce: int, to: str, data: bytes, gas: int, value: int = 0) -> str:
            return EvmTxFields(chain_id, nonce, to, "0x" + data.hex(), gas, 100 * GWEI, GWEI, value).sign(evm, who)[0]

        # A third each: ETH; ETH borrowing TUSD; BTC and ETH borrowing TUSD.
        relayer = evm.account(desk.relayer)
        relayer_nonce = await evm.nonce(relayer.address, "pending")
        expiry = await desk.now() + 3600
        first = []
        for i, u in enumerate(users):
            first.append(raw(u, 0, c.address, encode_call(c.abi, "depositETH"), 150_000, ONE_ETH))
            if i % 3 == 2:
                m = desk.credit_message(u.address, BTC // 10, expiry)
                data = encode_call(c.abi, "creditDeposit", *c._quorum_args(m, desk.committee, *desk.quorum(m)))
                first.append(raw(relayer, relayer_nonce, c.address, data, 300_000))
                relayer_nonce += 1
        await _send_all(evm, first)
        # Borrow half the haircut collateral's value: ETH 3,150 USD, BTC 7,600 USD.
        second = []
        for i, u in enumerate(users):
            if i % 3:
                usd = 3_150 + (7_600 if i % 3 == 2 else 0)
                second.append(raw(u, 1, c.address, encode_call(c.abi, "requestWithdrawal", desk.token.address, usd // 2 * TUSD), 500_000))
        await _send_all(evm, second)
    finally:
        await controls.set_automine(True)
    head = await evm.height()
    setup_s = time.perf_counter() - started

    config = desk.config
    assert config.oracle is not None
    rep = Replica(make_engine(f"sqlite:///{where / 'replica.sqlite'}"), config.replica_config())
    indexer = Indexer(
        "replica",
        evm,
        rep.engine,
        rep,
        selector=EvmLogFilter(address=[config.bridge, config.oracle.address]),
        confirmations=1,
        start_height=config.deploy_block,
    )
    start = time.perf_counter()
    while not (await indexer.step()).caught_up:
        pass
    fold_s = time.perf_counter() - start
    assert indexer.cursor().height == head
    events = len(await c.events(config.deploy_block, head)) + len(await desk.oracle.events(config.deploy_block, head))

    now = await desk.now()
    start = time.perf_counter()
    figures = [rep.health(u.address, now) for u in users]
    health_s = time.perf_counter() - start
    checked = 0
    for i in range(min(3, accounts)):
        chain = await c.health(users[i].address)
        assert (figures[i].collateral, figures[i].liabilities, figures[i].bps) == chain, f"replica {figures[i]} != chain {chain}"
        checked += 1
    rep.engine.dispose()
    by_positions = {n: sum(1 for i in range(accounts) if i % 3 == n - 1) for n in (1, 2, 3)}
    return Folded(accounts, by_positions, len(first) + len(second), head - start_height, setup_s, events, fold_s, health_s, checked)


# --- 4: liquidation latency --------------------------------------------------------------------


async def latency(desk: Desk, samples: int) -> tuple[list[float], list[int]]:
    """Seconds and blocks from a dropping price's receipt to the liquidation's receipt."""
    c = desk.contract
    for symbol, usd in PRICES.items():  # fresh prices after the gas section's time jump
        await desk.post_price(symbol, usd * USD)
    liquidator, liquidator_key = await desk.user(1_000 * ONE_ETH)
    await c.deposit_eth(liquidator_key, 500 * ONE_ETH)
    seconds, blocks = [], []
    high = PRICES["ETH"] * USD
    low = high * (10_000 - DROP_BPS) // 10_000
    for _ in range(samples):
        who, key = await desk.user()
        await c.deposit_eth(key, ONE_ETH)
        await c.request_withdrawal(key, desk.token.address, await desk.borrow_limit(who, "TUSD"))
        price = await desk.post_price("ETH", low)
        seen = time.perf_counter()
        liquidated = await c.liquidate(liquidator_key, who)
        seconds.append(time.perf_counter() - seen)
        blocks.append(liquidated.block_number - price.block_number)
        await desk.post_price("ETH", high)
    return seconds, blocks


# --- the run -------------------------------------------------------------------------------------


async def _measure(url: str, where: Path, accounts: int, samples: int):
    evm = await EvmAdapter.connect(url)
    try:
        g, views, desk = await gas(evm)
        lat = await latency(desk, samples) if samples else None
        folded = await replica(evm, where, accounts) if accounts else None
        return g, views, folded, lat
    finally:
        await evm.close()


def report(g: list[tuple[str, int, str]], views: dict[int, int], folded: Folded | None, lat: tuple[list[float], list[int]] | None) -> None:
    print("Margin book gas (receipt gasUsed, whole transaction; in the order measured, on one bridge)")
    for label, used, what in g:
        print(f"  {label:50} {used:>9,}  {what}")

    print("\nhealth(account) view (eth_estimateGas of the call, 21,000 base included)")
    names = {1: "BTC", 2: "BTC, ETH", 3: "BTC, ETH, TUSD"}
    previous = None
    for n, used in views.items():
        step = "" if previous is None else f"  +{used - previous:,} for one more priced position"
        print(f"  {f'{n} position(s): {names[n]}':50} {used:>9,}{step}")
        previous = used

    if folded is not None:
        f = folded
        mix = ", ".join(f"{count:,} with {n}" for n, count in f.by_positions.items())
        print(f"\nReplica (bridge/committee/replica.py, SQLite): {f.accounts:,} accounts ({mix} priced positions)")
        print(f"  {'setup: transactions, blocks':50} {f.txs:>9,}  in {f.blocks} blocks, {f.setup_s:.1f} s (deploy, sign, send, mine)")
        print(f"  {'fold through the indexer: events':50} {f.events:>9,}  in {f.fold_s:.2f} s, {f.events / f.fold_s:,.0f} events/s")
        print(
            f"  {'Replica.health(account, now), accounts/s':50} {f.accounts / f.health_s:>9,.0f}  "
            f"{f.health_s * 1e3 / f.accounts:.2f} ms each, one pass, one core; {f.checked} (one of each kind) equal to the contract's health"
        )

    if lat is not None:
        seconds, blocks = lat
        ms = sorted(s * 1e3 for s in seconds)
        print(f"\nLiquidation latency on Anvil, no daemons ({len(ms)} samples; ETH -15 % makes a 1-ETH borrower liquidatable)")
        print(f"  {'price receipt -> liquidation receipt, p50':50} {statistics.median(ms):>9.1f} ms  via the binding (fees, estimate, sign, send, receipt)")
        print(f"  {'  max':50} {ms[-1]:>9.1f} ms")
        print(f"  {'  blocks after the price block':50} {max(blocks):>9}  (Anvil mines every transaction at once)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1_000, help="accounts the replica folds and judges (default 1,000; 0 skips)")
    parser.add_argument("--latency", type=int, default=5, help="liquidation latency samples (default 5; 0 skips)")
    args = parser.parse_args()
    if args.accounts < 0 or args.latency < 0:
        parser.error("counts must be >= 0")
    with tempfile.TemporaryDirectory(prefix="bench-margin-") as tmp:
        node = Anvil(Path(tmp) / "anvil")
        node.start()
        try:
            figures = asyncio.run(_measure(node.url, Path(tmp), args.accounts, args.latency))
        finally:
            node.stop()
    report(*figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
