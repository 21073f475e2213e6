"""What a detected region says: PP-OCRv4's recogniser (a CRNN read out by CTC).

The region's crop is scaled to the network's height of 48 pixels, its width in
proportion; the network gives, for each step along the width, a probability for
every character of its dictionary (kept in the model file's metadata) and for
the CTC blank. The text is the best path with repeats and blanks dropped; its
confidence is the lowest probability among the characters kept, so that one
doubtful character makes the whole reading doubtful (fail closed: a region read
with low confidence is masked).

Text whose box is taller than wide by :data:`VERTICAL` is read turned both ways,
and the surer reading is taken.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from deid_node.deid.pixels.models import RECOGNISER_FILE, session

HEIGHT = 48
MAX_WIDTH = 2400  # a line of about 80 characters; longer lines are squeezed
VERTICAL = 1.5


@dataclass(frozen=True)
class Reading:
    text: str
    confidence: float  # lowest probability of a character kept; 0 when nothing was read


@functools.cache
def _alphabet() -> list[str]:
    net = session(RECOGNISER_FILE)
    chars = net.get_modelmeta().custom_metadata_map["character"].splitlines()
    # Index 0 is CTC's blank; the dictionary; then the space (PP-OCR's use_space_char).
    return ["", *chars, " "]


def _as_input(crop: np.ndarray) -> np.ndarray:
    h, w = crop.shape[:2]
    width = int(min(MAX_WIDTH, max(HEIGHT // 2, np.ceil(HEIGHT * w / max(h, 1)))))
    resized = cv2.resize(crop, (width, HEIGHT), interpolation=cv2.INTER_LINEAR)
    x = resized.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    x = np.repeat(x[None], 3, axis=0) if x.ndim == 2 else x.transpose(2, 0, 1)
    return x[None]


def _decode(probs: np.ndarray) -> Reading:
    best = probs.argmax(axis=1)
    top = probs.max(axis=1)
    alphabet = _alphabet()
    chars: list[str] = []
    confs: list[float] = []
    previous = -1
    for index, p in zip(best.tolist(), top.tolist(), strict=True):
        if index != previous and index != 0:
            chars.append(alphabet[index] if index < len(alphabet) else "")
            confs.append(p)
        previous = index
    text = "".join(chars).strip()
    return Reading(text, min(confs) if text else 0.0)


def read_crop(crop: np.ndarray) -> Reading:
    """The text of one crop of a displayed frame (8-bit grey or RGB), horizontal."""
    if crop.size == 0 or min(crop.shape[:2]) < 2:
        return Reading("", 0.0)
    return _decode(_probabilities(crop))


def _probabilities(crop: np.ndarray) -> np.ndarray:
    """The network's output for a crop: one row per step along its width, one
    column per class (CTC's blank, the dictionary, the space)."""
    net = session(RECOGNISER_FILE)
    return net.run(None, {net.get_inputs()[0].name: _as_input(crop)})[0][0]


def character_columns(crop: np.ndarray) -> list[tuple[int, int]]:
    """Where along a horizontal crop the recogniser puts its characters: the column
    span (in the crop's pixels) of each step of the network's output whose best
    class is a character, neither CTC's blank nor a space. CTC aligns the text with
    its steps, so the spans show where the line's glyphs are, including those too
    faint or too broken up for the detector (it reads them in the context of the
    rest of the line)."""
    if crop.size == 0 or min(crop.shape[:2]) < 2:
        return []
    probs = _probabilities(crop)
    space = len(_alphabet()) - 1
    step = crop.shape[1] / probs.shape[0]
    best = probs.argmax(axis=1)
    return [
        (int(i * step), int(np.ceil((i + 1) * step)))
        for i, k in enumerate(best.tolist())
        if k not in (0, space)
    ]


def read_region(display: np.ndarray, box: tuple[int, int, int, int]) -> Reading:
    """The text in ``box`` of a displayed frame, turned upright if it runs vertically."""
    x1, y1, x2, y2 = box
    crop = np.ascontiguousarray(display[max(0, y1) : y2, max(0, x1) : x2])
    h, w = crop.shape[:2]
    if h > VERTICAL * w:
        readings = [read_crop(np.ascontiguousarray(np.rot90(crop, k))) for k in (1, 3)]
        return max(readings, key=lambda r: (r.confidence, len(r.text)))
    return read_crop(crop)
