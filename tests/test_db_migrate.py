"""``init_db`` brings a database written by an older version up to date, on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
import time

import pytest
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, insert, inspect, select, text

from bridge.core.db import init_db, make_engine
from bridge.core.errors import ConfigError, SchemaError
from bridge.swaps import models as m
from bridge.swaps.models import INITIATOR, PARTICIPANT, Swap, SwapLeg
from bridge.swaps.store import SwapStore


def _old_swap_db(engine) -> None:
    """The swap tables as an older version wrote them: no ``swap_leg.outcome``, no ``swap.retries``, one swap."""
    store = SwapStore(engine)
    now = time.time()
    store.create(
        Swap(id="old", role=INITIATOR, state=m.INITIATOR_LOCKED, hashlock="ab" * 32, created_at=now, updated_at=now),
        [
            SwapLeg(swap_id="old", leg=INITIATOR, chain="bitcoin", asset="btc", amount="50000000", lock_ref="aa:0"),
            SwapLeg(swap_id="old", leg=PARTICIPANT, chain="evm", asset="eth", amount=str(10**22)),
        ],
    )
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE swap_leg DROP COLUMN outcome"))
        conn.execute(text("ALTER TABLE swap DROP COLUMN retries"))
    columns = {c["name"] for c in inspect(engine).get_columns("swap_leg")}
    assert "outcome" not in columns


def test_an_old_swap_database_gains_the_new_columns_and_keeps_its_rows(ledger_db):
    url, engine = ledger_db
    _old_swap_db(engine)
    # A newer version starting on that file: a new process, so a new engine (``init_db`` checks
    # each table once per engine).
    newer = make_engine(url)
    store = SwapStore(newer)  # what every party does on start
    view = store.get("old")
    assert view.swap.state == m.INITIATOR_LOCKED and view.swap.retries == 0  # the model's default filled the old row
    assert view.leg(INITIATOR).lock_ref == "aa:0" and view.leg(INITIATOR).outcome is None
    store.transition("old", m.INITIATOR_LOCKED, m.INITIATOR_LOCKED, legs={INITIATOR: {"outcome": "refunded"}})
    store.defer("old", "waiting", 1.0)
    third = make_engine(url)
    again = SwapStore(third).get("old")  # a second start changes nothing
    assert again.leg(INITIATOR).outcome == "refunded" and again.swap.retries == 1
    newer.dispose(), third.dispose()


def test_a_not_null_column_without_default_is_refused_by_name(ledger_db):
    _url, engine = ledger_db
    name = f"widget_{secrets.token_hex(3)}"
    old = Table(name, MetaData(), Column("id", Integer, primary_key=True), Column("size", Float, nullable=True))
    init_db(engine, [old])
    with engine.begin() as conn:
        conn.execute(insert(old).values(id=1, size=2.5))
    new = Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("size", Float, nullable=True),
        Column("colour", String, nullable=True),
        Column("owner", String, nullable=False),
    )
    with pytest.raises(SchemaError, match=f"table '{name}' .* lacks column 'owner', which is NOT NULL without a default") as err:
        init_db(engine, [new])
    assert isinstance(err.value, ConfigError) and err.value.details == {"table": name, "column": "owner"}
    # Refused before any change: the addable column was not added either.
    assert {c["name"] for c in inspect(engine).get_columns(name)} == {"id", "size"}
    with engine.connect() as conn:
        assert conn.execute(select(old.c.size)).all() == [(2.5,)]


def test_nullable_and_defaulted_columns_are_added_with_their_index(ledger_db):
    url, engine = ledger_db
    name = f"gadget_{secrets.token_hex(3)}"
    old = Table(name, MetaData(), Column("id", Integer, primary_key=True))
    init_db(engine, [old])
    with engine.begin() as conn:
        conn.execute(insert(old).values(id=1))
    new = Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("note", String, nullable=True, index=True),
        Column("tries", Integer, nullable=False, default=3),
        Column("kind", String, nullable=False, server_default="plain"),
    )
    init_db(engine, [new])
    again = make_engine(url)
    init_db(again, [new])  # idempotent, in a process that starts later (a new engine)
    again.dispose()
    with engine.connect() as conn:
        assert conn.execute(select(new.c.id, new.c.note, new.c.tries, new.c.kind)).all() == [(1, None, 3, "plain")]
    assert any(ix["column_names"] == ["note"] for ix in inspect(engine).get_indexes(name))


def test_spend_histories_kept_as_text_move_into_the_spend_version_table_once(ledger_db):
    """A swap leg and a watch job written when spend histories were comma-separated text: a newer
    version opening the database reads every version from ``spend_version`` (the current first),
    copied once however often the database is opened, and adds new versions after them."""
    from bridge.watch.models import SPEND_SENT, WatchJob
    from bridge.watch.store import WatchStore

    url, engine = ledger_db
    _old_swap_db(engine)
    now = time.time()
    job = WatchJob(id="job", kind="claim", chain="bitcoin", state="watching", spec="{}", hashlock="ab" * 32, expiry=1, payout="00", created_at=now)
    job.updated_at = now
    WatchStore(engine).add(job)
    with engine.begin() as conn:  # as the older version left them: strings on the rows, no table rows
        conn.execute(text("UPDATE swap SET state = :s WHERE id = 'old'"), {"s": m.REFUND_INTENDED})
        conn.execute(text("UPDATE swap_leg SET spend_tx = 'c3', spend_history = 'c1,c2' WHERE swap_id = 'old' AND leg = :l"), {"l": INITIATOR})
        conn.execute(text("UPDATE watch_job SET state = :s, spend_tx = 'w2', spend_history = 'w1,w2' WHERE id = 'job'"), {"s": SPEND_SENT})
        conn.execute(text("DELETE FROM spend_version"))
    for _ in range(2):  # two starts of a newer version: the second copies nothing again
        newer = make_engine(url)
        assert SwapStore(newer).get("old").spend_versions(INITIATOR) == ["c3", "c2", "c1"]
        assert WatchStore(newer).spend_versions("job") == ["w2", "w1"]
        newer.dispose()
    store = SwapStore(engine)
    view = store.transition("old", m.REFUND_INTENDED, m.REFUND_INTENDED, "fee bump", legs={INITIATOR: {"spend_tx": "c4"}})
    assert view.spend_versions(INITIATOR) == ["c4", "c3", "c2", "c1"] and view.spend_versions(PARTICIPANT) == []
    watch = WatchStore(engine)
    watch.transition("job", SPEND_SENT, SPEND_SENT, sent="w2")  # a version sent again stays where it is
    watch.transition("job", SPEND_SENT, SPEND_SENT, sent="w3")
    assert watch.spend_versions("job") == ["w3", "w2", "w1"]
