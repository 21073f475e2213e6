"""Interoperability with Orthanc on both sides: a hospital PACS (Orthanc) sends a
study to the node with C-STORE, the node forwards it de-identified to a research
archive (another Orthanc). The test drives and reads both over their REST APIs,
and reads the node's /metrics for the counts of that run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import free_port, wait_until
from tests.ops import health, sample, scrape
from tests.orthanc import OrthancServer
from tests.studies import Phi

pytestmark = pytest.mark.slow
PHI = Phi()


@pytest.fixture
def orthancs(tmp_path: Path) -> Iterator[list[OrthancServer]]:
    started: list[OrthancServer] = []
    yield started
    for server in started:
        server.stop()


def test_hospital_orthanc_to_node_to_research_orthanc(
    tmp_path: Path, make_node, study: list[Path], orthancs: list[OrthancServer]
) -> None:
    research = OrthancServer(tmp_path / "research", "RESEARCH")
    orthancs.append(research)
    research.start()

    metrics_port = free_port()
    node = make_node(
        research.dicom_port,
        extra=f"\n[metrics]\nenabled = true\nport = {metrics_port}\n",
    )
    # The research archive's AE title, not the default of the test config.
    node.config_path.write_text(
        node.config_path.read_text().replace('"RESEARCH_PACS"', '"RESEARCH"')
    )
    node.start()

    hospital = OrthancServer(
        tmp_path / "hospital",
        "HOSPITAL",
        modalities={"deid": ("DEID_NODE", "127.0.0.1", node.port)},
    )
    orthancs.append(hospital)
    hospital.start()

    originals = [dcmread(p, stop_before_pixels=True) for p in study]
    original_uids = {str(ds.SOPInstanceUID) for ds in originals}
    original_uids |= {str(originals[0].StudyInstanceUID)}
    original_uids |= {str(ds.SeriesInstanceUID) for ds in originals}
    for path in study:
        hospital.post("/instances", path.read_bytes())
    [study_id] = hospital.get("/studies")
    assert len(hospital.get(f"/studies/{study_id}/instances")) == len(study)

    # The hospital PACS sends the study to the node (C-STORE, Orthanc as SCU).
    hospital.post("/modalities/deid/store", {"Resources": [study_id], "Synchronous": True})

    def arrived() -> bool:
        studies = research.get("/studies")
        return len(studies) == 1 and len(research.get(f"/studies/{studies[0]}/instances")) == len(
            study
        )

    assert wait_until(arrived, 90), node.log_text()[-3000:] + research.log_text()[-2000:]
    [archived_study] = research.get("/studies")
    instances = research.get(f"/studies/{archived_study}/instances")
    assert len(instances) == len(study)

    pseudonyms = set()
    new_study_uids = set()
    for inst in instances:
        tags = research.get(f"/instances/{inst['ID']}/tags?simplify")
        assert tags["PatientIdentityRemoved"] == "YES"
        assert tags["PatientID"].startswith("DEID-")
        assert tags["PatientName"] == tags["PatientID"]
        pseudonyms.add(tags["PatientID"])
        new_study_uids.add(tags["StudyInstanceUID"])
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert tags[keyword].startswith("2.25.")
            assert tags[keyword] not in original_uids
        assert tags.get("StudyDate") != PHI.study_date
        text = json.dumps(tags)
        for value in (
            PHI.patient_id,
            PHI.accession,
            PHI.institution,
            PHI.birth_date,
            "VANDERBILT",
            "OKONKWO",
        ):
            assert value not in text, f"original value left in {inst['ID']}"
    assert len(pseudonyms) == 1 and len(new_study_uids) == 1

    # The node's own account of the run (it counts a send once the archive's
    # confirmation is recorded, a moment after the archive has the instance).
    n = len(study)
    assert wait_until(
        lambda: (
            sample(scrape(metrics_port), "deid_node_forwarded_total", destination="research") == n
        ),
        30,
    )
    s = scrape(metrics_port)
    assert sample(s, "deid_node_received_total") == n
    assert sample(s, "deid_node_deidentified_total") == n
    assert sample(s, "deid_node_forwarded_total", destination="research") == n
    assert sample(s, "deid_node_quarantined_total", stage="deidentify") == 0
    assert sample(s, "deid_node_quarantined_total", stage="forward") == 0
    assert sample(s, "deid_node_destination_up", destination="research") == 1
    status, body = health(metrics_port)
    assert status == 200 and body["status"] == "ok" and body["queue_depth"] == 0
