"""Price reports end to end (issue 15, "Prices, health and liquidation"): four attesters of a 3-of-4
committee read devnet feeds (``MockAggregator``) and sign reports into a real ``AttestationStore``
on SQLite; a ``Poster`` posts a quorum to the real ``PriceOracle`` of a real ``CollateralBridge``
on Anvil; a replica folds the oracle's events.  One lying attester moves nothing; an attester
signing two prices for one slot is recorded as equivocating; the breaker halts the poster until
a quorum clears it; the APScheduler jobs do the same on their own.

Reporters and posters run on the chain's clock with 10-second slots; a test moves to the next slot
by moving the chain's time (``evm_increaseTime``), so no test waits for a slot to pass.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from bridge.committee.crypto import address_of
from bridge.committee.messages import BTC_ASSET, ETH_ASSET, Domain, digest, sign
from bridge.core.testing import WaitTimeout, wait_until
from bridge.committee.oracle import MockAggregator, OraclePrice, PriceOracle, RoundData, decode_oracle_events, feeds_of
from bridge.committee.prices import (
    Poster,
    Reporter,
    agreed_median,
    clear_breaker_message,
    fold_price_event,
    init_price_tables,
    price_report,
    replica_prices,
    report_source,
    select_reports,
    sign_clear,
    slot_of,
)
from bridge.committee.store import AttestationStore, Equivocation
from bridge.core.db import make_engine
from bridge.core.errors import PriceRejected
from devnets.controls import AnvilControls
from relayers.prices import PosterJob, ReporterJob
from test_committee_contract import SIGNER_KEYS, make_env

USD = 10**8
BTC, ETH = 95_000 * USD, 3_500 * USD
MAX_AGE, SPREAD, STEP, INTERVAL = 300, 200, 2000, 10


def chain_clock() -> float:
    return 0  # the reporters' and posters' time is then the newest block's


class LyingFeed:
    """A price source that says what its attester wants it to, freshly updated."""

    def __init__(self, evm, answer: int) -> None:
        self.evm, self.answer = evm, answer

    async def latest_round_data(self) -> RoundData:
        return RoundData(7, self.answer, 1, (await self.evm.head()).timestamp, 7)

    async def decimals(self) -> int:
        return 8


class World:
    def __init__(self, env, oracle: PriceOracle, feeds: dict[bytes, MockAggregator], store: AttestationStore) -> None:
        self.env, self.oracle, self.feeds, self.store = env, oracle, feeds, store
        self.domain = Domain(env.chain_id, bytes.fromhex(env.bridge.address[2:]))
        self.keys = sorted(SIGNER_KEYS[:4], key=address_of)  # index i: committee member i
        assert tuple(address_of(k) for k in self.keys) == env.committee.signers

    def reporter(self, i: int, feeds=None) -> Reporter:
        return Reporter(
            self.store,
            self.keys[i],
            self.domain,
            feeds or self.feeds,
            committee=self.env.committee,
            interval=INTERVAL,
            max_age=MAX_AGE,
            chain=self.env.evm,
            clock=chain_clock,
        )

    def poster(self) -> Poster:
        return Poster(
            self.store,
            self.oracle,
            self.domain,
            self.env.key("relayer"),
            list(self.feeds),
            committees=self.env.committee,
            max_age=MAX_AGE,
            max_spread_bps=SPREAD,
        )

    async def report(self, *reporters: Reporter) -> None:
        for r in reporters:
            await r.report()

    async def next_slot(self, first: bool = False) -> int:
        """Move the chain's time into the next reporting slot (unless ``first``); the slot."""
        if not first:
            before = slot_of(await self.env.now(), INTERVAL)
            await AnvilControls(self.env.evm).increase_time(INTERVAL)
            assert slot_of(await self.env.now(), INTERVAL) > before
        return slot_of(await self.env.now(), INTERVAL)


@pytest.fixture
async def world(evm, tmp_path) -> World:
    env = await make_env(evm)
    deployer = env.key("deployer")
    oracle = await PriceOracle.deploy(evm, deployer, env.bridge.address, max_age=MAX_AGE, max_spread_bps=SPREAD, breaker_step_bps=STEP)
    feeds = {
        BTC_ASSET: await MockAggregator.deploy(evm, deployer, "BTC / USD", BTC),
        ETH_ASSET: await MockAggregator.deploy(evm, deployer, "ETH / USD", ETH),
    }
    store = AttestationStore(make_engine(f"sqlite:///{tmp_path / 'store.sqlite'}"))
    return World(env, oracle, feeds, store)


