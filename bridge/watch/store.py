"""Watch job persistence: a state change and the data it records commit together.

``transition`` checks the job's current state inside the same transaction, so a
spend is recorded (``spend_intended``) exactly once, before it is broadcast.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bridge.core.errors import Conflict, NotFound
from bridge.watch.models import STATES, TERMINAL, WATCHING, WatchAction, WatchJob, create_tables

log = logging.getLogger("bridge.watch")


class WatchStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(engine)

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
            s.add(WatchAction(job_id=job.id, at=job.created_at, to_state=WATCHING, note=f"{job.kind} job accepted"))
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

    def transition(self, job_id: str, expect: str | Iterable[str], to: str, note: str = "", **fields: Any) -> WatchJob:
        """Move the job from ``expect`` to ``to`` and set ``fields``; ``Conflict`` if it is elsewhere."""
        if to not in STATES:
            raise ValueError(f"unknown watch state {to!r}")
        allowed = {expect} if isinstance(expect, str) else set(expect)
        now = time.time()
        with self._session() as s, s.begin():
            job = s.get(WatchJob, job_id)
            if job is None:
                raise NotFound(f"no watch job {job_id}", job_id=job_id)
            if job.state not in allowed:
                raise Conflict(f"watch job {job_id} is {job.state}, expected {' or '.join(sorted(allowed))}", job_id=job_id)
            from_state = job.state
            for name, value in fields.items():
                setattr(job, name, value)
            job.state, job.updated_at, job.attempts, job.last_error = to, now, 0, None
            s.add(job)
            s.add(WatchAction(job_id=job_id, at=now, from_state=from_state, to_state=to, note=note))
        log.info("watch job %s: %s -> %s: %s", job_id, from_state, to, note)
        return self.get(job_id)

    def update(self, job_id: str, **fields: Any) -> None:
        """Bookkeeping that is not a state change (scan cursor, last error, attempts)."""
        with self._session() as s, s.begin():
            job = s.get(WatchJob, job_id)
            if job is None:
                raise NotFound(f"no watch job {job_id}", job_id=job_id)
            for name, value in fields.items():
                setattr(job, name, value)
            job.updated_at = time.time()
            s.add(job)
