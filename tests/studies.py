"""Synthetic studies with realistic PHI, built from pydicom's CT test image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


@dataclass(frozen=True)
class Phi:
    name: str = "VANDERBILT^MARGARET^ANN"
    patient_id: str = "MRN40917733"
    birth_date: str = "19560212"
    study_date: str = "20240305"
    accession: str = "ACC88231907"
    institution: str = "Saint Brigid Memorial Hospital"
    physician: str = "OKONKWO^CHIDI"


def make_study(
    folder: Path, *, series: int = 3, per_series: int = 4, phi: Phi = Phi(), study_uid: str = ""
) -> list[Path]:
    """Write ``series`` x ``per_series`` CT instances of one study; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    template = dcmread(get_testdata_file("CT_small.dcm"))
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    paths = []
    for s in range(series):
        series_uid = generate_uid()
        for i in range(per_series):
            ds = template.copy()
            ds.file_meta = template.file_meta.copy()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            sop_uid = generate_uid()
            ds.SOPInstanceUID = sop_uid
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.PatientName = phi.name
            ds.PatientID = phi.patient_id
            ds.PatientBirthDate = phi.birth_date
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = phi.study_date
            ds.AcquisitionDate = phi.study_date
            ds.AccessionNumber = phi.accession
            ds.InstitutionName = phi.institution
            ds.ReferringPhysicianName = phi.physician
            ds.StudyDescription = "CT CHEST WITH CONTRAST"
            ds.SeriesNumber = s + 1
            ds.InstanceNumber = i + 1
            # A private element that carries PHI, as vendors' often do.
            block = ds.private_block(0x0029, "ACME MEDICAL", create=True)
            block.add_new(0x10, "LO", phi.name.replace("^", " "))
            path = folder / f"s{s}_i{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
