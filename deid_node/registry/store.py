"""Pseudonym, date-offset and UID store on any SQLAlchemy database.

Designed for several processes and several nodes at once: a patient's row is
created with an INSERT that may lose a race against another process; the loser
reads back the winner's row, so every process ends with the same pseudonym and
offset. UID mappings are deterministic (keyed hash), so recording them is an
idempotent insert that ignores duplicates.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from deid_node.db import make_engine
from deid_node.deid.engine import PatientPseudonym
from deid_node.registry.models import SCHEMA_VERSION, metadata, patients, schema_info, uid_map

_PSEUDO_ALPHABET = string.ascii_uppercase + string.digits
# Key of the PostgreSQL advisory lock held while the schema is created or checked.
_SCHEMA_LOCK = 0x6465_6964_7265_6701  # arbitrary, constant for this application


def open_registry(url: str) -> Engine:
    """Connect and create or upgrade the schema; safe to call from every process."""
    engine = make_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # CREATE TABLE is not safe against a concurrent CREATE of the same table
            # (a unique violation in pg_type): serialise schema setup across
            # processes and nodes. SQLite's BEGIN IMMEDIATE already does.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        metadata.create_all(conn, checkfirst=True)
        current = conn.execute(select(schema_info.c.version)).scalar()
        if current is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(schema_info).values(id=1, version=SCHEMA_VERSION))
            except IntegrityError:
                pass  # another process wrote it first
        elif current > SCHEMA_VERSION:
            raise RuntimeError(
                f"registry schema version {current} is newer than this node understands "
                f"({SCHEMA_VERSION}); upgrade the node"
            )
    return engine


def _new_pseudo_id(prefix: str) -> str:
    return prefix + "-" + "".join(secrets.choice(_PSEUDO_ALPHABET) for _ in range(10))


def get_or_create_patient(
    engine: Engine,
    issuer: str,
    original_id: str,
    *,
    prefix: str,
    min_offset_days: int,
    max_offset_days: int,
) -> PatientPseudonym:
    """Return the patient's pseudonym and date offset, creating them on first sight.

    The offset is drawn uniformly from ``min..max`` days and stored negated (dates
    move back). A patient with no ID at all gets a fresh pseudonym each time,
    because nothing says two such instances belong to one person.
    """
    select_row = select(
        patients.c.pseudo_id, patients.c.pseudo_name, patients.c.date_offset_days
    ).where(patients.c.issuer == issuer, patients.c.original_id == original_id)
    for _ in range(5):
        with engine.begin() as conn:
            row = conn.execute(select_row).first() if original_id else None
            if row is not None:
                return PatientPseudonym(row[0], row[1], int(row[2]))
            pseudo_id = _new_pseudo_id(prefix)
            offset = -(min_offset_days + secrets.randbelow(max_offset_days - min_offset_days + 1))
            values = {
                "issuer": issuer,
                "original_id": original_id or "(none)/" + pseudo_id,
                "pseudo_id": pseudo_id,
                "pseudo_name": pseudo_id,
                "date_offset_days": offset,
                "created_at": datetime.now(UTC),
            }
            try:
                with conn.begin_nested():
                    conn.execute(insert(patients).values(**values))
            except IntegrityError:
                continue  # lost a race (same patient) or a pseudonym collision: look again
            return PatientPseudonym(pseudo_id, pseudo_id, offset)
    raise RuntimeError("could not create a patient pseudonym after 5 attempts")


def record_uids(engine: Engine, rows: Iterable[tuple[str, str, str]]) -> None:
    """Record ``(original, new, level)`` UID pairs; known ones are kept.

    A UID can be seen first as a reference (level "other": a report or a
    presentation state that arrives before the image it points to) and later as
    what it is; the later, more specific level replaces "other" so that the
    crosswalk lists every study, series and instance.
    """
    values = [
        {"original_uid": o, "new_uid": n, "level": lvl, "created_at": datetime.now(UTC)}
        for o, n, lvl in rows
        if o
    ]
    if not values:
        return
    dialect = engine.dialect.name
    if dialect == "postgresql":
        stmt = pg_insert(uid_map)
    elif dialect == "sqlite":
        stmt = sqlite_insert(uid_map)
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise RuntimeError(f"unsupported registry database {dialect}")
    stmt = stmt.on_conflict_do_update(
        index_elements=["original_uid"],
        set_={"level": stmt.excluded.level},
        where=(uid_map.c.level == "other") & (stmt.excluded.level != "other"),
    )
    with engine.begin() as conn:
        conn.execute(stmt, values)


def crosswalk_rows(engine: Engine, kind: str) -> Iterable[tuple[str, str]]:
    """Yield ``(id_old, id_new)`` for ``kind`` 'uids' or 'patients'."""
    with engine.connect() as conn:
        if kind == "patients":
            stmt = select(patients.c.original_id, patients.c.pseudo_id).order_by(patients.c.id)
        elif kind == "uids":
            stmt = (
                select(uid_map.c.original_uid, uid_map.c.new_uid)
                .where(uid_map.c.level.in_(("study", "series", "instance")))
                .order_by(uid_map.c.level, uid_map.c.original_uid)
            )
        else:
            raise ValueError(f"unknown crosswalk kind {kind!r}")
        for row in conn.execute(stmt):
            yield row[0], row[1]


__all__ = [
    "crosswalk_rows",
    "get_or_create_patient",
    "open_registry",
    "record_uids",
]
