"""Routing rules and per-destination retry settings: the rules themselves, then real
peers: two DCMTK storescp archives, CT and MR instances from two calling AEs sent
with storescu to `deid-node serve`, and one destination that is down."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from deid_node.config import ConfigError, Destination, ForwardConfig, parse_config
from deid_node.routing import choose_destinations, parse_route, route_matches
from tests.conftest import Archive, NodeProcess, free_port, storescu, wait_until, write_config
from tests.studies import make_study

# -- rules ----------------------------------------------------------------------------


def _ds(**values: object) -> Dataset:
    ds = Dataset()
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


def _dest(name: str, route: dict | None = None, *, fallback: bool = False) -> Destination:
    return Destination(
        name, "AE", "127.0.0.1", 104, route=None if route is None else parse_route(route),
        fallback=fallback,
    )  # fmt: skip


def test_route_conditions_all_must_hold() -> None:
    route = parse_route({"calling_ae": ["CT1", "CT2"], "Modality": ["CT"]})
    assert route_matches(route, "CT1", _ds(Modality="CT"))
    assert route_matches(route, "CT2", _ds(Modality="CT"))
    assert not route_matches(route, "CT3", _ds(Modality="CT"))
    assert not route_matches(route, "CT1", _ds(Modality="MR"))
    assert route_matches(None, "ANY", _ds()), "no route: everything"


def test_route_values_globs_numbers_and_multi_values() -> None:
    assert route_matches(
        parse_route({"StationName": "SCANNER-*"}), "X", _ds(StationName="SCANNER-4")
    )
    assert not route_matches(
        parse_route({"StationName": "SCANNER-*"}), "X", _ds(StationName="OTHER")
    )
    assert route_matches(parse_route({"SeriesNumber": 3}), "X", _ds(SeriesNumber=3))
    assert not route_matches(parse_route({"SeriesNumber": [1, 2]}), "X", _ds(SeriesNumber=3))
    image_type = _ds(ImageType=["DERIVED", "SECONDARY", "AXIAL"])
    assert route_matches(parse_route({"ImageType": "SECONDARY"}), "X", image_type)
    assert not route_matches(parse_route({"ImageType": "ORIGINAL"}), "X", image_type)
    # An absent attribute is the empty string: only "" or "*" take it.
    assert route_matches(parse_route({"BodyPartExamined": ["", "CHEST"]}), "X", _ds())
    assert not route_matches(parse_route({"BodyPartExamined": "CHEST"}), "X", _ds())
    assert not route_matches(parse_route({"Modality": "ct"}), "X", _ds(Modality="CT")), "case"


def test_choose_destinations_and_fallback() -> None:
    dests = [
        _dest("ct", {"Modality": "CT"}),
        _dest("site2", {"calling_ae": "SITE2"}),
        _dest("rest", fallback=True),
    ]
    assert choose_destinations(dests, "SITE2", _ds(Modality="CT")) == ("ct", "site2")
    assert choose_destinations(dests, "SITE1", _ds(Modality="CT")) == ("ct",)
    assert choose_destinations(dests, "SITE1", _ds(Modality="MR")) == ("rest",)
    assert choose_destinations(dests[:2], "SITE1", _ds(Modality="MR")) == ()


def _parse(dest_extra: str, forward: str = "") -> object:
    import tomllib

    text = f"""
