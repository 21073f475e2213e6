"""Pixel data passthrough: header rewritten by pydicom, pixels copied by the kernel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from deid_node.deid.engine import DeidSettings, PatientPseudonym, deidentify
from deid_node.pipeline import dicomfile
from deid_node.pipeline.dicomfile import read_deferred, replace_file_meta, write_dataset_file


def _big_ct(path: Path, syntax: str) -> bytes:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 512
    pixels = np.random.default_rng(1).integers(0, 4096, (512, 512), dtype=np.uint16)
    big_endian = syntax == ExplicitVRBigEndian
    ds.PixelData = pixels.astype(">u2" if big_endian else "<u2").tobytes()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PatientName = "PASSTHROUGH^TEST"
    dcmwrite(path, ds, enforce_file_format=True)
    return ds.PixelData


@pytest.mark.parametrize("in_memory", [True, False], ids=["read-whole", "from-file"])
@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_pixels_copied_byte_identical(
    tmp_path: Path, syntax: str, in_memory: bool, monkeypatch
) -> None:
    """Pixel data is copied as received, never decoded: from the file's bytes read
    once (files up to READ_WHOLE_BYTES), or by the kernel from the file."""
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    pixels = _big_ct(src, syntax)
    if not in_memory:
        monkeypatch.setattr(dicomfile, "READ_WHOLE_BYTES", 1024)
    passed, copied = [], []
    real_pass, real_copy = dicomfile._passthrough_pixels, dicomfile._copy_range
    monkeypatch.setattr(
        dicomfile, "_passthrough_pixels", lambda ds: passed.append(r := real_pass(ds)) or r
    )
    monkeypatch.setattr(dicomfile, "_copy_range", lambda *a: (copied.append(a), real_copy(*a)))
    ds = read_deferred(src)
    deidentify(ds, PatientPseudonym("DEID-X", "DEID-X", -10), DeidSettings(uid_key=b"k" * 32))
    replace_file_meta(ds, "DEID_NODE")
    write_dataset_file(ds, src, dst)
    assert passed and passed[0] is not None, "the passthrough path must be taken"
    assert ds.get_item(0x7FE00010, keep_deferred=True).value is None  # never loaded
    assert bool(copied) is not in_memory  # the kernel copies from the file only
    out = dcmread(dst)
    assert out.file_meta.TransferSyntaxUID == syntax
    assert out.PixelData == pixels
    assert str(out.PatientName) == "DEID-X"
    assert out.file_meta.SourceApplicationEntityTitle == "DEID_NODE"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    np.testing.assert_array_equal(out.pixel_array, dcmread(src).pixel_array)
    assert not list(tmp_path.glob(".*.part"))


def test_small_or_encapsulated_pixels_fall_back(tmp_path: Path) -> None:
    src = Path(get_testdata_file("JPEG2000.dcm"))
    ds = read_deferred(src)
    deidentify(ds, PatientPseudonym("DEID-Y", "DEID-Y", -1), DeidSettings(uid_key=b"k" * 32))
    write_dataset_file(ds, src, tmp_path / "out.dcm")
    assert dcmread(tmp_path / "out.dcm").PixelData == dcmread(src).PixelData


def _corpus_files() -> list[Path]:
    import data_store  # pydicom-data
    import deid_data
    import pydicom.data

    roots = [
        Path(pydicom.data.__file__).parent / "test_files",
        Path(data_store.__file__).parent / "data",
        Path(deid_data.__file__).parent,
        Path(__file__).resolve().parents[2] / "shared" / "corpus" / "pseudo-phi-burned-in",
    ]
    return sorted(p for r in roots for p in r.rglob("*.dcm"))


def test_fast_encoder_matches_pydicom_on_every_corpus_file() -> None:
    """encode_file must produce exactly what dcmwrite produces (zeroed preamble)."""
    from pydicom.filebase import DicomBytesIO

    from deid_node.pipeline.dicomfile import DEFER_SIZE, encode_file

    compared = 0
    for path in _corpus_files():
        try:
            ds = dcmread(path, defer_size=DEFER_SIZE)
            if "SOPClassUID" not in ds or "TransferSyntaxUID" not in ds.file_meta:
                continue
            deidentify(ds, PatientPseudonym("P", "P", -3), DeidSettings(uid_key=b"k" * 32))
            replace_file_meta(ds, "DEID_NODE")
        except Exception:
            continue  # files the engine refuses are other tests' concern
        reference = DicomBytesIO()
        try:
            dcmwrite(reference, ds, enforce_file_format=True)
        except Exception:
            # pydicom cannot write it as read (SC_rgb_jpeg.dcm: implicit VR body in an
            # explicit VR file): the node must still write a file pydicom can read.
            assert dcmread(DicomBytesIO(encode_file(ds))).SOPInstanceUID, path.name
            continue
        assert encode_file(ds) == reference.getvalue(), path.name
        compared += 1
    assert compared > 200


def test_deflated_file_is_rewritten_not_copied(tmp_path: Path) -> None:
    """Deflated datasets: value offsets are in the inflated stream, never copy by offset."""
    import pydicom.data

    src = Path(pydicom.data.__file__).parent / "test_files" / "image_dfl.dcm"
    ds = read_deferred(src)
    deidentify(ds, PatientPseudonym("DEID-Z", "DEID-Z", -2), DeidSettings(uid_key=b"k" * 32))
    replace_file_meta(ds, "DEID_NODE")
    write_dataset_file(ds, src, tmp_path / "out.dcm")
    out = dcmread(tmp_path / "out.dcm")
    assert out.file_meta.TransferSyntaxUID == dcmread(src).file_meta.TransferSyntaxUID
    assert out.PixelData == dcmread(src).PixelData
