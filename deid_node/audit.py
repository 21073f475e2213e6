"""The audit store: who sent what, what it became, and where it went.

It holds the original-to-new mapping (patient IDs, study and instance UIDs) so
that a curator can answer "where did study X go?". It is therefore a protected
file (0600 SQLite in ``data_dir``), and the only place besides the registry where
original identifiers are written. Events: received, deidentified, forwarded,
retry, quarantined, released (quarantine retry) and purged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    insert,
    or_,
    select,
)

from deid_node.db import make_engine

EVENT_KINDS = (
    "received",
    "deidentified",
    "forwarded",
    "retry",
    "quarantined",
    "released",
    "purged",
)

metadata = MetaData()
events = Table(
    "audit_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("kind", String(16), nullable=False, index=True),
    Column("job_id", Integer, nullable=True, index=True),
    Column("calling_ae", String(16), nullable=True),
    Column("destination", String(64), nullable=True),
    Column("patient_id_old", String(64), nullable=True, index=True),
    Column("patient_id_new", String(64), nullable=True, index=True),
    Column("study_uid_old", String(64), nullable=True, index=True),
    Column("study_uid_new", String(64), nullable=True, index=True),
    Column("sop_uid_old", String(64), nullable=True),
    Column("sop_uid_new", String(64), nullable=True),
    Column("detail", Text, nullable=True),
    Index("ix_audit_job_kind", "job_id", "kind"),
)


@dataclass
class AuditEvent:
    kind: str
    job_id: int | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    calling_ae: str | None = None
    destination: str | None = None
    patient_id_old: str | None = None
    patient_id_new: str | None = None
    study_uid_old: str | None = None
    study_uid_new: str | None = None
    sop_uid_old: str | None = None
    sop_uid_new: str | None = None
    detail: str | None = None


_EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))


class AuditLog:
    def __init__(self, url: str) -> None:
        self.engine: Engine = make_engine(url, durable=False)
        metadata.create_all(self.engine)

    def record(self, batch: Iterable[AuditEvent]) -> None:
        # Not dataclasses.asdict, which deep-copies every value: the fields are
        # strings, numbers and a datetime, and this runs for every instance.
        rows = [{name: getattr(e, name) for name in _EVENT_FIELDS} for e in batch]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(events), rows)

    def query(
        self,
        *,
        patient: str | None = None,
        study: str | None = None,
        kinds: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        job_id: int | None = None,
        limit: int = 10_000,
    ) -> list[AuditEvent]:
        """Events matching every filter given, oldest first.

        ``patient`` and ``study`` match the original or the new value; they select
        whole jobs, so the answer for a study includes its jobs' received and
        forwarded events, which do not themselves carry the study UID. Events
        without a job (the batch command's) match on their own values.
        ``since`` and ``until`` without a time zone are UTC.
        """
        stmt = select(events).order_by(events.c.at, events.c.id).limit(limit)
        job_filters = []
        if patient:
            job_filters.append(
                or_(events.c.patient_id_old == patient, events.c.patient_id_new == patient)
            )
        if study:
            job_filters.append(
                or_(events.c.study_uid_old == study, events.c.study_uid_new == study)
            )
        if job_filters:
            jobs_matching = (
                select(events.c.job_id).where(*job_filters, events.c.job_id.is_not(None)).distinct()
            )
            stmt = stmt.where(or_(and_(*job_filters), events.c.job_id.in_(jobs_matching)))
        if job_id is not None:
            stmt = stmt.where(events.c.job_id == job_id)
        if kinds:
            stmt = stmt.where(events.c.kind.in_(list(kinds)))
        # Times are stored as UTC wall-clock values (SQLite keeps no zone): compare
        # in UTC, whatever zone the caller's bounds are in.
        if since:
            stmt = stmt.where(events.c.at >= _utc(since))
        if until:
            stmt = stmt.where(events.c.at <= _utc(until))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        result = []
        for r in rows:
            values = {k: r[k] for k in AuditEvent.__dataclass_fields__}
            if values["at"] is not None and values["at"].tzinfo is None:
                values["at"] = values["at"].replace(tzinfo=UTC)  # SQLite drops the zone
            result.append(AuditEvent(**values))
        return result

    def dispose(self) -> None:
        self.engine.dispose()


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


_COLUMNS = (
    ("at", "time (UTC)"),
    ("kind", "event"),
    ("job_id", "job"),
    ("calling_ae", "from AE"),
    ("destination", "to"),
    ("patient_id_old", "patient"),
    ("patient_id_new", "pseudonym"),
    ("study_uid_old", "study UID"),
    ("study_uid_new", "new study UID"),
    ("detail", "detail"),
)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return str(value)


def render_table(batch: Sequence[AuditEvent]) -> str:
    """A plain-text table for terminals (only columns that have any value)."""
    cols = [(k, title) for k, title in _COLUMNS if any(getattr(e, k) for e in batch)]
    if not batch:
        return "no matching audit events"
    cells = [[_cell(getattr(e, k)) for k, _ in cols] for e in batch]
    widths = [max(len(t), *(len(row[i]) for row in cells)) for i, (_, t) in enumerate(cols)]
    lines = ["  ".join(t.ljust(w) for (_, t), w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def render_json(batch: Sequence[AuditEvent]) -> str:
    return json.dumps(
        [
            {k: _cell(v) if isinstance(v, datetime) else v for k, v in asdict(e).items()}
            for e in batch
        ],
        indent=2,
    )
