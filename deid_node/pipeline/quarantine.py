"""Quarantine management for the command line: list, show, retry, purge.

A quarantined job keeps its file in ``quarantine/<job>.dcm`` and its reason in
the queue. What the file is depends on where the job failed:

- at de-identification (unreadable, unknown patient, crashed its worker): the
  file as received. The job never got a destination.
- at forwarding (a failure status, too many retries): the de-identified file.
  Such a job was recorded ``deidentified`` with a destination first.

So a job with a destination failed at forwarding; this is what ``stage`` says.

``retry`` puts the file back where that stage reads it (``spool/incoming`` or
``spool/outgoing``) and the job back in ``received`` or ``deidentified``; a
running node picks it up when it next reconciles its work lists with the
queue (every few seconds). ``purge`` deletes the file and marks the job
``purged``. Each runs per job in one queue transaction that is opened (BEGIN
IMMEDIATE) before the file moves and committed after, so a running node can
neither see the new state before the file is in place nor change the job in
between; a crash in the middle leaves the job quarantined, and the node's
start-up recovery moves a file found in the spool for a quarantined job back
to ``quarantine/``. Every retry and purge is written to the audit log
(``released``, ``purged``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from deid_node.audit import AuditEvent, AuditLog
from deid_node.config import Config
from deid_node.pipeline.queue import (
    DEIDENTIFIED,
    PURGED,
    QUARANTINED,
    RECEIVED,
    Job,
    JobQueue,
    jobs,
    row_to_job,
)
from deid_node.pipeline.spool import Spool, fsync_dir

STAGE_DEID = "de-identification"
STAGE_FORWARD = "forwarding"


@dataclass(frozen=True)
class Entry:
    """A quarantined job as the command line shows it (no dataset values)."""

    job: Job
    quarantined_at: float
    path: Path

    @property
    def stage(self) -> str:
        return STAGE_FORWARD if self.job.destination else STAGE_DEID

    def as_dict(self) -> dict[str, object]:
        exists = self.path.exists()
        return {
            "job": self.job.id,
            "state": self.job.state,
            "stage": self.stage,
            "reason": self.job.reason or "",
            "calling_ae": self.job.calling_ae,
            "sop_class_uid": self.job.sop_class_uid,
            "transfer_syntax": self.job.transfer_syntax,
            "destination": self.job.destination,
            "attempts": self.job.attempts,
            "received_at": _iso(self.job.received_at),
            "quarantined_at": _iso(self.quarantined_at),
            "file": str(self.path),
            "file_exists": exists,
            "file_bytes": self.path.stat().st_size if exists else None,
        }


@dataclass(frozen=True)
class Outcome:
    job_id: int
    ok: bool
    message: str


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


class Quarantine:
    """The queue, spool and audit log of one data_dir, for quarantine commands."""

    def __init__(self, config: Config) -> None:
        self.spool = Spool(config.data_dir)
        self.queue = JobQueue(config.queue_url)
        self.audit = AuditLog(config.audit_url)

    def close(self) -> None:
        self.queue.dispose()
        self.audit.dispose()

    def __enter__(self) -> Quarantine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------

    def _entry(self, row) -> Entry:  # type: ignore[no-untyped-def]
        job = row_to_job(row)
        return Entry(job, float(row.updated_at), self.spool.quarantine / f"{job.name}.dcm")

    def list(self) -> list[Entry]:
        stmt = select(jobs).where(jobs.c.state == QUARANTINED).order_by(jobs.c.id)
        with self.queue.engine.connect() as conn:
            return [self._entry(r) for r in conn.execute(stmt)]

    def get(self, job_id: int) -> Entry | None:
        with self.queue.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return self._entry(row) if row is not None else None

    def older_than(self, days: float, now: float | None = None) -> list[int]:
        cutoff = (now if now is not None else time.time()) - days * 86400
        return [e.job.id for e in self.list() if e.quarantined_at <= cutoff]

    # -- changing ------------------------------------------------------------------

    def retry(self, job_ids: Iterable[int]) -> list[Outcome]:
        """Put each job back in the stage it failed in, for the node to pick up."""
        return [self._retry_one(i) for i in job_ids]

    def _retry_one(self, job_id: int) -> Outcome:
        with self.queue.engine.begin() as conn:  # BEGIN IMMEDIATE: the write lock
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            if row is None:
                return Outcome(job_id, False, "no such job")
            entry = self._entry(row)
            if entry.job.state != QUARANTINED:
                return Outcome(job_id, False, f"not quarantined (state {entry.job.state})")
            if not entry.path.exists():
                return Outcome(job_id, False, f"file missing: {entry.path}")
            forward = entry.stage == STAGE_FORWARD
            state, folder = (
                (DEIDENTIFIED, self.spool.outgoing)
                if forward
                else (
                    RECEIVED,
                    self.spool.incoming,
                )
            )
            conn.exec_driver_sql(
                "UPDATE jobs SET state = ?, reason = NULL, attempts = 0, next_attempt_at = 0.0,"
                " updated_at = ? WHERE id = ?",
                (state, time.time(), job_id),
            )
            os.replace(entry.path, folder / entry.path.name)
            fsync_dir(folder)
            fsync_dir(self.spool.quarantine)
        self.audit.record(
            [
                AuditEvent(
                    kind="released",
                    job_id=entry.job.instance_id,
                    detail=f"quarantine retry: back to {state}",
                )
            ]
        )
        return Outcome(job_id, True, f"back to {state} ({entry.stage} is retried)")

    def purge(self, job_ids: Iterable[int]) -> list[Outcome]:
        """Delete each job's quarantined file durably and mark the job purged."""
        return [self._purge_one(i) for i in job_ids]

    def _purge_one(self, job_id: int) -> Outcome:
        with self.queue.engine.begin() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            if row is None:
                return Outcome(job_id, False, "no such job")
            entry = self._entry(row)
            if entry.job.state != QUARANTINED:
                return Outcome(job_id, False, f"not quarantined (state {entry.job.state})")
            conn.exec_driver_sql(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ?",
                (PURGED, time.time(), job_id),
            )
            entry.path.unlink(missing_ok=True)
            fsync_dir(self.spool.quarantine)
        self.audit.record(
            [
                AuditEvent(
                    kind="purged",
                    job_id=entry.job.instance_id,
                    detail=f"purged from quarantine ({entry.stage})",
                )
            ]
        )
        return Outcome(job_id, True, "purged")


