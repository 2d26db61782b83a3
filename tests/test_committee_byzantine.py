"""A Byzantine minority of the committee can neither move nor stop anything.

A 3-of-4 committee on the session Anvil, every daemon a real OS process with real keys: three
honest attesters (each its own replica), one Byzantine attester (``tests/support/byzantine.py``:
a replica with a forged balance for an accomplice, equivocations, garbage rows written straight
into the shared attestation store) and a deliverer.  The store is a fresh PostgreSQL schema
shared by all, or one SQLite file where no PostgreSQL answers.

The story: deposits credit exactly once in every honest replica; a legit withdrawal is paid
despite the Byzantine attester; the accomplice's withdrawal request is refused by the contract
(it keeps the margin book: the accomplice has none), so the Byzantine replica forges the request
itself, at a nonce the chain never issued, and signs its RELEASE: one signature, never paid; the
store holds the equivocation evidence naming the Byzantine signer; with the Byzantine attester
stopped the three honest ones keep releasing; with an honest one stopped, a Byzantine attester
that signs the legit messages correctly (it lies only about the others) makes the quorum with the
two honest ones left, and still moves nothing of its accomplice.

The last tests write past ``put`` (what a Byzantine attester with access to a shared store can
do): a garbage row under an honest key or in its slot, a row that does not decode, a message row
that is no message; none of them blocks an honest signature, frames a signer, hides a quorum or
stops the deliverer.
"""

from __future__ import annotations

import hashlib
import logging
import time

import pytest

from bridge.committee.config import ETH_ADDRESS
from bridge.committee.crypto import address_of, sign
from bridge.committee.delivery import Deliverer
from bridge.committee.messages import ZERO32, Committee, Domain, Kind, Message, digest
from bridge.committee.replica import Replica, ReplicaConfig, owner_of
from bridge.committee.store import AttestationStore, Equivocation
from bridge.core.db import make_engine
from bridge.core.errors import NotFound
from devnets.presets import ONE_ETH
from support.byzantine import FORGED_NONCE, garbage_message, preempt_signature, write_signature_row
from support.committee import TUSD, chain_refuses, fleet, ledger_totals, own_bridge, shared_store

log = logging.getLogger("test.committee.byzantine")

BYZANTINE = 1  # its signature sorts second: inside the quorum whenever it signs
HONEST = (0, 2, 3)


def _state(replica: Replica, nonce: int) -> str | None:
    try:
        return replica.request(nonce=nonce).state
    except NotFound:
        return None


def _nonce(bridge, receipt) -> int:
    (event,) = [e for e in bridge.contract.events_in(receipt) if e.name == "WithdrawalRequested"]
    return event["requestNonce"]


def _gas(receipt) -> int:
    return receipt.gas_used * receipt.effective_gas_price


def _waiting_one_of_three(reader: Deliverer, mid: bytes) -> bool:
    """The deliverer opened the message's delivery and waits: 1 valid signature of the 3 needed."""
    try:
        view = reader.view(mid.hex())
    except NotFound:
        return False
    return view.state == "waiting_quorum" and "1 of 3" in (view.last_error or "")


def _id(value) -> bytes:
    return value if isinstance(value, bytes) else bytes.fromhex(value.removeprefix("0x"))


