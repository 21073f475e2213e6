"""Pixel pass benchmark: deid-node's engine against Presidio's, in one run.

Both engines run in this one process, one image at a time, on one thread
(onnxruntime's intra-op threads and Tesseract's OpenMP threads set to one, as
the node's workers run them), on:

- the shared corpus (``../shared/corpus/pseudo-phi-burned-in``);
- a set generated afresh (:mod:`tests.burned_in`), from a base seed drawn now and
  printed (``--seed`` replays it);
- a CT series without text (pydicom-data's 693_UNCI, 512 x 512, as many slices as
  ``--ct-slices``), for the cost of images that carry none.

For each engine it prints CPU seconds per image (mean and max), the PHI boxes
hidden under the rule of the tests (98% of the glyph pixels under a mask and
neither reader reads a word of them), pixels away from the text changed, and
text-free images changed. Last, the peak resident memory of a fresh process that
has loaded the pixel pass and cleaned one image (a worker's share).

    .venv/bin/python bench/pixels.py [--generated N] [--seed S] [--limit N] [--ct-slices N]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pydicom

from deid_node.allocator import tune_allocator
from deid_node.deid.pixels.clean import PixelResult, clean_pixel_data
from deid_node.deid.pixels.settings import PixelSettings
from tests.burned_in import Judged, generate, judge, judge_corpus_file

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared/corpus/pseudo-phi-burned-in"
ENGINES = {"deid-node": PixelSettings(), "presidio": PixelSettings(engine="presidio")}


FAILED: list[str] = []


def _clean(ds: pydicom.Dataset, settings: PixelSettings) -> PixelResult:
    """The pass, as the node runs it: an image it cannot clean is quarantined there
    (here: nothing masked, so its boxes count as not hidden, and it is counted)."""
    try:
        return clean_pixel_data(ds, settings)
    except Exception as exc:
        FAILED.append(f"{settings.engine}: {type(exc).__name__}")
        return PixelResult()


def _summary(name: str, judged: list[Judged]) -> str:
    boxes = sum(j.phi_boxes for j in judged)
    hidden = sum(j.hidden for j in judged)
    seconds = [j.seconds for j in judged]
    with_text = [j.seconds for j in judged if not j.text_free] or [0.0]
    text_free = [j for j in judged if j.text_free]
    share = 100 * hidden / max(boxes, 1)
    return (
        f"  {name:10s} {np.mean(seconds):6.3f} s/image (images with text {np.mean(with_text):.3f}, "
        f"max {max(seconds):.2f})  PHI boxes hidden {hidden}/{boxes} ({share:.2f}%)  "
        f"outside the text {100 * float(np.mean([j.outside for j in judged])):.2f}% of an image  "
        f"text-free changed {sum(not j.identical for j in text_free)}/{len(text_free)}  "
        f"failed (quarantined) {sum(f.startswith(name) for f in FAILED)}"
    )


def _ct_series(slices: int, settings: PixelSettings) -> float:
    import data_store

    raw = (Path(data_store.__file__).parent / "data" / "693_UNCI.dcm").read_bytes()
    import io

    start = time.process_time()
    for _ in range(slices):
        _clean(pydicom.dcmread(io.BytesIO(raw)), settings)
    return (time.process_time() - start) / slices


def _worker_rss() -> int:
    """Peak RSS (kB) of a fresh process that loads the pass and cleans one image."""
    probe = (
        "import sys; sys.path.insert(0, '.');"
        "from deid_node.allocator import tune_allocator; tune_allocator();"
        "from tests.burned_in import generate;"
        "from deid_node.deid.pixels.clean import clean_pixel_data;"
        "from deid_node.deid.pixels.settings import PixelSettings;"
        "clean_pixel_data(generate(1).dataset, PixelSettings());"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--limit", type=int, default=0, help="first N corpus files only")
    parser.add_argument("--generated", type=int, default=100, help="generated images")
    parser.add_argument("--seed", type=int, default=None, help="base seed (default: drawn)")
    parser.add_argument("--ct-slices", type=int, default=200)
    parser.add_argument("--engines", default="deid-node,presidio")
    args = parser.parse_args()
    tune_allocator()
    engines = {n: ENGINES[n] for n in args.engines.split(",")}
    files = sorted(args.corpus.glob("*.dcm"))[: args.limit or None]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**9)
    print(f"corpus: {len(files)} images; generated: {args.generated} images, base seed {seed}")
    # Warm up (model sessions, Tesseract, Presidio's recognisers) outside the timing.
    for settings in engines.values():
        judge(generate(seed), _clean, settings)
    for title, run in (
        ("shared corpus", lambda s: [judge_corpus_file(p, _clean, s) for p in files]),
        (
            "generated",
            lambda s: [judge(generate(k), _clean, s) for k in range(seed, seed + args.generated)],
        ),
    ):
        print(title)
        for name, settings in engines.items():
            FAILED.clear()
            print(_summary(name, run(settings)), flush=True)
    if args.ct_slices:
        for name, settings in engines.items():
            per = _ct_series(args.ct_slices, settings)
            print(
                f"CT series without text, {args.ct_slices} slices: {name} {1000 * per:.1f} ms/image"
            )
    print(f"worker peak RSS with the pass loaded: {_worker_rss() / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
