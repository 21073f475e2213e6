"""Upgrading the node upgrades its registry and keeps every row: a registry
created by the version-1 schema (raw SQL, as that version wrote it) is opened by
this node on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, select, text

from deid_node.db import make_engine
from deid_node.registry import migrations
from deid_node.registry.migrations import MIGRATIONS, RegistryVersionError
from deid_node.registry.models import SCHEMA_VERSION, schema_info
from deid_node.registry.store import (
    crosswalk_rows,
    get_or_create_patient,
    open_registry,
    record_uids,
)
from tests.test_registry import pg_url, registry_url  # noqa: F401  (fixtures)

V1_TABLES = """
CREATE TABLE patients (
    id {serial} NOT NULL,
    issuer VARCHAR(64) NOT NULL,
    original_id VARCHAR(64) NOT NULL,
    pseudo_id VARCHAR(64) NOT NULL,
    pseudo_name VARCHAR(64) NOT NULL,
    date_offset_days INTEGER NOT NULL,
    created_at {timestamp} NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_patient_original UNIQUE (issuer, original_id),
    UNIQUE (pseudo_id)
);
CREATE TABLE schema_info (id {serial} NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (id));
CREATE TABLE uid_map (
    original_uid VARCHAR(64) NOT NULL,
    new_uid VARCHAR(64) NOT NULL,
    level VARCHAR(16) NOT NULL,
    created_at {timestamp} NOT NULL,
    PRIMARY KEY (original_uid)
);
CREATE INDEX ix_uid_map_new_uid ON uid_map (new_uid);
INSERT INTO schema_info (id, version) VALUES (1, 1);
INSERT INTO patients (issuer, original_id, pseudo_id, pseudo_name, date_offset_days, created_at)
    VALUES ('', 'MRN-OLD-1', 'DEID-AAAAAAAAAA', 'DEID-AAAAAAAAAA', -17, '{now}');
INSERT INTO patients (issuer, original_id, pseudo_id, pseudo_name, date_offset_days, created_at)
    VALUES ('HOSP', 'MRN-OLD-2', 'DEID-BBBBBBBBBB', 'STUDY^B', -300, '{now}');
