"""Header de-identification speed: instances per second on one core.

Runs the node's header path as a worker runs it (deferred read, PS3.15 profile with
the default options, new file meta, file written with the pixel data copied byte for
byte, no fsync, a new file name per instance as in the spool) on the CT-sized files
of the shared corpus, without the pixel pass
("when no pixel work is needed"). In the same run, and on the same files, it times
the simplest pydicom anonymiser a site could write (read everything, blank the name
and ID, delete private tags, write), so that the ratio means something on a noisy
machine. Both write every output to a new name (overwriting one file makes ext4 flush
it at each rename or truncation, a cost neither has in production); the outputs are
removed between measurements, outside the timing.

The rate per CPU second of the benchmark's process is the "per core" figure; the
rate per wall second is printed beside it.

    .venv/bin/python bench/deid_speed.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom

from deid_node.deid.engine import DeidSettings, PatientPseudonym, deidentify
from deid_node.deid.gate import close_leaks
from deid_node.deid.leaks import identifying_values, profile_for
from deid_node.network.common import configure_dicom_libraries
from deid_node.pipeline.dicomfile import read_deferred, replace_file_meta, write_dataset_file

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared/corpus/pseudo-phi-burned-in"


def ct_files(corpus: Path) -> list[Path]:
    """The 512x512 and larger CT files of the corpus."""
    out = []
    for path in sorted(corpus.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.get("Modality") == "CT" and int(ds.get("Rows", 0)) >= 512:
            out.append(path)
    return out


Rates = tuple[float, float]  # instances per wall second, per CPU second of this process


def _rates(done: int, wall0: float, cpu0: float) -> Rates:
    return done / (time.perf_counter() - wall0), done / (time.process_time() - cpu0)


def node_path(files: list[Path], out: Path, seconds: float, gate: bool = True) -> Rates:
    """The worker's header path; ``gate=False`` leaves the leak gate out (only to
    show what it costs: the node cannot run without it)."""
    settings = DeidSettings(uid_key=os.urandom(32))
    profile = profile_for(settings.options, settings.preset)
    patient = PatientPseudonym("DEID-BENCH", "DEID-BENCH", -42)
    done = 0
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for path in files:
            ds = read_deferred(path)
            needles = identifying_values(ds, profile) if gate else []
            deidentify(ds, patient, settings)
            replace_file_meta(ds, "DEID_NODE")
            if gate:
                close_leaks(ds, needles)
            write_dataset_file(ds, path, out / f"node-{done}.dcm", durable=False)
            done += 1
    return _rates(done, start, cpu)


def plain_pydicom(files: list[Path], out: Path, seconds: float) -> Rates:
    done = 0
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for path in files:
            ds = pydicom.dcmread(path)
            ds.PatientName = "ANON"
            ds.PatientID = "ANON"
            ds.remove_private_tags()
            ds.save_as(out / f"plain-{done}.dcm")
            done += 1
    return _rates(done, start, cpu)


def _clear(out: Path) -> None:
    for path in out.iterdir():
        path.unlink()
    os.sync()  # let writeback of one measurement not fall into the next


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    args = parser.parse_args()
    configure_dicom_libraries()
    files = ct_files(args.corpus)
    if not files:
        print(f"no CT files in {args.corpus}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="deid-speed-") as tmp:
        out = Path(tmp)
        node_path(files[:3], out, 0.5)  # warm caches (profile table, imports)
        _clear(out)
        plain = plain_pydicom(files, out, args.seconds)
        _clear(out)
        node = node_path(files, out, args.seconds)
        _clear(out)
        ungated = node_path(files, out, args.seconds, gate=False)
        _clear(out)
        plain_again = plain_pydicom(files, out, args.seconds)
    print(f"{len(files)} CT files of the shared corpus, one core, no pixel pass")
    for k, unit in ((1, "per CPU second (one core)"), (0, "per wall second")):
        baseline = (plain[k] + plain_again[k]) / 2
        print(f"instances {unit}:")
        print(f"  deid-node header path   : {node[k]:7.1f} (leak gate on)")
        cost = 1 - node[k] / ungated[k]
        print(f"  the same, gate left out : {ungated[k]:7.1f} (gate cost {cost:.0%})")
        print(
            f"  plain pydicom anonymiser: {baseline:7.1f} "
            f"(before {plain[k]:.1f}, after {plain_again[k]:.1f})"
        )
        print(f"  ratio node/plain        : {node[k] / baseline:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
