"""One lock backs one swap: the ``swap_lock`` table's guarantee, on SQLite and PostgreSQL.

The exploit this refuses (finding 1 of the swap security review): two LP swaps audited
against one trader lock, each locking the LP's coins, both claimed by the attacker; or one
claim booked by two swaps.  The guarantee is the database's primary key, so it holds for any
number of swaps and of processes stepping them, not only for the checks one engine makes.
"""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.core.db import make_engine
from bridge.swaps import models as m
from bridge.swaps.models import INITIATOR, PARTICIPANT, Swap, SwapLeg
from bridge.swaps.store import LockTaken, SwapStore, canonical_ref

TXID = "ab" * 32


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def lp_swap(store: SwapStore, swap_id: str, hashlock: str | None = None, role: str = PARTICIPANT):
    now = time.time()
    return store.create(
        Swap(id=swap_id, role=role, state=m.CREATED, hashlock=hashlock or _hash(swap_id), accepted=True, created_at=now, updated_at=now, next_attempt_at=now),
        [
            SwapLeg(swap_id=swap_id, leg=INITIATOR, chain="bitcoin", asset="btc", amount="1000000"),
            SwapLeg(swap_id=swap_id, leg=PARTICIPANT, chain="evm", asset="eth", amount=str(15 * 10**16)),
        ],
    )


def see_trader_lock(store: SwapStore, swap_id: str, ref: str):
    """What the LP's engine records at the first sighting of the trader's audited lock."""
    return store.transition(
        swap_id, m.CREATED, m.CREATED, f"trader's lock {ref} seen on chain", legs={INITIATOR: {"lock_ref": ref, "lock_tx": ref.split(":")[0]}}
    )


@pytest.fixture
def store(ledger_db):
    return SwapStore(ledger_db[1])


def test_a_hashlock_backs_one_swap_per_role(store):
    lp_swap(store, "a", hashlock="11" * 32)
    with pytest.raises(LockTaken, match="hashlock"):
        lp_swap(store, "b", hashlock="11" * 32)
    assert [v.swap.id for v in store.list()] == ["a"]  # nothing of "b" was written
    assert lp_swap(store, "a", hashlock="11" * 32).swap.id == "a"  # the same request again is still fine
    # The other role's view of the same trade (a party that is trader and LP in one database).
    assert lp_swap(store, "t", hashlock="11" * 32, role=INITIATOR).swap.role == INITIATOR


def test_a_trader_lock_backs_one_lp_swap_and_the_second_changes_nothing(store):
    lp_swap(store, "a")
    lp_swap(store, "b")
    see_trader_lock(store, "a", f"{TXID}:0")
    with pytest.raises(LockTaken, match="already backs another swap"):
        see_trader_lock(store, "b", f"{TXID}:0")
    b = store.get("b")
    assert b.leg(INITIATOR).lock_ref is None and b.leg(INITIATOR).lock_tx is None
    assert [a.note for a in b.actions] == [""]  # only its creation: the refused step left no trace
    see_trader_lock(store, "a", f"{TXID}:0")  # the owner may record it again (a retried step)


@pytest.mark.parametrize("spelling", [f"{TXID.upper()}:0", f"{TXID}:00", f"{TXID}:000"])
def test_one_output_has_one_spelling(store, spelling):
    lp_swap(store, "a")
    lp_swap(store, "b")
    see_trader_lock(store, "a", f"{TXID}:0")
    with pytest.raises(LockTaken):
        see_trader_lock(store, "b", spelling)
    assert canonical_ref("evm", "0x" + "AB" * 32) == "0x" + "ab" * 32


def test_a_lock_report_is_kept_once_and_consumes_nothing(store):
    lp_swap(store, "victim")
    lp_swap(store, "attacker")
    # The attacker reports the victim's lock for its own swap first: remembered, not consumed.
    assert store.report_lock("attacker", f"{TXID}:1", None)
    assert store.report_lock("victim", f"{TXID}:1", "00")
    for _ in range(50):  # repeated notices add no timeline rows
        assert not store.report_lock("victim", f"{TXID}:1", "00")
    assert sum("reports lock" in a.note for a in store.get("victim").actions) == 1
    see_trader_lock(store, "victim", f"{TXID}:1")  # the audit found it to be the victim's
    with pytest.raises(LockTaken):
        see_trader_lock(store, "attacker", f"{TXID}:1")


