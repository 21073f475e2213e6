"""The node's durable job queue (local SQLite; never shared between nodes).

A job is one received instance. Its persisted state moves::

    received -> deidentified -> forwarded
         \\            \\-> (retry later) -> forwarded
          \\-> quarantined          \\-> quarantined

A quarantined job goes back to ``received`` or ``deidentified`` when an
operator retries it, or to ``purged`` (its file deleted) when purged; see
:mod:`deid_node.pipeline.quarantine`.

"In flight" is not a persisted state: a job being worked on stays in its last
state, so a crash simply leaves it to be picked up again at the next start.
"""

from __future__ import annotations

import sqlite3
import threading
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
    select,
)
from sqlalchemy.engine import make_url

from deid_node.db import make_engine

RECEIVED = "received"
DEIDENTIFIED = "deidentified"
FORWARDED = "forwarded"
QUARANTINED = "quarantined"
PURGED = "purged"  # quarantined, then deleted by an operator
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
    # Routing: a job per (instance, destination). The first destination's job is
    # the one the instance was received as; each further destination gets a copy
    # whose parent_id is that job (its audit events are recorded under the parent).
    Column("parent_id", Integer, nullable=True),
    # The de-identified Study Instance UID, for [forward] mode = "study".
    Column("study_uid", String(64), nullable=True),
    Index("ix_jobs_state_next", "state", "next_attempt_at"),
)

# Columns added after the first release: (name, SQL type), added to an older queue.
_ADDED_COLUMNS = (("parent_id", "INTEGER"), ("study_uid", "VARCHAR(64)"))


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
    next_attempt_at: float = 0.0
    parent_id: int | None = None
    study_uid: str | None = None

    @property
    def instance_id(self) -> int:
        """The job the instance was received as: the one its audit events belong to."""
        return self.parent_id or self.id


@dataclass(frozen=True)
class Copy:
    """A further destination's job for an instance de-identified once."""

    name: str  # its own spool name (a hard link to the parent's output)
    parent: Job
    destination: str


def row_to_job(row) -> Job:  # type: ignore[no-untyped-def]
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
        next_attempt_at=row.next_attempt_at,
        parent_id=row.parent_id,
        study_uid=row.study_uid,
    )


def _add_missing_columns(engine: Engine) -> None:
    with engine.begin() as conn:
        have = {r[1] for r in conn.exec_driver_sql("PRAGMA table_info(jobs)")}
        for name, sql_type in _ADDED_COLUMNS:
            if name not in have:
                conn.exec_driver_sql(f"ALTER TABLE jobs ADD COLUMN {name} {sql_type}")


