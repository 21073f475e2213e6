"""The node's durable job queue (local SQLite; never shared between nodes).

A job is one received instance. Its persisted state moves::

    received -> deidentified -> forwarded
         \\            \\-> (retry later) -> forwarded
          \\-> quarantined          \\-> quarantined

"In flight" is not a persisted state: a job being worked on stays in its last
state, so a crash simply leaves it to be picked up again at the next start.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)

from deid_node.db import make_engine

RECEIVED = "received"
DEIDENTIFIED = "deidentified"
FORWARDED = "forwarded"
QUARANTINED = "quarantined"
STATES = (RECEIVED, DEIDENTIFIED, FORWARDED, QUARANTINED)

metadata = MetaData()
jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(32), nullable=False, unique=True),  # spool file stem
    Column("state", String(16), nullable=False),
    Column("calling_ae", String(16), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("transfer_syntax", String(64), nullable=False),
    Column("destination", String(64), nullable=True),
    Column("received_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0.0),
    Column("reason", Text, nullable=True),
    Index("ix_jobs_state_next", "state", "next_attempt_at"),
)


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    state: str
    calling_ae: str
    sop_class_uid: str
    transfer_syntax: str
    destination: str | None
    received_at: float
    attempts: int
    reason: str | None


def _job(row) -> Job:  # type: ignore[no-untyped-def]
    return Job(
        id=row.id,
        name=row.name,
        state=row.state,
        calling_ae=row.calling_ae,
        sop_class_uid=row.sop_class_uid,
        transfer_syntax=row.transfer_syntax,
        destination=row.destination,
        received_at=row.received_at,
        attempts=row.attempts,
        reason=row.reason,
    )


class JobQueue:
    """Thin, typed access to the jobs table; every method is one transaction."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = make_engine(url)
        metadata.create_all(self.engine)

    def add(self, name: str, calling_ae: str, sop_class_uid: str, transfer_syntax: str) -> int:
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(jobs).values(
                    name=name,
                    state=RECEIVED,
                    calling_ae=calling_ae,
                    sop_class_uid=sop_class_uid,
                    transfer_syntax=transfer_syntax,
                    received_at=now,
                    updated_at=now,
                    attempts=0,
                    next_attempt_at=0.0,
                )
            )
            return int(result.inserted_primary_key[0])

    def due(self, state: str, limit: int, exclude: Iterable[int] = ()) -> list[Job]:
        """Jobs in ``state`` whose retry time has come, oldest first."""
        excluded = set(exclude)
        stmt = (
            select(jobs)
            .where(jobs.c.state == state, jobs.c.next_attempt_at <= time.time())
            .order_by(jobs.c.id)
            .limit(limit + len(excluded))
        )
        with self.engine.connect() as conn:
            rows = [_job(r) for r in conn.execute(stmt)]
        return [j for j in rows if j.id not in excluded][:limit]

    def next_due_time(self, state: str) -> float | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.min(jobs.c.next_attempt_at)).where(jobs.c.state == state)
            ).scalar()

    def get(self, job_id: int) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return _job(row) if row else None

    def list(self, state: str | None = None, limit: int = 1000) -> list[Job]:
        stmt = select(jobs).order_by(jobs.c.id).limit(limit)
        if state:
            stmt = stmt.where(jobs.c.state == state)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(stmt)]

    def set_state(
        self,
        job_ids: Sequence[int],
        state: str,
        *,
        reason: str | None = None,
        destination: str | None = None,
        transfer_syntax: str | None = None,
        reset_attempts: bool = False,
    ) -> None:
        if not job_ids:
            return
        values: dict[str, object] = {"state": state, "updated_at": time.time(), "reason": reason}
        if destination is not None:
            values["destination"] = destination
        if transfer_syntax is not None:
            values["transfer_syntax"] = transfer_syntax
        if reset_attempts:
            values["attempts"] = 0
            values["next_attempt_at"] = 0.0
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id.in_(list(job_ids))).values(**values))

    def schedule_retry(self, job_ids: Sequence[int], reason: str, delay: float) -> None:
        if not job_ids:
            return
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(list(job_ids)))
                .values(
                    attempts=jobs.c.attempts + 1,
                    next_attempt_at=now + delay,
                    updated_at=now,
                    reason=reason,
                )
            )

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state))
            found = {state: int(n) for state, n in rows}
        return {s: found.get(s, 0) for s in STATES}

    def pending(self) -> int:
        counts = self.counts()
        return counts[RECEIVED] + counts[DEIDENTIFIED]

    def dispose(self) -> None:
        self.engine.dispose()