def render_table(entries: Sequence[Entry]) -> str:
    if not entries:
        return "no quarantined jobs"
    head = ("job", "stage", "quarantined at (UTC)", "from AE", "reason")
    rows = [
        (
            str(e.job.id),
            e.stage,
            _iso(e.quarantined_at),
            e.job.calling_ae,
            e.job.reason or "",
        )
        for e in entries
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def render_entry(entry: Entry) -> str:
    d = entry.as_dict()
    width = max(len(k) for k in d)
    return "\n".join(f"{k.ljust(width)}  {'' if v is None else v}" for k, v in d.items())


def run_command(
    store: Quarantine,
    action: str,
    *,
    job_ids: Sequence[int | None] = (),
    every: bool = False,
    older_than: float | None = None,
    as_json: bool = False,
) -> int:
    """What ``deid-node quarantine ACTION`` prints; returns the exit status."""
    ids = [i for i in job_ids if i is not None]
    if action == "list":
        entries = store.list()
        print(
            json.dumps([e.as_dict() for e in entries], indent=2)
            if as_json
            else render_table(entries)
        )
        return 0
    if action == "show":
        entry = store.get(ids[0])
        if entry is None:
            print(f"deid-node: no job {ids[0]}", file=sys.stderr)
            return 1
        print(json.dumps(entry.as_dict(), indent=2) if as_json else render_entry(entry))
        return 0
    if action == "retry" and every:
        ids = [e.job.id for e in store.list()]
    elif action == "purge" and older_than is not None:
        ids = store.older_than(older_than)
    elif not ids:
        needed = "--all" if action == "retry" else "--older-than DAYS"
        print(f"deid-node: quarantine {action}: name job ids or {needed}", file=sys.stderr)
        return 2
    outcomes = store.retry(ids) if action == "retry" else store.purge(ids)
    for o in outcomes:
        print(f"job {o.job_id}: {o.message}", file=sys.stdout if o.ok else sys.stderr)
    print(f"{sum(o.ok for o in outcomes)} of {len(outcomes)} jobs: {action} done")
    return 0 if all(o.ok for o in outcomes) else 1