def test_swaps_recorded_before_the_table_existed_get_their_bindings(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    old = SwapStore(make_engine(url))
    lp_swap(old, "a")
    see_trader_lock(old, "a", f"{TXID}:2")
    with old.db.transaction() as tx:
        tx.execute("DELETE FROM swap_lock")  # as a database written before swap_lock existed
    old.engine.dispose()
    reopened = SwapStore(make_engine(url))
    with pytest.raises(LockTaken):
        lp_swap(reopened, "b", hashlock=_hash("a"))
    lp_swap(reopened, "c")
    with pytest.raises(LockTaken):
        see_trader_lock(reopened, "c", f"{TXID}:2")


def test_processes_racing_for_one_lock_one_wins(ledger_db):
    """Eight stores on their own engines (as eight processes would be) bind one trader lock to
    eight swaps at once: exactly one succeeds, every other is refused and left unchanged."""
    url, engine = ledger_db
    SwapStore(engine)
    stores = [SwapStore(make_engine(url)) for _ in range(8)]
    for n, s in enumerate(stores):
        lp_swap(s, f"race{n}")
    outcomes: list[str] = []
    gate = threading.Barrier(len(stores))

    def bind(n: int) -> None:
        gate.wait()
        try:
            see_trader_lock(stores[n], f"race{n}", f"{TXID}:7")
            outcomes.append("won")
        except LockTaken:
            outcomes.append("refused")

    threads = [threading.Thread(target=bind, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["refused"] * 7 + ["won"]
    holders = [v.swap.id for v in stores[0].list() if v.leg(INITIATOR).lock_ref]
    assert len(holders) == 1
    for s in stores:
        s.engine.dispose()


_refs = st.sampled_from([f"{TXID}:0", f"{TXID}:1", f"{'cd' * 32}:0", "0x" + "ef" * 32])
_ops = st.lists(st.tuples(st.sampled_from(["create", "see", "report"]), st.integers(0, 5), st.integers(0, 2), _refs), max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_any_sequence_of_steps_keeps_one_swap_per_lock(tmp_path_factory, ops):
    """Whatever order swaps are created, reported and seen in, across two processes' stores: a
    hashlock and a seen lock each belong to one swap of a role, and every refusal wrote nothing."""
    url = f"sqlite:///{tmp_path_factory.mktemp('locks') / 'swaps.sqlite'}"
    stores = [SwapStore(make_engine(url)) for _ in range(2)]
    try:
        for n, (op, swap, hashlock, ref) in enumerate(ops):
            s, swap_id = stores[n % 2], f"s{swap}"
            try:
                if op == "create":
                    lp_swap(s, swap_id, hashlock=_hash(f"h{hashlock}"))
                elif op == "see":
                    see_trader_lock(s, swap_id, ref)
                else:
                    s.report_lock(swap_id, ref, None)
            except LockTaken:
                pass
            except Exception as exc:  # unknown swap, or another swap already seen: refused as before
                assert type(exc).__name__ in ("NotFound", "Conflict"), exc
        views = stores[0].list()
        hashlocks = [v.swap.hashlock for v in views]
        assert len(hashlocks) == len(set(hashlocks))
        seen = [canonical_ref("bitcoin", v.leg(INITIATOR).lock_ref) for v in views if v.leg(INITIATOR).lock_tx]
        assert len(seen) == len(set(seen))
        with stores[0].db.transaction() as tx:
            bound = {(r["kind"], r["ref"]): r["swap_id"] for r in tx.rows("SELECT kind, ref, swap_id FROM swap_lock")}
        for v in views:
            assert bound[("hashlock", v.swap.hashlock)] == v.swap.id
            if v.leg(INITIATOR).lock_tx:
                assert bound[("bitcoin", canonical_ref("bitcoin", v.leg(INITIATOR).lock_ref))] == v.swap.id
    finally:
        for s in stores:
            s.engine.dispose()
