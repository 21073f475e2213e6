"""``deid-node verify``: check a de-identified folder against its originals.

Each output file is paired with the original it came from through the registry's
UID map (original SOP Instance UID -> new). For every pair the check reports:

- **leak**: an identifying value of the original (its names, IDs, addresses,
  institution, birth date, ...) found in any text value of the output: every element,
  sequences at any depth, private elements and the file meta included;
- **date-not-shifted**: a DA or DT value of the output equal to the value of the same
  attribute (same place) in the original;
- **uid-not-replaced**: Study, Series, SOP Instance, Frame of Reference or Media Storage
  SOP Instance UID equal to the original's;
- **missing**: an attribute researchers need, present in the original and absent from
  the output, although the profile in force keeps it (K, C, or not in Table E.1-1).
- **leak** in the pixels (Clean Pixel Data in force): a word of the original's
  identifying values read on an output frame by the pixel pass's own detector and
  recogniser.

Which attributes identify, which dates and UIDs may legitimately stay, and which
attributes must be kept all follow the options in force. The report never contains a
value read from a file: a leak is described by the kind of value and where it was found
("PatientName part found in (0008,1030) StudyDescription").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from deid_node.deid.leaks import (
    DEFER_SIZE,
    PIXEL_DATA,
    Needle,
    PathKey,
    element_strings,
    find_hits,
    identifying_values,
    profile_for,
    render_path,
    tag_text,
    walk,
)
from deid_node.deid.profile import OPTIONS, Profile, action_for, canonical_option

DATE_VRS = frozenset({"DA", "DT"})

# UIDs whose replacement is checked (top level and file meta).
CHECKED_UIDS: tuple[tuple[int, str], ...] = (
    (0x0020000D, "StudyInstanceUID"),
    (0x0020000E, "SeriesInstanceUID"),
    (0x00080018, "SOPInstanceUID"),
    (0x00200052, "FrameOfReferenceUID"),
)
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
SOP_INSTANCE_UID = 0x00080018

# What a researcher needs to use an image. Reported missing only when the original had
# it and the profile in force keeps it (K, C, or no row in Table E.1-1).
RESEARCH_KEYWORDS: tuple[str, ...] = (
    "SOPClassUID",
    "Modality",
    "ImageType",
    "StudyDate",
    "SeriesDate",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "BodyPartExamined",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Manufacturer",
    "ManufacturerModelName",
    "SeriesNumber",
    "InstanceNumber",
    "AcquisitionNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "SliceLocation",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PatientPosition",
    "ViewPosition",
    "Laterality",
    "ImageLaterality",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "KVP",
    "ExposureTime",
    "XRayTubeCurrent",
    "Exposure",
    "ConvolutionKernel",
    "ContrastBolusAgent",
    "MagneticFieldStrength",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "ScanningSequence",
    "SequenceVariant",
    "PixelData",
)


# -- findings and reports -------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    check: str  # leak | date-not-shifted | uid-not-replaced | missing
    where: str  # "(0008,1030) StudyDescription", nested: "(0040,0275)[0].(0040,0007) ..."
    what: str = ""  # for a leak: the kind of value, e.g. "PatientName part"
    source: str = ""  # for a leak: the original attribute, e.g. "(0010,0010) PatientName"

    def describe(self) -> str:
        if self.check == "leak":
            return f"{self.what} found in {self.where}"
        if self.check == "date-not-shifted":
            return f"date not shifted in {self.where}"
        if self.check == "uid-not-replaced":
            return f"UID not replaced in {self.where}"
        return f"{self.where} missing (kept by the profile)"


FAILING_CHECKS = frozenset({"leak", "date-not-shifted", "uid-not-replaced"})


@dataclass
class FileReport:
    output: str
    # Not rendered: original file names often carry the patient's name.
    originals: list[str]
    findings: list[Finding] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(f.check in FAILING_CHECKS for f in self.findings)


@dataclass
class Report:
    original_dir: str
    output_dir: str
    options: list[str]
    files: list[FileReport] = field(default_factory=list)
    outputs_without_original: list[str] = field(default_factory=list)
    originals_without_output: list[str] = field(default_factory=list)
    unreadable_outputs: list[str] = field(default_factory=list)
    originals_read: int = 0
    outputs_read: int = 0

    def count(self, check: str) -> int:
        return sum(1 for f in self.files for x in f.findings if x.check == check)

    @property
    def failed(self) -> bool:
        return any(f.failed for f in self.files)

    def summary(self) -> dict[str, int]:
        return {
            "originals": self.originals_read,
            "outputs": self.outputs_read,
            "paired": len(self.files),
            "leaks": self.count("leak"),
            "dates_not_shifted": self.count("date-not-shifted"),
            "uids_not_replaced": self.count("uid-not-replaced"),
            "missing_attributes": self.count("missing"),
            "outputs_without_original": len(self.outputs_without_original),
            "originals_without_output": len(self.originals_without_output),
            "unreadable_outputs": len(self.unreadable_outputs),
            "files_failed": sum(1 for f in self.files if f.failed),
        }


def find_leaks(output: Dataset, needles: list[Needle]) -> list[Finding]:
    """Where the values of ``needles`` occur in ``output`` (file meta included)."""
    return [Finding("leak", h.where, h.kind, h.source) for h in find_hits(output, needles)]


# -- dates, UIDs, needed attributes ---------------------------------------------------


def _date_parts(values: list[str]) -> list[str]:
    return [v[:8] for v in values]


def dates_index(ds: Dataset) -> dict[PathKey, list[str]]:
    return {path: element_strings(elem) for path, elem in walk(ds) if elem.VR in DATE_VRS}


def find_unshifted_dates(
    output: Dataset, original_dates: dict[PathKey, list[str]]
) -> list[Finding]:
    found = []
    for path, elem in walk(output):
        if elem.VR not in DATE_VRS:
            continue
        old = original_dates.get(path)
        new = element_strings(elem)
        if old and new and _date_parts(old) == _date_parts(new):
            found.append(Finding("date-not-shifted", render_path(path)))
    return found


def _uid(ds: Dataset | None, tag: int) -> str:
    if ds is None:
        return ""
    try:
        elem = ds.get(tag)
    except Exception:
        return ""
    if elem is None:
        return ""
    values = element_strings(elem)
    return "\\".join(values)


def find_unreplaced_uids(output: Dataset, original: Dataset) -> list[Finding]:
    found = []
    for tag, keyword in CHECKED_UIDS:
        old = _uid(original, tag)
        if old and _uid(output, tag) == old:
            found.append(Finding("uid-not-replaced", f"{tag_text(tag)} {keyword}"))
    old = _uid(getattr(original, "file_meta", None), MEDIA_STORAGE_SOP_INSTANCE_UID)
    new = _uid(getattr(output, "file_meta", None), MEDIA_STORAGE_SOP_INSTANCE_UID)
    if old and new == old:
        found.append(
            Finding(
                "uid-not-replaced",
                f"{tag_text(MEDIA_STORAGE_SOP_INSTANCE_UID)} MediaStorageSOPInstanceUID",
            )
        )
    return found


@functools.cache
def _research_tags() -> tuple[tuple[int, str], ...]:
    from pydicom.datadict import tag_for_keyword

    return tuple((int(tag_for_keyword(k)), k) for k in RESEARCH_KEYWORDS)


def needed_tags(profile: Profile) -> list[tuple[int, str]]:
    """Research attributes the profile keeps: K, C, or no row in the table."""
    return [(t, k) for t, k in _research_tags() if action_for(profile, t) in (None, "K", "C")]


def find_missing(
    output: Dataset, original: Dataset, needed: list[tuple[int, str]]
) -> list[Finding]:
    return [
        Finding("missing", f"{tag_text(tag)} {keyword}")
        for tag, keyword in needed
        if tag in original and tag not in output
    ]


# -- one pair -------------------------------------------------------------------------


def check_pair(original: Dataset, output: Dataset, profile: Profile) -> list[Finding]:
    """Everything wrong with ``output`` as the de-identified ``original``."""
    findings = find_leaks(output, identifying_values(original, profile))
    if not profile.full_dates:
        findings += find_unshifted_dates(output, dates_index(original))
    if "RetainUIDs" not in profile.options:
        findings += find_unreplaced_uids(output, original)
    findings += find_missing(output, original, needed_tags(profile))
    if "CleanPixelData" in profile.options:
        findings += find_pixel_leaks(output, original)
    return findings


def find_pixel_leaks(output: Dataset, original: Dataset) -> list[Finding]:
    """Burned-in identifiers still legible on the output's frames: the pixel pass's own
    detector and recogniser read every distinct frame, and any reading that holds a
    word of the original's identifying values (three characters or more), or one of
    its dates in any spelling, is a leak. What was read is not reported."""
    if PIXEL_DATA not in output:
        return []
    from deid_node.deid.pixels.legible import legible_identifiers

    try:
        frames = legible_identifiers(output, original)
    except Exception as exc:  # pixels that cannot be decoded cannot be shown clean
        return [
            Finding("leak", "(7FE0,0010) PixelData", f"undecodable pixels ({type(exc).__name__})")
        ]
    return [
        Finding("leak", f"(7FE0,0010) PixelData frame {k + 1}", "burned-in identifier")
        for k in frames
    ]


# -- folders --------------------------------------------------------------------------


def read_file(path: Path) -> Dataset | None:
    try:
        return dcmread(path, defer_size=DEFER_SIZE)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError, AttributeError):
        return None


def _files(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(root) / name


def _sop_uid(path: Path) -> str | None:
    """SOP Instance UID of a DICOM file, None for anything else."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=[SOP_INSTANCE_UID])
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError, AttributeError):
        return None
    return _uid(ds, SOP_INSTANCE_UID)


