"""How fast can a pynetdicom receiver be here? The ceiling under bench/throughput.py.

The node receives with pynetdicom. This benchmark runs, in one run on the same files,
storescu -> storescp (DCMTK, TCP_NODELAY=1) and storescu -> the smallest pynetdicom
Storage SCP that keeps what it receives: the node's AE settings (maximum PDU size,
TCP_NODELAY, no PDU logging, PDUs read and sent as the node does) and a handler
that writes the received bytes to a file, without fsync, checks, queue,
de-identification or forwarding. Its rate over the
direct rate is the highest ratio any node built on pynetdicom can show in
bench/throughput.py on this machine.

    .venv/bin/python bench/receiver_ceiling.py [--count 500] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from throughput import (
    count_files,
    direct_rate,
    free_port,
    make_ct_files,
    make_warm_up,
    send,
)

from deid_node.network.common import (
    DIRECT_SEND_HANDLER,
    NODELAY_HANDLER,
    configure_dicom_libraries,
)


def pynetdicom_rate(files: Path, work: Path, count: int) -> float:
    out = work / "pynetdicom-out"
    out.mkdir()
    lock = threading.Lock()
    n = 0

    def on_store(event: evt.Event) -> int:
        nonlocal n
        with lock:
            n += 1
            name = out / f"{n:06d}.dcm"
        with open(name, "wb") as f:
            f.write(event.encoded_dataset(include_meta=False))
        return 0x0000

    configure_dicom_libraries()
    ae = AE(ae_title="CEILING")
    ae.maximum_pdu_size = 131072  # as the node's SCP
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store), NODELAY_HANDLER, DIRECT_SEND_HANDLER],
    )
    try:
        t0 = time.perf_counter()
        send(port, "CEILING", files)
        while count_files(out) < count:
            time.sleep(0.005)
        return time.perf_counter() - t0
    finally:
        server.shutdown()
        for p in out.iterdir():
            p.unlink()
        out.rmdir()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="deid-ceiling-") as tmp:
        work = Path(tmp)
        files = work / "in"
        make_ct_files(files, args.count)
        warm = make_warm_up(work)
        for run in range(args.repeat):
            direct = direct_rate(files, warm, work, args.count)
            bare = pynetdicom_rate(files, work, args.count)
            print(f"run {run + 1}: {args.count} CT files")
            print(f"  direct storescu->storescp      : {args.count / direct:7.1f} files/s")
            print(f"  storescu->bare pynetdicom SCP  : {args.count / bare:7.1f} files/s")
            print(f"  ceiling ratio pynetdicom/direct: {direct / bare:7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
