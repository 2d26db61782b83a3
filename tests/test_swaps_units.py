"""Swap pieces without chains: exact amounts, the timelock rules, the state store, LP config."""

from __future__ import annotations

import hashlib
import time
from fractions import Fraction

import pytest
from eth_abi import encode as abi_encode
from eth_utils import event_abi_to_log_topic
from sqlmodel import Session

from bridge.core.errors import ConfigError, Conflict, InputError, NotFound
from bridge.core.settings import Settings
from bridge.swaps import models as m
from bridge.swaps.assets import BTC, ETH, AssetBook
from bridge.swaps.config import load_swap_config
from bridge.swaps.models import INITIATOR, PARTICIPANT, Swap, SwapLeg
from bridge.swaps.observe import BtcSpendConsumer, ChainIndex, EvmHtlcConsumer, watched_outpoints
from bridge.swaps.store import SwapStore
from bridge.swaps.timelock import ChainTime, TimelockPolicy, TimelockRefused
from chains.base import BlockRef, ChainEvent
from chains.cursor_store import OrphanedBlock
from htlc.evm import SwapParams, decode_events, load_artifact

# --- amounts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, asset, base",
    [
        ("btc:0.5", BTC, 50_000_000),
        ("BTC:0.00000001", BTC, 1),
        ("eth:7.5", ETH, 7_500_000_000_000_000_000),
        ("eth:123456789.123456789123456789", ETH, 123456789_123456789123456789),
        ("tusd:1200", None, 1_200_000_000),
    ],
)
def test_amounts_convert_exactly(spec, asset, base):
    book = AssetBook({"tusd": ("0x" + "11" * 20, 6)})
    got_asset, got = book.parse(spec)
    assert got == base and isinstance(got, int)
    if asset is not None:
        assert got_asset == asset
    assert got_asset.to_base(got_asset.to_whole(got)) == got


@pytest.mark.parametrize(
    "spec, words",
    [
        ("btc:0.000000001", "more than 8 decimals"),
        ("btc:-1", "must be positive"),
        ("btc:0", "must be positive"),
        ("btc:abc", "not a number"),
        ("btc:NaN", "must be positive"),
        ("doge:1", "unknown asset"),
        ("btc0.5", "ASSET:AMOUNT"),
    ],
)
def test_bad_amounts_are_refused_by_name(spec, words):
    with pytest.raises(InputError, match=words):
        AssetBook().parse(spec)


# --- timelocks -----------------------------------------------------------------------------

POLICY = TimelockPolicy(safety_gap=1800, initiator_lock=7200, participant_lock=3600, min_participant_lock=600, claim_margin=300, btc_seconds_per_block=60)
NOW = ChainTime(height=1000, timestamp=1_700_000_000)


def test_initiator_expiry_rounds_blocks_up_and_participant_down():
    assert POLICY.initiator_expiry("bitcoin", NOW) == 1120
    assert POLICY.initiator_expiry("evm", NOW) == NOW.timestamp + 7200
    odd = TimelockPolicy(safety_gap=100, initiator_lock=1000, participant_lock=500, min_participant_lock=100, claim_margin=50, btc_seconds_per_block=60)
    assert odd.initiator_expiry("bitcoin", NOW) == 1017  # 1000 s -> 16.7 blocks -> 17
    assert odd.expiry_after("bitcoin", 500, NOW) == 1008  # 500 s -> 8.3 blocks -> 8


@pytest.mark.parametrize(
    "initiator_chain, initiator_expiry, participant_chain",
    [
        ("bitcoin", 1120, "evm"),
        ("evm", NOW.timestamp + 7200, "bitcoin"),
        ("bitcoin", 1050, "evm"),
        ("evm", NOW.timestamp + 2500, "bitcoin"),
    ],
)
def test_participant_expiry_ends_at_least_the_gap_before_the_initiators(initiator_chain, initiator_expiry, participant_chain):
    expiry = POLICY.participant_expiry(participant_chain, initiator_chain, initiator_expiry, NOW, NOW)
    initiator_left = POLICY.seconds_left(initiator_chain, initiator_expiry, NOW)
    participant_left = POLICY.seconds_left(participant_chain, expiry, NOW)
    assert POLICY.min_participant_lock <= participant_left <= min(POLICY.participant_lock, initiator_left - POLICY.safety_gap)


