"""Sending crafted bytes to a node: what DCMTK refuses to put on the wire.

pynetdicom sends a file's data set bytes as they are on disk when
STORE_SEND_CHUNKED_DATASET is on; the file meta only names the SOP class,
instance and transfer syntax of the C-STORE. So any byte string can be sent
as a data set.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context
from pynetdicom.association import Association

from deid_node.pipeline.dicomfile import file_meta_bytes


def encode_body(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The data set alone (no preamble, no file meta), encoded in ``transfer_syntax``."""
    buf = DicomBytesIO()
    buf.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    buf.is_little_endian = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dataset(buf, ds)
    return buf.getvalue()


def write_crafted(
    path: Path, body: bytes, *, sop_class: str, sop_instance: str, transfer_syntax: str
) -> Path:
    path.write_bytes(file_meta_bytes(sop_class, sop_instance, transfer_syntax, "CRAFTED") + body)
    return path


class RawSender:
    """One association that sends crafted files, one C-STORE each."""

    def __init__(
        self, port: int, contexts: list[tuple[str, str]], calling: str = "CRAFTED"
    ) -> None:
        self.ae = AE(ae_title=calling)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        self._previous = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        self.assoc: Association = self.ae.associate(
            "127.0.0.1",
            port,
            ae_title="DEID_NODE",
            contexts=[
                build_context(sop, [ts] if isinstance(ts, str) else ts) for sop, ts in contexts
            ],
        )

    def send(self, path: Path) -> Dataset:
        return self.assoc.send_c_store(path)

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()
        self.ae.shutdown()
        _config.STORE_SEND_CHUNKED_DATASET = self._previous
