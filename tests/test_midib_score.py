"""A MIDI-B style score of the de-identification, over every DICOM file we have.

The MICCAI 2024 MIDI-B challenge scored a de-identified set as the share of required
actions done right (see shared/README.md). Its answer key is not public, so this test
derives one from the originals themselves and from TCIA's own curation choices
(shared/reference/tcia-deid-attributes.json):

- ``tag_retained``: an attribute TCIA keeps (``keep``, ``time``, ``incrementdate``, or
  a standard attribute TCIA does not list at all) is still there, and not emptied;
- ``text_retained``: the words of a kept description that are not PHI are still in it;
- ``text_removed``: no word of a PHI value is left in its place, whether the attribute is
  one TCIA removes, empties, replaces or looks up, or a kept text (description, private
  element) that held an identifying value of the same instance;
- ``date_shifted``: the original date (DA, DT, any depth) is no longer in its place;
- ``uid_changed``: a UID TCIA hashes no longer has its original value;
- ``uid_consistent`` / ``patid_consistent``: Study, Series and SOP Instance UIDs, and the
  Patient ID, are what the exported crosswalks (``deid-node crosswalk``) say.

A valid file the node fails to de-identify fails every check it required; a broken one
(truncated) that it refuses is not scored. The node runs twice: with the PS3.15 profile
and OPTIONS, and with the TCIA preset laid over the same OPTIONS. The pixel checks
(``pixels_hidden``, ``pixels_retained``) and the retention of safe private attributes are
not scored here.
Nothing read from a file is printed, only attribute names.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import pydicom
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.errors import InvalidDicomError

from deid_node.deid.leaks import (
    DEFER_SIZE,
    PLACEHOLDER_NAME_PARTS,
    Needle,
    PathKey,
    element_strings,
    identifying_values,
    profile_for,
    tag_name,
    walk,
)
from deid_node.verify import quiet_pydicom

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus" / "pseudo-phi-burned-in"
TCIA_ATTRIBUTES = SHARED / "reference" / "tcia-deid-attributes.json"
# Read the folder directly: pydicom's get_testdata_files() tries to download.
PYDICOM_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"

# The options a research export in the MIDI-B setting asks for: shifted dates, the
# patient's characteristics and the (cleaned) descriptions kept.
OPTIONS = (
    "Retain Longitudinal Temporal Information with Modified Dates",
    "Retain Patient Characteristics",
    "Clean Descriptors",
    "Clean Structured Content",
    "Clean Graphics",
)

# Target: MIDI-B asks 99.95% of the required actions done right. The plain PS3.15
# profile with OPTIONS does not get there (measured 98.46%: 27984 of 28423 on 347 files),
# because the table keeps what TCIA removes (Image Comments, Derivation Description,
# Timezone Offset, Time of Last Calibration, Request Attributes Sequence under the
# cleaning options) and empties what TCIA keeps (Referenced Study Sequence): choices of
# the standard, not leaks. The assertion holds the measured level minus 0.1 point so
# that a regression fails, and moves up to TARGET by itself once the score gets there.
# Raise MEASURED when the engine improves. With the TCIA preset (the choices the key is
# built from) the target itself is asserted: measured 100.000% (28423 of 28423).
TARGET = 0.9995
MEASURED = 0.9845
FLOOR = MEASURED - 0.001

CHECKS = (
    "tag_retained",
    "text_retained",
    "text_removed",
    "date_shifted",
    "uid_changed",
    "uid_consistent",
    "patid_consistent",
)

TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
DATE_VRS = frozenset({"DA", "DT"})
LEVEL_UIDS = (0x0020000D, 0x0020000E, 0x00080018)
PATIENT_ID = 0x00100020
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
SKIPPED_TAGS = frozenset({0x7FE00010, 0xFFFCFFFC})  # pixels: not scored; padding
# Short English stop words that carry nothing ("XR CHEST for DOE": "for" is no loss).
STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it of on or the to with w wo".split()  # noqa: SIM905
)


# -- the answer key ---------------------------------------------------------------------


def _tags(entries: list[str]) -> frozenset[int]:
    out = set()
    for entry in entries:
        match = re.fullmatch(r"\(0x([0-9A-Fa-f]{4}), 0x([0-9A-Fa-f]{4})\)", entry)
        if match:
            out.add(int(match[1], 16) << 16 | int(match[2], 16))
    return frozenset(out)


@dataclass(frozen=True)
class Tcia:
    keep: frozenset[int]  # keep, time, incrementdate: must stay
    remove: frozenset[int]  # remove, empty, replace, hashname, lookup: value must go
    hashuid: frozenset[int]
    process: frozenset[int]  # sequences processed item by item
    listed: frozenset[int]

    @classmethod
    def load(cls) -> Tcia:
        raw = json.loads(TCIA_ATTRIBUTES.read_text())
        keep = _tags(raw["keep"]) | _tags(raw["time"]) | _tags(raw["incrementdate"])
        remove = (
            _tags(raw["remove"])
            | _tags(raw["empty"])
            | _tags(raw["replace"])
            | _tags(raw["hashname"])
            | _tags(raw["lookup"])
        )
        listed = frozenset().union(*(_tags(v) for v in raw.values() if isinstance(v, list)))
        return cls(keep, remove, _tags(raw["hashuid"]), _tags(raw["process"]), listed)


# Kinds of value that identify a person or a visit wherever they appear. Names of
# organisations, devices and categories (InstitutionName "TOSHIBA", BranchOfService
# "NEURO") are removed from their own attributes, but the same word in a kept one
# (Manufacturer "TOSHIBA_MEC", ProtocolName "HEAD_NEURO") is no PHI.
PERSONAL_KINDS = re.compile(r"ID|Number|Address|Telephone|BirthDate|Locator|Telecom")
_SOURCE_TAG = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\) [^ ]+$")


def _personal(needle: Needle, tcia: Tcia) -> bool:
    match = _SOURCE_TAG.search(needle.source)
    if match and (int(match[1], 16) << 16 | int(match[2], 16)) in tcia.keep:
        return False  # a value TCIA keeps (EthnicGroup) is no PHI to remove elsewhere
    if needle.kind.endswith(" part"):
        return needle.value.lower() not in PLACEHOLDER_NAME_PARTS
    return bool(PERSONAL_KINDS.search(needle.kind))


def _repeating(tag: int) -> bool:
    """Curves (50xx) and overlays (60xx): TCIA's lists cannot name them; not scored."""
    return 0x5000 <= tag >> 16 <= 0x60FF and not (tag >> 16) & 1


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[^\W_]+", text) if w.lower() not in STOPWORDS]


