"""Tesseract, loaded once per process, reading candidate blocks in one call.

Tesseract's command line (pytesseract) pays about 0.15 s a call to start and load
its model; the C API (tesserocr, the same Tesseract engine with Debian's
``tesseract-ocr-eng`` language data) keeps the model loaded, so a call costs only
the recognition. Candidate blocks are stacked into one mosaic, so an image costs
one recognition pass however many blocks it has.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

TARGET_CHAR_HEIGHT = 32  # Tesseract reads best with capitals about this tall
MAX_SCALE = 8.0
# Clean glyph renderings are narrowed to this fraction of their width. Tesseract's
# LSTM scales each line to a fixed height and steps along its width, so its time
# (most of the pixel pass's) goes with the width it is given; burned-in fonts are
# wide. Shared corpus, value boxes read from their strokes: similarity to the true
# text 46.6% at full width, 47.7% at 0.7 (48.4% at 0.75, 45.7% at 0.6, 42.8% at
# 0.5), in 29% less time. Frames and crops read as displayed keep their width:
# there, narrowing lost 3 points of similarity (texture merges with the strokes).
GLYPH_SQUEEZE = 0.7
GAP = 12  # white rows between blocks in the mosaic

_TESSDATA_CANDIDATES = (
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
    "/usr/local/share/tessdata",
)


@dataclass(frozen=True)
class Word:
    text: str
    conf: float
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in frame coordinates
    block: int  # index of the block it was read from
    line: int  # line number within the mosaic (words of one line share it)


def tessdata_path() -> str:
    """The language data folder of the system's Tesseract (Debian: tesseract-ocr-eng)."""
    env = os.environ.get("TESSDATA_PREFIX")
    for candidate in ((env,) if env else ()) + _TESSDATA_CANDIDATES:
        if candidate and (Path(candidate) / "eng.traineddata").is_file():
            return candidate
    raise RuntimeError("Tesseract English data not found: run scripts/setup.sh (tesseract-ocr-eng)")


_LOCAL = threading.local()


def _api():  # type: ignore[no-untyped-def]
    api = getattr(_LOCAL, "api", None)
    if api is None:
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")
        import tesserocr

        api = tesserocr.PyTessBaseAPI(
            path=tessdata_path(), lang="eng", psm=tesserocr.PSM.SINGLE_COLUMN
        )
        _LOCAL.api = api
    return api


_GROW = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))


def prepare(
    contrast: np.ndarray, glyphs: np.ndarray, char_height: int
) -> tuple[np.ndarray, float, float]:
    """Dark text on white from a stroke-contrast crop, upscaled so that characters
    are about TARGET_CHAR_HEIGHT tall and narrowed by GLYPH_SQUEEZE; with the
    horizontal and vertical scale factors. Only the character-like components
    (grown by a pixel for their anti-aliased edges) are kept: the surround
    (anatomy, noise) drops out whatever its level, and strokes come out black
    whether they were drawn bright or dark."""
    soft = np.clip((contrast.astype(np.int16) - 40) * 3, 0, 255).astype(np.uint8)
    soft *= cv2.dilate(glyphs, _GROW)
    img = 255 - soft
    scale = min(MAX_SCALE, max(1.0, TARGET_CHAR_HEIGHT / max(char_height, 1)))
    across = scale * GLYPH_SQUEEZE
    if round(img.shape[1] * across) >= 1:
        img = cv2.resize(img, None, fx=across, fy=scale, interpolation=cv2.INTER_CUBIC)
    else:
        across = 1.0
    return img, across, scale


def read_blocks(strokes: dict, blocks: list) -> list[Word]:
    """OCR every block in one Tesseract pass; word boxes in frame pixels.
    ``strokes`` maps polarity (bright?) to the frame's :class:`Strokes`."""
    if not blocks:
        return []
    pieces = []
    cached: list[Word] = []
    todo = []
    keys = []
    for bi, b in enumerate(blocks):
        s = strokes[b.bright]
        crop = (slice(b.y1, b.y2), slice(b.x1, b.x2))
        img, across, scale = prepare(s.contrast[crop], s.glyphs[crop], b.char_height)
        key = (b.x1, b.y1, b.x2, b.y2, hashlib.blake2b(img.tobytes(), digest_size=16).digest())
        hit = _CACHE.get(key)
        if hit is not None:  # the same annotation on another frame of a cine
            cached.extend(Word(w.text, w.conf, w.box, bi, w.line) for w in hit)
            continue
        todo.append(b)
        keys.append(key)
        pieces.append((img, across, scale))
    if not todo:
        return cached
    words = _read_pieces(todo, pieces)
    for k, key in enumerate(keys):
        _CACHE[key] = [w for w in words if w.block == k]
    if len(_CACHE) > 256:
        _CACHE.clear()
    index = {id(b): i for i, b in enumerate(blocks)}
    fixed = [Word(w.text, w.conf, w.box, index[id(todo[w.block])], w.line) for w in words]
    base = max((w.line for w in fixed), default=0)
    again = [Word(w.text, w.conf, w.box, w.block, w.line + base) for w in cached]
    return fixed + again


