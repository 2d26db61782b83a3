"""The replica's fold (``bridge/committee/replica.py``): the margin ledger as a deterministic fold of the
bridge contract's events, exactly once, whatever is replayed, crashed or forged.

The devnet tests deploy a bridge of their own on the session Anvil (``tests/support/committee.py``),
act as users would, and drive ``Replica`` through a ``chains.indexer.Indexer`` of their own (no
daemons): each ``catch_up`` folds what the chain has, so every assertion is on a known height.  The
unit tests fold hand-built ``BridgeEvent`` values into a replica on a real SQLite file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from eth_utils import keccak, to_canonical_address, to_checksum_address
from sqlalchemy import text
from sqlmodel import Session

from bridge.committee.config import ETH_ADDRESS
from bridge.committee.contract import BridgeEvent, decode_events
from bridge.committee.crypto import address_of, sign
from bridge.committee.messages import Committee, Domain, digest
from bridge.committee.replica import Replica, ReplicaConfig, ReplicaReorg, owner_of
from bridge.core.db import make_engine
from bridge.core.errors import ContractReverted
from bridge.core.retry import is_retryable
from bridge.core.settings import Settings
from bridge.ledger.assets import eth
from bridge.ledger.audit import audit
from chains.base import BlockRef
from chains.cursor_store import OrphanedBlock
from chains.evm import EvmLogFilter
from chains.indexer import Indexer
from devnets.controls import AnvilControls
from devnets.presets import ONE_ETH
from htlc.evm import LogRef
from relayers.committee import ReplicaFollower
from support.committee import TUSD, chain_refuses, own_bridge

if TYPE_CHECKING:
    from support.committee import TestBridge

log = logging.getLogger("test.committee.replica")

# A contract that emits whatever log its caller asks for: calldata = topic0 || topic1 || topic2 || data,
# hand-assembled so that no compiler is needed (LOG3 of calldata[96:] with the first three words as topics).
_IMPOSTER_RUNTIME = "604035602035600035606036038060606000376000a300"
_IMPOSTER_INIT = "601780600b6000396000f3" + _IMPOSTER_RUNTIME
DEPOSITED_TOPIC = keccak(b"Deposited(address,address,uint256,uint64)")


# --- a replica driven by an indexer of the test's own --------------------------------------------------


class Follower:
    """A replica on its own database, folded by an indexer the test steps itself."""

    def __init__(self, bridge: TestBridge, where: Path, *, name: str = "replica", batch_blocks: int = 500, replica: type[Replica] = Replica) -> None:
        self.bridge = bridge
        self.url = f"sqlite:///{where}"
        self.replica = replica(make_engine(self.url), bridge.config.replica_config())
        self.indexer = Indexer(
            name,
            bridge.evm,
            self.replica.engine,
            self.replica,
            selector=EvmLogFilter(address=bridge.config.bridge),
            confirmations=1,
            batch_blocks=batch_blocks,
            poll_interval=0.1,
            start_height=bridge.config.deploy_block,
        )

    async def catch_up(self) -> int:
        """Step until the indexer is at the head it read; the height folded to."""
        for _ in range(10_000):
            result = await self.indexer.step()
            if result.caught_up:
                return self.indexer.cursor().height
        raise AssertionError("the indexer never caught up")

    @property
    def height(self) -> int:
        return self.indexer.cursor().height


def state(replica: Replica) -> dict:
    """Everything two replicas at one height must agree on, as plain values."""
    with replica.engine.connect() as conn:
        committees = conn.execute(text("SELECT epoch, hash, since_height, since_time, valid_until FROM replica_committee ORDER BY epoch")).all()
        accounts = conn.execute(text("SELECT id, owner, kind, asset FROM ledger_accounts ORDER BY id")).all()
        transfers = conn.execute(text("SELECT id, kind, debit_account, credit_account, asset, amount, height FROM ledger_transfers ORDER BY height, idx")).all()
    return {
        "balances": replica.balances(),
        "requests": replica.requests(),
        "anomalies": replica.anomalies(),
        "committees": [tuple(r) for r in committees],
        "accounts": [tuple(r) for r in accounts],
        "transfers": [tuple(r) for r in transfers],
        "ledger_height": replica.ledger.height(),
    }


def assert_books_balance(replica: Replica) -> None:
    report = audit(replica.engine)
    assert report.ok, report.problems
    assert all(t["balance"] == 0 and t["debits_pending"] == t["credits_pending"] for t in report.totals.values()), report.totals


def quorum_of(bridge: TestBridge, mid: bytes, signers: list[int]) -> tuple[list[int], list[bytes]]:
    """Indices and signatures of committee keys ``signers`` (ascending) on message id ``mid``."""
    return signers, [sign(mid, bridge.keys[i]) for i in signers]


async def _block_ref(evm, height: int) -> BlockRef:
    return await evm.block_by_height(height)


# --- exactly once --------------------------------------------------------------------------------------


async def test_a_deposit_is_credited_once_however_often_its_block_is_delivered_and_a_forged_log_never(evm, tmp_path):
    log.info("declare: a bridge of our own, a user, and an imposter contract that emits Deposited logs")
    bridge = await own_bridge(evm, tmp_path / "bridge")
    user, key = await bridge.user()
    eth_code = bridge.config.ledger_asset("ETH").code
    imposter = await evm.deploy(bridge.deployer, [], _IMPOSTER_INIT)

    log.info("act: deposit 2 ETH to the bridge; the imposter claims a 1,000 ETH deposit for the same user")
    deposit = await bridge.contract.deposit_eth(key, 2 * ONE_ETH)
    forged_data = (
        DEPOSITED_TOPIC
        + to_canonical_address(user).rjust(32, b"\0")
        + bytes(32)  # the ETH asset, the zero address
        + (1_000 * ONE_ETH).to_bytes(32, "big")
        + (0).to_bytes(32, "big")
    )
    forged = await evm.wait_for_receipt(await evm.transact(bridge.deployer, imposter, 0, forged_data))
    (fake,) = decode_events(forged.logs)  # the same event, byte for byte: only its emitter differs
    assert (fake.name, fake["account"], fake["amount"]) == ("Deposited", user, 1_000 * ONE_ETH)
    assert forged.logs[0]["address"].lower() == imposter.lower() and bridge.contract.events_in(forged) == []

    log.info("check: the replica folds the bridge's deposit, never the imposter's")
    first = Follower(bridge, tmp_path / "replica.sqlite")
    await first.catch_up()
    assert first.height >= forged.block_number
    want = {(owner_of(user), eth_code): (2 * ONE_ETH, 0)}
    assert first.replica.balances() == want
    assert first.replica.anomalies() == []
    # What keeps the imposter out is the indexer's selector: the bridge's address, in the daemons too.
    settings = Settings(data_dir=str(tmp_path / "daemon"), evm={"url": evm.url}, committee={"config": str(bridge.config_path)})
    follower = ReplicaFollower("replica-check", evm, first.replica, bridge.config, settings)
    assert follower.indexer.selector == EvmLogFilter(address=[bridge.config.bridge])  # the bridge only (no oracle in this bridge)
    unfiltered = Follower(bridge, tmp_path / "unfiltered.sqlite")
    unfiltered.indexer.selector = None
    await unfiltered.catch_up()
    assert unfiltered.replica.balances() == {(owner_of(user), eth_code): (1_002 * ONE_ETH, 0)}, "without the selector the forged log would count"
    before = state(first.replica)

    log.info("act: restart the indexer on the same database: nothing is delivered again")
    restarted = Follower(bridge, tmp_path / "replica.sqlite")
    await restarted.catch_up()
    assert state(restarted.replica) == before

    log.info("act: deliver the deposit's block again, by hand and through a second indexer on the same books")
    block = await _block_ref(evm, deposit.block_number)
    events = await bridge.contract.events(deposit.block_number, deposit.block_number)
    assert [e.name for e in events] == ["Deposited"]
    for _ in range(2):
        with restarted.replica.engine.begin() as conn:
            restarted.replica.fold(conn, events, block)
    twin = Follower(bridge, tmp_path / "replica.sqlite", name="replica-twin")  # its own cursor: every block again
    await twin.catch_up()
    assert state(twin.replica) == before
    assert_books_balance(twin.replica)


# --- replicas agree ------------------------------------------------------------------------------------


async def test_two_replicas_folding_the_same_chain_hold_the_same_books(evm, tmp_path):
    log.info("declare: a bridge; replica A folds block by block while users act, replica B once at the end")
    bridge = await own_bridge(evm, tmp_path / "bridge")
    a_user, a_key = await bridge.user()
    b_user, b_key = await bridge.user()
    token = bridge.config.assets["TUSD"][0]
    eth_code, tusd_code = (bridge.config.ledger_asset(s).code for s in ("ETH", "TUSD"))
    live = Follower(bridge, tmp_path / "a.sqlite", batch_blocks=1)

    log.info("act: deposits, requests the margin covers, one release by a quorum")
    steps = [
        bridge.contract.deposit_eth(a_key, 3 * ONE_ETH),
        bridge.contract.deposit_erc20(a_key, token, 1_000 * TUSD),
        bridge.contract.deposit_eth(b_key, ONE_ETH),
        bridge.contract.request_withdrawal(a_key, ETH_ADDRESS, ONE_ETH),  # held
        bridge.contract.request_withdrawal(b_key, ETH_ADDRESS, ONE_ETH),  # held: all of it
        bridge.contract.request_withdrawal(a_key, token, 400 * TUSD),  # held
    ]
    for step in steps:
        await step
        await live.catch_up()
    held = live.replica.requests(state="held")
    assert [(r.account, r.amount) for r in held] == [(owner_of(a_user), ONE_ETH), (owner_of(b_user), ONE_ETH), (owner_of(a_user), 400 * TUSD)]

    log.info("act: requests the margin does not cover: the chain refuses them, so no replica has anything to fold")
    books = (live.replica.balances(), live.replica.requests())
    await chain_refuses(bridge, bridge.contract.request_withdrawal(b_key, ETH_ADDRESS, 5 * ONE_ETH))  # 1 ETH there, all of it taken
    await chain_refuses(bridge, bridge.contract.request_withdrawal(a_key, token, 5_000 * TUSD))  # 600 TUSD left
    await chain_refuses(bridge, bridge.contract.request_withdrawal(b_key, ETH_ADDRESS, 1))  # all of it is taken
    await live.catch_up()
    assert (live.replica.balances(), live.replica.requests()) == books, "nothing held, no request row"

    first = held[0]
    await bridge.contract.release(bridge.relayer_key, first.message, bridge.committee, *quorum_of(bridge, first.message_id, [0, 2, 3]))
    await bridge.contract.deposit_eth(b_key, ONE_ETH // 2)
    await live.catch_up()

    log.info("check: replica B, folded in one batch on its own database, holds the same books")
    late = Follower(bridge, tmp_path / "b.sqlite")
    assert await late.catch_up() == live.height
    a, b = state(live.replica), state(late.replica)
    assert a == b
    assert a["balances"] == {
        (owner_of(a_user), eth_code): (2 * ONE_ETH, 0),
        (owner_of(a_user), tusd_code): (1_000 * TUSD, 400 * TUSD),
        (owner_of(b_user), eth_code): (ONE_ETH + ONE_ETH // 2, ONE_ETH),
    }
    assert [(r.nonce, r.state) for r in a["requests"]] == [(0, "released"), (1, "held"), (2, "held")]
    # The same RELEASE bytes everywhere: what lets a quorum of independent replicas sign one message.
    assert [r.message_id for r in live.replica.requests(state="held")] == [r.message_id for r in late.replica.requests(state="held")]
    assert a["anomalies"] == []
    # Every position the replicas fold is the contract's own margin book.
    eth_token = {eth_code: ETH_ADDRESS, tusd_code: token}
    for (owner, code), (posted, pending) in a["balances"].items():
        assert await bridge.contract.balance_of(owner, eth_token[code]) == posted - pending, (owner, code)
    for replica in (live.replica, late.replica):
        assert_books_balance(replica)


# --- an expired hold is given back by a cancel on chain, not by the clock alone --------------------------


async def test_an_unreleased_hold_is_voided_only_by_its_cancel_after_the_ttl_and_its_release_is_refused(evm, tmp_path):
    log.info("declare: a bridge whose releases live 60 s; no attester runs")
    ttl = 60
    bridge = await own_bridge(evm, tmp_path / "bridge", release_ttl=ttl)
    user, key = await bridge.user()
    other, other_key = await bridge.user()
    eth_code = bridge.config.ledger_asset("ETH").code
    follower = Follower(bridge, tmp_path / "replica.sqlite")

    log.info("act: deposit 1 ETH, request 0.6 ETH: taken on chain at once; the replica holds it and fixes its RELEASE")
    amount = 6 * ONE_ETH // 10
    await bridge.contract.deposit_eth(key, ONE_ETH)
    receipt = await bridge.contract.request_withdrawal(key, ETH_ADDRESS, amount)
    await follower.catch_up()
    (request,) = follower.replica.requests()
    requested_at = (await evm.block_by_height(receipt.block_number)).timestamp
    assert (request.state, request.expiry) == ("held", requested_at + ttl)
    assert await bridge.contract.request_expiry(request.nonce) == request.expiry  # the chain's expiry is the message's
    assert follower.replica.balances() == {(owner_of(user), eth_code): (ONE_ETH, amount)}
    assert await bridge.contract.balance_of(user, ETH_ADDRESS) == ONE_ETH - amount
    quorum = quorum_of(bridge, request.message_id, [0, 1, 2])  # a valid quorum, kept and never sent in time
    assert await bridge.contract.message_id(request.message) == request.message_id

    log.info("check: before its expiry nobody can cancel it")
    with pytest.raises(ContractReverted) as early:
        await bridge.contract.cancel_withdrawal(other_key, request.nonce, user, ETH_ADDRESS, amount)
    assert early.value.reason == "NotExpired"

    log.info("act: move the chain's clock past the expiry; another bridge event (someone else's deposit) is folded")
    await AnvilControls(evm).increase_time(ttl + 1)
    await bridge.contract.deposit_eth(other_key, ONE_ETH // 10)
    await follower.catch_up()
    # The chain still holds the margin in the request: the replica does not give it back on its own.
    assert follower.replica.request(nonce=request.nonce).state == "held"
    assert follower.replica.balances()[(owner_of(user), eth_code)] == (ONE_ETH, amount)
    assert await bridge.contract.balance_of(user, ETH_ADDRESS) == ONE_ETH - amount

    log.info("check: the contract refuses the expired message, even with a valid quorum")
    with pytest.raises(ContractReverted) as refused:
        await bridge.contract.release(bridge.relayer_key, request.message, bridge.committee, *quorum)
    assert refused.value.reason == "MessageExpired"
    assert not await bridge.contract.released(request.nonce)

    log.info("check: a cancel naming another amount or account is refused")
    for wrong in ((user, amount + 1), (other, amount)):
        with pytest.raises(ContractReverted) as mismatch:
            await bridge.contract.cancel_withdrawal(other_key, request.nonce, wrong[0], ETH_ADDRESS, wrong[1])
        assert mismatch.value.reason == "RequestMismatch"

    log.info("act: someone else cancels the expired request: the chain gives the margin back, the replica voids the hold")
    cancel = await bridge.contract.cancel_withdrawal(other_key, request.nonce, user, ETH_ADDRESS, amount)
    assert [e.name for e in bridge.contract.events_in(cancel)] == ["WithdrawalCancelled"]
    await follower.catch_up()
    expired = follower.replica.request(nonce=request.nonce)
    assert (expired.state, expired.reason) == ("expired", "release expired unused; cancelled")
    with follower.replica.engine.connect() as conn:
        closed = conn.execute(text("SELECT closed_height FROM replica_request WHERE nonce = :n"), {"n": request.nonce}).scalar_one()
    assert closed == cancel.block_number
    assert follower.replica.balances()[(owner_of(user), eth_code)] == (ONE_ETH, 0), "the held margin is the account's again"
    assert await bridge.contract.balance_of(user, ETH_ADDRESS) == ONE_ETH
    assert await bridge.contract.request_expiry(request.nonce) == 0
    assert follower.replica.anomalies() == []
    assert_books_balance(follower.replica)

    log.info("check: cancelled, the request can be neither cancelled again nor released")
    with pytest.raises(ContractReverted) as twice:
        await bridge.contract.cancel_withdrawal(other_key, request.nonce, user, ETH_ADDRESS, amount)
    assert twice.value.reason == "AlreadyConsumed"
    with pytest.raises(ContractReverted) as late:
        await bridge.contract.release(bridge.relayer_key, request.message, bridge.committee, *quorum)
    assert late.value.reason == "MessageExpired"

    log.info("check: the account may request again, against all of its margin")
    await bridge.contract.request_withdrawal(key, ETH_ADDRESS, ONE_ETH)
    await follower.catch_up()
    again = follower.replica.requests(account=user)[-1]
    assert again.state == "held" and again.message_id != request.message_id
    assert follower.replica.balances()[(owner_of(user), eth_code)] == (ONE_ETH, ONE_ETH)
    # A fresh replica folds the same books from the chain alone.
    clean = Follower(bridge, tmp_path / "clean.sqlite")
    await clean.catch_up()
    assert state(clean.replica) == state(follower.replica)


# --- crashes --------------------------------------------------------------------------------------------


class CrashingReplica(Replica):
    """Dies in the fold of one block, after that block's ledger and replica writes."""

    crash_at: int | None = None

    def fold(self, conn, events, block):
        super().fold(conn, events, block)
        if block.height == self.crash_at:
            raise RuntimeError(f"crash in the fold of block {block.height}, after its writes")