def _has_word(word: str, text: str) -> bool:
    return re.search(rf"(?<![^\W_]){re.escape(word)}(?![^\W_])", text, re.IGNORECASE) is not None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass
class Score:
    right: Counter = field(default_factory=Counter)
    required: Counter = field(default_factory=Counter)
    causes: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)  # valid input the node failed on
    excluded: Counter = field(default_factory=Counter)  # broken input the node refused
    excluded_files: list[str] = field(default_factory=list)
    # For debugging: the files behind each cause (never printed: corpus file names
    # carry the synthetic PHI).
    examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    current: str = ""

    def check(self, kind: str, ok: bool, cause: str) -> None:
        self.required[kind] += 1
        if ok:
            self.right[kind] += 1
        else:
            self.causes[(kind, cause)] += 1
            self.examples.setdefault((kind, cause), []).append(self.current)

    def overall(self) -> float:
        total = sum(self.required.values())
        return sum(self.right.values()) / total if total else 1.0

    def render(self) -> str:
        lines = [f"{'check':18} {'right':>8} {'required':>9} {'score':>9}"]
        for kind in CHECKS:
            n, r = self.required[kind], self.right[kind]
            pct = f"{100 * r / n:8.3f}%" if n else "      n/a"
            lines.append(f"{kind:18} {r:8} {n:9} {pct}")
        total, right = sum(self.required.values()), sum(self.right.values())
        lines.append(f"{'overall':18} {right:8} {total:9} {100 * self.overall():8.3f}%")
        if self.excluded:
            lines.append(
                "broken files refused, not scored: "
                + ", ".join(f"{n} ({why})" for why, n in self.excluded.most_common())
            )
        if self.refused:
            lines.append(
                "files the node failed on (every check failed): "
                + ", ".join(f"{n} ({why})" for why, n in self.refused.most_common())
            )
        lines.append("biggest causes of failed checks:")
        lines += [f"  {n:6}  {kind}: {cause}" for (kind, cause), n in self.causes.most_common(25)]
        return "\n".join(lines)


