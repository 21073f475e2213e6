"""End-to-end throughput: storescu -> deid-node -> storescp versus storescu -> storescp.

Both runs happen here, one after the other, on the same generated files, so the
ratio means something on a noisy 2-core machine. TCP_NODELAY=1 is set for the
DCMTK tools (otherwise each C-STORE waits ~40 ms for a delayed ACK and the
comparison is meaningless).

    python bench/throughput.py [--count 500] [--workers 2] [--repeat 3] [--text-every N]

The node runs with its default options (the pixel pass included). Prints files/s and
MB/s for each, the ratio node/direct, and the node's peak memory: the sum of the
resident sets of the node and its worker processes, and the same with shared pages
counted once (PSS). --text-every burns the patient's name, ID and date into some
images, so that the OCR stack is loaded and used. Each of the --repeat runs times
both paths again, and the median ratio is printed last: on these machines the
direct rate alone ranged from 190 to 365 files/s within minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def ct_pixels(template, rng: np.random.Generator) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A 512x512 CT slice: pydicom's small CT (real anatomy) scaled up, with noise."""
    import cv2

    small = template.pixel_array.astype(np.float32)
    big = cv2.resize(small, (512, 512), interpolation=cv2.INTER_CUBIC)
    big += rng.normal(0, 8, size=big.shape).astype(np.float32)
    return np.clip(big - big.min(), 0, 4095).astype(np.uint16)