def index_folder(folder: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """SOP Instance UID -> files, and the files that are not readable DICOM."""
    by_uid: dict[str, list[Path]] = {}
    other: list[Path] = []
    for path in _files(folder):
        uid = _sop_uid(path)
        if uid:
            by_uid.setdefault(uid, []).append(path)
        else:
            other.append(path)
    return by_uid, other


def registry_originals(registry_url: str, new_uids: Iterable[str]) -> dict[str, str]:
    """new UID -> original UID for ``new_uids``, from the registry's UID map."""
    from sqlalchemy import inspect, select

    from deid_node.db import make_engine
    from deid_node.registry.models import uid_map

    engine = make_engine(registry_url)
    found: dict[str, str] = {}
    try:
        if not inspect(engine).has_table("uid_map"):
            raise RegistryMissing("the registry has no UID map")
        wanted = sorted(set(new_uids))
        with engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                stmt = select(uid_map.c.original_uid, uid_map.c.new_uid).where(
                    uid_map.c.new_uid.in_(wanted[i : i + 500])
                )
                for old, new in conn.execute(stmt):
                    found[new] = old
    finally:
        engine.dispose()
    return found


class RegistryMissing(RuntimeError):
    """There is no registry (or no UID map in it) to pair files with."""


def _pixel_digest(ds: Dataset) -> str:
    try:
        value = ds[PIXEL_DATA].value if PIXEL_DATA in ds else b""
    except Exception:
        return "unreadable"
    return hashlib.sha256(value or b"").hexdigest()


def _mismatch(original: Dataset, output: Dataset) -> tuple[int, int, int]:
    """How unlike ``output`` is to the output ``original`` would give; used to pick the
    original among several files that share one SOP Instance UID (the same image in
    several transfer syntaxes, say). The node keeps the transfer syntax and copies the
    pixel data byte for byte; then the fewest top-level attributes that differ."""

    def syntax(ds: Dataset) -> str:
        return _uid(getattr(ds, "file_meta", None), 0x00020010)

    def tags(ds: Dataset) -> set[int]:
        return {int(t) for t in list(ds.keys()) if t & 0xFFFF and t != 0xFFFCFFFC}

    return (
        int(syntax(original) != syntax(output)),
        int(_pixel_digest(original) != _pixel_digest(output)),
        len(tags(original) ^ tags(output)),
    )


def _assign(
    candidates: list[Path], outputs: list[tuple[Path, Dataset]]
) -> list[tuple[Path, Path, Dataset, Dataset]]:
    """Pair outputs with originals that share one SOP Instance UID, closest first; an
    output left over (more outputs than originals) takes its closest original anyway."""
    originals = {p: read_file(p) for p in candidates}
    usable = [p for p in candidates if originals[p] is not None]
    if not usable or not outputs:
        return []
    if len(usable) == 1:
        only = usable[0]
        return [(o, only, originals[only], ds) for o, ds in outputs]  # type: ignore[misc]
    costs = sorted(
        (_mismatch(originals[p], ds), i, j)  # type: ignore[arg-type]
        for i, (_, ds) in enumerate(outputs)
        for j, p in enumerate(usable)
    )
    chosen: dict[int, int] = {}
    taken: set[int] = set()
    for _, i, j in costs:
        if i not in chosen and j not in taken:
            chosen[i] = j
            taken.add(j)
    for _, i, j in costs:
        chosen.setdefault(i, j)
    pairs = []
    for i, (out_path, ds) in enumerate(outputs):
        orig = usable[chosen[i]]
        pairs.append((out_path, orig, originals[orig], ds))
    return pairs  # type: ignore[return-value]


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """No pydicom warnings while reading: they quote values ("Invalid value for VR
    UI: '1.2...'"), and this report must not."""
    from pydicom import config as pydicom_config

    settings = pydicom_config.settings
    mode = settings.reading_validation_mode
    logger = logging.getLogger("pydicom")
    disabled = logger.disabled
    settings.reading_validation_mode = pydicom_config.IGNORE
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode = mode
        logger.disabled = disabled


def verify_folders(
    original_dir: Path, output_dir: Path, registry_url: str, options: Iterable[str]
) -> Report:
    """Pair every output in ``output_dir`` with its original in ``original_dir`` through
    the registry at ``registry_url``, and check each pair under ``options``."""
    with quiet_pydicom():
        return _verify_folders(original_dir, output_dir, registry_url, options)


def _verify_folders(
    original_dir: Path, output_dir: Path, registry_url: str, options: Iterable[str]
) -> Report:
    options = sorted(canonical_option(o) for o in options)
    profile = profile_for(options)
    report = Report(str(original_dir), str(output_dir), [o for o in OPTIONS if o in options])
    originals, _ = index_folder(original_dir)
    outputs, unreadable = index_folder(output_dir)
    report.originals_read = sum(len(v) for v in originals.values())
    report.outputs_read = sum(len(v) for v in outputs.values())
    report.unreadable_outputs = [os.path.relpath(p, output_dir) for p in unreadable]
    old_of = registry_originals(registry_url, outputs)
    paired: set[Path] = set()
    for new_uid in sorted(outputs):
        old_uid = old_of.get(new_uid)
        if old_uid is None and new_uid in originals:
            old_uid = new_uid  # Retain UIDs: the UID is its own original
        candidates = originals.get(old_uid, []) if old_uid else []
        read_outputs: list[tuple[Path, Dataset]] = []
        for out_path in outputs[new_uid]:
            rel_out = os.path.relpath(out_path, output_dir)
            output = read_file(out_path) if candidates else None
            if not candidates:
                report.outputs_without_original.append(rel_out)
            elif output is None:
                report.unreadable_outputs.append(rel_out)
            else:
                read_outputs.append((out_path, output))
        for out_path, orig_path, original, output in _assign(candidates, read_outputs):
            paired.add(orig_path)
            file_report = FileReport(
                os.path.relpath(out_path, output_dir), [os.path.relpath(orig_path, original_dir)]
            )
            file_report.findings = check_pair(original, output, profile)
            report.files.append(file_report)
    for paths in originals.values():
        for path in paths:
            if path not in paired:
                report.originals_without_output.append(os.path.relpath(path, original_dir))
    report.originals_without_output.sort()
    return report


# -- rendering ------------------------------------------------------------------------


def render_json(report: Report) -> str:
    return json.dumps(
        {
            "ok": not report.failed,
            "original_dir": report.original_dir,
            "output_dir": report.output_dir,
            "options": report.options,
            "summary": report.summary(),
            "files": [
                {
                    "output": f.output,
                    "failed": f.failed,
                    "findings": [asdict(x) | {"message": x.describe()} for x in f.findings],
                }
                for f in report.files
            ],
            "outputs_without_original": report.outputs_without_original,
            "originals_without_output": report.originals_without_output,
            "unreadable_outputs": report.unreadable_outputs,
        },
        indent=2,
    )


def render_table(report: Report) -> str:
    rows: list[tuple[str, str, str]] = []
    for f in report.files:
        for x in f.findings:
            rows.append((f.output, x.check, x.describe()))
    for name in report.outputs_without_original:
        rows.append((name, "no-original", "no original found for this output"))
    for name in report.unreadable_outputs:
        rows.append((name, "unreadable", "output is not a readable DICOM file"))
    for name in report.originals_without_output:
        rows.append((name, "no-output", "original has no de-identified output"))
    lines = []
    if rows:
        headers = ("FILE", "CHECK", "FINDING")
        w0 = max(len(headers[0]), *(len(r[0]) for r in rows))
        w1 = max(len(headers[1]), *(len(r[1]) for r in rows))
        lines.append(f"{headers[0]:<{w0}}  {headers[1]:<{w1}}  {headers[2]}")
        lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
        lines.append("")
    s = report.summary()
    lines.append(
        f"{s['paired']} of {s['outputs']} outputs paired with {s['originals']} originals; "
        f"{s['leaks']} leaks, {s['dates_not_shifted']} dates not shifted, "
        f"{s['uids_not_replaced']} UIDs not replaced, "
        f"{s['missing_attributes']} needed attributes missing; "
        f"{s['outputs_without_original']} outputs without original, "
        f"{s['originals_without_output']} originals without output"
    )
    lines.append("FAILED" if report.failed else "OK")
    return "\n".join(lines)


__all__ = [
    "Finding",
    "RegistryMissing",
    "Report",
    "check_pair",
    "find_leaks",
    "identifying_values",
    "profile_for",
    "quiet_pydicom",
    "render_json",
    "render_table",
    "verify_folders",
]
