"""Two `deid-node serve` processes on one PostgreSQL registry, sharing the UID key,
receive interleaved studies of the same patients at the same time (several storescu
at once). Afterwards each patient has one pseudonym and one date offset, and the
archive's files agree across nodes: same pseudonym, dates shifted by the same
offset, the same original UID always the same new UID.

Skipped, with the reason, when PostgreSQL is not running on 127.0.0.1:5432."""

from __future__ import annotations

import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, select

from deid_node.deid.uids import make_uid
from deid_node.registry.models import patients, uid_map
from deid_node.secrets_store import load_or_create_key
from tests.conftest import Archive, NodeProcess, free_port, storescu, wait_until, write_config
from tests.studies import Phi, make_study
from tests.test_registry import pg_url  # noqa: F401  (fixture)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PATIENTS = [
    Phi(name="VANDERBILT^MARGARET^ANN", patient_id="MRN40917733"),
    Phi(name="OYELARAN^TUNDE", patient_id="MRN55120981", birth_date="19710630"),
    Phi(name="LINDQVIST^ASTRID", patient_id="MRN77003412", birth_date="19880101"),
]
STUDY_DATES = ("20240305", "20240917")  # two studies per patient, months apart
NODES = 2


def _node(tmp_path: Path, i: int, archive_port: int, registry: str, key: Path) -> NodeProcess:
    port = free_port()
    data_dir = tmp_path / f"node{i}"
    cfg = tmp_path / f"node{i}.toml"
    write_config(
        cfg,
        port=port,
        archive_port=archive_port,
        data_dir=data_dir,
        workers=1,
        extra=f'\n[deid]\nkey_file = "{key}"\n',
    )
    text = re.sub(r'(?m)^url = ".*"$', f'url = "{registry}"', cfg.read_text())
    cfg.write_text(text)
    return NodeProcess(cfg, port, data_dir, tmp_path / f"node{i}.log")


def _forwarded(node: NodeProcess) -> int:
    with sqlite3.connect(node.data_dir / "queue.sqlite") as conn:
        return conn.execute("SELECT count(*) FROM jobs WHERE state = 'forwarded'").fetchone()[0]


def test_two_nodes_one_registry_agree(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    key_path = tmp_path / "shared-uid.key"
    key = load_or_create_key(key_path, create=True)
    archive = Archive(port=free_port(), folder=tmp_path / "archive")
    archive.start()
    nodes = [_node(tmp_path, i, archive.port, pg_url, key_path) for i in range(NODES)]
    try:
        for n in nodes:
            n.start()
        # Every study is split across the nodes (even instances to one, odd to the
        # other), so both meet every patient and every study, series and frame of
        # reference UID, at about the same moment.
        originals: dict[str, tuple[Phi, str, Dataset]] = {}  # SOP UID -> patient, date, header
        sends: list[tuple[int, list[Path]]] = []
        for p, phi in enumerate(PATIENTS):
            for s, study_date in enumerate(STUDY_DATES):
                files = make_study(
                    tmp_path / f"p{p}s{s}",
                    series=2,
                    per_series=3,
                    phi=Phi(**{**phi.__dict__, "study_date": study_date}),
                )
                for f in files:
                    ds = dcmread(f, stop_before_pixels=True)
                    originals[str(ds.SOPInstanceUID)] = (phi, study_date, ds)
                for i, node in enumerate(nodes):
                    sends.append((node.port, files[i::NODES]))
        with ThreadPoolExecutor(len(sends)) as pool:
            for f in [pool.submit(storescu, port, files) for port, files in sends]:
                f.result()

        total = len(originals)
        # The archive has a file before its node records the confirmation: wait for both.
        assert wait_until(
            lambda: sum(_forwarded(n) for n in nodes) == total and len(archive.files()) == total,
            120,
        ), [n.log_text()[-2000:] for n in nodes]
        assert all(_forwarded(n) > 0 for n in nodes), "both nodes did part of the work"
    finally:
        for n in nodes:
            n.stop()
        archive.stop()

    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            registry = {
                r.original_id: r
                for r in conn.execute(select(patients))
                if r.original_id in {p.patient_id for p in PATIENTS}
            }
            rows = conn.execute(select(patients.c.original_id)).all()
            mapped = dict(conn.execute(select(uid_map.c.original_uid, uid_map.c.new_uid)).all())
    finally:
        engine.dispose()
    # Exactly one pseudonym and one offset per patient, whatever node met them first.
    assert sorted(r[0] for r in rows) == sorted(p.patient_id for p in PATIENTS)
    assert len({r.pseudo_id for r in registry.values()}) == len(PATIENTS)

    new_of: dict[str, set[str]] = {}  # original UID -> new UIDs seen in the archive
    seen_sops = set()
    for path in archive.files():
        ds = dcmread(path, stop_before_pixels=True)
        sop_new = str(ds.SOPInstanceUID)
        originals_for = [o for o in originals if make_uid(o, key) == sop_new]
        assert len(originals_for) == 1, "every archived instance comes from one original"
        sop_old = originals_for[0]
        seen_sops.add(sop_old)
        phi, study_date, original = originals[sop_old]
        row = registry[phi.patient_id]
        assert ds.PatientID == row.pseudo_id
        assert str(ds.PatientName) == row.pseudo_name
        shifted = date.fromisoformat(study_date) + timedelta(days=row.date_offset_days)
        assert ds.StudyDate == shifted.strftime("%Y%m%d")
        assert mapped[sop_old] == sop_new
        for value in (phi.name, phi.patient_id, phi.accession, study_date):
            assert value not in path.read_bytes().decode("latin-1")
        # The study, series and frame of reference UIDs must each become one new
        # UID, whichever node sent the instance.
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            old, new = str(original[keyword].value), str(ds[keyword].value)
            new_of.setdefault(old, set()).add(new)
            assert mapped[old] == new
    assert seen_sops == set(originals)
    assert all(len(news) == 1 for news in new_of.values()), "one new UID per original UID"