def _where(path: PathKey) -> str:
    """Attribute name of ``path`` for the report: ``StudyDescription``, or with
    ``(in SequenceKeyword)`` when nested."""
    leaf = tag_name(path[-1][0])
    return leaf if len(path) == 1 else f"{leaf} (in {tag_name(path[0][0])})"


def _elements(ds: pydicom.Dataset) -> dict[PathKey, DataElement]:
    return dict(walk(ds))


def score_pair(
    score: Score,
    original: pydicom.Dataset,
    output: pydicom.Dataset | None,
    tcia: Tcia,
    uids: dict[str, str],
    patients: dict[str, str],
) -> None:
    """Add the checks ``original`` requires, judged on ``output`` (None: no output)."""
    # What identifies the patient or the visit in this instance, to be removed from the
    # texts that are kept (descriptions, private elements).
    every = identifying_values(original, profile_for(()))
    needles = [n for n in every if _personal(n, tcia)]
    out = _elements(output) if output is not None else {}
    missing = output is None

    def value(path: PathKey) -> list[str]:
        elem = out.get(path)
        return element_strings(elem) if elem is not None else []

    for path, elem in walk(original):
        tag = path[-1][0]
        vr = elem.VR
        if tag in SKIPPED_TAGS or not tag & 0xFFFF or vr == "SQ" or _repeating(tag):
            continue
        removed_above = any(t in tcia.remove for t, _ in path[:-1])
        texts = element_strings(elem)
        joined = "\\".join(texts)
        where = _where(path)
        new = value(path)
        new_joined = "\\".join(new)
        private = bool((tag >> 16) & 1)

        if vr in DATE_VRS and texts:
            dates = [t[:8] for t in texts if len(t) >= 8]
            if dates:
                ok = not missing and not any(d in new_joined for d in dates)
                score.check("date_shifted", ok, f"{where} kept its original date")

        if private:
            hits = [n for n in needles if n.pattern.search(joined)] if texts else []
            if hits:
                ok = not missing and not any(n.pattern.search(new_joined) for n in hits)
                score.check("text_removed", ok, f"private {where} kept a PHI value")
            continue

        if tag in tcia.hashuid:
            if texts:
                ok = not missing and new_joined != joined
                score.check("uid_changed", ok, f"{where} kept its original UID")
            if len(path) == 1 and tag in LEVEL_UIDS and texts:
                ok = not missing and new_joined == uids.get(joined, "")
                score.check("uid_consistent", ok, f"{where} differs from the crosswalk")
            continue

        if len(path) == 1 and tag == PATIENT_ID:
            if joined:
                ok = not missing and new_joined == patients.get(joined, "")
                score.check("patid_consistent", ok, "PatientID differs from the crosswalk")
            continue

        if tag in tcia.remove or removed_above:
            if texts and vr not in DATE_VRS and vr != "UI":
                words = _words(joined)
                num = _number(joined)
                if num is not None:
                    gone = all(_number(v) != num for v in new)
                elif words:
                    gone = not any(_has_word(w, new_joined) for w in words)
                else:
                    continue
                score.check("text_removed", not missing and gone, f"{where} kept its value")
            continue

        if tag in tcia.process:
            continue

        kept = tag in tcia.keep or tag not in tcia.listed
        if not kept:
            continue
        # A kept attribute: still there, not emptied, and its PHI (if any) gone.
        present = not missing and path in out and (bool(new) or not texts)
        score.check("tag_retained", present, f"{where} {'emptied' if path in out else 'removed'}")
        if vr not in TEXT_VRS or not texts:
            continue
        hits = [n for n in needles if n.pattern.search(joined)]
        if hits:
            ok = not missing and not any(n.pattern.search(new_joined) for n in hits)
            score.check("text_removed", ok, f"{where} kept a PHI value ({hits[0].kind})")
        if tag in tcia.keep:
            rest = joined  # words that may go: every identifying value, however common
            for n in every:
                rest = n.pattern.sub(" ", rest)
            words = _words(rest)
            if words:
                ok = not missing and all(_has_word(w, new_joined) for w in words)
                score.check("text_retained", ok, f"{where} lost words that are not PHI")

    # The file meta's copy of the SOP Instance UID must be replaced too.
    meta = getattr(original, "file_meta", None)
    old = (
        element_strings(meta[MEDIA_STORAGE_SOP_INSTANCE_UID])
        if meta and (MEDIA_STORAGE_SOP_INSTANCE_UID in meta)
        else []
    )
    if old:
        out_meta = getattr(output, "file_meta", None) if output is not None else None
        new = (
            element_strings(out_meta[MEDIA_STORAGE_SOP_INSTANCE_UID])
            if out_meta is not None and MEDIA_STORAGE_SOP_INSTANCE_UID in out_meta
            else []
        )
        score.check("uid_changed", not missing and new != old, "MediaStorageSOPInstanceUID kept")