def test_participant_refuses_an_initiator_lock_too_close_to_expiry():
    with pytest.raises(TimelockRefused, match="less than the safety gap 1800s plus the minimum participant lock 600s"):
        POLICY.check_initiator_lock("bitcoin", 1000 + 39, NOW)  # 2340 s < 2400 s
    assert POLICY.check_initiator_lock("bitcoin", 1000 + 40, NOW) == 600


def test_initiator_refuses_to_claim_inside_the_margin():
    POLICY.check_claim("evm", NOW.timestamp + 300, NOW)
    with pytest.raises(TimelockRefused, match="under the claim margin 300s"):
        POLICY.check_claim("evm", NOW.timestamp + 299, NOW)
    with pytest.raises(TimelockRefused):
        POLICY.check_claim("bitcoin", 1004, NOW)  # 4 blocks ~ 240 s


def test_expiry_matches_cltv_and_the_contract():
    assert not POLICY.expired("bitcoin", 1001, NOW) and POLICY.expired("bitcoin", 1000, NOW)
    assert not POLICY.expired("evm", NOW.timestamp + 1, NOW) and POLICY.expired("evm", NOW.timestamp, NOW)


def test_inconsistent_policies_are_refused():
    with pytest.raises(InputError, match="no room for the safety gap"):
        TimelockPolicy(safety_gap=3600, initiator_lock=3600)
    with pytest.raises(InputError, match="positive"):
        TimelockPolicy(claim_margin=0)


# --- store -----------------------------------------------------------------------------------


@pytest.fixture
def store(ledger_db):
    """A swap store on SQLite and on PostgreSQL: its statements go to the DB-API directly."""
    return SwapStore(ledger_db[1])


def new_swap(store: SwapStore, swap_id: str = "s1", amount: str = "50000000", hashlock: str | None = None):
    """Each swap its own hashlock unless given: a hashlock backs one swap (``SwapLock``)."""
    now = time.time()
    hashlock = hashlock or hashlib.sha256(swap_id.encode()).hexdigest()
    return store.create(
        Swap(id=swap_id, role=INITIATOR, state=m.CREATED, hashlock=hashlock, secret="cd" * 32, created_at=now, updated_at=now),
        [
            SwapLeg(swap_id=swap_id, leg=INITIATOR, chain="bitcoin", asset="btc", amount=amount),
            SwapLeg(swap_id=swap_id, leg=PARTICIPANT, chain="evm", asset="eth", amount=str(10**22)),
        ],
    )


def test_create_is_idempotent_and_refuses_other_terms(store):
    first = new_swap(store)
    assert new_swap(store).swap.created_at == first.swap.created_at
    with pytest.raises(Conflict):
        new_swap(store, amount="1")
    assert store.get("s1").leg(PARTICIPANT).value == 10**22  # wei beyond 64 bits survive


def test_transition_checks_the_state_and_logs_it(store):
    new_swap(store)
    view = store.transition("s1", m.CREATED, m.INITIATOR_LOCK_INTENDED, "intent", legs={INITIATOR: {"lock_raw": "00"}})
    assert view.swap.state == m.INITIATOR_LOCK_INTENDED and view.leg(INITIATOR).lock_raw == "00"
    assert [(a.from_state, a.to_state) for a in store.get("s1").actions] == [(None, m.CREATED), (m.CREATED, m.INITIATOR_LOCK_INTENDED)]
    with pytest.raises(Conflict, match="is initiator_lock_intended, not created"):
        store.transition("s1", m.CREATED, m.FAILED)
    with pytest.raises(InputError):
        store.transition("s1", m.INITIATOR_LOCK_INTENDED, "almost_done")
    with pytest.raises(NotFound):
        store.get("nope")


