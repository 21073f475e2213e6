"""Where text is on a displayed frame: PP-OCRv4's DBNet, a learned detector.

The detector gives each pixel a probability of lying inside text; regions are
the connected parts above :data:`PIXEL_THRESHOLD`, grown back by DB's unclip
distance (the network is trained on text regions shrunk by it) and kept when
their mean probability reaches :data:`REGION_THRESHOLD`. Both are below
PaddleOCR's published 0.3 and 0.5: a region the detector is less sure of is
still read, and the reading decides (fail closed).

Sizing. DBNet finds capitals from about 14 pixels up at the scale it sees them:
frames are searched at their own resolution, and the parts that may hold smaller
text again enlarged twice (:func:`detect`). Large frames are cut into overlapping
tiles (:data:`TILE`), and a tile that holds nothing a person could read (all of it
within :data:`FLAT_RANGE` grey levels) is skipped: text that contrasts by less
is not legible, and generated text goes down to 15% of the range (38 levels).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from deid_node.deid.pixels.display import grey
from deid_node.deid.pixels.models import DETECTOR_FILE, session

Box = tuple[int, int, int, int]

PIXEL_THRESHOLD = 0.2
REGION_THRESHOLD = 0.3
UNCLIP_RATIO = 1.6
# Across a line, DB's unclip reaches about a third of the text's height past its
# glyphs, which a mask need not cover. The core (probability over
# PIXEL_THRESHOLD) starts about 0.2 of the text height inside the glyphs' top
# and bottom (95th percentile 0.3; measured on generated text of 20 font files,
# not on any corpus), and is about 0.65 of the text tall: grown by this share of
# its height on each side, it covers the glyphs with a pixel or two to spare.
ACROSS = 0.55
# A region thicker than this (pixels across its line) is not a line of text: half
# as thick again as the line of the largest annotation text (capitals 48 pixels
# tall, about 66 pixels with DB's margin). The detector fires on lung fields and
# brain folds that way; a letter that large on its own identifies nobody.
MAX_LINE = 100
TILE = 1024  # tiles of large frames (pixels at the detector's scale)
OVERLAP = 96  # tiles overlap by more than the tallest text they must keep whole
FLAT_RANGE = 12  # grey levels: a tile within this range holds nothing legible


@dataclass(frozen=True)
class Region:
    """A detected piece of text: its box on the frame and the detector's score."""

    box: Box
    score: float

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


def _as_input(image: np.ndarray) -> np.ndarray:
    """An 8-bit grey or RGB image as the network's input: 3 channels, scaled to
    [-1, 1] (PP-OCR's mean and deviation of 0.5), padded to a multiple of 32."""
    h, w = image.shape[:2]
    ph, pw = -h % 32, -w % 32
    if ph or pw:
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    x = image.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
    x = np.repeat(x[None, :, :], 3, axis=0) if x.ndim == 2 else x.transpose(2, 0, 1)
    return x[None]


def probability(image: np.ndarray) -> np.ndarray:
    """The detector's text probability for every pixel of an 8-bit image."""
    h, w = image.shape[:2]
    net = session(DETECTOR_FILE)
    out = net.run(None, {net.get_inputs()[0].name: _as_input(image)})[0]
    return out[0, 0, :h, :w]