[forward]
{forward}
[[destination]]
name = "a"
ae_title = "A"
host = "127.0.0.1"
port = 104
{dest_extra}
"""
    return parse_config(tomllib.loads(text), Path("/tmp"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('route = { Modalty = "CT" }', "[destination #1] route.Modalty: not a DICOM keyword"),
        ('route = { ReferencedSeriesSequence = "x" }', "route.ReferencedSeriesSequence: a seq"),
        ('route = { TransferSyntaxUID = "1.2" }', "route.TransferSyntaxUID: file meta"),
        ("route = { Modality = [] }", "route.Modality: an empty list"),
        ("route = { Modality = true }", "route.Modality: values are strings or numbers"),
        ('route = "CT"', "route: must be a table"),
        ('fallback = true\nroute = { Modality = "CT" }', "fallback: a fallback destination"),
        ("retry_initial_seconds = 10\nretry_max_seconds = 5", "retry_max_seconds: must not"),
        ("max_attempts = -1", "max_attempts: must be at least 0"),
        ("tlsx = 1", "[destination #1] tlsx: unknown key"),
    ],
)
def test_bad_routing_config_names_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(extra)
    assert message in str(err.value)


def test_forward_mode_and_per_destination_retry_config() -> None:
    cfg = _parse(
        'route = { calling_ae = ["CT1"], Modality = "CT" }\nmax_attempts = 3\n'
        "retry_initial_seconds = 0.5",
        'mode = "study"\nstable_seconds = 12\nretry_max_seconds = 7',
    )
    dest = cfg.destinations[0]  # type: ignore[attr-defined]
    assert cfg.forward.mode == "study" and cfg.forward.stable_seconds == 12  # type: ignore[attr-defined]
    assert dest.retry_settings(cfg.forward) == (0.5, 7.0, 3)  # type: ignore[attr-defined]
    assert _dest("x").retry_settings(ForwardConfig()) == (2.0, 300.0, 0)
    with pytest.raises(ConfigError, match=r"\[forward\] mode: one of instance, study"):
        _parse("", 'mode = "series"')


# -- real peers -------------------------------------------------------------------------


@pytest.fixture
def routed_node(tmp_path: Path) -> Iterator:
    started: list[NodeProcess] = []

    def factory(destinations: str, forward: str) -> NodeProcess:
        port = free_port()
        data_dir = tmp_path / "node-data"
        cfg = tmp_path / "node.toml"
        write_config(cfg, port=port, data_dir=data_dir, destinations=destinations, forward=forward)
        node = NodeProcess(cfg, port, data_dir, tmp_path / "node.log")
        started.append(node)
        return node

    yield factory
    for node in started:
        node.stop(signal.SIGKILL)


@pytest.fixture
def archives(tmp_path: Path) -> Iterator:
    started: list[Archive] = []

    def factory(name: str) -> Archive:
        a = Archive(port=free_port(), folder=tmp_path / name, ae_title=name.upper())
        a.start()
        started.append(a)
        return a

    yield factory
    for a in started:
        a.stop()


def _mr_study(folder: Path, count: int) -> list[Path]:
    paths = make_study(folder, series=1, per_series=count)
    for p in paths:
        ds = dcmread(p)
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.save_as(p, enforce_file_format=True)
    return paths


def _counts(node: NodeProcess) -> dict[str, int]:
    path = node.data_dir / "queue.sqlite"
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


def _received(archive: Archive) -> list[Dataset]:
    return [dcmread(p) for p in archive.files()]


FAST = """\
retry_initial_seconds = 0.2
retry_max_seconds = 1
idle_release_seconds = 1
connect_timeout_seconds = 3"""


def test_each_archive_gets_what_its_rule_says(
    tmp_path: Path, routed_node, archives, study: list[Path]
) -> None:
    """CT goes to the CT archive whoever sends it; everything from SITE2 goes to the
    site archive; MR from SITE1 matches nothing and is quarantined."""
    ct_archive, site_archive = archives("ct_archive"), archives("site2_archive")
    node: NodeProcess = routed_node(
        f"""
[[destination]]
name = "ct"
ae_title = "CT_ARCHIVE"
host = "127.0.0.1"
port = {ct_archive.port}
route = {{ Modality = ["CT"] }}

