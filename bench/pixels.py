"""Pixel pass benchmark: deid-node's Clean Pixel Data against plain Presidio.

Both run in this one process, on the same files, one image at a time, with
Tesseract single-threaded (OMP_THREAD_LIMIT=1, as the node runs it) and the
node's malloc settings (:mod:`deid_node.allocator`). Presidio's
``DicomImageRedactorEngine`` is given an analyzer on a blank spaCy pipeline (its
default constructor downloads a model, which these machines cannot) and
``use_metadata=True``, as its documentation recommends for DICOM.

For each value box of the corpus (``<file>.json``) the benchmark OCRs the box after
masking and counts it hidden when none of its original words is read; since OCR
cannot read most of the boxes even before masking (a person can), it also counts
the boxes at least half under a mask. It prints seconds per image for both, their
ratio, and both recalls.

    .venv/bin/python bench/pixels.py [--limit N] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pydicom

from deid_node.allocator import tune_allocator
from deid_node.deid.pixels.clean import clean_pixel_data
from deid_node.deid.pixels.legibility import plain, read_box
from deid_node.deid.pixels.phi import analyzer
from deid_node.deid.pixels.regions import to_display
from deid_node.deid.pixels.settings import PixelSettings

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared/corpus/pseudo-phi-burned-in"


def _hidden(path: Path, ds: pydicom.Dataset) -> tuple[int, int]:
    shown = to_display(ds.pixel_array, str(ds.PhotometricInterpretation) == "MONOCHROME1")
    boxes = hidden = 0
    for ann in json.loads(path.with_suffix(".json").read_text())["annotation"]:
        value = ann.get("value", {})
        if "bbox" not in value:
            continue
        words = [w for w in (plain(x) for x in value["text"].split()) if len(w) >= 2]
        seen = read_box(shown, value["bbox"])
        boxes += 1
        hidden += not any(w in seen for w in words)
    return boxes, hidden


def _under_masks(path: Path, before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """Value boxes (with a word of 2+ characters, inside the frame) and those of them
    at least half under a mask, whatever OCR can read: pixels changed to one fill."""
    boxes = covered = 0
    for ann in json.loads(path.with_suffix(".json").read_text())["annotation"]:
        value = ann.get("value", {})
        if "bbox" not in value or not any(len(plain(w)) >= 2 for w in value["text"].split()):
            continue
        x1, y1, x2, y2 = value["bbox"]
        old, new = before[max(0, y1) : y2, max(0, x1) : x2], after[max(0, y1) : y2, max(0, x1) : x2]
        if not old.size:
            continue
        boxes += 1
        if old.ndim == 3:
            old, new = old.reshape(-1, old.shape[-1]), new.reshape(-1, new.shape[-1])
            changed = (old != new).any(axis=1)
            new = new[:, 0].astype(np.int64) * 65536 + new[:, 1] * 256 + new[:, 2]
        else:
            changed = (old != new).ravel()
        values, counts = np.unique(new, return_counts=True)
        fill = values[int(np.argmax(counts))]
        covered += bool(changed.any()) and (new.ravel() == fill).mean() >= 0.5
    return boxes, covered


def _presidio_engine():  # type: ignore[no-untyped-def]
    from presidio_image_redactor import DicomImageRedactorEngine, ImageAnalyzerEngine

    return DicomImageRedactorEngine(
        image_analyzer_engine=ImageAnalyzerEngine(analyzer_engine=analyzer())
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--limit", type=int, default=0, help="first N files only")
    parser.add_argument(
        "--presidio-threads",
        choices=("one", "default"),
        default="one",
        help="Tesseract threads for Presidio: one (as the node runs it) or Tesseract's "
        "default OpenMP threads (Presidio as installed)",
    )
    args = parser.parse_args()
    files = sorted(args.corpus.glob("*.dcm"))
    if args.limit:
        files = files[: args.limit]
    # The malloc thresholds every node process sets (image-sized buffers reused,
    # not faulted in anew per image); Presidio, in this same process, has them too.
    tune_allocator()
    settings = PixelSettings()
    presidio = _presidio_engine()
    # Warm both up (imports, Tesseract model, Presidio's recognisers) outside the timing.
    clean_pixel_data(pydicom.dcmread(files[0]), settings)
    presidio.redact(pydicom.dcmread(files[0]), fill="contrast", use_metadata=True)

    ours_s = theirs_s = 0.0
    totals = {"ours": [0, 0], "presidio": [0, 0]}
    masked = {"ours": [0, 0], "presidio": [0, 0]}
    for path in files:
        ds = pydicom.dcmread(path)
        before = ds.pixel_array.copy()
        t = time.perf_counter()
        clean_pixel_data(ds, settings)
        ours_s += time.perf_counter() - t
        b, h = _hidden(path, ds)
        totals["ours"][0] += b
        totals["ours"][1] += h
        b, c = _under_masks(path, before, ds.pixel_array)
        masked["ours"][0] += b
        masked["ours"][1] += c

        ds = pydicom.dcmread(path)
        if args.presidio_threads == "default":
            os.environ.pop("OMP_THREAD_LIMIT", None)  # pytesseract's tesseract inherits it
        t = time.perf_counter()
        redacted = presidio.redact(ds, fill="contrast", use_metadata=True)
        theirs_s += time.perf_counter() - t
        os.environ["OMP_THREAD_LIMIT"] = "1"
        b, h = _hidden(path, redacted)
        totals["presidio"][0] += b
        totals["presidio"][1] += h
        b, c = _under_masks(path, before, redacted.pixel_array)
        masked["presidio"][0] += b
        masked["presidio"][1] += c

    n = len(files)
    ours, theirs = ours_s / n, theirs_s / n
    print(f"images: {n} (Presidio's Tesseract threads: {args.presidio_threads})")
    for name, per_image in (("deid-node", ours), ("presidio", theirs)):
        key = "ours" if name == "deid-node" else "presidio"
        boxes, hidden = totals[key]
        in_frame, covered = masked[key]
        print(
            f"{name:10s} {per_image:.3f} s/image  value boxes hidden {hidden}/{boxes} "
            f"({100 * hidden / boxes:.2f}%), under masks {covered}/{in_frame} "
            f"({100 * covered / in_frame:.1f}%)"
        )
    print(f"speed-up: {theirs / ours:.1f}x (ratio deid-node/presidio {ours / theirs:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
