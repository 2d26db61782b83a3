"""The price oracle (``htlc/contracts/PriceOracle.sol``) and the devnet feed (``MockAggregator.sol``)
on the real Anvil, through their binding (``bridge/committee/oracle.py``).  Issue 15, "Prices,
health and liquidation"; DESIGN.md: "one lying attester must not move the price at all".

A 3-of-4 committee of a real ``CollateralBridge`` (``test_committee_contract.make_env``) signs the
reports under the bridge's EIP-712 domain.  Signatures are made independently of the message
module's digest (``eth_account``'s typed data, as in ``test_committee_contract``): the oracle must
agree with them.  Messages the module refuses to build are ``forge``d.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils import keccak, to_canonical_address

from bridge.committee.messages import BTC_ASSET, ETH_ASSET, Committee, Kind, Message
from bridge.committee.oracle import MockAggregator, PriceOracle, decode_oracle_events
from bridge.core.errors import ContractReverted
from devnets.controls import AnvilControls
from test_committee_contract import SIGNER_KEYS, Env, Keys, digest, forge, make_env, refused

USD = 10**8
BTC = 95_000 * USD
MAX_AGE, SPREAD, STEP = 300, 200, 2000
CLEAR = keccak(b"CLEAR_BREAKER")
HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
#: Gas of postPrices by report count, printed at the end of the module's gas test.
GAS: dict[int, int] = {}


class Oracle:
    def __init__(self, env: Env, oracle: PriceOracle) -> None:
        self.env, self.oracle = env, oracle
        self.relayer = env.key("relayer")

    def report(self, price: int, observed: int, asset: bytes = BTC_ASSET, ttl: int = MAX_AGE, forged: bool = False, **kw) -> Message:
        env = self.env
        fields = dict(
            version=1,
            kind=Kind.PRICE_REPORT,
            source_chain_id=env.chain_id,
            source_tx=keccak(b"PRICE_REPORT" + asset),
            source_index=0,
            dest_chain_id=env.chain_id,
            account=bytes(20),
            asset=asset,
            amount=price,
            nonce=observed,
            expiry=observed + ttl,
            payload_hash=bytes(32),
        )
        fields.update(kw)
        return forge(Message, **fields) if forged else Message(**fields)

    def sign(self, m: Message, index: int, committee: Committee | None = None, chain_id: int | None = None, contract: str | None = None) -> bytes:
        committee = committee or self.env.committee
        h = digest(m, chain_id or self.env.chain_id, contract or self.env.bridge.address)
        return bytes(Account.unsafe_sign_hash(h, self.env.keys.by_address[committee.signers[index]]).signature)

    def signed(self, prices: list[int], observed: int, indices: list[int] | None = None, **kw) -> tuple[list[Message], list[int], list[bytes]]:
        """One report per price, the i-th by member ``indices[i]`` (default 0, 1, 2, ...)."""
        indices = indices if indices is not None else list(range(len(prices)))
        reports = [self.report(p, observed, **kw) for p in prices]
        return reports, indices, [self.sign(m, i) for m, i in zip(reports, indices)]

    async def post(self, reports, indices, sigs, asset: bytes = BTC_ASSET, committee: Committee | None = None):
        return await self.oracle.post_prices(self.relayer, asset, reports, committee or self.env.committee, indices, sigs)

    async def post_prices(self, prices: list[int], observed: int, indices: list[int] | None = None, asset: bytes = BTC_ASSET, **kw):
        return await self.post(*self.signed(prices, observed, indices, asset=asset, **kw), asset=asset)

    def clear(self, price: int, at: int, trip: int = 1, asset: bytes = BTC_ASSET, **kw) -> Message:
        return self.report(price, at, asset=asset, payload_hash=CLEAR, source_index=trip, **kw)

    async def send_clear(self, m: Message, indices=(0, 1, 2), committee: Committee | None = None):
        committee = committee or self.env.committee
        return await self.oracle.clear_breaker(self.relayer, m, committee, list(indices), [self.sign(m, i, committee) for i in indices])


async def deploy(env: Env, **kw) -> PriceOracle:
    params = dict(max_age=MAX_AGE, max_spread_bps=SPREAD, breaker_step_bps=STEP) | kw
    return await PriceOracle.deploy(env.evm, env.key("deployer"), env.bridge.address, **params)


@pytest.fixture
async def env(evm) -> Env:
    return await make_env(evm)


@pytest.fixture
async def o(env) -> Oracle:
    return Oracle(env, await deploy(env))


async def price_of(o: Oracle, asset: bytes = BTC_ASSET) -> tuple[int, int, bool]:
    p = await o.oracle.price(asset)
    return p.price, p.time, p.tripped


# --- the median of a quorum -------------------------------------------------------------------


async def test_median_of_three_honest_reports_is_posted(o):
    now = await o.env.now()
    assert await price_of(o) == (0, 0, False)
    receipt = await o.post_prices([95_100 * USD, 94_900 * USD, BTC], now - 30)
    (event,) = o.oracle.events_in(receipt)
    assert (event.name, event["price"], event["time"], event["reporters"]) == ("PriceUpdated", BTC, now - 30, 3)
    assert await price_of(o) == (BTC, now - 30, False)
    # The oracle's id of a report is the bridge's (its domain, its struct hash) and eth_account's.
    m = o.report(BTC, now)
    assert await o.oracle.message_id(m) == await o.env.bridge.message_id(m) == digest(m, o.env.chain_id, o.env.bridge.address)
    assert await o.oracle.domain_separator() == await o.env.bridge.domain_separator()
    assert await o.oracle.params() == (MAX_AGE, SPREAD, STEP)
    assert await o.oracle.bridge() == o.env.bridge.address


async def test_one_lying_attester_moves_nothing(o):
    now = await o.env.now()
    # Four reports, one of them 10x: the median is the honest price; the quorum of three agrees.
    receipt = await o.post_prices([BTC, BTC, 10 * BTC, BTC], now - 200)
    assert [(e.name, e["price"], e["reporters"]) for e in o.oracle.events_in(receipt)] == [("PriceUpdated", BTC, 4)]
    # The liar 10x low, at another index: the same.
    await o.post_prices([BTC // 10, BTC, BTC, BTC], now - 150)
    assert await price_of(o) == (BTC, now - 150, False)
    # Exactly M = 3 reports with the liar among them: no quorum agrees, nothing moves.
    await refused("PricesDisagree", o.post_prices([BTC, 10 * BTC, BTC], now - 100))
    await refused("PricesDisagree", o.post_prices([BTC // 10, BTC, BTC], now - 100, indices=[1, 2, 3]))
    # A liar inside the spread cannot move the median either (the lower middle of four is honest).
    await o.post_prices([BTC, BTC, BTC * 10_199 // 10_000, BTC], now - 50)
    await o.post_prices([BTC * 9_801 // 10_000, BTC, BTC, BTC], now - 40)
    assert await price_of(o) == (BTC, now - 40, False)


async def test_a_disputed_set_is_refused(o):
    now = await o.env.now()
    # Honest sources 2.6 % apart: no three reports agree within 2 %.
    await refused("PricesDisagree", o.post_prices([95_000 * USD, 96_300 * USD, 97_500 * USD], now - 10))
    await refused("PricesDisagree", o.post_prices([93_000 * USD, 95_000 * USD, 97_000 * USD, 99_000 * USD], now - 10))
    # Exactly at the bound (max - min = 2 % of the median) is agreement.
    await o.post_prices([100_000 * USD, 101_000 * USD, 102_000 * USD], now - 10)
    assert (await price_of(o))[0] == 101_000 * USD


async def test_stale_future_and_expired_reports_are_refused(o):
    now = await o.env.now()
    await refused("Stale", o.post_prices([BTC] * 3, now - MAX_AGE - 5, ttl=600))
    await refused("Stale", o.post_prices([BTC] * 3, now + 120, ttl=600))
    # One stale report among fresh ones is enough to refuse the set.
    reports, indices, sigs = o.signed([BTC] * 3, now - 10)
    reports[2] = o.report(BTC, now - MAX_AGE - 5, ttl=600)
    sigs[2] = o.sign(reports[2], 2)
    await refused("Stale", o.post(reports, indices, sigs))
    await refused("MessageExpired", o.post_prices([BTC] * 3, now - 100, ttl=90))
    assert await price_of(o) == (0, 0, False)


async def test_quorum_rules(o):
    env = o.env
    now = await env.now()
    # M - 1 reports.
    await refused("NotEnoughReports", o.post_prices([BTC] * 2, now))
    # One member reporting twice (the same index twice), or indices out of order.
    await refused("IndicesNotAscending", o.post_prices([BTC] * 3, now, indices=[0, 1, 1]))
    await refused("IndicesNotAscending", o.post_prices([BTC] * 3, now, indices=[0, 2, 1]))
    reports, indices, sigs = o.signed([BTC] * 3, now, indices=[0, 1, 3])
    await refused("IndexOutOfRange", o.post(reports, [0, 1, 4], sigs))
    # A signature by a stranger at a member's index; a member's signature at another's index.
    reports, indices, sigs = o.signed([BTC] * 3, now)
    stranger = bytes(Account.unsafe_sign_hash(digest(reports[2], env.chain_id, env.bridge.address), SIGNER_KEYS[5]).signature)
    await refused("WrongSigner", o.post(reports, indices, [*sigs[:2], stranger]))
    await refused("WrongSigner", o.post(reports, [0, 1, 3], sigs))
    # One signature per report, no more, no less.
    await refused("QuorumMalformed", o.oracle._transact(o.relayer, "postPrices", *_args(o, reports, indices, sigs, extra=b"\x00")))
    # Malleated (high-s) and v outside 27/28.
    r, s, v = sigs[1][:32], int.from_bytes(sigs[1][32:64], "big"), sigs[1][64]
    high = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    await refused("HighS", o.post(reports, indices, [sigs[0], high, sigs[2]]))
    await refused("BadV", o.post(reports, indices, [sigs[0], sigs[1][:64] + b"\x01", sigs[2]]))
    # A committee the bridge does not hold (another threshold of the same signers).
    other = Committee(0, env.committee.signers, 4)
    reports4, indices4, sigs4 = o.signed([BTC] * 4, now)
    await refused("UnknownCommittee", o.post(reports4, indices4, sigs4, committee=other))
    assert await price_of(o) == (0, 0, False)
    await o.post(reports, indices, sigs)
    assert (await price_of(o))[0] == BTC


def _args(o: Oracle, reports, indices, sigs, extra: bytes = b"") -> tuple:
    """``postPrices``'s arguments with ``extra`` bytes after the signatures."""
    from bridge.committee.contract import committee_args, message_tuple, pack_quorum

    return (BTC_ASSET, [message_tuple(m) for m in reports], *committee_args(o.env.committee), pack_quorum(indices, sigs) + extra)


