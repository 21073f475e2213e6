"""The leak gate: no original identifier of an instance leaves the node, wherever it
sits (code meanings, overlay descriptions, private blocks of unknown creators, UN
values, file meta), and a hit that cannot be cleaned quarantines the instance.

The names and IDs are drawn at each run from a seeded generator (the seed is
printed), so that no fixed value can be special-cased."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from deid_node.deid.gate import LeakFound, close_leaks
from deid_node.deid.leaks import find_hits, identifying_values, profile_for
from tests.conftest import DEID_NODE

SURNAMES = ["Whitfield", "Okonkwo", "Lindqvist", "Ferreira", "Nakamura", "Kowalczyk", "Haddad"]
GIVEN = ["Johanna", "Tariq", "Mireille", "Dmitri", "Aiyana", "Bartholomew", "Soraya"]
DEFAULT_OPTIONS = frozenset({"RetainLongitudinalTemporalInformationModifiedDates"})


def _instance(rng: random.Random) -> tuple[Dataset, dict[str, str]]:
    """A CT header with the patient's own identifiers where no profile row points."""
    family, given = rng.choice(SURNAMES), rng.choice(GIVEN)
    physician = rng.choice([s for s in SURNAMES if s != family])
    patient_id = str(rng.randrange(10**7, 10**9))
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = f"{family}^{given}"
    ds.PatientID = patient_id
    ds.ReferringPhysicianName = f"{physician}^Anna"
    code = Dataset()
    code.CodeValue = "CTCH"
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = f"CT CHEST for {given} {family}"
    ds.ProcedureCodeSequence = Sequence([code])
    ds.add_new(0x60000022, "LO", f"marked by Dr {physician}")  # Overlay Description
    ds.add_new(0x00431010, "LO", "ACME UNKNOWN 1.0")  # a creator nobody knows
    ds.add_new(0x00431011, "LO", f"MRN {patient_id}")
    ds.add_new(0x00431012, "UN", f"{family.upper()}^{given.upper()}".encode())
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds, {"family": family, "given": given, "physician": physician, "id": patient_id}


@pytest.fixture()
def rng() -> random.Random:
    seed = random.SystemRandom().randrange(10**9)
    print(f"leak gate seed {seed}")
    return random.Random(seed)


def _text_of(ds: Dataset) -> str:
    return " ".join(str(e.value) for e in ds.iterall())


def test_clean_takes_out_the_spans_and_keeps_the_rest(rng: random.Random) -> None:
    ds, who = _instance(rng)
    needles = identifying_values(ds, profile_for(DEFAULT_OPTIONS))
    # What the profile would leave: the attributes it lists are gone.
    for keyword in ("PatientName", "PatientID", "ReferringPhysicianName"):
        delattr(ds, keyword)
    outcome = close_leaks(ds, needles, "clean")
    assert outcome.hits >= 4
    text = _text_of(ds)
    for value in who.values():
        assert value.lower() not in text.lower()
    assert ds.ProcedureCodeSequence[0].CodeMeaning == "CT CHEST for"
    assert ds[0x60000022].value == "marked by Dr"
    assert ds[0x00431011].value == "MRN"
    assert 0x00431012 not in ds  # UN: removed whole
    assert not find_hits(ds, needles)


def test_quarantine_mode_refuses_and_names_tags_only(rng: random.Random) -> None:
    ds, who = _instance(rng)
    needles = identifying_values(ds, profile_for(DEFAULT_OPTIONS))
    for keyword in ("PatientName", "PatientID", "ReferringPhysicianName"):
        delattr(ds, keyword)
    with pytest.raises(LeakFound) as caught:
        close_leaks(ds, needles, "quarantine")
    message = str(caught.value)
    assert "(0008,1032)[0].(0008,0104)" in message
    for value in who.values():
        assert value.lower() not in message.lower()


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        close_leaks(Dataset(), [], "off")


def _deidentify(tmp_path: Path, src: Path, gate: str) -> subprocess.CompletedProcess:
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\ndata_dir = "data"\nworkers = 1\nlog_level = "warning"\n'
        f'[deid]\nleak_gate = "{gate}"\n'
        'options = ["Retain Longitudinal Temporal Information with Modified Dates"]\n'
    )
    return subprocess.run(
        [*DEID_NODE, "deidentify", str(src), "-o", str(tmp_path / f"out-{gate}"), "-j", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("gate", ["clean", "quarantine"])
def test_the_pipeline_never_writes_an_identifier(
    tmp_path: Path, rng: random.Random, gate: str
) -> None:
    ds, who = _instance(rng)
    src = tmp_path / "in"
    src.mkdir()
    ds.save_as(src / "one.dcm", enforce_file_format=True)
    result = _deidentify(tmp_path, src, gate)
    written = list((tmp_path / f"out-{gate}").glob("*.dcm"))
    for value in who.values():
        assert value.lower() not in (result.stdout + result.stderr).lower()
    if gate == "quarantine":
        assert not written
        assert "identifier left after de-identification" in result.stdout + result.stderr
        return
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(written) == 1
    raw = written[0].read_bytes().lower()
    for value in who.values():
        assert value.lower().encode() not in raw
    out = pydicom.dcmread(written[0])
    assert "CT CHEST" in out.ProcedureCodeSequence[0].CodeMeaning


@pytest.mark.parametrize("preset", [None, "tcia"])
def test_clean_descriptors_cleans_code_meanings_and_dates_in_any_spelling(
    rng: random.Random, preset: str | None
) -> None:
    from deid_node.deid.engine import DeidSettings, PatientPseudonym, deidentify

    ds, who = _instance(rng)
    month = rng.choice(["Sep1999", "1999-09", "September 1999", "23.09.1999", "09/23/99"])
    code = ds.ProcedureCodeSequence[0]
    code.CodeMeaning = f"CT CHEST {month} for {who['given']} {who['family']}"
    ds.StudyDescription = f"CHEST WITH CONTRAST {month}"
    settings = DeidSettings(
        uid_key=b"k" * 32,
        options=frozenset(
            {"CleanDescriptors", "RetainLongitudinalTemporalInformationModifiedDates"}
        ),
        preset=preset,
    )
    deidentify(ds, PatientPseudonym("P", "P", -3), settings)
    assert ds.ProcedureCodeSequence[0].CodeMeaning == "CT CHEST for"
    if "StudyDescription" in ds:
        assert ds.StudyDescription == "CHEST WITH CONTRAST"
