"""The registry (pseudonyms, date offsets, UID map) on SQLite and PostgreSQL, the owner-only
files that hold it, and the UID key file.

PostgreSQL tests run in a schema of their own, dropped afterwards; they are skipped,
with the reason, when no server answers on 127.0.0.1:5432.
"""

from __future__ import annotations

import os
import random
import re
import stat
import uuid
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text, update

from deid_node.registry.models import SCHEMA_VERSION, patients, schema_info, uid_map
from deid_node.registry.store import (
    crosswalk_rows,
    get_or_create_patient,
    open_registry,
    record_uids,
)
from deid_node.secrets_store import KeyFileError, load_or_create_key

PG_BASE = "postgresql+psycopg://{user}@127.0.0.1:5432/test"
PG_USERS = ("postgres", "root")
_pg_probe: dict[str, str] = {}


def _postgres_base() -> str:
    """A URL that connects, or skip with what went wrong (cached for the session)."""
    if "url" in _pg_probe:
        return _pg_probe["url"]
    if "skip" not in _pg_probe:
        error = ""
        for user in PG_USERS:
            url = PG_BASE.format(user=user)
            engine = create_engine(url, connect_args={"connect_timeout": 3})
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                _pg_probe["url"] = url
                return url
            except Exception as exc:
                error = error or str(getattr(exc, "orig", exc)).splitlines()[0][:200]
            finally:
                engine.dispose()
        where = PG_BASE.split("@", 1)[1]
        users = " or ".join(PG_USERS)
        _pg_probe["skip"] = f"PostgreSQL not reachable at {where} as {users}: {error}"
    pytest.skip(_pg_probe["skip"])


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh, empty schema."""
    base = _postgres_base()
    schema = f"deid_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry' / 'registry.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def registry(registry_url: str) -> Iterator:
    engine = open_registry(registry_url)
    yield engine
    engine.dispose()


def _patient(engine, original_id: str, issuer: str = "", **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("prefix", "DEID")
    kw.setdefault("min_offset_days", 1)
    kw.setdefault("max_offset_days", 365)
    return get_or_create_patient(engine, issuer, original_id, **kw)


def _patient_rows(engine) -> list:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return list(conn.execute(select(patients).order_by(patients.c.id)))


# -- patients ---------------------------------------------------------------------------------


def test_same_patient_same_pseudonym_and_offset(registry, registry_url: str) -> None:
    first = _patient(registry, "MRN40917733", "HOSP_A")
    assert re.fullmatch(r"DEID-[A-Z0-9]{10}", first.pseudo_id)
    assert -365 <= first.date_offset_days <= -1
    again = _patient(registry, "MRN40917733", "HOSP_A")
    assert again == first
    # Also from a new connection, and whatever the range now configured.
    other = open_registry(registry_url)
    try:
        later = _patient(other, "MRN40917733", "HOSP_A", min_offset_days=500, max_offset_days=600)
        assert later == first
    finally:
        other.dispose()
    assert len(_patient_rows(registry)) == 1


def test_issuer_is_part_of_the_identity(registry) -> None:
    none = _patient(registry, "12345")
    a = _patient(registry, "12345", "HOSP_A")
    b = _patient(registry, "12345", "HOSP_B")
    assert len({none.pseudo_id, a.pseudo_id, b.pseudo_id}) == 3
    assert _patient(registry, "12345", "HOSP_B") == b
    assert _patient(registry, "12345") == none
    other = _patient(registry, "12346", "HOSP_A")
    assert other.pseudo_id != a.pseudo_id
    rows = _patient_rows(registry)
    assert [(r.issuer, r.original_id) for r in rows] == [
        ("", "12345"),
        ("HOSP_A", "12345"),
        ("HOSP_B", "12345"),
        ("HOSP_A", "12346"),
    ]
    assert all(r.pseudo_name == r.pseudo_id for r in rows)


def test_patient_without_id_gets_a_new_pseudonym_each_time(registry) -> None:
    first = _patient(registry, "")
    second = _patient(registry, "")
    assert first.pseudo_id != second.pseudo_id
    # No row of theirs claims an original ID that a real patient could have.
    for row in _patient_rows(registry):
        assert row.original_id.startswith("(none)/")


def test_offsets_lie_within_the_configured_range(registry) -> None:
    offsets = [
        _patient(registry, f"P{i:04d}", prefix="RES", min_offset_days=10, max_offset_days=20)
        for i in range(150)
    ]
    values = {p.date_offset_days for p in offsets}
    assert values <= set(range(-20, -9)), values
    assert {-20, -10} <= values, "both ends of the range can be drawn"
    assert all(p.pseudo_id.startswith("RES-") for p in offsets)
    assert len({p.pseudo_id for p in offsets}) == 150
    fixed = {
        _patient(registry, f"Q{i}", min_offset_days=7, max_offset_days=7).date_offset_days
        for i in range(10)
    }
    assert fixed == {-7}
    zero = _patient(registry, "Z", min_offset_days=0, max_offset_days=0)
    assert zero.date_offset_days == 0


# -- UIDs ----------------------------------------------------------------------------------------


def test_record_uids_is_idempotent(registry) -> None:
    rows = [
        ("1.2.3.1", "2.25.101", "study"),
        ("1.2.3.1.1", "2.25.102", "series"),
        ("1.2.3.1.1.1", "2.25.103", "instance"),
        ("1.2.3.1.1.2", "2.25.104", "instance"),
        ("1.2.3.9", "2.25.109", "other"),
    ]
    record_uids(registry, rows)
    expected = sorted(crosswalk_rows(registry, "uids"))
    assert expected == sorted((o, n) for o, n, lvl in rows if lvl != "other")
    record_uids(registry, rows)  # the same batch again
    record_uids(registry, rows[:2])  # part of it
    # A different new UID for a known original is ignored: the first mapping stands.
    record_uids(
        registry, [("1.2.3.1", "2.25.999", "study"), ("1.2.3.1.1.3", "2.25.105", "instance")]
    )
    record_uids(registry, [("", "2.25.1", "instance")])  # no original: nothing to map
    record_uids(registry, [])
    with registry.connect() as conn:
        mapped = dict(conn.execute(select(uid_map.c.original_uid, uid_map.c.new_uid)).all())
        levels = dict(conn.execute(select(uid_map.c.original_uid, uid_map.c.level)).all())
    assert len(mapped) == 6
    assert mapped["1.2.3.1"] == "2.25.101"
    assert mapped["1.2.3.1.1.3"] == "2.25.105"
    assert levels["1.2.3.9"] == "other"
    walk = list(crosswalk_rows(registry, "uids"))
    # Ordered by level, then original UID; "other" UIDs are not part of the crosswalk.
    assert walk == [
        ("1.2.3.1.1.1", "2.25.103"),
        ("1.2.3.1.1.2", "2.25.104"),
        ("1.2.3.1.1.3", "2.25.105"),
        ("1.2.3.1.1", "2.25.102"),
        ("1.2.3.1", "2.25.101"),
    ]


def test_uid_seen_first_as_reference_reaches_the_crosswalk(registry) -> None:
    """A report can reference an image before the image arrives: level is upgraded."""
    record_uids(registry, [("1.2.5.1", "2.25.501", "other")])
    assert ("1.2.5.1", "2.25.501") not in list(crosswalk_rows(registry, "uids"))
    record_uids(registry, [("1.2.5.1", "2.25.501", "instance")])
    assert ("1.2.5.1", "2.25.501") in list(crosswalk_rows(registry, "uids"))
    record_uids(registry, [("1.2.5.1", "2.25.501", "other")])  # never downgraded
    with registry.connect() as conn:
        level = conn.execute(
            select(uid_map.c.level).where(uid_map.c.original_uid == "1.2.5.1")
        ).scalar()
    assert level == "instance"


def test_worker_cache_does_not_hide_a_level_upgrade(registry) -> None:
    """The worker skips UIDs it already wrote; a UID it wrote as a reference must still
    reach the crosswalk when an instance with that UID arrives in the same process
    (pydicom's SC_rgb_* files share SOP Instance UIDs with references elsewhere)."""
    from types import SimpleNamespace

    from deid_node.pipeline.worker import DeidOutcome, record_outcome_uids

    state = SimpleNamespace(registry=registry, recorded_uids={})
    ref = DeidOutcome(1, True, uid_rows=(("1.2.6.1", "2.25.601", "other"),))
    image = DeidOutcome(2, True, uid_rows=(("1.2.6.1", "2.25.601", "instance"),))
    record_outcome_uids(state, [ref])  # type: ignore[arg-type]
    record_outcome_uids(state, [ref, image])  # type: ignore[arg-type]
    assert ("1.2.6.1", "2.25.601") in list(crosswalk_rows(registry, "uids"))


def test_crosswalk_patients(registry) -> None:
    made = [
        _patient(registry, pid, issuer) for pid, issuer in [("A1", ""), ("B2", "X"), ("C3", "")]
    ]
    assert list(crosswalk_rows(registry, "patients")) == [
        ("A1", made[0].pseudo_id),
        ("B2", made[1].pseudo_id),
        ("C3", made[2].pseudo_id),
    ]
    with pytest.raises(ValueError, match="unknown crosswalk kind"):
        list(crosswalk_rows(registry, "studies"))


def test_open_registry_twice_and_schema_version(registry, registry_url: str) -> None:
    again = open_registry(registry_url)
    try:
        with again.connect() as conn:
            versions = list(conn.execute(select(schema_info.c.version)))
        assert versions == [(SCHEMA_VERSION,)]
        with again.begin() as conn:
            conn.execute(update(schema_info).values(version=SCHEMA_VERSION + 1))
    finally:
        again.dispose()
    with pytest.raises(RuntimeError, match="newer than this node understands"):
        open_registry(registry_url).dispose()


# -- concurrency -------------------------------------------------------------------------------

RACE_IDS = [f"RACE{i:03d}" for i in range(20)]
RACE_PROCESSES = 4


def _race_worker(url: str, order: list[str], barrier, results) -> None:  # type: ignore[no-untyped-def]
    """In a spawned process: open the registry and meet the first patients with the others."""
    try:
        barrier.wait(timeout=60)
        engine = open_registry(url)  # all at once, on an empty database
        try:
            barrier.wait(timeout=60)
            seen = {}
            for pid in order:
                p = get_or_create_patient(
                    engine,
                    "RACE_ISSUER",
                    pid,
                    prefix="RACE",
                    min_offset_days=1,
                    max_offset_days=3650,
                )
                seen[pid] = (p.pseudo_id, p.pseudo_name, p.date_offset_days)
        finally:
            engine.dispose()
        results.put(("ok", os.getpid(), seen))
    except BaseException as exc:
        barrier.abort()
        results.put(("error", os.getpid(), f"{type(exc).__name__}: {exc}"))


def test_concurrent_processes_agree_on_every_patient(registry_url: str) -> None:
    ctx = get_context("spawn")
    barrier = ctx.Barrier(RACE_PROCESSES)
    results = ctx.Queue()
    orders = [list(RACE_IDS), list(reversed(RACE_IDS))]
    for seed in range(RACE_PROCESSES - 2):
        shuffled = list(RACE_IDS)
        random.Random(seed).shuffle(shuffled)
        orders.append(shuffled)
    procs = [
        ctx.Process(target=_race_worker, args=(registry_url, order, barrier, results))
        for order in orders
    ]
    try:
        for p in procs:
            p.start()
        answers = [results.get(timeout=90) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
    errors = [a for a in answers if a[0] != "ok"]
    assert not errors, errors
    seen = [a[2] for a in answers]
    assert all(set(s) == set(RACE_IDS) for s in seen)
    for pid in RACE_IDS:
        assert len({s[pid] for s in seen}) == 1, f"processes disagree on {pid}"

    engine = open_registry(registry_url)
    try:
        with engine.connect() as conn:
            counts = dict(
                conn.execute(
                    select(patients.c.original_id, func.count())
                    .where(patients.c.issuer == "RACE_ISSUER")
                    .group_by(patients.c.original_id)
                ).all()
            )
            stored = {
                r.original_id: (r.pseudo_id, r.pseudo_name, r.date_offset_days)
                for r in conn.execute(select(patients))
            }
            versions = list(conn.execute(select(schema_info.c.version)))
    finally:
        engine.dispose()
    assert counts == dict.fromkeys(RACE_IDS, 1), "exactly one row per patient"
    assert stored == seen[0]
    assert versions == [(SCHEMA_VERSION,)]


# -- owner-only files ------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_sqlite_registry_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "new" / "registry.sqlite"
    old_umask = os.umask(0)  # a permissive umask must not leak into the file modes
    try:
        engine = open_registry(f"sqlite:///{path}")
        _patient(engine, "MRN1")
    finally:
        os.umask(old_umask)
    try:
        assert _mode(path) == 0o600
        assert _mode(path.parent) == 0o700
        for sidecar in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if sidecar.exists():
                assert _mode(sidecar) & 0o077 == 0, f"{sidecar.name} is {_mode(sidecar):o}"
    finally:
        engine.dispose()

    # An existing file that is readable by others is tightened when opened.
    loose = tmp_path / "loose.sqlite"
    loose.touch()
    loose.chmod(0o644)
    open_registry(f"sqlite:///{loose}").dispose()
    assert _mode(loose) == 0o600


def test_key_file_is_created_owner_only_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "uid.key"
    old_umask = os.umask(0)
    try:
        key = load_or_create_key(path)
    finally:
        os.umask(old_umask)
    assert len(key) == 32
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert load_or_create_key(path) == key
    assert load_or_create_key(path, create=False) == key
    assert not list(path.parent.glob("*.tmp")), "no temporary file left behind"
    other = load_or_create_key(tmp_path / "other.key")
    assert other != key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "uid.key"
    load_or_create_key(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_key(path)
    with pytest.raises(KeyFileError):
        load_or_create_key(path, create=False)


def test_key_file_missing_or_malformed(tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    with pytest.raises(KeyFileError, match="not found"):
        load_or_create_key(missing, create=False)
    assert not missing.exists()
    for content, message in [("not hex\n", "hexadecimal"), ("abcd\n", "at least 128 bits")]:
        bad = tmp_path / "bad.key"
        bad.write_text(content)
        bad.chmod(0o600)
        with pytest.raises(KeyFileError, match=message):
            load_or_create_key(bad)
    given = tmp_path / "given.key"
    given.write_text("00" * 16 + "\n")
    given.chmod(0o400)
    assert load_or_create_key(given, create=False) == bytes(16)


def test_a_new_database_waits_for_another_process_to_switch_it_to_wal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SQLite refuses the switch to WAL at once ("database is locked", no busy wait)
    while another connection writes to a new file, as the node's processes do on a
    first start; the engine waits for it instead of failing."""
    import sqlite3
    import threading

    from deid_node.db import make_engine

    path = tmp_path / "new.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE held (x)")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sqlite3.connect(path, timeout=5, isolation_level=None).execute("PRAGMA journal_mode=WAL")
    threading.Timer(0.5, lambda: holder.execute("COMMIT")).start()
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()
        holder.close()