[[destination]]
name = "site2"
ae_title = "SITE2_ARCHIVE"
host = "127.0.0.1"
port = {site_archive.port}
route = {{ calling_ae = ["SITE2", "SITE9"] }}
""",
        FAST,
    )
    ct1, ct2 = study[:4], make_study(tmp_path / "ct2", series=1, per_series=2)
    mr1, mr2 = _mr_study(tmp_path / "mr1", 3), _mr_study(tmp_path / "mr2", 5)
    node.start()
    storescu(node.port, ct1 + mr1, calling="SITE1")
    storescu(node.port, ct2 + mr2, calling="SITE2")
    expected = {"forwarded": 4 + 2 + 2 + 5, "quarantined": 3}
    assert wait_until(lambda: _counts(node) == expected, timeout=60), (
        _counts(node),
        node.log_text()[-3000:],
    )
    time.sleep(1.0)  # time for a stray delivery to show, if there were one
    ct_got, site_got = _received(ct_archive), _received(site_archive)
    assert Counter(ds.Modality for ds in ct_got) == {"CT": 6}
    assert Counter(ds.Modality for ds in site_got) == {"CT": 2, "MR": 5}
    # SITE2's CT instances went to both, de-identified once: the same new UIDs.
    shared = {ds.SOPInstanceUID for ds in ct_got} & {ds.SOPInstanceUID for ds in site_got}
    assert len(shared) == 2
    assert all(ds.PatientID.startswith("DEID-") for ds in ct_got + site_got)
    quarantine = node.data_dir / "quarantine"
    assert len(list(quarantine.glob("*.dcm"))) == 3
    assert {dcmread(p).Modality for p in quarantine.glob("*.dcm")} == {"MR"}, "the originals"
    assert not list((node.data_dir / "spool").rglob("*.dcm"))

    audit = json.loads(node.cli("audit", "--json").stdout)
    reasons = {e["detail"] for e in audit if e["kind"] == "quarantined"}
    assert reasons == {"no destination matches"}
    forwarded: dict[int, set[str]] = {}
    for e in audit:
        if e["kind"] == "forwarded":
            forwarded.setdefault(e["job_id"], set()).add(e["destination"])
    assert len(forwarded) == 4 + 2 + 5, "events of a copy are under the instance's job"
    assert Counter(frozenset(d) for d in forwarded.values()) == {
        frozenset({"ct"}): 4,
        frozenset({"ct", "site2"}): 2,
        frozenset({"site2"}): 5,
    }
    deidentified = [e for e in audit if e["kind"] == "deidentified"]
    assert len(deidentified) == 4 + 2 + 5, "one de-identification per instance"
    assert "MRN" not in node.log_text()


def test_one_destination_down_does_not_hold_back_the_other(
    tmp_path: Path, routed_node, archives, study: list[Path]
) -> None:
    """The first destination is down and gives up after its own max_attempts (the
    [forward] default retries forever); the second receives everything meanwhile."""
    up = archives("up_archive")
    down_port = free_port()  # nothing listens there
    node: NodeProcess = routed_node(
        f"""
[[destination]]
name = "down"
ae_title = "DOWN"
host = "127.0.0.1"
port = {down_port}
max_attempts = 3
retry_initial_seconds = 0.1
retry_max_seconds = 0.2