def test_a_refused_transition_writes_nothing(store):
    new_swap(store)
    with pytest.raises(InputError, match="initiator.no_such_column"):
        store.transition("s1", m.CREATED, m.INITIATOR_LOCK_INTENDED, legs={INITIATOR: {"no_such_column": 1}})
    view = store.get("s1")
    assert view.swap.state == m.CREATED and len(view.actions) == 1


def test_defer_and_due(store):
    new_swap(store)
    assert store.due() == ["s1"]
    store.defer("s1", "waiting: 0/1 confirmations", 60)
    assert store.due() == [] and store.get("s1").swap.retries == 1
    store.wake("s1")
    assert store.due() == ["s1"]
    store.transition("s1", m.CREATED, m.FAILED, swap_fields={"last_error": "LP refused"})
    assert store.due() == [] and store.get("s1").swap.last_error == "LP refused"


def test_wake_expiring_makes_due_only_the_swaps_an_expiry_acts_on(store):
    for n in range(3):
        new_swap(store, f"s{n}")
        store.defer(f"s{n}", "waiting", 3600, count_retry=False)
    # s0: the trader's own Bitcoin lock expires at 100; s1: at 200; s2's own lock is on the EVM.
    store.transition("s0", m.CREATED, m.INITIATOR_LOCKED, legs={INITIATOR: {"expiry": 100}})
    store.transition("s1", m.CREATED, m.INITIATOR_LOCKED, legs={INITIATOR: {"expiry": 200}})
    store.transition("s2", m.CREATED, m.INITIATOR_LOCKED, legs={PARTICIPANT: {"expiry": 50}})
    for n in range(3):
        store.defer(f"s{n}", "waiting", 3600, count_retry=False)
    assert store.wake_expiring("bitcoin", expired=150, lock_deadline=0) == 1
    assert store.due() == ["s0"]
    assert store.wake_expiring("bitcoin", expired=150, lock_deadline=0) == 0  # already due
    assert store.wake_expiring("evm", expired=10**6, lock_deadline=10**6) == 0  # s2's EVM leg is the LP's


def test_transition_is_a_compare_and_set_between_two_runners(store):
    """Two processes on one database: the one that read a stale state is refused, and writes nothing."""
    other = SwapStore(store.engine)
    new_swap(store)
    store.transition("s1", m.CREATED, m.INITIATOR_LOCK_INTENDED, legs={INITIATOR: {"lock_raw": "00"}})
    with pytest.raises(Conflict, match="not created"):
        other.transition("s1", m.CREATED, m.FAILED, legs={INITIATOR: {"lock_raw": "ff"}})
    view = store.get("s1")
    assert (view.swap.state, view.leg(INITIATOR).lock_raw, len(view.actions)) == (m.INITIATOR_LOCK_INTENDED, "00", 2)
    assert [v.swap.id for v in other.list([m.INITIATOR_LOCK_INTENDED])] == ["s1"] and other.list([]) == []
    assert store.committed(INITIATOR, [m.INITIATOR_LOCK_INTENDED], "btc") == 50_000_000
    assert store.unbooked() == ["s1"]
    store.mark_booked("s1", view.swap.updated_at)
    assert store.unbooked() == [] and store.get("s1").swap.accepted is False


# --- observers ---------------------------------------------------------------------------------