async def test_attesters_report_and_the_poster_posts_the_median_once(world):
    w = world
    slot = await w.next_slot(first=True)
    reporters = [w.reporter(i) for i in range(4)]
    outcomes = [await r.report() for r in reporters]
    assert {(o.state, o.slot) for batch in outcomes for o in batch} == {("signed", slot)}
    # Every honest attester read the same price: one message per asset, four signatures each.
    message = price_report(w.domain, BTC_ASSET, BTC, slot, slot + MAX_AGE, interval=INTERVAL)
    assert set(w.store.get(digest(w.domain, message)).signatures) == set(w.env.committee.signers)
    # Again in the same slot: nothing new is signed.
    assert {o.state for o in await reporters[0].report()} == {"already"}
    assert {o.state for o in await w.reporter(0).report()} == {"already"}  # a restarted reporter too
    poster = w.poster()
    results = {o.asset: o for o in await poster.post()}
    assert {a: (o.state, o.slot, o.price) for a, o in results.items()} == {BTC_ASSET: ("posted", slot, BTC), ETH_ASSET: ("posted", slot, ETH)}
    btc = await w.oracle.price(BTC_ASSET)
    assert (btc.price, btc.time, btc.tripped) == (BTC, slot, False)
    # Idempotent: the slot is on chain, nothing newer in the store.
    assert {o.state for o in await poster.post()} == {"skipped"}
    # A newer slot with a new price moves it.
    await w.feeds[BTC_ASSET].set_answer(w.env.key("deployer"), 96_000 * USD)
    slot2 = await w.next_slot()
    assert slot2 > slot
    await w.report(*reporters[1:])
    assert (await poster.post_asset(BTC_ASSET)).state == "posted"
    assert (await w.oracle.price(BTC_ASSET)).price == 96_000 * USD
    # Two posters racing for one slot: one posts, the other finds it done.
    await w.feeds[BTC_ASSET].set_answer(w.env.key("deployer"), 96_500 * USD)
    await w.next_slot()
    await w.report(*reporters)
    first, second = w.poster(), w.poster()
    selection = await second.select(BTC_ASSET)
    assert (await first.post_asset(BTC_ASSET)).state == "posted"
    with pytest.raises(Exception) as caught:
        await second.oracle.post_prices(second.key, BTC_ASSET, selection.messages, selection.committee, selection.indices, selection.signatures)
    assert caught.value.reason == "NotNewer"
    assert (await second.post_asset(BTC_ASSET)).state == "skipped"


async def test_one_lying_attester_moves_nothing_and_its_equivocation_is_recorded(world):
    w = world
    liar = 3
    honest = [w.reporter(i) for i in range(3)]
    lying = w.reporter(liar, feeds={BTC_ASSET: LyingFeed(w.env.evm, 10 * BTC)})
    # All four report: the median is the honest price.
    slot = await w.next_slot(first=True)
    await w.report(*honest, lying)
    selection = await w.poster().select(BTC_ASSET)
    assert selection.indices == [0, 1, 2, 3] and selection.median == BTC
    assert (await w.poster().post_asset(BTC_ASSET)).price == BTC
    assert (await w.oracle.price(BTC_ASSET)).price == BTC
    # The liar signs a second price for the same slot: refused by the store, kept as evidence.
    second = price_report(w.domain, BTC_ASSET, 11 * BTC, slot, slot + MAX_AGE, interval=INTERVAL)
    with pytest.raises(Equivocation):
        w.store.put(w.domain, second, address_of(w.keys[liar]), sign(digest(w.domain, second), w.keys[liar]), w.env.committee)
    (evidence,) = w.store.evidence(address_of(w.keys[liar]))
    assert evidence.second_message == second
    assert evidence.first_message_id == digest(w.domain, price_report(w.domain, BTC_ASSET, 10 * BTC, slot, slot + MAX_AGE, interval=INTERVAL))
    # One honest attester down: the liar's report makes three, which do not agree: no post.
    slot2 = await w.next_slot()
    await w.report(*honest[:2], lying)
    assert len(_signers(w, BTC_ASSET, slot2)) == 3
    assert await w.poster().select(BTC_ASSET) is None
    assert (await w.poster().post_asset(BTC_ASSET)).state == "skipped"
    assert (await w.oracle.price(BTC_ASSET)).time == slot
    # The third honest attester comes back: four reports, the honest median.
    await honest[2].report()
    assert (await w.poster().post_asset(BTC_ASSET)).state == "posted"
    assert await w.oracle.price(BTC_ASSET) == OraclePrice(BTC, slot2, False)