[[destination]]
name = "up"
ae_title = "UP_ARCHIVE"
host = "127.0.0.1"
port = {up.port}
""",
        "retry_initial_seconds = 30\nretry_max_seconds = 60\nmax_attempts = 0\n"
        "idle_release_seconds = 1\nconnect_timeout_seconds = 3",
    )
    node.start()
    storescu(node.port, study, calling="SITE1")
    n = len(study)
    assert wait_until(lambda: len(up.files()) == n, timeout=60), node.log_text()[-3000:]
    # 3 attempts 0.1-0.2 s apart: well within 15 s; with [forward]'s 30 s it could not be.
    assert wait_until(lambda: _counts(node) == {"forwarded": n, "quarantined": n}, timeout=15), (
        _counts(node),
        node.log_text()[-3000:],
    )
    audit = json.loads(node.cli("audit", "--json", "--kind", "quarantined").stdout)
    assert {e["destination"] for e in audit} == {"down"}
    assert all(e["detail"].startswith("gave up after retries: down:") for e in audit)
    retries = json.loads(node.cli("audit", "--json", "--kind", "retry").stdout)
    per_job = Counter(e["job_id"] for e in retries)
    assert set(per_job.values()) == {2}, "attempts 1 and 2 retried, the 3rd gives up"
    # The de-identified files wait in quarantine for the destination that failed.
    quarantined = list((node.data_dir / "quarantine").glob("*.dcm"))
    assert len(quarantined) == n
    assert {dcmread(p).SOPInstanceUID for p in quarantined} == {
        ds.SOPInstanceUID for ds in _received(up)
    }
    assert not list((node.data_dir / "spool").rglob("*.dcm"))


# -- the queue ---------------------------------------------------------------------------


def test_queue_records_copies_in_one_transaction_and_upgrades_old_queues(tmp_path: Path) -> None:
    from deid_node.pipeline.queue import DEIDENTIFIED, Copy, JobQueue

    path = tmp_path / "queue.sqlite"
    # A queue written by the previous version: no parent_id or study_uid column.
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, name VARCHAR(32) NOT NULL"
        " UNIQUE, state VARCHAR(16) NOT NULL, calling_ae VARCHAR(16) NOT NULL, sop_class_uid"
        " VARCHAR(64) NOT NULL, transfer_syntax VARCHAR(64) NOT NULL, destination VARCHAR(64),"
        " received_at FLOAT NOT NULL, updated_at FLOAT NOT NULL, attempts INTEGER NOT NULL,"
        " next_attempt_at FLOAT NOT NULL, reason TEXT)"
    )
    conn.execute(
        "INSERT INTO jobs VALUES (1, 'old', 'deidentified', 'AE', '1.2', '1.2.840.10008.1.2.1',"
        " 'research', 1.0, 1.0, 0, 0.0, NULL)"
    )
    conn.commit()
    conn.close()
    queue = JobQueue(f"sqlite:///{path}")
    try:
        (old,) = queue.in_states([DEIDENTIFIED])
        assert old.parent_id is None and old.study_uid is None and old.instance_id == 1
        job = queue.add("new", "SITE2", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2")
        ids = queue.mark_deidentified(
            [(job.id, "1.2.840.10008.1.2.1", "ct", "2.25.1")],
            [Copy("copy1", job, "site2"), Copy("copy2", job, "third")],
        )
        jobs = {j.name: j for j in queue.in_states([DEIDENTIFIED])}
        assert set(jobs) == {"old", "new", "copy1", "copy2"}
        assert ids == {(job.id, "site2"): jobs["copy1"].id, (job.id, "third"): jobs["copy2"].id}
        for name, dest in (("new", "ct"), ("copy1", "site2"), ("copy2", "third")):
            j = jobs[name]
            assert (j.destination, j.study_uid, j.instance_id) == (dest, "2.25.1", job.id)
            assert (j.transfer_syntax, j.calling_ae, j.received_at) == (
                "1.2.840.10008.1.2.1",
                "SITE2",
                job.received_at,
            )
        assert queue.counts()["deidentified"] == 4
    finally:
        queue.dispose()
    JobQueue(f"sqlite:///{path}").dispose()  # upgrading twice is harmless


def test_copies_survive_a_crash_and_are_not_duplicated(
    tmp_path: Path, routed_node, study: list[Path]
) -> None:
    """Both destinations are down while the instances are de-identified (one job each
    per destination, the second a hard link); the node is killed, the archives come
    up, the node restarts: each archive gets every instance exactly once."""
    a = Archive(free_port(), tmp_path / "a", "A_ARCHIVE", unique_filenames=True)
    b = Archive(free_port(), tmp_path / "b", "B_ARCHIVE", unique_filenames=True)
    node: NodeProcess = routed_node(
        "\n".join(
            f'[[destination]]\nname = "{x.ae_title}"\nae_title = "{x.ae_title}"\n'
            f'host = "127.0.0.1"\nport = {x.port}\n'
            for x in (a, b)
        ),
        FAST,
    )
    n = len(study)
    try:
        node.start()
        storescu(node.port, study)
        assert wait_until(lambda: _counts(node) == {"deidentified": 2 * n}, timeout=60), _counts(
            node
        )
        outgoing = node.data_dir / "spool" / "outgoing"
        files = list(outgoing.glob("*.dcm"))
        assert len(files) == 2 * n
        assert len({f.stat().st_ino for f in files}) == n, "one output per instance, linked"
        node.stop(signal.SIGKILL)
        a.start()
        b.start()
        node.start()
        assert wait_until(lambda: _counts(node) == {"forwarded": 2 * n}, timeout=60), (
            _counts(node),
            node.log_text()[-3000:],
        )
        time.sleep(1.0)
        for archive in (a, b):
            uids = [ds.SOPInstanceUID for ds in _received(archive)]
            assert len(uids) == n and len(set(uids)) == n
        assert not list((node.data_dir / "spool").rglob("*.dcm"))
    finally:
        node.stop(signal.SIGKILL)
        a.stop()
        b.stop()


def test_jobs_for_a_removed_destination_are_not_sent_elsewhere() -> None:
    from deid_node.config import Config
    from deid_node.pipeline.routed import destination_gone

    ct, mr = _dest("ct", {"Modality": "CT"}), _dest("mr", {"Modality": "MR"})
    assert not destination_gone(Config(destinations=(ct, mr)), "ct")
    assert destination_gone(Config(destinations=(ct, mr)), "old"), "could break a rule"
    assert destination_gone(Config(destinations=(ct,)), "old")
    assert not destination_gone(Config(destinations=(_dest("new"),)), "old"), "a rename"
