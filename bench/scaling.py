"""Scaling with worker processes: files/s through the node with 1, 2 and 4 workers.

CT-sized instances (512x512, 16-bit, real anatomy from pydicom's test CT scaled up)
with the pixel pass on (the default), a share of them with the patient's name, ID
and date burned in (``--text-every``), sent by storescu to the node and forwarded
to storescp. The direct storescu -> storescp rate is measured in the same run, and
each node rate is printed with its ratio to it, since these 2-core machines are
noisy.

    .venv/bin/python bench/scaling.py [--count 300] [--workers 1 2 4] [--text-every 10]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import direct_rate, make_ct_files, make_warm_up, node_rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--text-every", type=int, default=10, help="0: no burned-in text")
    args = parser.parse_args()
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: run scripts/setup.sh", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="deid-scaling-") as tmp:
        work = Path(tmp)
        files = work / "in"
        size = make_ct_files(files, args.count, args.text_every)
        warm = make_warm_up(work, args.text_every)
        burned = len(range(0, args.count, args.text_every)) if args.text_every else 0
        print(f"{args.count} files of {size:,} bytes, {burned} with burned-in text")
        direct = args.count / direct_rate(files, warm, work, args.count)
        print(f"  direct storescu->storescp   : {direct:7.1f} files/s")
        for workers in args.workers:
            elapsed, peak_kib, _pss, _cpu = node_rate(files, warm, work, args.count, workers)
            rate = args.count / elapsed
            print(
                f"  via deid-node, {workers} worker(s) : {rate:7.1f} files/s  "
                f"ratio to direct {rate / direct:5.3f}  peak RSS {peak_kib / 1024:6.1f} MB"
            )
        after = args.count / direct_rate(files, warm, work, args.count)
        print(f"  direct again                : {after:7.1f} files/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
