"""Whether text can still be read: the check of the tests, the benchmark and
``deid-node verify``, after masking.

A box is read by two readers that fail differently: PP-OCR's recogniser (the
one the pass decides with) and Tesseract, each on the crop as displayed and
enlarged so that its text is about 32 pixels tall, Tesseract in both polarities.
OCR failing to read a box proves little on its own (it fails on text over noise
that people read), so the tests also require the glyph pixels to be under a
mask; this is the readers' half of that rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from deid_node.deid.pixels.display import grey
from deid_node.deid.pixels.recognise import read_region
from deid_node.deid.pixels.tesseract import tesseract

Box = Sequence[int]


def plain(text: str) -> str:
    """Lower-case letters and digits only: how read text is compared."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def words_of(text: str, shortest: int = 3) -> list[str]:
    """The tokens of a text that a reading is checked for (``plain``, at least
    ``shortest`` characters: shorter ones turn up in any reading of noise)."""
    return [
        w for w in (plain(t) for t in re.split(r"[\s,;:^/\\.\-()]+", text)) if len(w) >= shortest
    ]


def readings(display: np.ndarray, box: Box) -> list[str]:
    """What the readers read in ``box`` of a displayed frame, as ``plain`` texts."""
    x1, y1, x2, y2 = (int(v) for v in box)
    h, w = display.shape[:2]
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return []
    out = [plain(read_region(display, (x1, y1, x2, y2)).text)]
    crop = np.ascontiguousarray(grey(display)[y1:y2, x1:x2])
    turns = (1, 3) if crop.shape[0] > 1.5 * crop.shape[1] else (0,)
    api = tesseract()
    for k in turns:
        upright = np.ascontiguousarray(np.rot90(crop, k))
        scale = min(8.0, max(1.0, 40.0 / upright.shape[0]))
        big = cv2.resize(upright, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        big = cv2.copyMakeBorder(big, 10, 10, 10, 10, cv2.BORDER_REPLICATE)
        for img in (big, 255 - big):
            api.SetImage(Image.fromarray(img))
            out.append(plain(api.GetUTF8Text()))
    return out


def legible_words(display: np.ndarray, box: Box, words: Sequence[str]) -> list[str]:
    """The ``words`` (``plain``) that a reader reads in ``box``."""
    seen = readings(display, box)
    return [w for w in words if any(w in s for s in seen)]