def burn_text(pixels: np.ndarray, lines: list[str]) -> np.ndarray:
    """Write annotation lines at the maximum value, top left, as a modality would."""
    import cv2

    out = pixels.copy()
    for k, line in enumerate(lines):
        cv2.putText(out, line, (12, 24 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 4095, 1)
    return out


def make_ct_files(folder: Path, count: int, text_every: int = 0) -> int:
    """``count`` 512x512 16-bit CT instances of 4 patients; every ``text_every``-th one
    (0: none) has the patient's name, ID and study date burned in. Returns bytes per file."""
    folder.mkdir(parents=True)
    template = dcmread(get_testdata_file("CT_small.dcm"))
    rng = np.random.default_rng(7)
    plain = ct_pixels(template, rng)
    pixels = plain.tobytes()
    studies = [generate_uid() for _ in range(4)]
    series = [generate_uid() for _ in range(8)]
    size = 0
    for i in range(count):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = studies[i % 4]
        ds.SeriesInstanceUID = series[i % 8]
        ds.PatientID = f"BENCH{i % 4:04d}"
        ds.PatientName = f"BENCH^PATIENT{i % 4}"
        ds.InstanceNumber = i + 1
        ds.PixelData = pixels
        if text_every and i % text_every == 0:
            lines = [f"BENCH PATIENT{i % 4}", f"ID: BENCH{i % 4:04d}", f"DOB: {ds.StudyDate}"]
            ds.PixelData = burn_text(plain, lines).tobytes()
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        size = path.stat().st_size
    return size


def start_storescp(port: int, out: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["storescp", "--fork", "-aet", "ARCHIVE", "-od", str(out), "+xa", "-uf", str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_port(port)
    return proc


def stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def send(port: int, aec: str, folder: Path) -> None:
    subprocess.run(
        ["storescu", "-aec", aec, "+sd", "127.0.0.1", str(port), str(folder)],
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def count_files(folder: Path) -> int:
    """Files stored so far (names only, no stat: this runs every few milliseconds
    beside the node being measured)."""
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if not e.name.startswith("."))


WARM_UP = 8  # instances sent, and stored, before the clock starts


def make_warm_up(work: Path, text_every: int = 0) -> Path:
    """The warm-up instances (other UIDs than the timed ones), in ``work/warm``."""
    make_ct_files(work / "warm", WARM_UP, text_every)
    return work / "warm"


def warm_up(port: int, aec: str, warm: Path, out: Path) -> None:
    """Send the warm-up instances and wait until they are stored: both paths are
    timed in their steady state (the node's workers load the pixel pass on their
    first image; a node runs for days)."""
    send(port, aec, warm)
    deadline = time.monotonic() + 120
    while count_files(out) < WARM_UP:
        if time.monotonic() > deadline:
            raise TimeoutError("warm-up instances did not arrive")
        time.sleep(0.01)


def direct_rate(files: Path, warm: Path, work: Path, count: int) -> float:
    port = free_port()
    out = work / "direct-out"
    proc = start_storescp(port, out)
    try:
        warm_up(port, "ARCHIVE", warm, out)
        t0 = time.perf_counter()
        send(port, "ARCHIVE", files)
        while count_files(out) < WARM_UP + count:
            time.sleep(0.005)
        return time.perf_counter() - t0
    finally:
        stop_group(proc)
        shutil.rmtree(out, ignore_errors=True)


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except (OSError, ProcessLookupError):
                continue
    return pids


def _group_kib(pgid: int, name: str, field: str) -> int:
    """A KiB field (``field``, e.g. "Pss:") of ``/proc/<pid>/<name>``, summed over
    the processes of the group."""
    total = 0
    for pid in _group_pids(pgid):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith(field))
        except OSError:
            continue
    return total


def _group_pss_kib(pgid: int) -> int:
    """Proportional set (shared pages split between the processes that map them) of
    the process group, summed, in KiB."""
    return _group_kib(pgid, "smaps_rollup", "Pss:")


def _group_cpu_s(pgid: int) -> dict[int, float]:
    """CPU seconds (user and system) each process of the group has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in _group_pids(pgid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _group_peak_rss_kib(pgid: int) -> int:
    """Each process's own peak resident set (the kernel's VmHWM), summed, in KiB: at
    least the peak of their sum, and read without sampling (the sampling this
    replaced cost the 2-core machine about 0.5 s of CPU during the node's run)."""
    return _group_kib(pgid, "status", "VmHWM:")


def node_rate(
    files: Path, warm: Path, work: Path, count: int, workers: int
) -> tuple[float, int, int, tuple[float, float]]:
    archive_port, node_port = free_port(), free_port()
    out = work / "node-out"
    data = work / "node-data"
    shutil.rmtree(data, ignore_errors=True)
    config = work / "node.toml"
    config.write_text(
        f"""
[node]
ae_title = "DEID_NODE"
host = "127.0.0.1"
port = {node_port}
data_dir = "{data}"
workers = {workers}
log_level = "warning"

[[destination]]
name = "archive"
ae_title = "ARCHIVE"
host = "127.0.0.1"
port = {archive_port}
"""
    )
    archive = start_storescp(archive_port, out)
    node = subprocess.Popen(
        [sys.executable, "-m", "deid_node", "serve", "-c", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=(work / "node.log").open("w"),
        start_new_session=True,
    )
    peak = peak_pss = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_pss
        while not stop.wait(0.5):
            peak_pss = max(peak_pss, _group_pss_kib(node.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        wait_port(node_port)
        warm_up(node_port, "DEID_NODE", warm, out)
        sampler.start()
        cpu0 = _group_cpu_s(node.pid)
        t0 = time.perf_counter()
        send(node_port, "DEID_NODE", files)
        deadline = time.monotonic() + 600
        while count_files(out) < WARM_UP + count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {count_files(out) - WARM_UP} of {count} arrived")
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
        cpu1 = _group_cpu_s(node.pid)
        peak = _group_peak_rss_kib(node.pid)
        spent = (
            cpu1.get(node.pid, 0.0) - cpu0.get(node.pid, 0.0),
            sum(v - cpu0.get(pid, 0.0) for pid, v in cpu1.items() if pid != node.pid),
        )
        return elapsed, peak, max(peak_pss, _group_pss_kib(node.pid)), spent
    finally:
        stop.set()
        stop_group(node)
        stop_group(archive)
        shutil.rmtree(out, ignore_errors=True)
        warnings = [
            line for line in (work / "node.log").read_text().splitlines() if '"warning"' in line
        ]
        if warnings:
            print(f"  node warnings: {len(warnings)}, first: {warnings[0][:300]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--text-every",
        type=int,
        default=0,
        help="burn the patient's name, ID and date into every Nth image (0: none)",
    )
    args = parser.parse_args()
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: run scripts/setup.sh", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="deid-bench-") as tmp:
        work = Path(tmp)
        files = work / "in"
        size = make_ct_files(files, args.count, args.text_every)
        warm = make_warm_up(work, args.text_every)
        mb = size * args.count / 1e6
        ratios: list[float] = []
        for run in range(args.repeat):
            direct = direct_rate(files, warm, work, args.count)
            node, peak_kib, peak_pss_kib, cpu = node_rate(
                files, warm, work, args.count, args.workers
            )
            text = f", text burned into 1 in {args.text_every}" if args.text_every else ""
            print(f"run {run + 1}: {args.count} files of {size:,} bytes{text}")
            print(
                f"  direct storescu->storescp : {args.count / direct:7.1f} files/s "
                f"{mb / direct:7.1f} MB/s"
            )
            print(
                f"  via deid-node ({args.workers} workers) : {args.count / node:7.1f} files/s "
                f"{mb / node:7.1f} MB/s"
            )
            print(f"  ratio node/direct        : {direct / node:7.3f}")
            ratios.append(direct / node)
            print(f"  node peak RSS (all procs): {peak_kib / 1024:7.1f} MB (peaks summed)")
            main_ms, workers_ms = (1000 * t / args.count for t in cpu)
            print(
                f"  node CPU an instance     : {main_ms:5.2f} ms main, {workers_ms:5.2f} ms workers"
            )
            print(f"  node peak PSS (all procs): {peak_pss_kib / 1024:7.1f} MB (shared pages once)")
        if len(ratios) > 1:
            ratios.sort()
            print(
                f"ratio over {len(ratios)} runs: median {statistics.median(ratios):.3f}, "
                f"lowest {ratios[0]:.3f}, highest {ratios[-1]:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