def _signers(w: World, asset: bytes, slot: int) -> set[str]:
    with w.store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT signer FROM committee_signature WHERE source_tx = :s AND nonce = :n"), {"s": report_source(asset).hex(), "n": str(slot)}
        )
        return {r[0] for r in rows}


async def test_reports_are_checked_again_when_read_from_the_store(world):
    w = world
    slot = await w.next_slot(first=True)
    await w.report(*(w.reporter(i) for i in range(3)))
    # A writer past ``put`` swaps a stored signature for another's: that report no longer counts.
    with w.store.engine.begin() as conn:
        where = {"src": report_source(BTC_ASSET).hex()}
        sig = conn.execute(
            text("SELECT signature FROM committee_signature WHERE signer = :s AND source_tx = :src"), {"s": address_of(w.keys[0]).hex(), **where}
        ).scalar_one()
        conn.execute(
            text("UPDATE committee_signature SET signature = :sig WHERE signer = :s AND source_tx = :src"),
            {"sig": sig, "s": address_of(w.keys[1]).hex(), **where},
        )
    now = await w.env.now()
    assert select_reports(w.store, w.domain, BTC_ASSET, [w.env.committee], now, after=0, max_age=MAX_AGE, max_spread_bps=SPREAD) is None
    # Another domain's reports are not this bridge's.
    other = Domain(w.domain.chain_id, bytes(19) + b"\x01")
    assert select_reports(w.store, other, BTC_ASSET, [w.env.committee], now, after=0, max_age=MAX_AGE, max_spread_bps=SPREAD) is None
    # A stale slot is not posted.
    assert select_reports(w.store, w.domain, BTC_ASSET, [w.env.committee], slot + MAX_AGE, after=0, max_age=MAX_AGE, max_spread_bps=SPREAD) is None


async def test_a_stale_or_broken_source_is_not_signed(world):
    w = world
    await w.next_slot()  # the feeds' last updates are 10 s old at least
    for feed, why in ((LyingFeed(w.env.evm, 0), "non-positive"), (LyingFeed(w.env.evm, -5), "non-positive")):
        (outcome,) = await w.reporter(0, feeds={BTC_ASSET: feed}).report()
        assert outcome.state == "skipped" and why in outcome.detail
    old = w.reporter(1, feeds={BTC_ASSET: w.feeds[BTC_ASSET]})
    old.source_max_age = 4
    (outcome,) = await old.report()
    assert outcome.state == "skipped" and "last updated" in outcome.detail
    assert w.store.signature_count() == 0


