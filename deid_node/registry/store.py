"""Pseudonym, date-offset and UID store on any SQLAlchemy database.

Designed for several processes and several nodes at once: a patient's row is
created with an INSERT that may lose a race against another process; the loser
reads back the winner's row, so every process ends with the same pseudonym and
offset. UID mappings are deterministic (keyed hash), so recording them is an
idempotent insert that ignores duplicates.
"""

from __future__ import annotations

import csv
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from deid_node.db import make_engine
from deid_node.deid.engine import PatientPseudonym
from deid_node.registry import migrations
from deid_node.registry.models import patients, uid_map

_PSEUDO_ALPHABET = string.ascii_uppercase + string.digits
# Key of the PostgreSQL advisory lock held while the schema is created or checked.
_SCHEMA_LOCK = 0x6465_6964_7265_6701  # arbitrary, constant for this application


def open_registry(url: str) -> Engine:
    """Connect, and create or migrate the schema; safe to call from every process.

    Migrations run here, so upgrading the node upgrades its registry; see
    :mod:`deid_node.registry.migrations`.
    """
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # CREATE TABLE is not safe against a concurrent CREATE of the same table
                # (a unique violation in pg_type), and two nodes must not migrate at
                # once: serialise schema work across processes and nodes. SQLite's
                # BEGIN IMMEDIATE already does.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            migrations.upgrade(conn)
    except Exception:
        engine.dispose()
        raise
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


def find_patient(engine: Engine, issuer: str, original_id: str) -> PatientPseudonym | None:
    """The patient's pseudonym and offset if the registry has them; never creates one."""
    if not original_id:
        return None
    stmt = select(patients.c.pseudo_id, patients.c.pseudo_name, patients.c.date_offset_days).where(
        patients.c.issuer == issuer, patients.c.original_id == original_id
    )
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    return None if row is None else PatientPseudonym(row[0], row[1], int(row[2]))


# -- importing a pseudonym table --------------------------------------------------------

PSEUDONYM_COLUMNS = ("original_id", "pseudonym", "name", "issuer", "date_offset_days")
_REQUIRED_COLUMNS = ("original_id", "pseudonym")
_MAX_LEN = 64  # LO / the registry columns


@dataclass(frozen=True)
class PseudonymRow:
    """One row of an imported table; ``line`` is its line number in the CSV file."""

    line: int
    original_id: str
    pseudonym: str
    name: str = ""  # "" means: the pseudonym
    issuer: str = ""
    date_offset_days: int | None = None  # None means: drawn like a generated patient's


