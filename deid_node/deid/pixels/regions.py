"""Where burned-in text can be: rows of character-like strokes.

Burned-in annotations are drawn in strokes a few pixels wide that stand out
sharply from whatever is behind them (or at the extreme over a bright
background), in rows of similar-sized characters. Anatomy is rarely all three.
A stroke is a component of high white or black top-hat contrast; rows are grown
from such components left to right. Text drawn at one extreme with an outline at
the other is found by both: its strokes where the background is dark (bright),
its outline where the background is at its own level. Finding them costs a few
milliseconds of array work, so an image without any is passed through without
OCR, and OCR of an image with text reads only the blocks of rows, not the whole
frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

MIN_CHAR_HEIGHT = 4

# One thread: the node runs a worker process per core, and OpenCV's own threads
# only add their cost to it (component labelling of a 512x512 mask: 1.9 ms of CPU
# on two threads, 1.3 ms on one, 0.7 ms on one with the block-based algorithm).
cv2.setNumThreads(1)


def _label(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of a 0/1 uint8 mask: count, label image, stats.

    16-bit labels with the Spaghetti algorithm, a tenth faster than 32-bit ones
    with the block-based one (OpenCV's fastest pair here); a frame of more than
    65535 components (noise) is labelled again with 32-bit labels."""
    try:
        n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
            mask, 8, cv2.CV_16U, cv2.CCL_SPAGHETTI
        )
    except cv2.error:
        n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
            mask, 8, cv2.CV_32S, cv2.CCL_BBDT
        )
    return n, labels, stats


@dataclass(frozen=True)
class TextLine:
    """A row of character-like components of one polarity, in frame coordinates
    (x1, y1 inclusive; x2, y2 exclusive)."""

    x1: int
    y1: int
    x2: int
    y2: int
    bright: bool  # drawn at the bright extreme (else the dark one)
    char_height: int
    chars: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x1, self.y1, self.x2, self.y2)


def to_display(frame: np.ndarray, monochrome1: bool = False) -> np.ndarray:
    """An 8-bit view of one frame (2-D grey or 3-D colour) stretched to its own
    range, bright meaning bright on a display (MONOCHROME1 is inverted). Colour
    keeps, per pixel, the channel farthest from mid-grey: white, yellow, green
    or red text all come out at the extremes."""
    a = frame
    if a.ndim == 3:
        a = a.astype(np.int16)
        hi = a.max(axis=2)
        lo = a.min(axis=2)
        a = np.where(hi - 128 >= 128 - lo, hi, lo)
    lo_v = int(a.min())
    hi_v = int(a.max())
    if hi_v <= lo_v:
        return np.zeros(a.shape[:2], dtype=np.uint8)
    if a.dtype == np.uint8 and lo_v == 0 and hi_v == 255:
        out = a
    else:
        out = ((a.astype(np.float32) - lo_v) * (255.0 / (hi_v - lo_v))).astype(np.uint8)
    if monochrome1:
        out = 255 - out
    return np.ascontiguousarray(out)


STROKE_KERNEL = cv2.getStructuringElement(cv2.MORPH_RECT, (9, 9))
MIN_CONTRAST = 70  # of 255: a stroke this much brighter (darker) than its surround


def stroke_maps(display: np.ndarray) -> list[tuple[bool, np.ndarray]]:
    """Local contrast of thin bright strokes (white top-hat) and thin dark strokes
    (black top-hat): text stands out from whatever it is drawn on, at any level."""
    return [
        (True, cv2.morphologyEx(display, cv2.MORPH_TOPHAT, STROKE_KERNEL)),
        (False, cv2.morphologyEx(display, cv2.MORPH_BLACKHAT, STROKE_KERNEL)),
    ]


STRONG_CONTRAST = 150  # every glyph has some pixels this far from its surround
# Text drawn at the frame's extreme covers at least this many pixels at it.
MIN_EXTREME_PIXELS = 40


