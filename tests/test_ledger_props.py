"""Property test: after any sequence of random batches (some refused), every asset sums
to zero, balances match a plain model, user accounts never go negative, and a refused
batch changes nothing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from bridge.core.db import postgres_available
from bridge.core.errors import InputError, LedgerError, Overdraft, PendingTransferError
from bridge.ledger import Ledger, Transfer
from bridge.ledger import queries
from bridge.ledger.audit import audit
from bridge.ledger.testdb import fresh_database

ASSETS = ("BTC", "ETH")
KINDS = ("external", "user", "user", "user", "custody")

op = st.tuples(
    st.sampled_from(["transfer", "transfer", "pending", "post", "void"]),
    st.integers(0, 2 * len(KINDS) - 1),
    st.integers(0, 2 * len(KINDS) - 1),
    st.integers(1, 300),
    st.sampled_from([None, None, 5]),
)


def make_machine(backend: str, directory):
    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.now = 1_000
            self._db = fresh_database(backend, directory)
            _, engine = self._db.__enter__()
            self.ledger = Ledger(engine, clock=lambda: self.now)
            self.accounts = [self.ledger.open_account(f"o{i}", kind, asset) for asset in ASSETS for i, kind in enumerate(KINDS)]
            self.balance = {a.id: 0 for a in self.accounts}
            self.reserved = {a.id: 0 for a in self.accounts}
            self.holds: dict[str, tuple[int, int, int, int | None]] = {}
            self.done: list[list[Transfer]] = []
            self.n = 0

        def teardown(self) -> None:
            self._db.__exit__(None, None, None)

        def _expire(self) -> None:
            for hid, (d, _c, amt, exp) in list(self.holds.items()):
                if exp is not None and exp <= self.now:
                    self.reserved[d] -= amt
                    del self.holds[hid]

        def _simulate(self, batch: list[Transfer]):
            """The model: new state if the batch commits, else the error class it must raise."""
            bal, res, holds = dict(self.balance), dict(self.reserved), dict(self.holds)
            acc = {a.id: a for a in self.accounts}
            for t in batch:
                if t.kind in ("transfer", "pending"):
                    d, c = acc[t.debit], acc[t.credit]
                    if d.asset != c.asset:
                        return InputError
                    if not d.allow_negative and bal[d.id] - res[d.id] < t.amount:
                        return Overdraft
                    if t.kind == "transfer":
                        bal[d.id] -= t.amount
                        bal[c.id] += t.amount
                    else:
                        res[d.id] += t.amount
                        holds[t.id] = (d.id, c.id, t.amount, None if t.timeout is None else self.now + t.timeout)
                else:
                    if t.pending_id not in holds:
                        return PendingTransferError
                    d, c, amt, _ = holds.pop(t.pending_id)
                    res[d] -= amt
                    if t.kind == "post":
                        if t.amount is not None and t.amount > amt:
                            return InputError
                        moved = amt if t.amount is None else t.amount
                        bal[d] -= moved
                        bal[c] += moved
            return bal, res, holds

        @rule(ops=st.lists(op, min_size=1, max_size=6))
        def commit_batch(self, ops) -> None:
            batch = []
            for kind, i, j, amount, timeout in ops:
                self.n += 1
                tid = f"t{self.n}"
                if i == j:
                    j = (j + 1) % len(self.accounts)
                debit, credit = self.accounts[i].id, self.accounts[j].id
                if kind in ("post", "void"):
                    open_ids = sorted(self.holds) + [t.id for t in batch if t.kind == "pending"]
                    target = open_ids[amount % len(open_ids)] if open_ids else "missing"
                    if kind == "post":
                        batch.append(Transfer.post(tid, target, None if amount % 3 == 0 else amount // 3 + 1))
                    else:
                        batch.append(Transfer.void(tid, target))
                elif kind == "pending":
                    batch.append(Transfer.hold(tid, debit, credit, amount, timeout=timeout))
                else:
                    batch.append(Transfer(tid, debit, credit, amount))
            self._expire()  # the ledger voids timed-out holds before every batch
            outcome = self._simulate(batch)
            before = queries.balances(self.ledger.engine)
            height = self.ledger.height()
            if isinstance(outcome, type):
                with pytest.raises(outcome):
                    self.ledger.commit(batch)
                after = queries.balances(self.ledger.engine)
                # Only expiries (their own height) may have been written.
                assert [b.balance for b in after] == [b.balance for b in before]
            else:
                result = self.ledger.commit(batch)
                assert result.applied == len(batch)
                assert result.height > height
                self.balance, self.reserved, self.holds = outcome
                self.done.append(batch)

        @rule(data=st.data())
        def replay(self, data) -> None:
            if not self.done:
                return
            batch = data.draw(st.sampled_from(self.done))
            height = self.ledger.height()
            try:
                result = self.ledger.commit(batch)
            except LedgerError:
                pytest.fail("replaying a committed batch must be a no-op")
            assert result.applied == 0 and result.height is None
            assert self.ledger.height() - height == len(result.expired_heights)

        @rule(seconds=st.integers(1, 10))
        def time_passes(self, seconds) -> None:
            self.now += seconds

        @invariant()
        def books_balance(self) -> None:
            views = queries.balances(self.ledger.engine)
            for asset in ASSETS:
                assert sum(v.balance for v in views if v.asset == asset) == 0
            for v in views:
                assert v.balance == self.balance[v.account_id]
                if v.kind == "user":
                    assert v.available >= 0

        @invariant()
        def holds_match(self) -> None:
            # Holds the model expired lazily may still be open in the ledger until its next commit.
            model = {h for h, (_, _, _, exp) in self.holds.items() if exp is None or exp > self.now}
            stored = {h for h in self._stored_holds()}
            assert model <= stored <= set(self.holds)

        def _stored_holds(self) -> set[str]:
            from sqlalchemy import select

            from bridge.ledger.models import LedgerPending

            with self.ledger.engine.connect() as conn:
                return set(conn.execute(select(LedgerPending.__table__.c.id)).scalars())

    return LedgerMachine


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_random_batches_keep_the_books_balanced(backend, tmp_path):
    if backend == "postgresql" and (reason := postgres_available()):
        pytest.skip(reason)
    machine = make_machine(backend, tmp_path)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=12 if backend == "sqlite" else 8,
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
    # One more full audit on a fresh run, beyond the per-step invariants.
    final = machine()
    final.commit_batch([("transfer", 0, 1, 10, None), ("pending", 1, 2, 5, 5)])
    assert audit(final.ledger.engine).ok
    final.teardown()
