"""Write a de-identified dataset without passing its pixel data through Python.

The header is what de-identification changes; the pixel data (most of the
bytes) is not touched by the header pass. So the header is written by pydicom
and the Pixel Data element is copied from the received file by the kernel
(``copy_file_range``), which is several times cheaper than decoding and
re-encoding half a megabyte per image, and leaves the pixel bytes identical by
construction.
"""

from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path

from pydicom import dcmread, dcmwrite
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import UID

from deid_node.pipeline.spool import fsync_dir

IMPLEMENTATION_CLASS_UID = "2.25.143282398740127513594728816316620393187"
IMPLEMENTATION_VERSION = "DEID_NODE_01"
PIXEL_DATA = 0x7FE00010
TRAILING_PADDING = 0xFFFCFFFC
# Values larger than this stay on disk until needed; in practice: pixel data.
DEFER_SIZE = 64 * 1024


def read_deferred(path: Path) -> Dataset:
    return dcmread(path, defer_size=DEFER_SIZE)


def _pixel_element_header(raw: RawDataElement) -> bytes:
    group, elem = raw.tag >> 16, raw.tag & 0xFFFF
    if raw.is_implicit_VR:
        return struct.pack("<HHI", group, elem, raw.length)
    fmt = "<HH2sHI" if raw.is_little_endian else ">HH2sHI"
    return struct.pack(fmt, group, elem, str(raw.VR).encode(), 0, raw.length)


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    while length > 0:
        try:
            n = os.copy_file_range(src_fd, dst_fd, length, offset)
        except OSError:
            n = 0
        if n <= 0:  # not supported here: plain read/write
            data = os.pread(src_fd, min(length, 1 << 20), offset)
            if not data:
                raise EOFError("pixel data shorter than its length")
            n = os.write(dst_fd, data)
        offset += n
        length -= n


def _passthrough_pixels(ds: Dataset) -> RawDataElement | None:
    """The deferred, defined-length Pixel Data element, if it can be copied as is."""
    if PIXEL_DATA not in ds:
        return None
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if not isinstance(raw, RawDataElement) or raw.value is not None:
        return None
    if raw.length in (None, 0xFFFFFFFF):  # undefined length: encapsulated
        return None
    if any(int(t) > PIXEL_DATA and int(t) != TRAILING_PADDING for t in ds.keys()):  # noqa: SIM118
        return None
    if ds.is_little_endian is False and raw.VR not in ("OB", "OW", None):
        return None
    return raw


def replace_file_meta(ds: Dataset, source_ae: str) -> None:
    """Rebuild the File Meta Information from scratch for the output file.

    The received meta may carry the sender's AE title (which can name the
    institution) and private information (0002,0100)/(0002,0102) of any kind;
    only what describes the de-identified file is kept.
    """
    old = ds.file_meta
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = old.TransferSyntaxUID
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    meta.SourceApplicationEntityTitle = source_ae
    ds.file_meta = meta


def write_dataset_file(ds: Dataset, src: Path, dest: Path) -> None:
    """Write ``ds`` (read from ``src`` with deferred pixels) to ``dest`` durably."""
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.part"
    raw = _passthrough_pixels(ds)
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    try:
        if raw is None:
            buffer = DicomBytesIO()
            dcmwrite(buffer, ds, enforce_file_format=True)
            os.write(fd, buffer.getvalue())
        else:
            del ds[PIXEL_DATA]
            if TRAILING_PADDING in ds:
                del ds[TRAILING_PADDING]  # padding only; nothing to keep
            buffer = DicomBytesIO()
            dcmwrite(buffer, ds, enforce_file_format=True)
            os.write(fd, buffer.getvalue() + _pixel_element_header(raw))
            src_fd = os.open(src, os.O_RDONLY)
            try:
                _copy_range(src_fd, fd, raw.value_tell, raw.length)
            finally:
                os.close(src_fd)
            ds[PIXEL_DATA] = raw  # leave the dataset as it was given
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