def htlc_log(name: str, block: BlockRef, log_index: int, **values) -> ChainEvent:
    """An HTLC contract log as the EVM indexer delivers it."""
    abi = next(e for e in load_artifact("HTLC")["abi"] if e["type"] == "event" and e["name"] == name)
    indexed = [i for i in abi["inputs"] if i["indexed"]]
    plain = [i for i in abi["inputs"] if not i["indexed"]]
    topics = [event_abi_to_log_topic(abi)] + [abi_encode([i["type"]], [values[i["name"]]]) for i in indexed]
    data = abi_encode([i["type"] for i in plain], [values[i["name"]] for i in plain])
    tx_hash = f"0x{block.height:064x}"
    return ChainEvent(
        f"{tx_hash}:{log_index}",
        block,
        {
            "topics": ["0x" + t.hex() for t in topics],
            "data": "0x" + data.hex(),
            "block_number": block.height,
            "tx_hash": tx_hash,
            "log_index": log_index,
        },
    )


async def test_observers_keep_our_htlc_events_and_forget_them_on_a_reorg(store):
    """The consumers' and the index's statements, on each backend."""
    new_swap(store, hashlock="ab" * 32)
    store.defer("s1", "waiting", 3600)
    index, woken = ChainIndex(store.engine), []
    sender, recipient = "0x" + "1a" * 20, "0x" + "2b" * 20
    ours = SwapParams(sender, recipient, "0x" + "00" * 20, 10**22, bytes.fromhex("ab" * 32), 1_900_000_000, 7)
    other = SwapParams(sender, recipient, "0x" + "00" * 20, 1, bytes.fromhex("ee" * 32), 1_900_000_000, 8)
    b7, b8 = BlockRef(7, "0x07", "0x06", 0), BlockRef(8, "0x08", "0x07", 0)
    locked = [htlc_log("Locked", b7, n, id=p.id, **vars(p)) for n, p in enumerate((ours, other))]
    claimed = htlc_log("Claimed", b8, 0, id=ours.id, preimage=bytes.fromhex("cd" * 32))
    ref = "0x" + ours.id.hex()

    consumer = EvmHtlcConsumer(woken.append)
    for _ in range(2):  # a second delivery overwrites the row
        with Session(store.engine) as session:
            await consumer.on_events(locked, b7, session=session)
            session.commit()
    assert woken == [{"s1"}, {"s1"}] and store.due() == ["s1"]
    assert index.locked("0x" + ours.id.hex().upper()) == decode_events(locked[:1])[0]  # refs and addresses in any case
    assert index.locked_to("ab" * 32, "0x" + "2B" * 20) == decode_events(locked[:1])[0]
    assert index.locked("0x" + other.id.hex()) is None and index.settlement(ref) is None

    store.defer("s1", "waiting", 3600)
    with Session(store.engine) as session:  # a new consumer knows the swap by its stored Locked row
        await EvmHtlcConsumer(woken.append).on_events([claimed], b8, session=session)
        session.commit()
    assert woken[-1] == {"s1"} and store.due() == ["s1"]
    assert (index.settlement(ref).kind, index.settlement(ref).preimage) == ("claimed", "cd" * 32)

    store.defer("s1", "waiting", 3600)
    with Session(store.engine) as session:
        await consumer.on_revert([OrphanedBlock(8, "0x08", [claimed.key])], session=session)
        session.commit()
    assert woken[-1] == {"s1"} and store.due() == ["s1"]
    assert index.settlement(ref) is None and index.locked(ref) is not None