# -- running the node -----------------------------------------------------------------


def _read(path: Path) -> pydicom.Dataset | None:
    try:
        return dcmread(path, defer_size=DEFER_SIZE)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError, AttributeError):
        return None


def source_files() -> list[Path]:
    """The shared corpus, pydicom's test files, pydicom-data and deid-data: every readable
    DICOM file with a SOP Class and SOP Instance UID (what the node accepts as an instance)."""
    import data_store  # pydicom-data
    import deid_data

    folders = [
        CORPUS,
        PYDICOM_TEST_FILES,
        Path(data_store.__file__).parent / "data",
        Path(deid_data.__file__).parent / "data",
    ]
    found = []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.suffix in (".json", ".py", ".pyc", ".md", ".zip", ".txt"):
                continue
            with quiet_pydicom():
                ds = _read(path)
            if ds is None:
                continue
            if all(str(ds.get(k, "") or "").strip() for k in ("SOPClassUID", "SOPInstanceUID")):
                found.append(path)
    return found


def _deid_chunk(pairs: list[tuple[str, str]]) -> list[tuple[str, str, bool, str]]:
    """Pool task: de-identify ``(src, dst)`` pairs in a worker process."""
    from deid_node.pipeline import worker

    state = worker._state()
    outcomes = [worker.deidentify_file(state, Path(s), Path(d)) for s, d in pairs]
    worker.record_outcome_uids(state, outcomes)
    return [(s, d, o.ok, o.reason) for (s, d), o in zip(pairs, outcomes, strict=True)]


def _init_worker(config, preset: str | None) -> None:
    """Pool initializer: the node's own worker set-up, with ``preset`` laid over the
    de-identification settings it builds from the configuration."""
    from deid_node.pipeline import worker

    worker.init_worker(config)
    if preset is not None:
        state = worker._state()
        state.settings = dataclasses.replace(state.settings, preset=preset)


def deidentify_all(
    config_path: Path, sources: list[Path], out: Path, preset: str | None = None
) -> list[tuple]:
    from deid_node.config import load_config
    from deid_node.pipeline.node import prepare_data_dir
    from deid_node.registry.store import open_registry

    config = load_config(config_path)
    prepare_data_dir(config)
    open_registry(config.registry_url).dispose()
    out.mkdir(parents=True)
    pairs = [(str(p), str(out / f"{i:05d}.dcm")) for i, p in enumerate(sources)]
    chunks = [pairs[i : i + 16] for i in range(0, len(pairs), 16)]
    results: list[tuple] = []
    with ProcessPoolExecutor(
        max_workers=2,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(config, preset),
    ) as pool:
        for chunk in pool.map(_deid_chunk, chunks):
            results.extend(chunk)
    return results


