"""Tesseract through its C API (tesserocr), loaded once per thread: the second
reader of the legibility check (:mod:`legibility`), independent of the learned
recogniser the pass itself uses. Debian's ``tesseract-ocr-eng`` language data."""

from __future__ import annotations

import os
import threading
from pathlib import Path

_TESSDATA_CANDIDATES = (
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
    "/usr/local/share/tessdata",
)
_LOCAL = threading.local()


def tessdata_path() -> str:
    """The language data folder of the system's Tesseract (Debian: tesseract-ocr-eng)."""
    env = os.environ.get("TESSDATA_PREFIX")
    for candidate in ((env,) if env else ()) + _TESSDATA_CANDIDATES:
        if candidate and (Path(candidate) / "eng.traineddata").is_file():
            return candidate
    raise RuntimeError("Tesseract English data not found: run scripts/setup.sh (tesseract-ocr-eng)")


def tesseract():  # type: ignore[no-untyped-def]
    """This thread's Tesseract (one OpenMP thread: more make it slower on two cores),
    reading a block of lines."""
    api = getattr(_LOCAL, "api", None)
    if api is None:
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")
        import tesserocr

        api = tesserocr.PyTessBaseAPI(
            path=tessdata_path(), lang="eng", psm=tesserocr.PSM.SINGLE_BLOCK
        )
        _LOCAL.api = api
    return api
