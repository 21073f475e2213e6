"""GDCM for the grey images pylibjpeg cannot decode: JPEG Extended with 12-bit
samples (1.2.840.10008.1.2.4.51, a CT of that kind is pydicom-data's
``JPEG-lossy.dcm``). pydicom's own GDCM plugin refuses 12-bit JPEG by policy;
GDCM's reader decodes it, as DCMTK's ``dcmdjpeg`` does, to the same values.

GDCM costs about 20 MB in a process that loads it, so :mod:`deid_node` keeps it
out of pydicom's plugins (see the package's ``__init__``) and it is loaded here,
only in a process that meets such an image. Colour images are not decoded here:
GDCM's colour conversions differ from pydicom's, and a wrong colour space would
show the detector a different picture than a person sees.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
from pydicom.dataset import Dataset


def decode_grey(ds: Dataset) -> np.ndarray | None:
    """The pixel values of a grey image (frames, rows, columns; or rows, columns
    for one frame), decoded by GDCM; ``None`` where GDCM is not installed, the
    image is not grey, or GDCM cannot read it."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    if "gdcm" in sys.modules and sys.modules["gdcm"] is None:
        del sys.modules["gdcm"]  # the package's guard: lifted for this decoder only
    try:
        import gdcm
    except ImportError:
        return None
    bits = int(ds.BitsAllocated)
    if bits not in (8, 16):
        return None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    dtype = np.dtype(f"{'<i' if signed else '<u'}{bits // 8}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    handle, name = tempfile.mkstemp(suffix=".dcm")
    os.close(handle)
    try:
        ds.save_as(name, enforce_file_format=True)
        gdcm.Trace.WarningOff()  # its warnings go to stderr, outside the node's logs
        reader = gdcm.ImageReader()
        reader.SetFileName(name)
        if not reader.Read():
            return None
        buffer = reader.GetImage().GetBuffer()
    finally:
        os.unlink(name)
    if not isinstance(buffer, bytes):
        buffer = buffer.encode("utf-8", "surrogateescape")  # GDCM's SWIG returns str
    if len(buffer) < rows * cols * frames * dtype.itemsize:
        return None
    arr = np.frombuffer(buffer, dtype=dtype, count=rows * cols * frames)
    return arr.reshape(frames, rows, cols) if frames > 1 else arr.reshape(rows, cols)