def _regions_of(prob: np.ndarray) -> list[Region]:
    """Regions of a probability map (coordinates of the map)."""
    binary = (prob > PIXEL_THRESHOLD).astype(np.uint8)
    # DB's dilation of the binary map (PaddleOCR's use_dilation) joins the pieces
    # of thin glyphs.
    binary = cv2.dilate(binary, np.ones((2, 2), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=4)
    h, w = prob.shape
    out = []
    for k in range(1, n):
        x, y, bw, bh = (int(v) for v in stats[k][:4])
        if min(bw, bh) < 2:
            continue
        inside = labels[y : y + bh, x : x + bw] == k
        score = float(prob[y : y + bh, x : x + bw][inside].mean())
        if score < REGION_THRESHOLD:
            continue
        # Unclip: the polygon grown by area * ratio / perimeter (DB's inverse of
        # the shrink its training targets were made with) along the line; across
        # it, by a share of the core's own height (see ACROSS).
        along = int(np.ceil(bw * bh * UNCLIP_RATIO / (2 * (bw + bh))))
        gx, gy = (
            (along, int(np.ceil(ACROSS * bh))) if bw >= bh else (int(np.ceil(ACROSS * bw)), along)
        )
        out.append(
            Region(
                (max(0, x - gx), max(0, y - gy), min(w, x + bw + gx), min(h, y + bh + gy)), score
            )
        )
    return out


def _tiles(h: int, w: int) -> list[tuple[int, int, int, int]]:
    if h <= TILE and w <= TILE:
        return [(0, 0, w, h)]
    step = TILE - OVERLAP
    ys = list(range(0, max(1, h - OVERLAP), step))
    xs = list(range(0, max(1, w - OVERLAP), step))
    return [(x, y, min(w, x + TILE), min(h, y + TILE)) for y in ys for x in xs]


def _flat(tile: np.ndarray) -> bool:
    lo, hi = cv2.minMaxLoc(tile if tile.ndim == 2 else tile.max(axis=2) - tile.min(axis=2))[:2]
    if tile.ndim == 3:
        # Colour: flat when every channel is, and no pixel has a colour of its own.
        return (
            all(_flat(np.ascontiguousarray(tile[:, :, c])) for c in range(3)) and hi <= FLAT_RANGE
        )
    return hi - lo <= FLAT_RANGE


def detect(display: np.ndarray) -> list[Region]:
    """Text regions of a displayed frame (8-bit grey or RGB), in frame coordinates.

    The whole frame is searched at its own scale, upright and turned a quarter
    (DBNet is trained on horizontal lines: it finds vertical ones in pieces, if at
    all; text turned the other way is upside down there, which it finds too).
    Small text (capitals under about 14 pixels) is found only enlarged twice, which
    costs four times as much: the windows that may hold it (:func:`_windows`) are
    searched again that way. Small frames are searched whole, enlarged four times."""
    found = _both_ways(display, 1.0)
    small = max(display.shape[:2]) <= SMALL_FRAME
    scale = TINY_TEXT_SCALE if small else SMALL_TEXT_SCALE
    h, w = display.shape[:2]
    view = _raised(display) if small else display
    for x1, y1, x2, y2 in [(0, 0, w, h)] if small else _windows(display, found):
        for r in _both_ways(np.ascontiguousarray(view[y1:y2, x1:x2]), scale):
            a, b, c, d = r.box
            found.append(Region((a + x1, b + y1, c + x1, d + y1), r.score))
    return _merge_duplicates(_without_crossings(found))


# A region the reader reads nothing in is searched again closer up (:func:`closer`):
# enlarged up to this much, to at most CLOSER_SIDE pixels a side, with its contrast
# raised locally (CLAHE). Lines of text 4-6 pixels tall, or faint, come out of the
# first search as one blob over a whole annotation block, which no reader can read
# as one line; closer up they come apart into lines. Regions too large to enlarge
# twice within that size are not searched again (a blob that large is anatomy, or
# text large enough to have been found line by line).
CLOSER_SCALE = 4.0
CLOSER_SIDE = 384
CLOSER_CLIP = 2.0  # CLAHE's clip limit (OpenCV's default is 40: no limit worth the name)


def closer(display: np.ndarray, box: Box) -> list[Region]:
    """Text regions within ``box`` (plus a margin of a quarter of its thickness),
    found enlarged and with the local contrast raised, in frame coordinates; none
    if the box is too large to enlarge twice."""
    x1, y1, x2, y2 = box
    margin = max(2, min(x2 - x1, y2 - y1) // 4)
    h, w = display.shape[:2]
    x1, y1 = max(0, x1 - margin), max(0, y1 - margin)
    x2, y2 = min(w, x2 + margin), min(h, y2 + margin)
    scale = min(CLOSER_SCALE, CLOSER_SIDE / max(x2 - x1, y2 - y1, 1))
    if scale < 2.0 or min(x2 - x1, y2 - y1) < 4:
        return []
    crop = np.ascontiguousarray(grey(display)[y1:y2, x1:x2])
    raised = cv2.createCLAHE(CLOSER_CLIP, (2, 2)).apply(crop)
    return _shifted(_both_ways(raised, scale), x1, y1)


# Lines next to an identifying annotation block are searched for enlarged this
# much (:func:`lines_in`): text over speckle or busy anatomy that the first
# search missed is found at three times its size (measured on generated text of
# 8-12 pixel capitals over speckle: missed at twice, found at three times).
BESIDE_SCALE = 3.0


def lines_in(display: np.ndarray, box: Box) -> list[Region]:
    """Upright text regions within ``box`` of a frame (a band beside an annotation
    block), searched enlarged :data:`BESIDE_SCALE` times, in frame coordinates."""
    h, w = display.shape[:2]
    x1, y1, x2, y2 = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
    if min(x2 - x1, y2 - y1) < 4:
        return []
    crop = np.ascontiguousarray(display[y1:y2, x1:x2])
    return _shifted(_find(crop, BESIDE_SCALE), x1, y1)


def _shifted(regions: list[Region], dx: int, dy: int) -> list[Region]:
    return [
        Region((r.box[0] + dx, r.box[1] + dy, r.box[2] + dx, r.box[3] + dy), r.score)
        for r in regions
    ]


def _raised(display: np.ndarray) -> np.ndarray:
    """The grey frame with its local contrast raised (CLAHE on OpenCV's default grid
    of 8 x 8 tiles)."""
    return cv2.createCLAHE(CLOSER_CLIP, (8, 8)).apply(grey(display))


def _without_crossings(regions: list[Region]) -> list[Region]:
    """Regions, less the vertical ones that cut across two or more horizontal lines
    from top to bottom: lines of text do not cross each other, and a column through
    an annotation block is the detector reading texture (a streak of anatomy)
    turned a quarter."""
    lines = [r.box for r in regions if r.width > 1.5 * r.height]

    def crosses(v: Box, u: Box) -> bool:
        return v[0] < u[2] and u[0] < v[2] and v[1] <= u[1] and v[3] >= u[3]

    return [
        r
        for r in regions
        if not (r.height > 1.5 * r.width and sum(crosses(r.box, u) for u in lines) >= 2)
    ]


def _both_ways(image: np.ndarray, scale: float) -> list[Region]:
    """Regions of upright text, and of vertical text found on the image turned."""
    upright = _find(image, scale)
    found = [r for r in upright if min(r.width, r.height) <= MAX_LINE]
    width = image.shape[1]
    for r in _find(np.ascontiguousarray(np.rot90(image, 1)), scale):
        box = _unturned(r.box, width)
        # Vertical on the image, and not upright lines seen turned (those come out
        # as a column across the lines of a block).
        lines = sum(_shared(box, u.box) for u in upright if u.width > 1.5 * u.height)
        x1, y1, x2, y2 = box
        if x2 - x1 <= MAX_LINE and y2 - y1 > x2 - x1 and lines < 0.5 * _area(box):
            found.append(Region(box, r.score))
    return found


# Small text is searched for enlarged this much: DBNet finds capitals from about
# 14 pixels up; enlarged twice, those of 8 (measured on generated text: at the
# frame's own scale whole blocks of 8-12 pixel capitals went unseen).
SMALL_TEXT_SCALE = 2.0
# Small frames (a 256 x 256 MR) carry annotations of 4-6 pixel capitals, which a
# person still reads up close: they are searched whole, enlarged four times
# (1024 pixels a side; the stroke windows miss text of a few grey levels).
SMALL_FRAME = 320
TINY_TEXT_SCALE = 4.0
# Windows for the small-text search: thin strokes that stand out from their
# surround by half the least contrast a person reads (15% of the range), joined
# along a line, outside the text already found; grown by a margin. Over noise or
# busy anatomy they cover most of the frame, and the whole frame is searched.
STROKE_CONTRAST = 19
STROKE_KERNEL = cv2.getStructuringElement(cv2.MORPH_RECT, (7, 7))
LINE_KERNEL = np.ones((5, 17), np.uint8)
WINDOW_MARGIN = 16
WHOLE_FRAME = 0.4  # windows covering more than this share of the frame: search it all


def _windows(display: np.ndarray, found: list[Region]) -> list[Box]:
    """Parts of the frame that may hold text too small for the search at scale 1."""
    shade = grey(display)
    strokes = (
        np.maximum(
            cv2.morphologyEx(shade, cv2.MORPH_TOPHAT, STROKE_KERNEL),
            cv2.morphologyEx(shade, cv2.MORPH_BLACKHAT, STROKE_KERNEL),
        )
        >= STROKE_CONTRAST
    )
    for r in found:
        x1, y1, x2, y2 = r.box
        strokes[y1:y2, x1:x2] = False
    joined = cv2.dilate(strokes.astype(np.uint8), LINE_KERNEL)
    n, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    h, w = shade.shape
    boxes = []
    for k in range(1, n):
        x, y, bw, bh = (int(v) for v in stats[k][:4])
        if bw < 12 or bh < 6:  # a speck, not a word
            continue
        m = WINDOW_MARGIN
        boxes.append((max(0, x - m), max(0, y - m), min(w, x + bw + m), min(h, y + bh + m)))
    boxes = _union_of_overlapping(boxes)
    if sum(_area(b) for b in boxes) > WHOLE_FRAME * h * w:
        return [(0, 0, w, h)]
    return boxes


def _union_of_overlapping(boxes: list[Box]) -> list[Box]:
    """Boxes that overlap, joined until none do."""
    boxes = sorted(boxes)
    changed = True
    while changed:
        changed = False
        out: list[Box] = []
        for b in boxes:
            for i, o in enumerate(out):
                if _shared(b, o) > 0:
                    out[i] = (min(b[0], o[0]), min(b[1], o[1]), max(b[2], o[2]), max(b[3], o[3]))
                    changed = True
                    break
            else:
                out.append(b)
        boxes = out
    return boxes


def _unturned(box: Box, width: int) -> Box:
    """A box found on ``np.rot90(image, 1)`` as a box of the image: that array's
    [i, j] is the image's [j, width - 1 - i]."""
    x1, y1, x2, y2 = box
    return (width - y2, x1, width - y1, x2)


def _find(display: np.ndarray, scale: float) -> list[Region]:
    """Regions of upright text on an image searched at ``scale``, in its coordinates."""
    image = display
    if scale != 1.0:
        h, w = display.shape[:2]
        image = cv2.resize(
            display, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC
        )
    h, w = image.shape[:2]
    regions: list[Region] = []
    tiles = _tiles(h, w)
    for x1, y1, x2, y2 in tiles:
        tile = image[y1:y2, x1:x2]
        if _flat(tile):
            continue
        for r in _regions_of(probability(tile)):
            bx1, by1, bx2, by2 = r.box
            regions.append(Region((bx1 + x1, by1 + y1, bx2 + x1, by2 + y1), r.score))
    if scale != 1.0:
        fh, fw = display.shape[:2]
        regions = [
            Region(
                (
                    max(0, int(r.box[0] / scale)),
                    max(0, int(r.box[1] / scale)),
                    min(fw, int(np.ceil(r.box[2] / scale))),
                    min(fh, int(np.ceil(r.box[3] / scale))),
                ),
                r.score,
            )
            for r in regions
        ]
    return _merge_duplicates(regions) if len(tiles) > 1 else regions


def _merge_duplicates(regions: list[Region]) -> list[Region]:
    """Regions found twice (a text in the overlap of two tiles, whole in one, cut in
    the other) as one: pairs that share half the smaller one's area."""
    out: list[Region] = []
    for r in sorted(regions, key=lambda r: r.box):
        for i, o in enumerate(out):
            if _shared(r.box, o.box) >= 0.5 * min(_area(r.box), _area(o.box)):
                a, b = r.box, o.box
                box = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                out[i] = Region(box, max(r.score, o.score))
                break
        else:
            out.append(r)
    return out


def _area(a: Box) -> int:
    return max(0, a[2] - a[0]) * max(0, a[3] - a[1])


def _shared(a: Box, b: Box) -> int:
    """The area two boxes have in common."""
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