async def test_reports_must_be_price_reports_for_this_asset_chain_and_bridge(o):
    env = o.env
    now = await env.now()

    async def one_bad(refusal: str, sign_kw: dict | None = None, **kw) -> None:
        reports, indices, sigs = o.signed([BTC] * 3, now)
        reports[1] = o.report(BTC, now, **kw)
        sigs[1] = o.sign(reports[1], 1, **(sign_kw or {}))
        await refused(refusal, o.post(reports, indices, sigs))

    # Signed for another chain, or for another contract (the oracle itself, another bridge).
    await one_bad("WrongSigner", {"chain_id": 1})
    await one_bad("WrongSigner", {"contract": o.oracle.address})
    other_bridge = await make_env(env.evm)
    await one_bad("WrongSigner", {"contract": other_bridge.bridge.address})
    # Aimed at another chain, another asset, another kind, a clear used as a report, a zero price.
    await one_bad("WrongChain", dest_chain_id=1)
    await one_bad("WrongAsset", asset=ETH_ASSET)
    await one_bad("WrongKind", kind=Kind.RELEASE, forged=True)
    await one_bad("PayloadMismatch", payload_hash=CLEAR)
    await one_bad("ZeroAmount", amount=0)
    await one_bad("PriceOutOfRange", amount=1 << 128)
    await one_bad("WrongVersion", version=2, forged=True)
    # A report signed for the oracle's own address as the domain is no report of the bridge's domain.
    assert await price_of(o) == (0, 0, False)