class PseudonymImportError(ValueError):
    """The table was refused; ``errors`` name line numbers, never original IDs."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} error(s) in the pseudonym table")
        self.errors = errors


def _bad_text(value: str) -> bool:
    return "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value)


def read_pseudonym_csv(path: Path) -> list[PseudonymRow]:
    """Parse and check a pseudonym CSV file (header required).

    Every row is checked before anything is returned; problems raise
    :class:`PseudonymImportError` listing them by line number. Messages never
    repeat an original ID or issuer.
    """
    errors: list[str] = []
    rows: list[PseudonymRow] = []
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise PseudonymImportError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise PseudonymImportError([f"{path}: empty file (a header line is required)"])
            columns = [h.strip().lower() for h in header]
            missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
            unknown = [c for c in columns if c not in PSEUDONYM_COLUMNS]
            repeated = sorted({c for c in columns if columns.count(c) > 1})
            if missing or unknown or repeated:
                problems = []
                if missing:
                    problems.append("missing column(s) " + ", ".join(missing))
                if unknown:
                    problems.append(
                        f"unknown column(s) {', '.join(repr(c) for c in unknown)} "
                        f"(allowed: {', '.join(PSEUDONYM_COLUMNS)})"
                    )
                if repeated:
                    problems.append("repeated column(s) " + ", ".join(repeated))
                raise PseudonymImportError([f"line 1: {'; '.join(problems)}"])
            seen_ids: dict[tuple[str, str], int] = {}
            seen_pseudonyms: dict[str, int] = {}
            for record in reader:
                line = reader.line_num
                if not any(v.strip() for v in record):
                    continue  # blank line
                if len(record) > len(columns):
                    errors.append(
                        f"line {line}: {len(record)} fields, the header has {len(columns)}"
                    )
                    continue
                record += [""] * (len(columns) - len(record))  # missing trailing fields: empty
                values = {c: v.strip() for c, v in zip(columns, record, strict=True)}
                row_errors: list[str] = []
                original_id = values["original_id"]
                pseudonym = values["pseudonym"]
                name = values.get("name", "")
                issuer = values.get("issuer", "")
                offset_text = values.get("date_offset_days", "")
                for column, value in (("original_id", original_id), ("pseudonym", pseudonym)):
                    if not value:
                        row_errors.append(f"{column} is empty")
                for column, value in (
                    ("original_id", original_id),
                    ("pseudonym", pseudonym),
                    ("name", name),
                    ("issuer", issuer),
                ):
                    if len(value) > _MAX_LEN:
                        row_errors.append(f"{column} is longer than {_MAX_LEN} characters")
                    elif column in ("pseudonym", "name") and _bad_text(value):
                        row_errors.append(f"{column} contains a backslash or control character")
                offset: int | None = None
                if offset_text:
                    try:
                        offset = int(offset_text)
                    except ValueError:
                        row_errors.append("date_offset_days is not an integer")
                    else:
                        if abs(offset) > 36500:
                            row_errors.append("date_offset_days is beyond 100 years")
                if original_id:
                    first = seen_ids.setdefault((issuer, original_id), line)
                    if first != line:
                        row_errors.append(f"original_id repeats line {first}")
                if pseudonym:
                    first = seen_pseudonyms.setdefault(pseudonym, line)
                    if first != line:
                        row_errors.append(f"pseudonym repeats line {first}")
                if row_errors:
                    errors.append(f"line {line}: {'; '.join(row_errors)}")
                else:
                    rows.append(PseudonymRow(line, original_id, pseudonym, name, issuer, offset))
        except csv.Error as exc:
            errors.append(f"line {reader.line_num}: not valid CSV ({exc})")
        except UnicodeDecodeError:
            errors.append(f"line {reader.line_num + 1}: not UTF-8 text")
    if errors:
        raise PseudonymImportError(errors)
    return rows


def import_pseudonyms(
    engine: Engine,
    rows: Iterable[PseudonymRow],
    *,
    min_offset_days: int,
    max_offset_days: int,
) -> tuple[int, int]:
    """Add checked rows to the registry in one transaction; return (imported, skipped).

    A row whose patient is already registered with the same pseudonym is
    skipped. One registered with a different pseudonym, or a pseudonym that
    belongs to another patient, refuses the whole table: a patient's pseudonym
    never changes silently. Nothing is written unless every row passes.
    """
    rows = list(rows)
    errors: list[str] = []
    to_insert: list[dict[str, object]] = []
    skipped = 0
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Other nodes may create patients meanwhile; see them all before checking.
                conn.execute(text("LOCK TABLE patients IN SHARE ROW EXCLUSIVE MODE"))
            existing = {
                (r[0], r[1]): r[2]
                for r in conn.execute(
                    select(patients.c.issuer, patients.c.original_id, patients.c.pseudo_id)
                )
            }
            taken = {pseudo: key for key, pseudo in existing.items()}
            for row in rows:
                key = (row.issuer, row.original_id)
                current = existing.get(key)
                if current is not None:
                    if current == row.pseudonym:
                        skipped += 1
                    else:
                        errors.append(
                            f"line {row.line}: this patient already has a different pseudonym "
                            f"({current}); it is never changed"
                        )
                    continue
                if row.pseudonym in taken:
                    errors.append(
                        f"line {row.line}: pseudonym {row.pseudonym} already belongs to "
                        "another patient"
                    )
                    continue
                offset = row.date_offset_days
                if offset is None:
                    offset = -(
                        min_offset_days + secrets.randbelow(max_offset_days - min_offset_days + 1)
                    )
                to_insert.append(
                    {
                        "issuer": row.issuer,
                        "original_id": row.original_id,
                        "pseudo_id": row.pseudonym,
                        "pseudo_name": row.name or row.pseudonym,
                        "date_offset_days": offset,
                        "created_at": now,
                    }
                )
            if errors:
                raise PseudonymImportError(errors)
            if to_insert:
                conn.execute(insert(patients), to_insert)
    except IntegrityError:
        raise PseudonymImportError(
            [
                "the registry changed during the import (a patient or pseudonym was added "
                "by another process); nothing was written, run the import again"
            ]
        ) from None
    return len(to_insert), skipped


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
    "PseudonymImportError",
    "PseudonymRow",
    "crosswalk_rows",
    "find_patient",
    "get_or_create_patient",
    "import_pseudonyms",
    "open_registry",
    "read_pseudonym_csv",
    "record_uids",
]