def _char_components(
    contrast: np.ndarray, max_h: int, extreme: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Stats rows (x, y, w, h, area, label) of the components shaped like characters,
    the label image and the number of labels: weak contrast outlines the glyph,
    strong contrast somewhere in it proves it was drawn. So do pixels at the frame's
    extreme (``extreme``, where text was drawn at it over a bright or busy
    background)."""
    weak = contrast >= MIN_CONTRAST
    proof = contrast >= STRONG_CONTRAST
    if extreme is not None:
        proof |= extreme & weak
    if not proof.any():  # nothing drawn: most frames of anatomy stop here
        return _NO_CHARS, _zeros(contrast.shape[:2], np.int32), 1
    n, labels, stats = _label(weak.view(np.uint8))
    strong = np.zeros(n, dtype=bool)
    strong[labels[proof]] = True
    return _shape_filter(stats, n, strong, max_h), labels, n


_NO_CHARS = np.zeros((0, 6), dtype=np.int32)


@functools.lru_cache(maxsize=16)
def _zeros(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A read-only array of zeros, shared: the label image or glyph mask of a frame
    without any (most frames), not allocated and cleared anew for each."""
    out = np.zeros(shape, dtype=dtype)
    out.flags.writeable = False
    return out


def _shape_filter(stats: np.ndarray, n: int, proven: np.ndarray, max_h: int) -> np.ndarray:
    """Stats rows (x, y, w, h, area, label) of the proven components shaped like glyphs."""
    s = stats[1:]
    w = s[:, cv2.CC_STAT_WIDTH]
    h = s[:, cv2.CC_STAT_HEIGHT]
    area = s[:, cv2.CC_STAT_AREA]
    fill = area / np.maximum(w * h, 1)
    keep = (
        (h >= MIN_CHAR_HEIGHT)
        & (h <= max_h)
        & ((w <= 3 * h + 4) | ((h <= 16) & (fill <= 0.75)))  # glyphs; small words merge
        & (w >= 1)
        & (area >= 4)
        & (fill >= 0.08)
        & (fill <= 0.92)  # a solid block is no glyph
        & proven[1:]
    )
    kept = np.flatnonzero(keep)
    out = np.empty((len(kept), 6), dtype=s.dtype)
    out[:, :5] = s[kept]
    out[:, 5] = kept + 1  # label numbers: stats row 0 is the background
    return out


def _rows(chars: np.ndarray, max_h: int) -> list[list[int]]:
    """Group character boxes into rows, left to right: a box joins the row whose
    last box ends at most about a character height before it, with a similar
    height and vertical centre; rows never grow taller than their characters.
    (``max_h``: the tallest character box. A box can only join a row whose centre
    is within 0.3 ``max_h`` of its own, so rows are kept in bands of that height
    and a box looks at three bands; a row that ends farther back than any box
    could reach is set aside, as boxes come left to right. Ties go to the older
    row, as in a search of every row.)"""
    order = np.argsort(chars[:, 0], kind="stable")
    rows: list[list[int]] = []
    state: list[list[float]] = []  # per row: right edge, centre y, mean height, count
    band = max(1.0, 0.3 * max_h)
    bands: dict[int, list[int]] = {}  # band of a row's centre -> rows still reachable
    reach = 1.2 * max_h + 2
    for i, (x, y, w, h) in zip(order.tolist(), chars[order, :4].tolist(), strict=True):
        cy = y + h / 2
        home = int(cy // band)
        best = -1
        best_gap = 1e9
        for b in (home - 1, home, home + 1):
            members = bands.get(b)
            if not members:
                continue
            still = []
            for r in members:
                right, rcy, rh, _n = state[r]
                gap = x - right
                if gap > reach:
                    continue  # ends too far back for this box or any after it
                still.append(r)
                if gap > 1.2 * max(h, rh) + 2 or gap < -0.5 * min(h, rh):
                    continue
                if abs(cy - rcy) > 0.3 * max(h, rh) or not (0.6 * rh <= h <= 1.7 * rh):
                    continue
                if gap < best_gap or (gap == best_gap and r < best):
                    best, best_gap = r, gap
            bands[b] = still
        if best < 0:
            bands.setdefault(home, []).append(len(rows))
            rows.append([i])
            state.append([float(x + w), cy, float(h), 1.0])
            continue
        rows[best].append(i)
        st = state[best]
        old = int(st[1] // band)
        n = st[3] + 1
        st[0] = max(st[0], x + w)
        st[1] = (st[1] * st[3] + cy) / n
        st[2] = (st[2] * st[3] + h) / n
        st[3] = n
        new = int(st[1] // band)
        if new != old:  # the row's centre moved to another band
            bands[old].remove(best)
            bands.setdefault(new, []).append(best)
    return rows


class GlyphMap:
    """The pixels of a frame's chosen character components (1) and the rest (0),
    computed only for the crops asked for (``glyphs[y1:y2, x1:x2]``): the pass
    reads a few rows of a frame, and mapping whole label images costs more than
    finding the rows."""

    def __init__(self, keep: np.ndarray | None, labels: np.ndarray, shape: tuple[int, int]) -> None:
        self._keep = keep  # uint8 per label number (None: no component chosen)
        self._labels = labels
        self.shape = shape

    def __getitem__(self, crop: tuple[slice, slice]) -> np.ndarray:
        if self._keep is None:
            return _zeros(self.shape, np.uint8)[crop]
        return self._keep[self._labels[crop]]


@dataclass
class Strokes:
    """What one polarity of a frame holds: its stroke contrast, the pixels of the
    character-like components (for clean OCR input) and the rows they form."""

    bright: bool
    contrast: np.ndarray
    glyphs: GlyphMap  # uint8 0/1 by crop
    lines: list[TextLine]


def find_strokes(display: np.ndarray) -> list[Strokes]:
    """Candidate text rows of an 8-bit display frame, per polarity."""
    height, _width = display.shape[:2]
    max_h = max(10, min(40, height // 12))
    out: list[Strokes] = []
    for bright, contrast in stroke_maps(display):
        extreme = display == (255 if bright else 0)
        if np.count_nonzero(extreme) < MIN_EXTREME_PIXELS:
            extreme = None  # a few pixels at the extreme: the frame's own maximum
        chars, labels, n = _char_components(contrast, max_h, extreme)
        lines: list[TextLine] = []
        used: list[int] = []
        if len(chars) >= 2:
            listed = chars.tolist()
            for row in _rows(chars, max_h):
                if len(row) < 2:
                    continue
                boxes = [listed[i] for i in row]
                x1 = min(b[0] for b in boxes)
                y1 = min(b[1] for b in boxes)
                x2 = max(b[0] + b[2] for b in boxes)
                y2 = max(b[1] + b[3] for b in boxes)
                ch = _median(sorted(b[3] for b in boxes))
                if x2 - x1 < 1.2 * ch or y2 - y1 > 2 * ch:
                    continue
                lines.append(TextLine(x1, y1, x2, y2, bright, ch, len(row)))
                used.extend(b[5] for b in boxes)
        keep = None
        if used:
            keep = np.zeros(n, dtype=np.uint8)
            keep[used] = 1
        glyphs = GlyphMap(keep, labels, display.shape[:2])
        out.append(Strokes(bright, contrast, glyphs, lines))
    return out


def _median(ordered: list[int]) -> int:
    """The median of sorted integers, rounded down (as ``int(np.median(...))``)."""
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) // 2


@dataclass(frozen=True)
class TextBlock:
    """Nearby candidate rows merged into one rectangle to read in one go."""

    x1: int
    y1: int
    x2: int
    y2: int
    bright: bool  # most of its rows are bright strokes
    char_height: int


def merge_blocks(lines: list[TextLine], shape: tuple[int, ...]) -> list[TextBlock]:
    """Merge rows that sit within about a character height of each other, so that
    a label and its value, or the lines of one annotation, are read together."""
    blocks: list[list[TextLine]] = []
    boxes: list[list[int]] = []
    for line in sorted(lines, key=lambda ln: (ln.y1, ln.x1)):
        m = line.char_height
        grown = [line.x1 - 2 * m, line.y1 - m, line.x2 + 2 * m, line.y2 + m]
        for b, box in zip(blocks, boxes, strict=True):
            if grown[0] < box[2] and box[0] < grown[2] and grown[1] < box[3] and box[1] < grown[3]:
                b.append(line)
                box[:] = [
                    min(box[0], line.x1),
                    min(box[1], line.y1),
                    max(box[2], line.x2),
                    max(box[3], line.y2),
                ]
                break
        else:
            blocks.append([line])
            boxes.append([line.x1, line.y1, line.x2, line.y2])
    height, width = shape[:2]
    out = []
    for b, box in zip(blocks, boxes, strict=True):
        ch = int(np.median([ln.char_height for ln in b]))
        bright = sum(ln.chars for ln in b if ln.bright) >= sum(
            ln.chars for ln in b if not ln.bright
        )
        pad = max(2, ch // 2)
        out.append(
            TextBlock(
                max(0, box[0] - pad),
                max(0, box[1] - pad),
                min(width, box[2] + pad),
                min(height, box[3] + pad),
                bright,
                ch,
            )
        )
    return out