async def test_replay_and_older_reports_do_nothing(o):
    now = await o.env.now()
    signed = o.signed([BTC] * 3, now - 60)
    await o.post(*signed)
    await refused("NotNewer", o.post(*signed))
    await refused("NotNewer", o.post_prices([96_000 * USD] * 3, now - 61))
    await refused("NotNewer", o.post_prices([96_000 * USD] * 3, now - 60, indices=[1, 2, 3]))
    await o.post_prices([96_000 * USD] * 3, now - 59, indices=[1, 2, 3])
    assert await price_of(o) == (96_000 * USD, now - 59, False)
    # The stored time is the oldest report's: a set mixing in an older report is refused whole.
    reports, indices, sigs = o.signed([BTC] * 3, now)
    reports[0] = o.report(BTC, now - 59)
    sigs[0] = o.sign(reports[0], 0)
    await refused("NotNewer", o.post(reports, indices, sigs))


async def test_breaker_trips_halts_and_only_a_quorum_clears(o):
    env = o.env
    now = await env.now()
    await o.post_prices([BTC] * 3, now - 200)
    # A 25 % drop: beyond the 20 % step.  The call succeeds, records the trip, keeps the price.
    receipt = await o.post_prices([71_250 * USD] * 4, now - 190)
    (event,) = o.oracle.events_in(receipt)
    assert (event.name, event["last"], event["proposed"], event["trip"]) == ("BreakerTripped", BTC, 71_250 * USD, 1)
    assert await price_of(o) == (BTC, now - 200, True)
    assert await o.oracle.trips(BTC_ASSET) == 1
    # Halted: even a set at the old price is refused until cleared.
    await refused("BreakerIsTripped", o.post_prices([BTC] * 3, now - 180))
    # Other assets are not halted.
    await o.post_prices([3_500 * USD] * 3, now - 180, asset=ETH_ASSET)
    # The clear: a quorum of the current committee, for this trip, newer, not from the future.
    clear = o.clear(72_000 * USD, now - 170, ttl=600)
    await refused("NotEnoughSignatures", o.send_clear(clear, indices=(0, 1)))
    await refused("WrongTrip", o.send_clear(o.clear(72_000 * USD, now - 170, trip=2, ttl=600)))
    await refused("PayloadMismatch", o.send_clear(o.report(72_000 * USD, now - 170, ttl=600, source_index=1)))
    await refused("NotNewer", o.send_clear(o.clear(72_000 * USD, now - 200, ttl=600)))
    await refused("Stale", o.send_clear(o.clear(72_000 * USD, now + 500, ttl=900)))
    await refused("IndicesNotAscending", o.send_clear(clear, indices=(1, 0, 2)))
    await refused("NotTripped", o.send_clear(o.clear(3_500 * USD, now - 170, asset=ETH_ASSET, ttl=600)))
    receipt = await o.send_clear(clear)
    (event,) = o.oracle.events_in(receipt)
    assert (event.name, event["price"], event["time"], event["trip"]) == ("BreakerCleared", 72_000 * USD, now - 170, 1)
    assert event["id"] == digest(clear, env.chain_id, env.bridge.address)
    assert await o.oracle.consumed(event["id"])
    assert await price_of(o) == (72_000 * USD, now - 170, False)
    # Once cleared, it acts no more, and reports flow again from the new reference.
    await refused("NotTripped", o.send_clear(clear))
    await o.post_prices([71_250 * USD] * 3, now - 160)
    assert await price_of(o) == (71_250 * USD, now - 160, False)
    # A clear signed for the first trip cannot clear a second one.
    await o.post_prices([150_000 * USD] * 3, now - 150)
    assert await o.oracle.trips(BTC_ASSET) == 2
    await refused("WrongTrip", o.send_clear(o.clear(150_000 * USD, now - 140, trip=1, ttl=600)))
    await o.send_clear(o.clear(150_000 * USD, now - 140, trip=2, ttl=600))
    assert await price_of(o) == (150_000 * USD, now - 140, False)
    names = [e.name for e in await o.oracle.events()]
    assert names == ["PriceUpdated", "BreakerTripped", "PriceUpdated", "BreakerCleared", "PriceUpdated", "BreakerTripped", "BreakerCleared"]