async def test_a_crash_in_the_middle_of_a_fold_leaves_nothing_half_written(evm, tmp_path):
    log.info("declare: a bridge; a replica that dies while folding the 3rd of 5 blocks of one batch")
    bridge = await own_bridge(evm, tmp_path / "bridge")
    user, key = await bridge.user()
    other, other_key = await bridge.user()
    token = bridge.config.assets["TUSD"][0]
    crashing = Follower(bridge, tmp_path / "replica.sqlite", replica=CrashingReplica)

    log.info("act: a first batch folds fine")
    await bridge.contract.deposit_eth(key, 2 * ONE_ETH)
    await bridge.contract.request_withdrawal(key, ETH_ADDRESS, ONE_ETH // 2)
    await crashing.catch_up()
    before, cursor = state(crashing.replica), crashing.indexer.cursor()
    assert [r.state for r in before["requests"]] == ["held"]

    log.info("act: five more blocks with bridge events, folded as one batch that crashes in its middle")
    receipts = [
        await bridge.contract.deposit_erc20(other_key, token, 300 * TUSD),
        await bridge.contract.request_withdrawal(other_key, token, 100 * TUSD),
        await bridge.contract.deposit_eth(other_key, ONE_ETH),
        await bridge.contract.request_withdrawal(other_key, ETH_ADDRESS, ONE_ETH // 2),
        await bridge.contract.request_withdrawal(key, ETH_ADDRESS, ONE_ETH),
    ]
    crashing.replica.crash_at = receipts[2].block_number
    with pytest.raises(RuntimeError, match="crash in the fold"):
        await crashing.indexer.step()

    log.info("check: the two blocks folded before the crash and the crashed one left nothing")
    assert state(crashing.replica) == before
    assert crashing.indexer.cursor() == cursor
    assert_books_balance(crashing.replica)

    log.info("act: restart (a new process: new replica, new indexer, same database) and catch up")
    restarted = Follower(bridge, tmp_path / "replica.sqlite")
    await restarted.catch_up()
    clean = Follower(bridge, tmp_path / "clean.sqlite")
    await clean.catch_up()
    assert restarted.height == clean.height >= receipts[-1].block_number
    assert state(restarted.replica) == state(clean.replica)
    assert [r.state for r in restarted.replica.requests()] == ["held"] * 4
    assert_books_balance(restarted.replica)


# --- unit tests: hand-built events on a real SQLite file --------------------------------------------

USER = to_checksum_address("0x" + "22" * 20)
STRANGER = to_checksum_address("0x" + "33" * 20)
ETH_ASSET = to_checksum_address(ETH_ADDRESS)
T0 = 1_700_000_000


def _keys() -> list[bytes]:
    return sorted((hashlib.sha256(f"replica-unit-{i}".encode()).digest() for i in range(4)), key=address_of)


@pytest.fixture
def unit(tmp_path) -> Replica:
    keys = _keys()
    config = ReplicaConfig(
        Domain(31337, bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")),
        {bytes(20): eth(31337)},
        Committee(0, tuple(address_of(k) for k in keys), 3),
        grace=600,
        release_ttl=3600,
    )
    return Replica(make_engine(f"sqlite:///{tmp_path / 'unit.sqlite'}"), config)


def _tx(n: int) -> str:
    return "0x" + hashlib.sha256(f"tx-{n}".encode()).hexdigest()


def _block(height: int) -> BlockRef:
    return BlockRef(height, "0x%064x" % height, "0x%064x" % (height - 1), T0 + 12 * height)


def deposited(n: int, amount: int, account: str = USER) -> BridgeEvent:
    return BridgeEvent("Deposited", {"account": account, "asset": ETH_ASSET, "amount": amount, "depositNonce": n}, LogRef(0, _tx(n), 0))


def requested(n: int, amount: int, account: str = USER) -> BridgeEvent:
    return BridgeEvent("WithdrawalRequested", {"account": account, "asset": ETH_ASSET, "amount": amount, "requestNonce": n}, LogRef(0, _tx(100 + n), 1))


def released(n: int, mid: bytes, amount: int, account: str = USER) -> BridgeEvent:
    return BridgeEvent("Released", {"id": mid, "account": account, "asset": ETH_ASSET, "amount": amount}, LogRef(0, _tx(200 + n), 2))


def fold(replica: Replica, height: int, *events: BridgeEvent) -> None:
    with replica.engine.begin() as conn:
        replica.fold(conn, list(events), _block(height))


def _accounts(replica: Replica) -> dict[tuple[str, str], int]:
    with replica.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT a.owner, a.kind, b.credits_posted - b.debits_posted FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id")
        ).all()
    return {(o, k): int(v) for o, k, v in rows}


async def test_on_revert_stops_the_replica_for_good(unit):
    orphaned = [OrphanedBlock(12, "0x" + "ab" * 32, [f"{_tx(1)}:0"]), OrphanedBlock(11, "0x" + "cd" * 32, [f"{_tx(2)}:3"])]
    with Session(unit.engine) as session:
        with pytest.raises(ReplicaReorg) as stopped:
            await unit.on_revert(orphaned, session=session)
    assert not stopped.value.retryable and not is_retryable(stopped.value)
    assert stopped.value.details["heights"] == [11, 12]
    assert "blocks 11..12" in stopped.value.message


def test_a_release_no_replica_held_is_an_anomaly_booked_against_unexplained(unit):
    code = "ETH"
    fold(unit, 1, deposited(0, 5 * ONE_ETH), requested(0, 2 * ONE_ETH))
    (request,) = unit.requests()
    fold(unit, 2, released(0, request.message_id, 2 * ONE_ETH))  # the held one: posted
    stranger_id = keccak(b"a message no honest replica signed")
    fold(unit, 3, released(1, stranger_id, 7 * ONE_ETH, account=STRANGER))

    assert unit.request(nonce=0).state == "released"
    (anomaly,) = unit.anomalies()
    assert anomaly["key"] == f"{_tx(201)}:2" and anomaly["block_height"] == 3
    assert f"release of message {stranger_id.hex()} this replica never held (unknown)" == anomaly["what"]
    assert '"amount": "7000000000000000000"' in anomaly["detail"]
    # The user's books are untouched; the chain paid 7 ETH nobody's margin explains.
    assert unit.balances() == {(owner_of(USER), code): (3 * ONE_ETH, 0)}
    assert _accounts(unit) == {
        (owner_of(USER), "user"): 3 * ONE_ETH,
        ("bridge", "custody"): -3 * ONE_ETH + 7 * ONE_ETH,
        ("unexplained", "external"): -7 * ONE_ETH,
    }
    assert_books_balance(unit)


def test_a_replayed_deposit_changes_nothing(unit):
    fold(unit, 1, deposited(0, ONE_ETH), deposited(1, 2 * ONE_ETH, account=STRANGER))
    before = (unit.balances(), unit.ledger.height())
    for _ in range(3):
        fold(unit, 1, deposited(0, ONE_ETH), deposited(1, 2 * ONE_ETH, account=STRANGER))
    assert (unit.balances(), unit.ledger.height()) == before
    assert_books_balance(unit)


@pytest.mark.parametrize("kind", ["WithdrawalRequested", "Released"])
def test_a_replayed_request_or_release_changes_nothing(unit, kind):
    fold(unit, 1, deposited(0, 5 * ONE_ETH))
    fold(unit, 2, requested(0, 2 * ONE_ETH))
    (request,) = unit.requests()
    fold(unit, 3, released(0, request.message_id, 2 * ONE_ETH))
    before = (unit.balances(), _accounts(unit), unit.anomalies(), unit.requests(), unit.ledger.height())
    if kind == "WithdrawalRequested":
        fold(unit, 2, requested(0, 2 * ONE_ETH))
    else:
        fold(unit, 3, released(0, request.message_id, 2 * ONE_ETH))
    assert (unit.balances(), _accounts(unit), unit.anomalies(), unit.requests(), unit.ledger.height()) == before


def test_the_release_a_replica_fixes_is_the_message_the_contract_checks(unit):
    """Every replica derives the RELEASE from the chain alone: nonce, amount, account, expiry = block time + ttl."""
    fold(unit, 7, deposited(0, ONE_ETH), requested(4, ONE_ETH // 4))
    (request,) = unit.requests()
    m = request.message
    assert (m.nonce, m.amount, m.account, m.asset, m.expiry) == (4, ONE_ETH // 4, bytes.fromhex("22" * 20), bytes(20), _block(7).timestamp + 3600)
    assert (m.source_tx, m.source_index) == (bytes.fromhex(_tx(104)[2:]), 1)
    assert request.message_id == digest(unit.config.domain, m)