class JobQueue:
    """Typed access to the jobs table; every method is one transaction.

    The statements on the per-instance path are plain SQL: compiling a
    SQLAlchemy expression costs more than the SQLite write itself.
    """

    def __init__(self, url: str) -> None:
        self.engine: Engine = make_engine(url, durable=False)
        metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        # The C-STORE path inserts one row per instance from the SCP threads: a
        # plain sqlite3 connection in autocommit mode does that in a fraction of
        # the time of an engine transaction.
        self._insert_lock = threading.Lock()
        self._insert_conn = sqlite3.connect(
            make_url(url).database or ":memory:",
            isolation_level=None,
            check_same_thread=False,
            timeout=30,
        )
        self._insert_conn.execute("PRAGMA synchronous=NORMAL")
        self._insert_conn.execute("PRAGMA busy_timeout=30000")

    def add(self, name: str, calling_ae: str, sop_class_uid: str, transfer_syntax: str) -> Job:
        now = time.time()
        with self._insert_lock:
            cursor = self._insert_conn.execute(
                "INSERT INTO jobs (name, state, calling_ae, sop_class_uid, transfer_syntax,"
                " received_at, updated_at, attempts, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0.0)",
                (name, RECEIVED, calling_ae, sop_class_uid, transfer_syntax, now, now),
            )
            job_id = int(cursor.lastrowid or 0)
        return Job(
            job_id,
            name,
            RECEIVED,
            calling_ae,
            sop_class_uid,
            transfer_syntax,
            None,
            now,
            0,
            None,
            0.0,
        )

    def in_states(self, states: Sequence[str], exclude: Iterable[int] = ()) -> list[Job]:
        """Every job in ``states``, oldest first, except the ids in ``exclude``."""
        excluded = set(exclude)
        stmt = select(jobs).where(jobs.c.state.in_(list(states))).order_by(jobs.c.id)
        with self.engine.connect() as conn:
            return [j for j in map(row_to_job, conn.execute(stmt)) if j.id not in excluded]

    def states_by_name(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return {name: state for name, state in conn.execute(select(jobs.c.name, jobs.c.state))}

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
        sets = ["state = ?", "updated_at = ?", "reason = ?"]
        params: list[object] = [state, time.time(), reason]
        if destination is not None:
            sets.append("destination = ?")
            params.append(destination)
        if transfer_syntax is not None:
            sets.append("transfer_syntax = ?")
            params.append(transfer_syntax)
        if reset_attempts:
            sets.append("attempts = 0, next_attempt_at = 0.0")
        marks = ",".join("?" * len(job_ids))
        with self.engine.begin() as conn:
            conn.exec_driver_sql(
                f"UPDATE jobs SET {', '.join(sets)} WHERE id IN ({marks})",
                (*params, *job_ids),
            )

    def mark_deidentified(
        self, done: Sequence[tuple[int, str, str | None, str | None]], copies: Sequence[Copy]
    ) -> dict[tuple[int, str], int]:
        """Record de-identified jobs and their copies for further destinations at once.

        ``done`` holds ``(job_id, transfer_syntax, destination, study_uid)``. One
        transaction: after a crash either the instance is de-identified with all its
        destinations' jobs, or it is still received and is de-identified again.
        Returns the new jobs' ids by ``(parent id, destination)``.
        """
        now = time.time()
        ids: dict[tuple[int, str], int] = {}
        with self.engine.begin() as conn:
            if done:
                conn.exec_driver_sql(
                    "UPDATE jobs SET state = ?, updated_at = ?, reason = NULL,"
                    " transfer_syntax = ?, destination = ?, study_uid = ?, attempts = 0,"
                    " next_attempt_at = 0.0 WHERE id = ?",
                    [
                        (DEIDENTIFIED, now, ts, dest, study, job_id)
                        for job_id, ts, dest, study in done
                    ],
                )
            syntax = {job_id: ts for job_id, ts, _, _ in done}
            study_of = {job_id: study for job_id, _, _, study in done}
            for c in copies:
                p = c.parent
                cursor = conn.exec_driver_sql(
                    "INSERT INTO jobs (name, state, calling_ae, sop_class_uid, transfer_syntax,"
                    " destination, received_at, updated_at, attempts, next_attempt_at,"
                    " parent_id, study_uid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0.0, ?, ?)",
                    (
                        c.name,
                        DEIDENTIFIED,
                        p.calling_ae,
                        p.sop_class_uid,
                        syntax.get(p.id, p.transfer_syntax),
                        c.destination,
                        p.received_at,
                        now,
                        p.id,
                        study_of.get(p.id),
                    ),
                )
                ids[(p.id, c.destination)] = int(cursor.lastrowid or 0)
        return ids

    def schedule_retry(self, job_ids: Sequence[int], reason: str, at: float) -> None:
        """Count one more attempt and hold the jobs until ``at`` (epoch seconds)."""
        if not job_ids:
            return
        marks = ",".join("?" * len(job_ids))
        with self.engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE jobs SET attempts = attempts + 1, next_attempt_at = ?, updated_at = ?,"
                f" reason = ? WHERE id IN ({marks})",
                (at, time.time(), reason, *job_ids),
            )

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state))
            found = {state: int(n) for state, n in rows}
        counts = {s: found.get(s, 0) for s in STATES}
        if found.get(PURGED):  # shown once there are any
            counts[PURGED] = found[PURGED]
        return counts

    def pending_count(self) -> int:
        """Jobs not yet forwarded nor quarantined (the back-pressure queue depth)."""
        stmt = select(func.count()).where(jobs.c.state.in_([RECEIVED, DEIDENTIFIED]))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def dispose(self) -> None:
        with self._insert_lock:
            self._insert_conn.close()
        self.engine.dispose()