async def test_previous_committee_reports_within_grace_only(evm):
    env = await make_env(evm, grace=120)
    o = Oracle(env, await deploy(env))
    now = await env.now()
    old = env.committee
    new_keys = Keys(SIGNER_KEYS[1:5])
    new = new_keys.committee(1, 3)
    env.keys.by_address.update(new_keys.by_address)
    rotation = Message(1, Kind.ROTATION, env.chain_id, bytes(32), 0, env.chain_id, bytes(20), bytes(20), 0, 1, now + 600, new.hash)
    indices, sigs = env.sign(rotation, old)
    await env.bridge.rotate(env.key("relayer"), rotation, old, indices, sigs, new)
    # The replaced committee's reports still land within the grace window ...
    await o.post_prices([BTC] * 3, now - 10)
    assert (await price_of(o))[0] == BTC
    # ... and a clear needs the current committee.
    await o.post_prices([2 * BTC] * 3, now - 5)
    await refused("UnknownCommittee", o.send_clear(o.clear(2 * BTC, now, ttl=600), committee=old))
    await o.send_clear(o.clear(2 * BTC, now, ttl=600), committee=new)
    # After the grace window, only the new committee's reports count.
    await AnvilControls(evm).increase_time(121)
    later = await env.now()
    await refused("CommitteeExpired", o.post_prices([2 * BTC] * 3, later - 5))
    reports = [o.report(2 * BTC, later - 5) for _ in range(3)]
    sigs = [o.sign(m, i, new) for m, i in zip(reports, range(3))]
    await o.post(reports, [0, 1, 2], sigs, committee=new)
    assert await price_of(o) == (2 * BTC, later - 5, False)