async def test_byzantine_minority_cannot_move_or_stop_anything(evm, btc, regtest, tmp_path):
    started = time.monotonic()
    log.info("declare: a 3-of-4 bridge; attesters %s honest, %d Byzantine; a deliverer; one shared store", HONEST, BYZANTINE)
    bridge = await own_bridge(evm, tmp_path / "bridge", n=4, m=3, btc_start=await btc.height())
    committee, domain = bridge.committee, bridge.config.domain
    eth, tusd = (bridge.config.ledger_asset(s).code for s in ("ETH", "TUSD"))
    token = bridge.config.assets["TUSD"][0]
    (alice, alice_key), (bob, bob_key), (carol, carol_key) = [await bridge.user() for _ in range(3)]
    mallory, mallory_key = await bridge.user(tusd=0)  # the accomplice: gas, and no deposit ever
    byzantine = committee.signers[BYZANTINE]
    assert byzantine == address_of(bridge.keys[BYZANTINE])
    honest_signers = {committee.signers[i] for i in HONEST}
    forged = [(mallory, "ETH", 5 * ONE_ETH), (mallory, "TUSD", 10_000 * TUSD)]
    # The withdrawals the chain refuses mallory, which the Byzantine replica forges (nonces FORGED_NONCE + i).
    forged_requests = [(mallory, "ETH", 4 * ONE_ETH), (mallory, "TUSD", 1_000 * TUSD)]
    a1, a2 = FORGED_NONCE, FORGED_NONCE + 1
    honest = [f"attester-{i}" for i in HONEST]
    readers = [*honest, "service"]  # every honest replica and the service's
    byz = f"attester-{BYZANTINE}"

    with shared_store(tmp_path / "store") as store_url, fleet(bridge, tmp_path / "fleet", store_url, regtest) as f:
        f.start_attester(HONEST[0])
        await f.wait_up()  # the shared store's tables made once (see the report: racing CREATE TABLEs)
        for i in HONEST[1:]:
            f.start_attester(i)
        f.start_byzantine_forging(BYZANTINE, forged, forged_requests[:1])  # lies only: signs nothing legit
        f.start_deliverer()
        store = f.store

        log.info("act: deposits by alice (3 ETH, 2,000 TUSD), bob (1 ETH), carol (500 TUSD)")
        await bridge.contract.deposit_eth(alice_key, 3 * ONE_ETH)
        await bridge.contract.deposit_erc20(alice_key, token, 2_000 * TUSD)
        await bridge.contract.deposit_eth(bob_key, ONE_ETH)
        await bridge.contract.deposit_erc20(carol_key, token, 500 * TUSD)
        await f.wait_heights([*readers, byz], await evm.height(), timeout=90)
        want = {
            (owner_of(alice), eth): (3 * ONE_ETH, 0),
            (owner_of(alice), tusd): (2_000 * TUSD, 0),
            (owner_of(bob), eth): (ONE_ETH, 0),
            (owner_of(carol), tusd): (500 * TUSD, 0),
        }
        log.info("assert: each deposit credited exactly once in every honest replica; the forged replica adds mallory's margin")
        for name in readers:
            assert f.replica(name).balances() == want, name
        await f.wait(lambda: _state(f.replica(byz), a1) == "held", what="mallory's forged request held by the forged replica")
        assert f.replica(byz).balances() == {**want, (owner_of(mallory), eth): (5 * ONE_ETH, 4 * ONE_ETH), (owner_of(mallory), tusd): (10_000 * TUSD, 0)}

        log.info("act: alice withdraws 1 ETH (legit); mallory asks the chain for 4 ETH: refused, she has no margin on chain")
        alice_before = await evm.balance(alice)
        receipt = await bridge.contract.request_withdrawal(alice_key, ETH_ADDRESS, ONE_ETH)
        w1, alice_gas = _nonce(bridge, receipt), _gas(receipt)
        await chain_refuses(bridge, bridge.contract.request_withdrawal(mallory_key, ETH_ADDRESS, 4 * ONE_ETH))
        mallory_before = await evm.balance(mallory)  # after the gas of the refused request
        assert await bridge.contract.balance_of(mallory, ETH_ADDRESS) == 0

        async def alice_paid() -> bool:
            return await evm.balance(alice) == alice_before - alice_gas + ONE_ETH

        await f.wait(alice_paid, timeout=30, what="alice's 1 ETH paid on chain")
        await f.wait(lambda: all(_state(f.replica(n), w1) == "released" for n in readers), what="alice's request released in every honest replica")
        a1_request = f.replica(byz).request(nonce=a1)
        a1_mid = a1_request.message_id

        def a1_lies_stored() -> bool:
            try:
                stored = store.get(a1_mid)
            except NotFound:
                return False
            return len(stored.signatures) >= 5 and any(e.second_message.nonce == a1 for e in store.evidence(byzantine))

        await f.wait(a1_lies_stored, what="the Byzantine signature, garbage rows and equivocation on mallory's forged request")
        reader = f.deliverer_reader()
        await f.wait(lambda: _waiting_one_of_three(reader, a1_mid), what="the deliverer waiting on mallory's release")

        log.info("assert: alice paid by a quorum of the three honest attesters")
        w1_request = f.replica("service").request(nonce=w1)
        w1_view = reader.view(w1_request.message_id.hex())
        assert w1_view.state == "delivered"
        assert {bytes.fromhex(s[2:]) for s in w1_view.signers} == honest_signers
        assert await bridge.contract.released(w1)

        log.info("assert: no honest replica knows mallory's forged request; one valid signature, never paid")
        await f.wait_heights(readers, await evm.height(), timeout=60)
        for name in readers:
            assert _state(f.replica(name), a1) is None, name
        tally = store.quorum(a1_mid, committee, domain, int(time.time()))
        assert tally.quorum is None and tally.signed == (byzantine,) and set(tally.invalid) == honest_signers, tally
        assert tally.needed == 2
        stored = store.get(a1_mid)
        assert len(stored.signatures) >= 5  # its own, one garbage row under each honest member, one under an outsider
        a1_view = reader.view(a1_mid.hex())
        assert a1_view.state in ("waiting_quorum", "expired") and a1_view.signers == ()
        assert not await bridge.contract.request_open(a1) and not await bridge.contract.released(a1)  # the chain has no such request
        assert await evm.balance(mallory) == mallory_before

        log.info("assert: the store refused the Byzantine's second message for mallory's slot and kept the evidence")
        evidence = [e for e in store.evidence() if e.second_message.nonce == a1]
        assert evidence and all(e.signer == byzantine and e.first_message_id == a1_mid for e in evidence)
        for e in evidence:
            assert e.second_message != a1_request.message and e.second_message_id == digest(domain, e.second_message)
            with pytest.raises(NotFound):
                store.get(e.second_message_id)
        assert {e.signer for e in store.evidence()} == {byzantine}

        log.info("act: stop the Byzantine attester (SIGTERM); bob withdraws 0.5 ETH")
        assert f.stop(byz) == 0
        bob_before = await evm.balance(bob)
        receipt = await bridge.contract.request_withdrawal(bob_key, ETH_ADDRESS, ONE_ETH // 2)
        w2, bob_gas = _nonce(bridge, receipt), _gas(receipt)

        async def bob_paid() -> bool:
            return await evm.balance(bob) == bob_before - bob_gas + ONE_ETH // 2

        await f.wait(bob_paid, timeout=30, what="bob's 0.5 ETH paid with the Byzantine attester stopped")
        await f.wait(lambda: all(_state(f.replica(n), w2) == "released" for n in readers), what="bob's request released everywhere")
        w2_view = reader.view(f.replica("service").request(nonce=w2).message_id.hex())
        assert w2_view.state == "delivered" and {bytes.fromhex(s[2:]) for s in w2_view.signers} == honest_signers

        log.info("act: the Byzantine attester back, now signing legit messages correctly; stop honest attester %d (SIGTERM)", HONEST[0])
        f.start_byzantine_forging(BYZANTINE, forged, forged_requests, legit=True)  # and it forges mallory's second request
        await f.wait_heights([byz], await evm.height(), timeout=60)
        assert f.stop(f"attester-{HONEST[0]}") == 0
        carol_before = await bridge.token.balance(carol)
        receipt = await bridge.contract.request_withdrawal(carol_key, token, 200 * TUSD)
        w3 = _nonce(bridge, receipt)
        await chain_refuses(bridge, bridge.contract.request_withdrawal(mallory_key, token, 1_000 * TUSD))

        async def carol_paid() -> bool:
            return await bridge.token.balance(carol) == carol_before + 200 * TUSD

        await f.wait(carol_paid, timeout=30, what="carol's 200 TUSD paid by two honest attesters and the Byzantine one")
        live = [n for n in readers if n != f"attester-{HONEST[0]}"]
        await f.wait(lambda: all(_state(f.replica(n), w3) == "released" for n in live), what="carol's request released in the live replicas")
        await f.wait(lambda: _state(f.replica(byz), a2) == "held", what="mallory's second forged request held by the forged replica")
        a2_mid = f.replica(byz).request(nonce=a2).message_id
        w3_mid = f.replica("service").request(nonce=w3).message_id
        await f.wait(lambda: any(e.second_message.nonce == w3 for e in store.evidence()), what="the Byzantine equivocation on carol's slot")
        await f.wait(lambda: _waiting_one_of_three(reader, a2_mid), what="the deliverer waiting on mallory's second release")

        log.info("assert: carol's quorum holds the Byzantine signature; its equivocation on her slot refused")
        w3_view = reader.view(w3_mid.hex())
        assert w3_view.state == "delivered"
        assert {bytes.fromhex(s[2:]) for s in w3_view.signers} == {byzantine, committee.signers[HONEST[1]], committee.signers[HONEST[2]]}
        w3_evidence = [e for e in store.evidence() if e.second_message.nonce == w3]
        assert all(e.signer == byzantine and e.first_message_id == w3_mid for e in w3_evidence)  # the legit one came first and stands

        log.info("act: the stopped honest attester comes back and catches up")
        f.start_attester(HONEST[0])
        await evm.wait_for_receipt(await bridge.token.mint(bridge.deployer, carol, 1))  # one more block, folded by everyone
        head = await evm.height()
        await f.wait_heights([*readers, byz], head, timeout=60)

        log.info("assert: the honest replicas and the service's agree; nothing of mallory's moved")
        want[(owner_of(alice), eth)] = (2 * ONE_ETH, 0)
        want[(owner_of(bob), eth)] = (ONE_ETH // 2, 0)
        want[(owner_of(carol), tusd)] = (300 * TUSD, 0)
        requests = None
        for name in readers:
            replica = f.replica(name)
            assert replica.balances() == want, name
            assert replica.anomalies() == [], name
            mine = [(r.nonce, r.state, r.message_id) for r in replica.requests()]
            assert requests is None or mine == requests, name
            requests = mine
        assert [(n, s) for n, s, _ in requests] == [(w1, "released"), (w2, "released"), (w3, "released")]  # mallory's never reached the chain
        forged_books = f.replica(byz).balances()
        assert forged_books[(owner_of(mallory), eth)] == (5 * ONE_ETH, 4 * ONE_ETH)  # it holds 4 ETH it can never pay
        assert forged_books[(owner_of(mallory), tusd)] == (10_000 * TUSD, 1_000 * TUSD)
        for nonce, mid in ((a1, a1_mid), (a2, a2_mid)):
            assert not await bridge.contract.request_open(nonce) and not await bridge.contract.released(nonce)
            tally = store.quorum(mid, committee, domain, int(time.time()))
            assert tally.quorum is None and tally.signed == (byzantine,)
            assert reader.view(mid.hex()).state in ("waiting_quorum", "expired")
        released = [e for e in await bridge.contract.events(bridge.config.deploy_block) if e.name == "Released"]
        assert sorted(_id(e["id"]) for e in released) == sorted(f.replica("service").request(nonce=n).message_id for n in (w1, w2, w3))
        assert await evm.balance(bridge.contract.address) == 4 * ONE_ETH - ONE_ETH - ONE_ETH // 2
        assert await bridge.token.balance(bridge.contract.address) == 2_500 * TUSD - 200 * TUSD
        custody = ledger_totals(f.engine("service"))
        assert custody[("bridge", "custody", eth)][0] == -(await evm.balance(bridge.contract.address))
        assert {e.signer for e in store.evidence()} == {byzantine}
    log.info("done in %.1fs", time.monotonic() - started)


# --- bugs: writes past ``put`` that stop the honest path (see the report) -------------------------


def _store_case(tmp_path):
    keys = sorted((hashlib.sha256(f"bug-{i}".encode()).digest() for i in range(4)), key=address_of)
    committee = Committee(0, tuple(address_of(k) for k in keys), 3)
    domain = Domain(31337, b"\x11" * 20)
    engine = make_engine(f"sqlite:///{tmp_path / 'store.sqlite'}")
    store = AttestationStore(engine)

    def message(nonce: int) -> Message:
        return Message(1, Kind.RELEASE, 31337, b"\x22" * 32, nonce, 31337, b"\x33" * 20, bytes(20), 10, nonce, int(time.time()) + 3600, ZERO32)

    return keys, committee, domain, engine, store, message


def test_garbage_row_under_an_honest_key_does_not_block_its_signature(tmp_path):
    keys, committee, domain, engine, store, message = _store_case(tmp_path)
    m = message(1)
    mid = digest(domain, m)
    preempt_signature(engine, m, mid, committee.signers[0])  # the Byzantine writes first
    for i in (0, 1, 2):
        store.put(domain, m, committee.signers[i], sign(mid, keys[i]), committee)
    tally = store.quorum(mid, committee, domain, int(time.time()))
    assert tally.quorum is not None, tally.reason


def test_garbage_row_in_an_honest_slot_is_no_equivocation(tmp_path):
    keys, committee, domain, engine, store, message = _store_case(tmp_path)
    m = message(2)
    mid = digest(domain, m)
    preempt_signature(engine, m, b"\xab" * 32, committee.signers[3])  # another id, a signature that verifies nothing
    try:
        store.put(domain, m, committee.signers[3], sign(mid, keys[3]), committee)
    except Equivocation:
        pass
    assert store.evidence() == []
    assert committee.signers[3] in store.get(mid).signatures


def test_undecodable_row_does_not_hide_a_quorum(tmp_path):
    keys, committee, domain, engine, store, message = _store_case(tmp_path)
    m = message(3)
    mid = digest(domain, m)
    for i in (0, 1, 2):
        store.put(domain, m, committee.signers[i], sign(mid, keys[i]), committee)
    write_signature_row(engine, mid.hex(), "zz", "not hex", kind=2, source_tx="x", source_index=0, nonce="0")
    tally = store.quorum(mid, committee, domain, int(time.time()))
    assert tally.quorum is not None


def test_garbage_message_row_does_not_stop_discovery(tmp_path):
    keys, committee, domain, engine, store, message = _store_case(tmp_path)
    replica = Replica(make_engine(f"sqlite:///{tmp_path / 'service.sqlite'}"), ReplicaConfig(domain, {}, committee, 3600))
    deliverer = Deliverer(replica.engine, store, replica, None, None)
    garbage_message(engine)
    m = message(4)
    mid = digest(domain, m)
    store.put(domain, m, committee.signers[0], sign(mid, keys[0]), committee)
    assert mid.hex() in deliverer.discover()
