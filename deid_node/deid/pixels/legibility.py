"""Whether text in a box can still be read: the check used by the tests and the
pixel benchmark after masking (OCR of the box at 3x, in both polarities),
independent of how the pass itself prepares what it reads."""

from __future__ import annotations

import re

import cv2
import numpy as np
from PIL import Image

from deid_node.deid.pixels.ocr import _api


def plain(text: str) -> str:
    """Lower-case letters and digits only: how read text is compared."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def read_box(display: np.ndarray, box: list[int] | tuple[int, int, int, int]) -> str:
    """What Tesseract reads in ``box`` of an 8-bit frame, as :func:`plain` text."""
    x1, y1, x2, y2 = box
    crop = display[max(0, y1) : y2, max(0, x1) : x2]
    if crop.size == 0:
        return ""
    out = []
    for img in (crop, 255 - crop):
        big = cv2.resize(img, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
        big = cv2.copyMakeBorder(big, 10, 10, 10, 10, cv2.BORDER_REPLICATE)
        api = _api()
        api.SetVariable("tessedit_do_invert", "1")  # Tesseract's default (the pass turns it off)
        api.SetImage(Image.fromarray(big))
        out.append(api.GetUTF8Text())
    return plain(" ".join(out))