async def test_observers_keep_the_spends_of_our_btc_outputs(store):
    new_swap(store)
    outpoint = f"{'11' * 32}:0"
    store.transition("s1", m.CREATED, m.INITIATOR_LOCKED, legs={INITIATOR: {"lock_ref": outpoint}})
    store.defer("s1", "waiting", 3600)
    index, woken = ChainIndex(store.engine), []
    block = BlockRef(5, "5" * 64, "4" * 64, 0)
    spend = ChainEvent(
        "22" * 32,
        block,
        {
            "tx": {
                "vin": [
                    {"txid": "11" * 32, "vout": 0, "txinwitness": ["aa", "bb"]},
                    {"txid": "33" * 32, "vout": 1, "txinwitness": []},
                ]
            }
        },
    )
    consumer = BtcSpendConsumer(woken.append)
    for _ in range(2):  # a second delivery overwrites the row
        with Session(store.engine) as session:
            assert watched_outpoints(session).outpoints == {("11" * 32, 0)}
            await consumer.on_events([spend], block, session=session)
            session.commit()
    assert woken == [{"s1"}, {"s1"}] and store.due() == ["s1"]
    found = index.btc_spend(outpoint)
    assert (found.event_key, found.block_height, found.witness_items()) == ("22" * 32, 5, [b"\xaa", b"\xbb"])
    assert index.btc_spend(f"{'33' * 32}:1") is None

    store.transition("s1", m.INITIATOR_LOCKED, m.CLAIMED)
    store.defer("s1", "done", 3600)
    with Session(store.engine) as session:
        assert watched_outpoints(session).outpoints == set()
        await consumer.on_revert([OrphanedBlock(5, block.hash, [spend.key])], session=session)
        session.commit()
    assert index.btc_spend(outpoint) is None
    assert woken[-1] == {"s1"} and store.get("s1").swap.next_attempt_at > 0  # a finished swap is not made due


# --- config ----------------------------------------------------------------------------------


def test_swap_config_file_and_environment(tmp_path):
    (tmp_path / "swaps.toml").write_text('htlc = "0x' + "22" * 20 + '"\n[lp.markets."btc/eth"]\nrate = "150000000000/1"\nmin_sell = 1\nmax_sell = 100\n')
    config = load_swap_config(Settings(data_dir=str(tmp_path)), environ={"BRIDGE_SWAP_BTC_KEY": "01" * 32})
    assert config.btc_key == "01" * 32
    assert config.markets()[("btc", "eth")].rate == Fraction(150_000_000_000)
    (tmp_path / "bad.toml").write_text('[lp.markets."btc/eth"]\nrate = "1.5"\nmin_sell = 1\nmax_sell = 100\n')
    with pytest.raises(ConfigError, match="rate 'NUM/DEN'"):
        load_swap_config(Settings(data_dir=str(tmp_path)), str(tmp_path / "bad.toml"), environ={}).markets()
    with pytest.raises(ConfigError, match="not found"):
        load_swap_config(Settings(data_dir=str(tmp_path)), str(tmp_path / "missing.toml"), environ={})


def test_a_legs_recorded_outcome_wins_and_older_rows_are_judged_by_the_state(store):
    from bridge.swaps.books import leg_outcome

    view = new_swap(store)
    store.transition("s1", m.CREATED, m.CLAIMED, legs={PARTICIPANT: {"spend_kind": "claim"}})
    older = store.get("s1")  # a trader's row from before the outcome column
    assert (leg_outcome(older, older.leg(PARTICIPANT)), leg_outcome(older, older.leg(INITIATOR))) == ("claimed", None)
    store.transition("s1", m.CLAIMED, m.CLAIMED, legs={INITIATOR: {"spend_kind": "refund", "outcome": "refunded"}})
    now = store.get("s1")  # claimed, and its own lock refunded after the LP let it expire
    assert (leg_outcome(now, now.leg(PARTICIPANT)), leg_outcome(now, now.leg(INITIATOR))) == ("claimed", "refunded")
    assert view.leg(INITIATOR).outcome is None


def test_due_among_given_swaps_is_not_crowded_out_by_others(store):
    """``swap start`` steps one swap (``only``) with a limit on how many are fetched: older due swaps
    of the same database must not fill that limit and starve it."""
    for n in range(5):
        new_swap(store, f"old{n}")
        store.wake(f"old{n}")  # due since 0
    new_swap(store, "mine")
    store.defer("mine", "due a second ago", -1.0, count_retry=False)  # due, but waiting less long than the others
    assert "mine" not in store.due(limit=3)
    assert store.due(limit=3, among={"mine"}) == ["mine"]