async def test_the_breaker_halts_the_poster_until_a_quorum_clears_it(world, tmp_path):
    w = world
    reporters = [w.reporter(i) for i in range(4)]
    poster = w.poster()
    first_block = await w.env.evm.height()
    slot1 = await w.next_slot(first=True)
    await w.report(*reporters)
    assert {o.state for o in await poster.post()} == {"posted"}
    # The BTC feed drops 30 %: the attesters report it, the post trips the breaker.
    await w.feeds[BTC_ASSET].set_answer(w.env.key("deployer"), 66_500 * USD)
    slot2 = await w.next_slot()
    await w.report(*reporters)
    outcome = await poster.post_asset(BTC_ASSET)
    assert outcome.state == "tripped"
    assert await w.oracle.price(BTC_ASSET) == OraclePrice(BTC, slot1, True)
    assert slot2 > slot1
    await w.next_slot()
    await w.report(*reporters)
    assert (await poster.post_asset(BTC_ASSET)).state == "skipped"
    # The operators approve a clear at the new level; three attesters sign it, the poster sends it.
    now = await w.env.now()
    clear = clear_breaker_message(w.domain, BTC_ASSET, 66_500 * USD, await w.oracle.trips(BTC_ASSET), slot1 + 1, now + 600)
    assert (await poster.clear_breaker(clear)).state == "skipped"  # no quorum yet
    for key in w.keys[:3]:
        sign_clear(w.store, key, w.domain, w.env.committee, clear)
    assert (await poster.clear_breaker(clear)).state == "posted"
    p = await w.oracle.price(BTC_ASSET)
    assert (p.price, p.time, p.tripped) == (66_500 * USD, slot1 + 1, False)
    await w.next_slot()
    await w.report(*reporters)
    assert (await poster.post_asset(BTC_ASSET)).state == "posted"
    # A replica folds the oracle's events to the chain's prices.
    engine = make_engine(f"sqlite:///{tmp_path / 'replica.sqlite'}")
    init_price_tables(engine)
    logs = await w.env.evm.events(first_block, await w.env.evm.height())
    events = decode_oracle_events(logs, w.oracle.address)
    assert [e.name for e in events] == ["PriceUpdated", "PriceUpdated", "BreakerTripped", "BreakerCleared", "PriceUpdated"]
    states = []
    for event in events:
        block = await w.env.evm.block_by_height(event.where.block_number)
        with engine.begin() as conn:
            assert fold_price_event(conn, event, block)
        states.append(replica_prices(engine)["0x" + BTC_ASSET.hex()])
    tripped = [s for s in states if s.tripped]
    assert len(tripped) == 1 and tripped[0].price == BTC and tripped[0].proposed == 66_500 * USD and tripped[0].trips == 1
    folded = replica_prices(engine)
    for asset in (BTC_ASSET, ETH_ASSET):
        chain = await w.oracle.price(asset)
        got = folded["0x" + asset.hex()]
        assert (got.price, got.time, got.tripped) == (chain.price, chain.time, chain.tripped)


