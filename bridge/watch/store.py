"""Watch job persistence: a state change and the data it records commit together.

``transition`` checks the job's current state inside the same transaction, so a
spend is recorded (``spend_intended``) exactly once, before it is broadcast.  The
compare-and-set, the history row (``watch_action``, with the attempt) and the
scheduling statements are the runtime's (``bridge.runtime.store``, table ``WATCH_JOBS``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bridge.core.dbapi import Db
from bridge.core.errors import Conflict, NotFound
from bridge.runtime import spends
from bridge.runtime.store import OpStore, OpTable
from bridge.runtime.store import transition as _transition
from bridge.watch.models import STATES, TERMINAL, WATCHING, WatchAction, WatchJob, create_tables

log = logging.getLogger("bridge.watch")


#: Watch jobs on the runtime's store pattern: the ``watch_job`` row, its ``watch_action`` history.
WATCH_JOBS = OpTable("watch job", "watch_job", "watch_action", "job_id", STATES, TERMINAL, retries="attempts")

#: Spend histories of jobs written before ``spend_version``: the versions sent, oldest first.
_LEGACY_SPENDS = f"SELECT id, spend_history FROM watch_job WHERE spend_history <> '' AND {spends.not_copied(WATCH_JOBS, 'watch_job.id')}"


class WatchStore(OpStore):
    """Jobs are read through the ORM (a job a step, a few per block); every write is the runtime's
    DB-API statements.  ``due``, ``defer``, ``wake``, ``retries``, ``finished`` and ``history``
    come from ``OpStore``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(engine)
        super().__init__(Db(engine), WATCH_JOBS)
        with self.db.transaction() as tx:
            spends.copy_legacy(tx, WATCH_JOBS, ((r["id"], "", (r["spend_history"],)) for r in tx.rows(_LEGACY_SPENDS)))

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def add(self, job: WatchJob) -> tuple[WatchJob, bool]:
        """Insert ``job`` in ``watching``; the same job again returns the stored row (``created`` False),
        a different job under the same id (same HTLC and kind) is a ``Conflict``."""
        with self._session() as s, s.begin():
            existing = s.get(WatchJob, job.id)
            if existing is not None:
                if existing.spec != job.spec:
                    raise Conflict(f"watch job {job.id} exists for this HTLC with other terms", job_id=job.id)
                return existing, False
            job.state = WATCHING
            s.add(job)
            s.flush()
            s.add(WatchAction(job_id=job.id, at=job.created_at, to_state=WATCHING, note=f"{job.kind} job accepted", attempt=1))
        return self.get(job.id), True

    def get(self, job_id: str) -> WatchJob:
        with self._session() as s:
            job = s.get(WatchJob, job_id)
            if job is None:
                raise NotFound(f"no watch job {job_id}", job_id=job_id)
            return job

    def open_jobs(self) -> list[WatchJob]:
        with self._session() as s:
            return list(s.exec(select(WatchJob).where(WatchJob.state.not_in(list(TERMINAL))).order_by(WatchJob.created_at)))

    def all(self) -> list[WatchJob]:
        with self._session() as s:
            return list(s.exec(select(WatchJob).order_by(WatchJob.created_at)))

    def counts(self) -> dict[str, int]:
        """Jobs per state, every state named (zero included)."""
        with self._session() as s:
            found = dict(s.exec(select(WatchJob.state, func.count()).group_by(WatchJob.state)).all())
        return {state: found.get(state, 0) for state in STATES}

    def actions(self, job_id: str) -> list[WatchAction]:
        with self._session() as s:
            return list(s.exec(select(WatchAction).where(WatchAction.job_id == job_id).order_by(WatchAction.seq)))

    def state(self, job_id: str) -> str:
        with self.db.transaction() as tx:
            found = tx.column("SELECT state FROM watch_job WHERE id = :id", {"id": job_id})
        if not found:
            raise NotFound(f"no watch job {job_id}", job_id=job_id)
        return found[0]

    def transition(self, job_id: str, expect: str | Iterable[str], to: str, note: str = "", sent: str | None = None, **fields: Any) -> WatchJob:
        """Move the job from ``expect`` to ``to`` and set ``fields``; ``Conflict`` if it is elsewhere.
        ``sent``: a spend just broadcast, recorded with the move as the newest of ``spend_versions``."""
        if to not in STATES:
            raise ValueError(f"unknown watch state {to!r}")
        unknown = [n for n in fields if n not in WatchJob.model_fields]
        if unknown:
            raise ValueError(f"not watch job fields: {', '.join(unknown)}")
        with self.db.transaction() as tx:
            moved = _transition(tx, WATCH_JOBS, job_id, expect, to, note, fields)
            if sent:
                spends.add(tx, WATCH_JOBS, job_id, sent)
        log.info("watch job %s: %s -> %s: %s", job_id, moved.previous, to, note)
        return self.get(job_id)

    def spend_versions(self, job_id: str) -> list[str]:
        """Every spend this job broadcast (a bump replaces, a reorg may revive any), the newest first."""
        with self.db.transaction() as tx:
            return spends.read(tx, WATCH_JOBS, job_id).get("", [])

    def update(self, job_id: str, **fields: Any) -> None:
        """Bookkeeping that is not a state change (scan cursor, last error, attempts)."""
        unknown = [n for n in fields if n not in WatchJob.model_fields]
        if unknown:
            raise ValueError(f"not watch job fields: {', '.join(unknown)}")
        values = {**fields, "updated_at": time.time()}
        with self.db.transaction() as tx:
            found = tx.execute(
                f"UPDATE watch_job SET {', '.join(f'{n} = :v_{n}' for n in values)} WHERE id = :id", {**{f"v_{n}": v for n, v in values.items()}, "id": job_id}
            )
        if not found:
            raise NotFound(f"no watch job {job_id}", job_id=job_id)
