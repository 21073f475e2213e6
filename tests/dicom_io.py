"""Reading and encoding test files quietly (pydicom warns about odd test data)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset


def read_quietly(path: str | Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(path, force=True)


def encode_quietly(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf)
    return buf.getvalue()