def test_the_contract_rule_in_python():
    assert agreed_median([BTC, BTC, 10 * BTC, BTC], 3, SPREAD) == BTC
    assert agreed_median([BTC // 10, BTC, BTC, BTC], 3, SPREAD) == BTC
    with pytest.raises(PriceRejected) as caught:
        agreed_median([BTC, BTC, 10 * BTC], 3, SPREAD)
    assert caught.value.details["reason"] == "disputed"
    with pytest.raises(PriceRejected):
        agreed_median([BTC, BTC], 3, SPREAD)
    assert agreed_median([100, 101, 102], 3, 200) == 101


async def test_the_scheduled_jobs_report_and_post(world):
    w = world
    evm = w.env.evm
    interval = 2
    stop = asyncio.Event()
    reporters = [
        ReporterJob(key, w.store, feeds_of_world(w), interval, domain=w.domain, committee=w.env.committee, max_age=MAX_AGE, chain=evm) for key in w.keys
    ]
    poster = PosterJob(
        w.store, w.oracle, w.domain, w.env.key("relayer"), list(w.feeds), interval, committees=w.env.committee, max_age=MAX_AGE, max_spread_bps=SPREAD
    )
    poster.poster.margin = 0
    tasks = [asyncio.create_task(job.run(stop)) for job in (*reporters, poster)]

    async def both_posted() -> bool:
        return bool((await w.oracle.price(BTC_ASSET)).price and (await w.oracle.price(ETH_ASSET)).price)

    try:
        try:
            await wait_until(both_posted, timeout=20, interval=0.2, what="both prices posted by the scheduled jobs")
        except WaitTimeout:
            pass  # the assertions below say what each job did
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    jobs = (*reporters, poster)
    diagnosis = [(job.name, job.runs, job.last_error, dict(job.metrics.counters)) for job in jobs]
    assert (await w.oracle.price(BTC_ASSET)).price == BTC, diagnosis
    assert (await w.oracle.price(ETH_ASSET)).price == ETH, diagnosis
    assert all(job.runs >= 1 and not job.scheduler.running for job in jobs), diagnosis
    assert poster.metrics.counters["posts_posted"] >= 2, diagnosis
    assert not any(job.metrics.counters.get("failures") for job in jobs), diagnosis


def feeds_of_world(w: World):
    return {asset: MockAggregator(w.env.evm, feed.address) for asset, feed in w.feeds.items()}


def test_feeds_of_config():
    from bridge.committee.oracle import DEVNET_FEEDS, FeedConfig, OracleConfig

    config = OracleConfig("0x" + "11" * 20, 5, 300, 200, 2000, feeds={"BTC": FeedConfig(BTC_ASSET, "0x" + "22" * 20)})
    assert OracleConfig.from_json(config.to_json()) == config
    assert set(DEVNET_FEEDS) == {"BTC", "ETH"}
    assert config.feed("btc")[0] == "BTC"
    assert list(feeds_of(config, None)) == [BTC_ASSET]


def test_the_fold_on_both_databases(ledger_db):
    """``fold_price_event``'s upserts on SQLite and PostgreSQL: the events' values alone decide."""
    from bridge.committee.contract import BridgeEvent
    from chains.base import BlockRef
    from htlc.evm import LogRef

    _url, engine = ledger_db
    init_price_tables(engine)
    asset = "0x" + BTC_ASSET.hex()

    def event(name: str, height: int, **args) -> tuple[BridgeEvent, BlockRef]:
        return BridgeEvent(name, {"asset": asset, **args}, LogRef(height, "0x" + "ab" * 32, 0)), BlockRef(
            height, "0x" + "cd" * 32, "0x" + "ef" * 32, 1000 + height
        )

    for name, height, args in (
        ("PriceUpdated", 1, dict(price=BTC, time=900, reporters=3)),
        ("BreakerTripped", 2, dict(last=BTC, proposed=2 * BTC, trip=1)),
        ("BreakerCleared", 3, dict(id=bytes(32), price=2 * BTC, time=950, trip=1)),
        ("PriceUpdated", 4, dict(price=2 * BTC + 1, time=960, reporters=4)),
        ("Deposited", 5, dict(amount=1)),
    ):
        ev, block = event(name, height, **args)
        with engine.begin() as conn:
            assert fold_price_event(conn, ev, block) == (name != "Deposited")
        folded = replica_prices(engine)[asset]
        if name == "BreakerTripped":
            assert (folded.price, folded.time, folded.tripped, folded.trips, folded.proposed) == (BTC, 900, True, 1, 2 * BTC)
        elif name == "BreakerCleared":
            assert (folded.price, folded.time, folded.tripped, folded.trips, folded.proposed) == (2 * BTC, 950, False, 1, None)
    assert replica_prices(engine) == {asset: type(folded)(2 * BTC + 1, 960, False, 1, None, 4)}


async def test_the_devnet_oracle_and_its_config(evm, tmp_path):
    """What ``devnet up`` deploys (``deploy_devnet_oracle``), records under committee.json's
    ``"oracle"`` (``load_oracle_config``) and ``bridgectl devnet price`` moves (``set_devnet_price``)."""
    import json

    from bridge.committee.oracle import deploy_devnet_oracle, load_oracle_config, parse_usd, set_devnet_price
    from bridge.core.errors import InputError

    env = await make_env(evm)
    deployer = env.key("deployer")
    config = await deploy_devnet_oracle(evm, deployer, env.bridge.address)
    assert (config.max_age, config.max_spread_bps, config.breaker_step_bps, config.interval) == (300, 200, 2000, 10)
    assert await PriceOracle(evm, config.address).params() == (300, 200, 2000)
    assert {s: f.asset for s, f in config.feeds.items()} == {"BTC": BTC_ASSET, "ETH": ETH_ASSET}
    for asset, feed in feeds_of(config, evm).items():
        assert (await feed.latest_round_data()).answer == {BTC_ASSET: BTC, ETH_ASSET: ETH}[asset]
    path = tmp_path / "committee.json"
    path.write_text(json.dumps({"chain_id": env.chain_id, "oracle": config.to_json()}))
    assert load_oracle_config(path) == config
    path.write_text(json.dumps({"chain_id": env.chain_id}))
    assert load_oracle_config(path) is None
    name, data = await set_devnet_price(evm, deployer, config, "btc", "94250.5")
    assert (name, data.answer, data.round_id) == ("BTC", 9_425_050_000_000, 2)
    with pytest.raises(Exception) as caught:
        await set_devnet_price(evm, env.key("stranger"), config, "BTC", 1)
    assert caught.value.reason == "NotOwner"
    assert parse_usd("95_000") == BTC
    for bad in ("-1", "0", "1e400", "nan", "0.000000001", "abc"):
        with pytest.raises(InputError):
            parse_usd(bad)
    with pytest.raises(InputError):
        config.feed("DOGE")