_CACHE: dict[tuple, list[Word]] = {}


def read_frame(display: np.ndarray, block: object) -> list[Word]:
    """OCR a whole frame as displayed, at twice its size below 1000 pixels: the
    safety net for images that usually carry text (ultrasound, screen captures),
    where coloured or shaded text may not stand out as strokes."""
    h, w = display.shape[:2]
    scale = 2.0 if max(h, w) < 1000 else 1.0
    img = display
    if scale > 1.0:
        img = cv2.resize(display, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    return _read_pieces([block], [(img, scale, scale)], sparse=True)


def read_plain(display: np.ndarray, blocks: list) -> list[Word]:
    """OCR blocks as displayed (dark text on light: bright blocks inverted), for a
    second look at the blocks that hold identifiers: text drawn with an outline
    over a busy background reads better whole than as detected strokes."""
    if not blocks:
        return []
    pieces = []
    for b in blocks:
        crop = display[b.y1 : b.y2, b.x1 : b.x2]
        img = 255 - crop if b.bright else crop
        scale = min(MAX_SCALE, max(1.0, TARGET_CHAR_HEIGHT / max(b.char_height, 1)))
        if scale > 1.0:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        pieces.append((np.ascontiguousarray(img), scale, scale))
    return _read_pieces(blocks, pieces)


def _read_pieces(blocks: list, pieces: list, *, sparse: bool = False) -> list[Word]:
    """Stack the pieces (image, horizontal scale, vertical scale: of the image to its
    block) into one image and read it: as one column of text blocks (the mosaic),
    or as sparse text scattered anywhere (a whole frame)."""
    width = max(p[0].shape[1] for p in pieces) + 2 * GAP
    height = sum(p[0].shape[0] for p in pieces) + GAP * (len(pieces) + 1)
    mosaic = np.full((height, width), 255, dtype=np.uint8)
    offsets = []
    y = GAP
    for img, _across, _scale in pieces:
        h, w = img.shape
        mosaic[y : y + h, GAP : GAP + w] = img
        offsets.append(y)
        y += h + GAP
    return _recognise(mosaic, blocks, pieces, offsets, sparse)


def _recognise(mosaic, blocks, pieces, offsets, sparse) -> list[Word]:  # type: ignore[no-untyped-def]
    """Read the mosaic one piece at a time (a rectangle each, one block of text), so
    that noise read in one block cannot upset the layout of another; a whole frame
    is read as sparse text."""
    import tesserocr

    api = _api()
    api.SetPageSegMode(tesserocr.PSM.SPARSE_TEXT if sparse else tesserocr.PSM.SINGLE_COLUMN)
    # Pieces are dark text on white: Tesseract's second reading of doubtful words
    # inverted costs a tenth of the time and finds nothing. A whole frame as
    # displayed may hold light text on dark, so there it stays on.
    api.SetVariable("tessedit_do_invert", "1" if sparse else "0")
    # Raw pixels: handing over a PIL image makes tesserocr encode it as a BMP file.
    height, width = mosaic.shape
    api.SetImageBytes(np.ascontiguousarray(mosaic).tobytes(), width, height, 1, width)
    api.SetSourceResolution(96)  # what a PIL image says it has: Tesseract reads the same
    words: list[Word] = []
    line_no = 0
    level = tesserocr.RIL.WORD
    for k, (img, across, scale) in enumerate(pieces):
        h, w = img.shape[:2]
        oy = offsets[k]
        api.SetRectangle(GAP // 2, oy - GAP // 2, w + GAP, h + GAP)
        api.Recognize()
        b = blocks[k]
        for word in tesserocr.iterate_level(api.GetIterator(), level):
            if word.IsAtBeginningOf(tesserocr.RIL.TEXTLINE):
                line_no += 1
            try:
                text = word.GetUTF8Text(level)
            except RuntimeError:  # an empty word
                continue
            bbox = word.BoundingBox(level)
            if not text or not text.strip() or bbox is None:
                continue
            x1, y1, x2, y2 = bbox
            box = (
                max(b.x1, int(b.x1 + (x1 - GAP) / across)),
                max(b.y1, int(b.y1 + (y1 - oy) / scale)),
                min(b.x2, int(np.ceil(b.x1 + (x2 - GAP) / across))),
                min(b.y2, int(np.ceil(b.y1 + (y2 - oy) / scale))),
            )
            words.append(Word(text.strip(), float(word.Confidence(level)), box, k, line_no))
        line_no += 1
    return words