async def test_deploy_refuses_a_bad_configuration(env):
    deployer = env.key("deployer")
    for kw in (dict(max_age=0), dict(max_age=86_401), dict(max_spread_bps=10_001), dict(breaker_step_bps=0), dict(breaker_step_bps=1_000_001)):
        params = dict(max_age=MAX_AGE, max_spread_bps=SPREAD, breaker_step_bps=STEP) | kw
        with pytest.raises(ContractReverted) as caught:
            await PriceOracle.deploy(env.evm, deployer, env.bridge.address, **params)
        assert caught.value.reason == "BadConfig"
    # Not a bridge: an address without code, and a contract without the bridge's domain.
    await refused("BadConfig", PriceOracle.deploy(env.evm, deployer, env.parties["stranger"].address, max_age=1, max_spread_bps=0, breaker_step_bps=1))
    with pytest.raises(ContractReverted):
        await PriceOracle.deploy(env.evm, deployer, env.token.address, max_age=1, max_spread_bps=0, breaker_step_bps=1)


async def test_mock_aggregator_rounds(env):
    owner = env.key("deployer")
    feed = await MockAggregator.deploy(env.evm, owner, "BTC / USD", BTC)
    assert (await feed.decimals(), await feed.description()) == (8, "BTC / USD")
    first = await feed.latest_round_data()
    assert (first.round_id, first.answer, first.answered_in_round) == (1, BTC, 1)
    assert first.updated_at == first.started_at and first.updated_at > 0
    await feed.set_answer(owner, 90_000 * USD)
    second = await feed.latest_round_data()
    assert (second.round_id, second.answer) == (2, 90_000 * USD) and second.updated_at >= first.updated_at
    await refused("NotOwner", feed.set_answer(env.key("stranger"), 1))
    empty = await MockAggregator.deploy(env.evm, owner, "ETH / USD")
    assert (await empty.latest_round_data()).round_id == 0


async def test_gas_of_post_prices(o):
    now = await o.env.now()
    first = (await o.post_prices([BTC] * 3, now - 120)).gas_used
    GAS[3] = (await o.post_prices([BTC] * 3, now - 100)).gas_used
    GAS[4] = (await o.post_prices([BTC] * 4, now - 90)).gas_used
    eth = await o.post_prices([3_500 * USD] * 3, now - 90, asset=ETH_ASSET)
    print(f"\npostPrices gas: 3 reports {GAS[3]}, 4 reports {GAS[4]} (an asset's first price, 3 reports: {first})")
    assert 0 < GAS[4] - GAS[3] < 12_000  # one report more: its calldata, hash and one ecrecover
    assert GAS[3] < 90_000
    assert decode_oracle_events(eth.logs, o.oracle.address)[0]["price"] == 3_500 * USD
    assert decode_oracle_events(eth.logs, o.env.bridge.address) == []
    assert to_canonical_address(o.oracle.address)
