"""The attestation store (issue 14, "Replicas and daemons"; DESIGN.md: "Signatures travel through an
attestation store"), on SQLite and PostgreSQL (``ledger_db``).

A 3-of-4 committee.  Signatures are accepted only from members and only if they recover to their
signer; a second message for a signer's (kind, sourceTx, sourceIndex, nonce) is equivocation,
recorded and refused; a quorum is exactly M verified signatures in ascending index order; stores on
one database (threads, separate engines) see each other and race to one row per signature; a lying
member, even one writing straight into the shared database, cannot make a quorum.
"""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest
from sqlalchemy import text

from bridge.committee.crypto import keccak256
from bridge.committee.messages import (
    ETH_ASSET,
    Committee,
    Domain,
    Kind,
    Message,
    Refused,
    address_of,
    decode_message,
    digest,
    encode_message,
    sign,
    verify_quorum,
)
from bridge.committee.store import AttestationRefused, AttestationStore, Equivocation
from bridge.core.db import make_engine
from bridge.core.errors import NotFound

NOW = 1_700_000_000
DOMAIN = Domain(31337, bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"))
KEYS = sorted((keccak256(b"store test key %d" % i) for i in range(4)), key=address_of)
ADDRESSES = tuple(address_of(k) for k in KEYS)
OUTSIDER = keccak256(b"store test outsider")
COMMITTEE = Committee(1, ADDRESSES, 3)  # 3-of-4


def make_message(**changes: object) -> Message:
    base = dict(
        version=1,
        kind=Kind.DEPOSIT_CREDIT,
        source_chain_id=31337,
        source_tx=bytes.fromhex("ab" * 32),
        source_index=2,
        dest_chain_id=31337,
        account=bytes.fromhex("22" * 20),
        asset=ETH_ASSET,
        amount=10**18,
        nonce=1,
        expiry=NOW + 3600,
        payload_hash=bytes(32),
    )
    base.update(changes)
    return Message(**base)


MESSAGE = make_message()
MID = digest(DOMAIN, MESSAGE)


def sig(i: int, message: Message = MESSAGE) -> bytes:
    return sign(digest(DOMAIN, message), KEYS[i])


def put(store: AttestationStore, i: int, message: Message = MESSAGE):
    return store.put(DOMAIN, message, ADDRESSES[i], sig(i, message), COMMITTEE, NOW)


@pytest.fixture
def store(ledger_db):
    return AttestationStore(ledger_db[1])


def rows(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()


def test_put_and_get(store):
    accepted = put(store, 0)
    assert (accepted.message_id, accepted.signer, accepted.new) == (MID, ADDRESSES[0], True)
    stored = store.get(MID)
    assert stored.message == MESSAGE and stored.domain == DOMAIN and stored.first_seen > 0
    assert stored.signatures == {ADDRESSES[0]: sig(0)}
    assert decode_message(encode_message(MESSAGE)) == MESSAGE
    with pytest.raises(NotFound):
        store.get(digest(DOMAIN, make_message(nonce=2)))


def test_idempotent_reput(store):
    put(store, 0)
    for _ in range(3):
        assert put(store, 0).new is False
    assert store.put_encoded(DOMAIN, encode_message(MESSAGE), ADDRESSES[0], sig(0), COMMITTEE).new is False
    assert store.signature_count() == 1 and rows(store.engine, "committee_message") == 1
    assert store.evidence() == []


def test_quorum_at_m_not_at_m_minus_1(store):
    put(store, 3)
    put(store, 1)
    tally = store.quorum(MID, COMMITTEE, DOMAIN, NOW)
    assert tally.quorum is None and tally.needed == 1 and tally.reason == "below quorum: 2 of 3"
    assert tally.signed == (ADDRESSES[1], ADDRESSES[3]) and tally.missing == (ADDRESSES[0], ADDRESSES[2])
    assert [t.message_id for t in store.pending(COMMITTEE, NOW)] == [MID]

    put(store, 0)
    tally = store.quorum(MID, COMMITTEE, DOMAIN, NOW)
    q = tally.quorum
    assert q is not None and tally.needed == 0 and tally.missing == (ADDRESSES[2],)
    assert q.indices == (0, 1, 3) and q.signatures == (sig(0), sig(1), sig(3))
    assert verify_quorum(DOMAIN, MESSAGE, COMMITTEE, q.indices, q.signatures, NOW) == MID
    assert q.bundle().verify(DOMAIN, COMMITTEE.hash, NOW) == MID
    assert store.pending(COMMITTEE, NOW) == []

    put(store, 2)  # more than M stored: the quorum is still exactly M, the lowest indices
    assert store.quorum(MID, COMMITTEE, DOMAIN, NOW).quorum.indices == (0, 1, 2)
    expired = store.quorum(MID, COMMITTEE, DOMAIN, MESSAGE.expiry)
    assert expired.quorum is None and expired.reason == "expired"
    other = Domain(1, DOMAIN.verifying_contract)
    with pytest.raises(AttestationRefused, match="does not match this domain"):
        store.quorum(MID, COMMITTEE, other, NOW)


def test_non_member_refused(store):
    with pytest.raises(AttestationRefused) as refused:
        store.put(DOMAIN, MESSAGE, address_of(OUTSIDER), sign(MID, OUTSIDER), COMMITTEE, NOW)
    assert refused.value.reason == "signer outside the committee"
    # A member's address on an outsider's signature, and another member's signature, do not pass either.
    for forged in (sign(MID, OUTSIDER), sig(1)):
        with pytest.raises(AttestationRefused) as refused:
            store.put(DOMAIN, MESSAGE, ADDRESSES[0], forged, COMMITTEE, NOW)
        assert refused.value.reason == "signature does not recover to the signer"
    assert store.signature_count() == 0 and rows(store.engine, "committee_message") == 0


def test_bad_signature_refused_every_byte_flipped(store):
    good = sig(2)
    for i in range(len(good)):
        flipped = good[:i] + bytes((good[i] ^ 0xFF,)) + good[i + 1 :]
        with pytest.raises(Refused) as refused:
            store.put(DOMAIN, MESSAGE, ADDRESSES[2], flipped, COMMITTEE, NOW)
        assert refused.value.reason, i
    assert store.signature_count() == 0
    assert put(store, 2).new is True


def test_garbage_refused_with_a_reason(store):
    rng = os.urandom
    for size in (0, 1, 64, 65, 66, 200):
        with pytest.raises(Refused) as refused:
            store.put(DOMAIN, MESSAGE, ADDRESSES[0], rng(size), COMMITTEE, NOW)
        assert refused.value.reason
    for size in (0, 10, 173, 174, 175, 400):
        with pytest.raises(Refused) as refused:
            store.put_encoded(DOMAIN, rng(size), ADDRESSES[0], sig(0), COMMITTEE, NOW)
        assert refused.value.reason
    for signer in (rng(20), rng(19), b"", "0x" + ADDRESSES[0].hex(), None):
        with pytest.raises(Refused) as refused:
            store.put(DOMAIN, MESSAGE, signer, sig(0), COMMITTEE, NOW)
        assert refused.value.reason
    for bad in ((None, MESSAGE), (DOMAIN, "message"), (DOMAIN, rng(174))):
        with pytest.raises(Refused):
            store.put(bad[0], bad[1], ADDRESSES[0], sig(0), COMMITTEE, NOW)
    with pytest.raises(AttestationRefused, match="expired"):
        store.put(DOMAIN, MESSAGE, ADDRESSES[0], sig(0), COMMITTEE, MESSAGE.expiry)
    with pytest.raises(AttestationRefused, match="message id"):
        store.quorum(rng(31), COMMITTEE, DOMAIN, NOW)
    assert store.signature_count() == 0 and rows(store.engine, "committee_message") == 0


def test_equivocation_recorded_and_refused(store):
    put(store, 1)
    twin = make_message(amount=2 * 10**18)  # same kind, source tx, index and nonce: another message
    twin_id = digest(DOMAIN, twin)
    for _ in range(2):  # refused each time, recorded once
        with pytest.raises(Equivocation) as refused:
            put(store, 1, twin)
        assert refused.value.reason.startswith("equivocation: ")
        assert refused.value.details["first_message_id"] == MID.hex()
    [evidence] = store.evidence()
    assert (evidence.signer, evidence.first_message_id, evidence.second_message_id) == (ADDRESSES[1], MID, twin_id)
    assert evidence.second_message == twin and evidence.first_signature == sig(1) and evidence.second_signature == sig(1, twin)
    with pytest.raises(NotFound):  # the refused message left no row
        store.get(twin_id)
    assert store.get(MID).signatures == {ADDRESSES[1]: sig(1)}
    # Another member may sign the twin; another nonce is another slot.
    assert put(store, 2, twin).new is True
    assert put(store, 1, make_message(nonce=2)).new is True
    assert store.evidence(ADDRESSES[2]) == []


def test_two_stores_on_one_database(ledger_db):
    url, engine = ledger_db
    other = make_engine(url)
    try:
        a, b = AttestationStore(engine), AttestationStore(other)
        put(a, 0)
        put(b, 2)
        assert b.get(MID).signatures.keys() == {ADDRESSES[0], ADDRESSES[2]}
        put(a, 3)
        assert b.quorum(MID, COMMITTEE, DOMAIN, NOW).quorum.indices == (0, 2, 3)
        with pytest.raises(Equivocation):
            put(b, 0, make_message(account=bytes.fromhex("33" * 20)))
        assert len(a.evidence()) == 1
    finally:
        other.dispose()


def test_engines_racing(ledger_db):
    url, engine = ledger_db
    engines = [make_engine(url) for _ in range(4)]
    twin = make_message(amount=3)
    outcomes: list[object] = []
    lock = threading.Lock()
    start = threading.Barrier(16, timeout=60)
    AttestationStore(engine)  # the schema once; the racing stores only check it

    def worker(n: int) -> None:
        store = AttestationStore(engines[n % 4])
        start.wait()
        for round_ in range(5):
            for i in range(4):
                try:
                    # Member 0 races itself with two messages for one slot: exactly one may win.
                    message = (MESSAGE, twin)[(n + round_) % 2] if i == 0 else MESSAGE
                    result: object = put(store, i, message)
                except Equivocation as exc:
                    result = exc
                with lock:
                    outcomes.append((i, result))

    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for e in engines:
            e.dispose()
    assert len(outcomes) == 16 * 5 * 4
    assert sum(1 for _, r in outcomes if not isinstance(r, Equivocation) and r.new) == 4  # one row per signer
    store = AttestationStore(engine)
    assert store.signature_count() == 4
    winner = next(r.message_id for i, r in outcomes if i == 0 and not isinstance(r, Equivocation) and r.new)
    assert all((r.message_id == winner) if not isinstance(r, Equivocation) else True for i, r in outcomes if i == 0)
    assert rows(engine, "committee_message") == (1 if winner == MID else 2)
    assert [(e.first_message_id, e.signer) for e in store.evidence()] == [(winner, ADDRESSES[0])]
    assert store.quorum(MID, COMMITTEE, DOMAIN, NOW).quorum is not None


def test_lying_minority_cannot_make_a_quorum(store):
    liar = 3
    fake = make_message(amount=10**24, account=bytes.fromhex("66" * 20))  # a deposit that never happened
    fake_id = digest(DOMAIN, fake)
    put(store, liar, fake)  # its own signature of its lie is valid, and alone
    # Signatures it forges for the others (its own key, stolen-looking bytes, another message's) are refused.
    for i in range(3):
        for forged in (sign(fake_id, KEYS[liar]), os.urandom(65), sig(i)):
            with pytest.raises(Refused):
                store.put(DOMAIN, fake, ADDRESSES[i], forged, COMMITTEE, NOW)
    # Even written straight into the shared database, past ``put``, forged rows do not count.
    with store.engine.begin() as conn:
        for i in range(2):
            conn.execute(
                text(
                    "INSERT INTO committee_signature (message_id, signer, signature, kind, source_tx, source_index, nonce, stored_at) "
                    "VALUES (:m, :s, :sig, :k, :tx, :ix, :n, 0)"
                ),
                {"m": fake_id.hex(), "s": ADDRESSES[i].hex(), "sig": sign(fake_id, KEYS[liar]).hex(), "k": int(fake.kind), "tx": "ff" * 32, "ix": i, "n": "9"},
            )
    tally = store.quorum(fake_id, COMMITTEE, DOMAIN, NOW)
    assert tally.quorum is None and tally.signed == (ADDRESSES[liar],) and tally.invalid == ADDRESSES[:2]
    assert fake_id in [t.message_id for t in store.pending(COMMITTEE, NOW)]
    # It cannot stop the honest majority either (it signed the lie in the real message's slot).
    for i in range(3):
        put(store, i)
    with pytest.raises(Equivocation):
        put(store, liar)
    q = store.quorum(MID, COMMITTEE, DOMAIN, NOW).quorum
    assert q is not None and q.indices == (0, 1, 2)
    assert [e.signer for e in store.evidence()] == [ADDRESSES[liar]]


def test_message_codec_strict():
    body = encode_message(MESSAGE)
    assert len(body) == 174 and decode_message(body) == MESSAGE
    for bad in (body[:-1], body + b"\0", b"\2" + body[1:]):
        with pytest.raises(Refused):
            decode_message(bad)
    assert dataclasses.replace(MESSAGE, nonce=5) == decode_message(encode_message(make_message(nonce=5)))
