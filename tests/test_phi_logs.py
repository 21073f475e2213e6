"""No original identifier in any log line or quarantine reason.

The whole shared corpus (121 files with pseudo-PHI, burned-in text too) goes
through a running node to an archive. Then every line the node wrote (stderr,
JSON, workers included) and every quarantine reason is scanned for the
originals' names, IDs, accession numbers, dates, institutions, physicians and
UIDs, read from the originals' headers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from tests.conftest import CORPUS, Archive, NodeProcess, storescu, wait_until
from tests.dicom_io import read_quietly
from tests.test_forwarding import FAST_RETRY, _counts

TEXT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientMotherBirthName",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "RequestingPhysician",
    "StationName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "StudyID",
)
DATE_KEYWORDS = (
    "PatientBirthDate",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstanceCreationDate",
)
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# Words that are in the corpus's values but also in any English log line.
COMMON = {
    "hospital", "medical", "center", "centre", "clinic", "university", "health", "imaging",
    "radiology", "department", "general", "memorial", "saint", "street", "road", "avenue",
    "none", "unknown", "anonymous", "test", "patient", "study", "series", "image", "level",
    "event", "info", "warning", "error", "count", "reason", "destination", "research",
}  # fmt: skip


def _tokens(text: str) -> set[str]:
    return {t.lower() for t in re.findall(r"[A-Za-z0-9]+", text)}


def _identifiers(ds: Dataset) -> tuple[set[str], set[str]]:
    """(word tokens, UIDs) that identify the patient or study of ``ds``."""
    words: set[str] = set()
    for kw in TEXT_KEYWORDS:
        value = ds.get(kw)
        if value is None:
            continue
        for v in value if isinstance(value, MultiValue) else [value]:
            words |= _tokens(str(v))
    for kw in DATE_KEYWORDS:
        value = str(ds.get(kw, "") or "")
        if value:
            words.add(value.lower())
    words = {w for w in words if len(w) >= 4 and w not in COMMON}
    uids = {str(ds.get(kw, "")) for kw in UID_KEYWORDS} - {""}
    return words, uids


@pytest.mark.slow
def test_no_identifier_in_logs_or_reasons(tmp_path: Path, make_node, archive: Archive) -> None:
    files = sorted(CORPUS.glob("*.dcm"))
    if len(files) < 100:
        pytest.skip(f"corpus not found at {CORPUS}")
    words: set[str] = set()
    uids: set[str] = set()
    for f in files:
        w, u = _identifiers(read_quietly(f))
        words |= w
        uids |= u
    assert len(words) > 100 and len(uids) > 100, "the scan looks for something"
    # Half the patients are enrolled; the rest are quarantined (reasons to scan).
    node: NodeProcess = make_node(
        archive.port, forward=FAST_RETRY, extra='[deid]\nunknown_patient = "quarantine"\n'
    )
    config = node.config_path.read_text().replace('log_level = "info"', 'log_level = "debug"')
    node.config_path.write_text(config)
    patient_ids = sorted({str(read_quietly(f).PatientID) for f in files})
    table = tmp_path / "table.csv"
    rows = [f"{pid},ENROLLED-{i}" for i, pid in enumerate(patient_ids[::2])]
    table.write_text("original_id,pseudonym\n" + "\n".join(rows) + "\n")
    node.cli("pseudonyms", "import", str(table))
    node.start()
    try:
        storescu(node.port, files)

        def settled() -> bool:
            c = _counts(node)
            return c["forwarded"] + c["quarantined"] == len(files)

        assert wait_until(settled, timeout=600, interval=1), _counts(node)
        reasons = [e["reason"] for e in json.loads(node.cli("quarantine", "list", "--json").stdout)]
    finally:
        node.stop()
    log = node.log_text()
    lines = log.splitlines()
    assert len(lines) > 10
    values: list[str] = []
    for line in lines:
        record = json.loads(line)  # every line is JSON: nothing printed around the logger
        values += [json.dumps(v) for v in record.values()]  # keys are code, not data
    scanned = "\n".join([*values, *reasons])
    found_words = words & _tokens(scanned)
    found_uids = {u for u in uids if u in scanned}
    print(
        f"\nphi scan: {len(lines)} log lines, {len(reasons)} quarantine reasons, "
        f"{len(words)} identifying tokens and {len(uids)} UIDs looked for, "
        f"{len(found_words) + len(found_uids)} found"
    )
    assert reasons and len(lines) > len(files), "debug lines and reasons were scanned"
    planted = sorted(words)[0]
    assert words & _tokens(json.dumps(f"x {planted.upper()} y")), "the scan finds a value"
    assert not found_words, sorted(found_words)[:20]
    assert not found_uids, sorted(found_uids)[:5]