def crosswalk(config_path: Path, kind: str, dest: Path) -> dict[str, str]:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "deid_node",
            "crosswalk",
            kind,
            "-o",
            str(dest),
            "-c",
            str(config_path),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    with dest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["id_old"]: r["id_new"] for r in rows}


def run_node(
    tmp_path: Path, options: tuple[str, ...] = OPTIONS, preset: str | None = None
) -> tuple[list, dict, dict]:
    """De-identify every source file (with ``preset`` over ``options``); return the
    outcomes and both crosswalks."""
    config_path = tmp_path / "node.toml"
    quoted = ", ".join(f'"{o}"' for o in options)
    config_path.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\nworkers = 1\n\n[deid]\noptions = [{quoted}]\n'
    )
    results = deidentify_all(config_path, source_files(), tmp_path / "out", preset)
    uids = crosswalk(config_path, "uids", tmp_path / "uids.csv")
    patients = crosswalk(config_path, "patients", tmp_path / "patients.csv")
    return results, uids, patients


def score_results(results: list, uids: dict[str, str], patients: dict[str, str]) -> Score:
    tcia = Tcia.load()
    score = Score()
    for src, dst, ok, reason in results:
        score.current = src
        if not ok and reason.startswith("unreadable"):
            # Broken input (truncated, say): refusing it is right, nothing to score.
            score.excluded[reason] += 1
            score.excluded_files.append(Path(src).name)
            continue
        original = _read(Path(src))
        assert original is not None
        output = _read(Path(dst)) if ok else None
        if output is None:
            score.refused[reason or "unreadable output"] += 1
        score_pair(score, original, output, tcia, uids, patients)
    return score


def verify_outputs(tmp_path: Path, results: list) -> dict:
    """``deid-node verify`` over the same outputs, the originals linked into one folder;
    its JSON report (file names and attribute paths only, never values)."""
    originals = tmp_path / "originals"
    originals.mkdir()
    for i, (src, *_) in enumerate(results):
        (originals / f"{i:05d}.dcm").symlink_to(src)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "deid_node", "verify", str(originals), str(tmp_path / "out")),
            *("--json", "-c", str(tmp_path / "node.toml")),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(done.stdout)
    assert done.returncode == (0 if report["ok"] else 1), done.stderr[-2000:]
    return report


def _scored(tmp_path: Path, preset: str | None = None):  # type: ignore[no-untyped-def]
    """De-identify and score every file; fail on a broken key or a wrongly refused file.
    ``deid-node verify`` must pass on the same outputs: no leak, every date shifted,
    every UID replaced, nothing a researcher needs missing."""
    results = run_node(tmp_path, preset=preset)
    report = verify_outputs(tmp_path, results[0])
    print("verify:", report["summary"])
    failing = [
        (f["output"], x["check"], x["where"], x.get("what", ""))
        for f in report["files"]
        for x in f["findings"]
        if x["check"] != "no-output"
    ]
    assert report["ok"] and not failing, failing[:20]
    assert report["summary"]["paired"] == sum(ok for _, _, ok, _ in results[0])
    with quiet_pydicom():  # pydicom's warnings about odd test files quote values
        score = score_results(*results)
    print()
    print(score.render())
    for kind in CHECKS:
        assert score.required[kind] > 0, f"no {kind} check was required: the key is broken"
    # Only pydicom's deliberately truncated files may go unscored: a valid file the node
    # calls unreadable is a regression, not an excuse.
    assert all("truncated" in name for name in score.excluded_files), score.excluded_files
    return score


def test_midib_score(tmp_path: Path) -> None:
    score = _scored(tmp_path)
    # Target 99.95% (TARGET); until the engine gets there, hold the measured level.
    assert score.overall() >= min(TARGET, FLOOR), score.render()


def test_midib_score_with_tcia_preset(tmp_path: Path) -> None:
    """The TCIA preset follows the choices the answer key is built from: it must reach
    the target on the same files, with the same options configured."""
    score = _scored(tmp_path, preset="tcia")
    assert score.overall() >= TARGET, score.render()