INSERT INTO uid_map VALUES ('1.2.3.4', '2.25.1234', 'study', '{now}');
INSERT INTO uid_map VALUES ('1.2.3.4.5', '2.25.12345', 'instance', '{now}');
"""


def _create_v1(url: str) -> None:
    engine = make_engine(url)  # the file as version 1 made it: 0600, WAL
    postgres = engine.dialect.name == "postgresql"
    ddl = V1_TABLES.format(
        serial="SERIAL" if postgres else "INTEGER",
        timestamp="TIMESTAMP WITH TIME ZONE" if postgres else "DATETIME",
        now=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).isoformat(sep=" "),
    )
    try:
        with engine.begin() as conn:
            for statement in ddl.split(";"):
                if statement.strip():
                    conn.execute(text(statement))
    finally:
        engine.dispose()


def _schema(engine: Engine) -> dict[str, tuple]:
    """Tables, columns, indexes and unique constraints, to compare two registries."""
    with engine.connect() as conn:
        insp = inspect(conn)
        return {
            t: (
                sorted((c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)),
                sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(t)),
                sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(t)),
            )
            for t in sorted(insp.get_table_names())
        }


def _patient(engine: Engine, original_id: str, issuer: str = ""):  # type: ignore[no-untyped-def]
    return get_or_create_patient(
        engine, issuer, original_id, prefix="DEID", min_offset_days=1, max_offset_days=365
    )


def test_version_1_registry_is_migrated_and_keeps_its_data(registry_url: str) -> None:  # noqa: F811
    _create_v1(registry_url)
    engine = open_registry(registry_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(schema_info.c.version)).all() == [(SCHEMA_VERSION,)]
            indexes = {i["name"] for i in inspect(conn).get_indexes("uid_map")}
        assert "ix_uid_map_level" in indexes
        # Old patients keep their pseudonym and offset; nothing is re-drawn.
        old = _patient(engine, "MRN-OLD-1")
        assert (old.pseudo_id, old.date_offset_days) == ("DEID-AAAAAAAAAA", -17)
        other = _patient(engine, "MRN-OLD-2", "HOSP")
        assert (other.pseudo_id, other.pseudo_name, other.date_offset_days) == (
            "DEID-BBBBBBBBBB",
            "STUDY^B",
            -300,
        )
        # New rows go in after the old ones (the id sequence carried over).
        new = _patient(engine, "MRN-NEW")
        assert new.pseudo_id not in ("DEID-AAAAAAAAAA", "DEID-BBBBBBBBBB")
        record_uids(engine, [("1.2.3.4.6", "2.25.123456", "series")])
        assert sorted(crosswalk_rows(engine, "uids")) == [
            ("1.2.3.4", "2.25.1234"),
            ("1.2.3.4.5", "2.25.12345"),
            ("1.2.3.4.6", "2.25.123456"),
        ]
        assert [r[0] for r in crosswalk_rows(engine, "patients")] == [
            "MRN-OLD-1",
            "MRN-OLD-2",
            "MRN-NEW",
        ]
        migrated = _schema(engine)
    finally:
        engine.dispose()

    # Opening again changes nothing; the migrated schema is the one a new registry gets.
    open_registry(registry_url).dispose()
    fresh_url = _fresh_url(registry_url)
    if fresh_url is not None:
        fresh = open_registry(fresh_url)
        try:
            assert _schema(fresh) == migrated
        finally:
            fresh.dispose()


def _fresh_url(url: str) -> str | None:
    if url.startswith("sqlite:///"):
        return url.replace("registry.sqlite", "fresh.sqlite")
    return None  # PostgreSQL: compared in the test below, in a schema of its own


@pytest.mark.postgres
def test_migrated_postgres_schema_equals_a_new_one(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    _create_v1(pg_url)
    migrated = open_registry(pg_url)
    try:
        before = _schema(migrated)
        with migrated.begin() as conn:  # empty the schema and let the node create it anew
            for table in ("patients", "uid_map", "schema_info"):
                conn.execute(text(f"DROP TABLE {table}"))
    finally:
        migrated.dispose()
    fresh = open_registry(pg_url)
    try:
        assert _schema(fresh) == before
    finally:
        fresh.dispose()


def test_registry_from_a_newer_node_is_refused_untouched(registry_url: str) -> None:  # noqa: F811
    _create_v1(registry_url)
    engine = create_engine(registry_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE schema_info SET version = :v"), {"v": SCHEMA_VERSION + 5})
    engine.dispose()
    with pytest.raises(RegistryVersionError, match="newer than this node"):
        open_registry(registry_url)
    engine = create_engine(registry_url)
    try:
        with engine.connect() as conn:
            indexes = {i["name"] for i in inspect(conn).get_indexes("uid_map")}
            assert conn.execute(select(schema_info.c.version)).scalar() == SCHEMA_VERSION + 5
    finally:
        engine.dispose()
    assert "ix_uid_map_level" not in indexes


def test_failed_migration_rolls_back(registry_url: str, monkeypatch) -> None:  # noqa: F811
    _create_v1(registry_url)

    def broken(conn) -> None:  # type: ignore[no-untyped-def]
        MIGRATIONS[0](conn)  # the real step, then a failure after it
        raise RuntimeError("disk full")

    monkeypatch.setattr(migrations, "MIGRATIONS", [broken, *MIGRATIONS[1:]])
    with pytest.raises(RuntimeError, match="disk full"):
        open_registry(registry_url)
    engine = create_engine(registry_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(schema_info.c.version)).scalar() == 1
            assert "ix_uid_map_level" not in {
                i["name"] for i in inspect(conn).get_indexes("uid_map")
            }
    finally:
        engine.dispose()
    monkeypatch.undo()
    open_registry(registry_url).dispose()  # and the next start succeeds


def _open_in_process(url: str, results) -> None:  # type: ignore[no-untyped-def]
    try:
        open_registry(url).dispose()
        results.put(("ok", os.getpid()))
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_nodes_starting_together_migrate_once(registry_url: str) -> None:  # noqa: F811
    _create_v1(registry_url)
    ctx = get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_open_in_process, args=(registry_url, results)) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        answers = [results.get(timeout=90) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
    assert all(a[0] == "ok" for a in answers), answers
    engine = open_registry(registry_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(schema_info.c.version)).all() == [(SCHEMA_VERSION,)]
        assert _patient(engine, "MRN-OLD-1").pseudo_id == "DEID-AAAAAAAAAA"
    finally:
        engine.dispose()
