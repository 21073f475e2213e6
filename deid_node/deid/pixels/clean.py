"""The Clean Pixel Data pass: find burned-in identifiers and mask them in place.

It runs on the original dataset, before the header is de-identified, so that the
instance's own names, IDs and dates are known to the detector. The order of work
keeps the common case cheap:

1. Configured region templates (known annotation layouts) are blanked, no OCR.
2. Each frame is searched for rows of text-like strokes (a few milliseconds). A
   frame without any is done: no OCR, and an instance with nothing masked keeps
   its Pixel Data byte for byte (no decode and re-encode reaches the output).
3. Rows stacked at a line's pitch form annotations. Under the PHI policy, an
   annotation of several rows is probed a row at a time: once a row reads as a
   label ("Name", "DOB", ...) or an identifier, the annotation is masked whole, to
   its aligned edge, without reading the rest of it. A row whose strokes match a
   row of an identity annotation seen lately (the same patient block, drawn
   elsewhere on the next image of a series) needs no OCR at all, and neither
   does an annotation of text too small to read (see step 4): it is masked whole.
4. The other rows are read by Tesseract from a clean rendering of their strokes
   (rows probed in step 3 are not read again; a pair of characters on its own,
   which spells no identifier, is not read under the PHI policy; text too small
   for OCR to read, characters of 5 pixels or less, is masked unread);
   blocks that read as nothing, and the lines around identifiers, get a second
   look as displayed. The words that are PHI under the policy are masked, with
   the row of strokes they sit in, and so are rows of annotations that OCR could
   not read as plain words. Frames identical to one already seen reuse their
   verdict.
5. Images that usually carry text (ultrasound, captures, BurnedInAnnotation YES)
   are also read whole, first frame, as a safety net.

Masks are written in the native pixel representation (any bits, signed or not,
grey or colour, every frame). Compressed input that is masked is written back
uncompressed (Explicit VR Little Endian), which is lossless.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from deid_node.deid.pixels.ocr import Word, read_blocks, read_frame, read_plain
from deid_node.deid.pixels.phi import (
    DeferredIdentifiers,
    Identifiers,
    identifies,
    labelled,
    looks_like_label,
    normalise,
    phi_words,
)
from deid_node.deid.pixels.regions import (
    GlyphMap,
    Strokes,
    TextBlock,
    TextLine,
    find_strokes,
    merge_blocks,
    to_display,
)
from deid_node.deid.pixels.settings import ALWAYS_OCR_SOP_PREFIXES, PixelSettings

PIXEL_DATA = 0x7FE00010
Box = tuple[int, int, int, int]


@dataclass
class PixelResult:
    triage: str = "none"  # none | no-text | text | template
    frames: int = 0
    ocr_frames: int = 0
    boxes: list[tuple[int, Box]] = field(default_factory=list)  # (frame, box) masked

    @property
    def masked(self) -> bool:
        return bool(self.boxes)


def always_read(ds: Dataset, settings: PixelSettings) -> bool:
    """Whether the header says this image usually carries burned-in text."""
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        return True
    if str(ds.get("Modality", "") or "").strip().upper() in settings.ocr_modalities:
        return True
    sop = str(ds.get("SOPClassUID", "") or "")
    return sop.startswith(ALWAYS_OCR_SOP_PREFIXES)


def clean_pixel_data(ds: Dataset, settings: PixelSettings) -> PixelResult:
    """Mask burned-in text in ``ds`` (in place) as the policy says; report what was done."""
    result = PixelResult()
    if PIXEL_DATA not in ds or int(ds.get("BitsAllocated", 0) or 0) not in (8, 16, 32):
        return result
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    always = always_read(ds, settings)
    templates = [t for t in settings.templates if t.matches(ds)]
    arr = _native_grey(ds)
    if arr is None:
        arr = ds.pixel_array
    ds[PIXEL_DATA] = raw  # leave the stored bytes as they were unless we mask
    frames = _frames(ds, arr)
    result.frames = len(frames)
    monochrome1 = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    ids = DeferredIdentifiers(ds)
    verdicts: dict[bytes, list[Box]] = {}
    fixed = [b for t in templates for b in t.boxes]
    if always and frames:
        # Images that usually carry text are also read whole (first frame): their
        # annotation layout stays put across a cine loop.
        fixed += _read_whole(_shown(ds, frames[0], monochrome1), ids, settings)
    for index, frame in enumerate(frames):
        boxes = list(fixed)
        # Identical frames (a cine loop's still parts) share one verdict.
        digest = hashlib.blake2b(frame.tobytes(), digest_size=16).digest() if index else b""
        if digest not in verdicts:
            display = _shown(ds, frame, monochrome1)
            strokes = find_strokes(display)
            lines = [line for s in strokes for line in s.lines]
            found: list[Box] = []
            if lines:
                if settings.policy == "phi":
                    found = _identity_annotations_first(display, strokes, lines, ids, settings)
                else:
                    found = _read_and_decide(display, strokes, lines, ids, settings)
                result.ocr_frames += 1
            verdicts[digest] = found
        boxes += verdicts[digest]
        for box in boxes:
            result.boxes.append((index, box))
    result.triage = "template" if templates else ("text" if result.ocr_frames else "no-text")
    if result.boxes:
        _apply_masks(ds, arr, frames, result.boxes, settings, monochrome1)
    return result


def _native_grey(ds: Dataset) -> np.ndarray | None:
    """The one grey frame of an uncompressed little-endian unsigned image, read straight
    from its bytes (read-only; what ``pixel_array`` gives, without its per-call
    bookkeeping, which costs more than the triage of a CT slice); None otherwise."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or syntax.is_compressed or syntax.is_deflated or not syntax.is_little_endian:
        return None
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return None
    bits = int(ds.BitsAllocated)
    stored = int(ds.get("BitsStored", bits) or bits)
    if bits not in (8, 16) or int(ds.get("PixelRepresentation", 0) or 0) != 0 or _palette(ds):
        return None
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    value = ds.get_item(PIXEL_DATA).value
    if not rows or not cols or not isinstance(value, bytes) or len(value) < rows * cols * bits // 8:
        return None
    arr = np.frombuffer(value, dtype="<u1" if bits == 8 else "<u2", count=rows * cols)
    if stored < bits:  # bits above BitsStored are not part of the value
        arr = arr & ((1 << stored) - 1)
    return arr.reshape(rows, cols)


def _frames(ds: Dataset, arr: np.ndarray) -> list[np.ndarray]:
    """The frames of a pixel array as views: (rows, cols) or (rows, cols, samples)."""
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if nframes > 1:
        return [arr[i] for i in range(arr.shape[0])]
    return [arr]


def _identity_annotations_first(
    display: np.ndarray,
    strokes: list[Strokes],
    lines: list[TextLine],
    ids: Identifiers,
    settings: PixelSettings,
) -> list[Box]:
    """The PHI policy, identity annotations first. An annotation of several rows is
    probed a row at a time (its first PROBE_ROWS rows): once a row shows a label or
    an identifier, the annotation is an identity annotation and is masked whole, its
    other rows unread (most of the OCR an image with a patient block used to cost).
    The rest of the text is read and decided on by :func:`_read_and_decide`."""
    by_polarity = {s.bright: s for s in strokes}
    h, w = display.shape[:2]
    boxes: list[Box] = []
    rest: list[TextLine] = []
    probed: dict[TextLine, list[Word]] = {}  # rows read one by one, as read
    for group in annotation_groups(lines):
        rows = sorted(group, key=lambda ln: (ln.y1, ln.x1))
        sized = [ln for ln in rows if _annotation_sized(ln, h)]
        identity = len(sized) >= 2 and (
            _median_height(sized) <= UNREADABLE_HEIGHT
            or any(_seen_in_identity(by_polarity[ln.bright].glyphs, ln) for ln in sized)
        )
        for row in sized[:PROBE_ROWS] if len(sized) >= 2 and not identity else []:
            probed[row], identity = _probe(by_polarity, row, h, w, ids)
            if identity:
                break
        if identity:
            # Rows of the annotation's own text size: a row of anatomy chained to it
            # through a row of in-between height is left alone.
            size = _median_height(sized)
            own = [ln for ln in rows if ln.char_height <= 1.5 * size + 1]
            boxes += _aligned_rows(own, display)
            for ln in own:
                _remember_identity(by_polarity[ln.bright].glyphs, ln)
        else:
            rest += group
    if rest:
        boxes += _read_and_decide(display, strokes, rest, ids, settings, probed)
    return boxes


PROBE_ROWS = 3

# Text this small (characters at most this many pixels tall) is read by Tesseract
# as nothing legible, however it is scaled: on the shared corpus, 10 of the 84
# pieces of 4- and 5-pixel text gave a legible word, and they cost 40% of the OCR
# time. What cannot be read cannot be shown to be safe (as rows OCR did not clear
# are masked), so such text is masked unread: an annotation of it whole, as an
# identity annotation, a row of three characters or more on its own, and (PHI
# policy) a pair of characters in an annotation.
UNREADABLE_HEIGHT = 5


def _median_height(rows: list[TextLine]) -> int:
    return sorted(ln.char_height for ln in rows)[len(rows) // 2]


def _row_block(row: TextLine, height: int, width: int) -> TextBlock:
    """One row of strokes as a block to read, with a margin of half its text height."""
    pad = max(2, row.char_height // 2)
    return TextBlock(
        max(0, row.x1 - pad),
        max(0, row.y1 - pad),
        min(width, row.x2 + pad),
        min(height, row.y2 + pad),
        row.bright,
        row.char_height,
    )


# Rows of identity annotations seen lately in this process, by size (rows, columns):
# their strokes, packed. A series carries the same patient block on every image,
# wherever it is drawn; a row drawn again (its strokes as good as the same) makes
# its annotation an identity annotation without OCR. A match can only add masks.
_IDENTITY_ROWS: OrderedDict[tuple[int, int], list[np.ndarray]] = OrderedDict()
_IDENTITY_SIZES = 256  # sizes remembered
_PER_SIZE = 8  # rows remembered per size
# Intersection over union of two rows' strokes that makes them the same row. The
# same text drawn over another background loses strokes to it and gains specks: on
# the shared corpus, rows of a patient block seen again overlapped their earlier
# selves by 0.27 to 1.0 (median 0.64); other text of the same size overlaps by
# 0.1 to 0.2, as thin strokes seldom coincide.
SAME_STROKES = 0.6


def _row_strokes(glyphs: np.ndarray, row: TextLine) -> np.ndarray:
    return glyphs[row.y1 : row.y2, row.x1 : row.x2] != 0


def _seen_in_identity(glyphs: np.ndarray, row: TextLine) -> bool:
    """Whether a row's strokes match a row of an identity annotation seen lately (the
    same size within a pixel, aligned on their top left corner). Rows of fewer than
    four characters are too like specks of anatomy to tell."""
    if row.chars < 4:
        return False
    mine = _row_strokes(glyphs, row)
    rh, rw = mine.shape
    for dh in (0, -1, 1):
        for dw in (0, -1, 1):
            for packed in _IDENTITY_ROWS.get((rh + dh, rw + dw), ()):
                other = np.unpackbits(packed, count=(rh + dh) * (rw + dw)).reshape(rh + dh, rw + dw)
                h, w = min(rh, rh + dh), min(rw, rw + dw)
                a, b = mine[:h, :w], other[:h, :w].astype(bool)
                union = np.count_nonzero(a | b)
                if union and np.count_nonzero(a & b) >= SAME_STROKES * union:
                    return True
    return False


def _remember_identity(glyphs: np.ndarray, row: TextLine) -> None:
    if row.chars < 4:
        return
    mine = _row_strokes(glyphs, row)
    key = mine.shape
    entries = _IDENTITY_ROWS.pop(key, [])
    entries = [np.packbits(mine), *entries][:_PER_SIZE]
    _IDENTITY_ROWS[key] = entries
    while len(_IDENTITY_ROWS) > _IDENTITY_SIZES:
        _IDENTITY_ROWS.popitem(last=False)


# A probe reads a row's head first, up to a gap between words at least this many
# character heights in: a label and the start of its value ("Institution Name",
# "2001 Jul 05"), which settles most rows; the rest of the row is read only when
# the head does not. (Shared corpus: the probes read 477 characters instead of
# 602, the same masks.)
PROBE_HEAD = 10
# Rows shorter than this many character heights past the head are read whole.
PROBE_TAIL = 4


def _probe(
    by_polarity: dict[bool, Strokes], row: TextLine, height: int, width: int, ids: Identifiers
) -> tuple[list[Word], bool]:
    """Words of an annotation row and whether they make it an identity annotation.
    Tesseract's time goes with the amount of text read (about half a millisecond a
    character), and a row that starts with a label needs no more than its head."""
    block = _row_block(row, height, width)
    cut = _word_gap(by_polarity[row.bright].glyphs, row)
    if cut is None:
        words = read_blocks(by_polarity, [block])
        return words, identifies([x.text for x in words], ids)
    words = read_blocks(by_polarity, [replace(block, x2=cut)])
    if identifies([x.text for x in words], ids):
        return words, True
    words += read_blocks(by_polarity, [replace(block, x1=cut)])
    return words, identifies([x.text for x in words], ids)


def _word_gap(glyphs: GlyphMap, row: TextLine) -> int | None:
    """The middle of the first gap between words that is PROBE_HEAD character heights
    or more into the row, with PROBE_TAIL heights of the row after it; None if there
    is none. A gap between words is a run of columns without strokes wider than a
    third of the text height and than 1.6 times the row's median gap (the gaps
    between letters, of which a row has the most)."""
    ch = row.char_height
    start, stop = PROBE_HEAD * ch, (row.x2 - row.x1) - PROBE_TAIL * ch
    if stop <= start:
        return None
    ink = glyphs[row.y1 : row.y2, row.x1 : row.x2].any(axis=0)
    inked = np.flatnonzero(ink)
    if len(inked) < 2:
        return None
    # Runs of blank columns between the first and the last stroke.
    gaps = np.flatnonzero(np.diff(inked) > 1)
    if not len(gaps):
        return None
    firsts = inked[gaps] + 1
    widths = inked[gaps + 1] - firsts
    wide = max(2, ch // 3, int(np.ceil(1.6 * np.median(widths))))
    for a, w in zip(firsts.tolist(), widths.tolist(), strict=True):
        if w >= wide and start <= a < stop:
            return row.x1 + a + w // 2
    return None


# How far (text heights) a row of an identity annotation is followed past its strokes.
RUN_ON = 24


def _aligned_rows(rows: list[TextLine], display: np.ndarray) -> list[Box]:
    """The rows of an annotation, each reaching to the annotation's common left (or
    right) edge: a label or the start of a value whose strokes were missed sits on it.
    The edge is where most rows start (or end); a row far from it (a stray row of
    strokes beside the annotation) keeps its own box and moves no edge. Each aligned
    row also reaches on away from that edge as long as its text does in ``display``
    (see :func:`_text_runs_on`), RUN_ON text heights at most."""
    ch = int(np.median([r.char_height for r in rows]))
    mid_left = sorted(r.x1 for r in rows)[len(rows) // 2]
    mid_right = sorted(r.x2 for r in rows)[len(rows) // 2]
    near_left = [r for r in rows if abs(r.x1 - mid_left) <= 2 * ch]
    near_right = [r for r in rows if abs(r.x2 - mid_right) <= 2 * ch]
    left_aligned = len(near_left) >= len(near_right)
    left = min(r.x1 for r in near_left)
    right = max(r.x2 for r in near_right)
    width = display.shape[1]
    out = []
    for r in rows:
        if left_aligned and r in near_left:
            end = _text_runs_on(display, r, min(width, r.x2 + RUN_ON * ch), True)
            out.append((left, r.y1, end, r.y2))
        elif not left_aligned and r in near_right:
            start = _text_runs_on(display, r, max(0, r.x1 - RUN_ON * ch), False)
            out.append((start, r.y1, right, r.y2))
        else:
            out.append(r.box)
    return out


def _text_runs_on(display: np.ndarray, row: TextLine, limit: int, rightwards: bool) -> int:
    """Where a row's text ends, looking past its strokes towards ``limit`` (to the
    right or the left): as far as pixels at the row's own extreme (annotation text
    is drawn at the frame's maximum, or minimum) go on along the row, with no gap
    wider than a word's. Text drawn over busy anatomy loses glyphs to it (they
    touch the texture and do not look like characters), but not its level: a
    value found in part is masked whole, while a row whose value was found whole
    ends where it did."""
    edge = row.x2 if rightwards else row.x1
    span = limit - edge if rightwards else edge - limit
    if span <= 0:
        return edge
    level = 255 if row.bright else 0
    lo, hi = (edge, limit) if rightwards else (limit, edge)
    # Columns with pixels at the extreme in the row but not just above and below
    # it: strokes, not a background drawn at that level (dark text on white).
    ink = (display[row.y1 : row.y2, lo:hi] == level).any(axis=0)
    height = display.shape[0]
    outside = [display[y, lo:hi] == level for y in (row.y1 - 1, row.y2) if 0 <= y < height]
    if outside:
        ink &= ~np.logical_and.reduce(outside)
    if not rightwards:
        ink = ink[::-1]
    gap = max(2, round(1.5 * row.char_height))
    reach = blank = 0
    for k, v in enumerate(ink.tolist()):
        if v:
            reach, blank = k + 1, 0
        else:
            blank += 1
            if blank > gap:
                break
    return edge + reach if rightwards else edge - reach


def _read_and_decide(
    display: np.ndarray,
    strokes: list[Strokes],
    lines: list[TextLine],
    ids: Identifiers,
    settings: PixelSettings,
    probed: dict[TextLine, list[Word]] | None = None,
) -> list[Box]:
    """OCR the candidate rows and return the boxes to mask under the policy.
    ``probed``: rows already read one by one (their words are not read again)."""
    by_polarity = {s.bright: s for s in strokes}
    if settings.policy == "phi":
        lines = _could_identify(lines, display.shape[0])
    # Text too small to read is masked unread: rows of three characters or more,
    # and under the PHI policy the pairs left by _could_identify too (in an
    # annotation, or letters that touch), which would otherwise be read.
    unreadable = [
        ln.box
        for ln in lines
        if ln.char_height <= UNREADABLE_HEIGHT and (ln.chars >= 3 or settings.policy == "phi")
    ]
    lines = [ln for ln in lines if ln.char_height > UNREADABLE_HEIGHT]
    if not lines:
        return unreadable
    blocks = merge_blocks(lines, display.shape)
    words = _read_blocks_once(by_polarity, blocks, lines, probed or {}, display.shape)
    # Blocks of several rows that gave no legible word: read them as displayed
    # (outlined text over anatomy can lose its strokes to the background).
    read = {w.block for w in words if _legible(w)}
    unread = [
        b
        for k, b in enumerate(blocks)
        if k not in read and sum(1 for ln in lines if _inside(ln.box, b)) >= 3
    ]
    if unread:
        more = read_plain(display, unread)
        base = len(blocks)
        index = {id(b): base + i for i, b in enumerate(unread)}
        last = max((w.line for w in words), default=0) + 1
        words += [
            Word(w.text, w.conf, w.box, index[id(unread[w.block])], w.line + last) for w in more
        ]
        blocks = [*blocks, *unread]
    boxes = _decide(words, blocks, lines, ids, settings, display.shape[0])
    if settings.policy == "phi" and boxes:
        # Second look, as displayed, at the lines of text around the identifiers
        # found, widened to catch a label or value whose strokes were missed: text
        # drawn with an outline over a busy background reads better whole.
        h, w = display.shape[:2]
        again = []
        for (x1, y1, x2, y2), bright in _text_lines(words, blocks, boxes):
            ch = max(4, y2 - y1)
            again.append(
                TextBlock(
                    max(0, x1 - 6 * ch),
                    max(0, y1 - ch // 2),
                    min(w, x2 + 6 * ch),
                    min(h, y2 + ch // 2),
                    bright,
                    ch,
                )
            )
        boxes += _decide(read_plain(display, again), again, lines, ids, settings, display.shape[0])
    return boxes + unreadable


def _could_identify(lines: list[TextLine], height: int) -> list[TextLine]:
    """The rows worth reading under the PHI policy: all but pairs of characters on
    their own, two components no wider together than two characters and the gap
    between them, outside any annotation. Two characters spell no name, ID or date,
    and most such pairs are specks of anatomy: on the shared corpus they were 159 of
    the 379 pieces Tesseract read, a fifth of its time, and without them the same
    value boxes are hidden and under masks. Under the "all" policy they are read."""
    annotated = {
        id(ln)
        for group in annotation_groups(lines)
        if sum(1 for g in group if _annotation_sized(g, height)) >= 2
        for ln in group
    }
    return [
        ln
        for ln in lines
        if ln.chars > 2 or id(ln) in annotated or ln.x2 - ln.x1 > 3.2 * ln.char_height + 2
    ]


def _read_blocks_once(
    by_polarity: dict[bool, Strokes],
    blocks: list[TextBlock],
    lines: list[TextLine],
    probed: dict[TextLine, list[Word]],
    shape: tuple[int, ...],
) -> list[Word]:
    """Words of every block, as :func:`read_blocks` reads them, but a row probed
    already is not read again: a block of probed rows only takes their words, one
    with some probed rows reads its other rows one by one. Tesseract's time goes
    with the amount of text it reads (about 0.4 ms a character), not with the
    number of pieces, so a row read once is time saved."""
    whole: list[int] = []
    words: list[Word] = []
    line_no = 0
    h, w = shape[:2]
    for k, block in enumerate(blocks):
        mine = [ln for ln in lines if _inside(ln.box, block)]
        known = [ln for ln in mine if ln in probed]
        if not known:
            whole.append(k)
            continue
        sources = [probed[ln] for ln in known]
        unread = [ln for ln in mine if ln not in probed]
        if unread:
            sources.append(read_blocks(by_polarity, [_row_block(ln, h, w) for ln in unread]))
        for source in sources:
            numbers: dict[tuple[int, int], int] = {}  # (piece, line) -> line number here
            for x in source:
                if (x.block, x.line) not in numbers:
                    line_no += 1
                    numbers[(x.block, x.line)] = line_no
                words.append(Word(x.text, x.conf, x.box, k, numbers[(x.block, x.line)]))
    if whole:
        read = read_blocks(by_polarity, [blocks[k] for k in whole])
        base = line_no + 1
        words += [Word(x.text, x.conf, x.box, whole[x.block], x.line + base) for x in read]
    return words


def _read_whole(display: np.ndarray, ids: Identifiers, settings: PixelSettings) -> list[Box]:
    h, w = display.shape[:2]
    block = TextBlock(0, 0, w, h, False, 16)
    return _decide(read_frame(display, block), [block], [], ids, settings, h)


def _decide(
    words: list,
    blocks: list[TextBlock],
    lines: list[TextLine],
    ids: Identifiers,
    settings: PixelSettings,
    height: int,
) -> list[Box]:
    """The boxes to mask among the words read, under the policy (``height``: the
    frame's, which bounds the size of annotation text)."""
    by_line: dict[int, list] = {}
    for word in words:
        by_line.setdefault(word.line, []).append(word)
    ocr_lines = [by_line[k] for k in sorted(by_line)]
    if settings.policy == "all":
        chosen = [w for w in words if len(normalise(w.text)) >= 1]
    else:
        hits = phi_words(
            [[w.text for w in line] for line in ocr_lines],
            ids,
            [[w.box for w in line] for line in ocr_lines],
        )
        chosen = [
            line[i]
            for line, found in zip(ocr_lines, hits, strict=True)
            for i in found
            if _in_proportion(line[i], line)
        ]
    boxes: list[Box] = [w.box for w in chosen]
    # The whole row of strokes around a chosen word: characters OCR misread or
    # missed belong to the same piece of text.
    boxes += [line.box for line in lines if any(_overlap(line.box, w.box) for w in chosen)]
    # A block (rows set close together) with two PHI words or more is an identity
    # annotation: every line of text read in it goes, and reaches back to the
    # block's common left (or right) edge. Annotations are aligned, and a label or
    # the start of a value over a busy background may not have been read.
    for k in {w.block for w in chosen}:
        if sum(1 for w in chosen if w.block == k) < 2:
            continue
        spans: dict[int, list[int]] = {}
        for w in words:
            if w.block == k and (w in chosen or _legible(w)) and _in_proportion(w, by_line[w.line]):
                x1, y1, x2, y2 = w.box
                span = spans.setdefault(w.line, [x1, y1, x2, y2])
                span[:] = [min(span[0], x1), min(span[1], y1), max(span[2], x2), max(span[3], y2)]
        if not spans:
            continue
        lefts = sorted(v[0] for v in spans.values())
        rights = sorted(v[2] for v in spans.values())
        left, right = lefts[0], rights[-1]
        left_aligned = lefts[len(lefts) // 2] - left <= right - rights[len(rights) // 2]
        for x1, y1, x2, y2 in spans.values():
            boxes.append((left, y1, x2, y2) if left_aligned else (x1, y1, right, y2))
    if settings.policy == "phi":
        boxes += _unexonerated_lines(words, lines, chosen, height)
    return boxes


def _unexonerated_lines(words: list, lines: list[TextLine], chosen: list, height: int) -> list[Box]:
    """Rows of strokes that OCR did not clear. In an identity annotation (a group of
    rows with an identifier or a label such as "Name" or "DOB" on them), every row
    not read whole as plain words: a label, or a value too small or too faint for
    Tesseract to read right. Elsewhere, the rows of a group of several of which OCR
    read nothing legible. Text that cannot be read cannot be shown to be safe."""
    out: list[Box] = []
    for group in annotation_groups(lines):
        on = {id(ln): [w for w in words if _on_line(w.box, ln.box)] for ln in group}
        read = [w for ws in on.values() for w in ws]
        identity = any(w in chosen for w in read) or any(
            labelled([w.text for w in ws]) for ws in on.values()
        )
        for ln in group:
            mine = on[id(ln)]
            if identity:
                if not (mine and all(_plain_word(w) and w not in chosen for w in mine)):
                    out.append(ln.box)
            elif (
                sum(1 for g in group if _annotation_sized(g, height)) >= 2
                and _annotation_sized(ln, height)
                and not any(_legible(w) for w in mine)
            ):
                out.append(ln.box)
    return out


def _annotation_sized(line: TextLine, height: int) -> bool:
    """A row of three characters or more, no taller than annotations are drawn (3% of
    the frame's height, at least 8 pixels): rows read out of anatomy are mostly two
    components, or taller."""
    return line.chars >= 3 and line.char_height <= max(8, 0.03 * height)


def annotation_groups(lines: list[TextLine]) -> list[list[TextLine]]:
    """Rows of strokes that form one annotation: similar character heights, stacked
    at about a line's pitch, overlapping or aligned on a common edge. Looser than the
    OCR blocks, which keep tiny text (rows spaced twice their height apart) apart."""
    order = sorted(lines, key=lambda ln: (ln.y1, ln.x1))
    parent = list(range(len(order)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(order):
        for j in range(i + 1, len(order)):
            b = order[j]
            ch = max(a.char_height, b.char_height)
            if b.y1 - a.y2 > 1.5 * ch + 2:
                break
            if not 0.6 <= a.char_height / max(b.char_height, 1) <= 1.7:
                continue
            aligned = abs(a.x1 - b.x1) <= 3 * ch or abs(a.x2 - b.x2) <= 3 * ch
            if aligned or (a.x1 < b.x2 and b.x1 < a.x2):
                parent[root(j)] = root(i)
    groups: dict[int, list[TextLine]] = {}
    for i, ln in enumerate(order):
        groups.setdefault(root(i), []).append(ln)
    return list(groups.values())


def _plain_word(word) -> bool:  # type: ignore[no-untyped-def]
    """A legible word that could not be part of an identifier: letters only, no label."""
    text = normalise(word.text)
    return _legible(word) and text.isalpha() and not looks_like_label(text)


def _on_line(word: Box, line: Box) -> bool:
    """Whether a word box sits on a row of strokes (overlaps it, mostly vertically)."""
    top, bottom = max(word[1], line[1]), min(word[3], line[3])
    overlap = bottom - top
    return (
        overlap > 0
        and overlap >= 0.5 * min(word[3] - word[1], line[3] - line[1])
        and word[0] < line[2]
        and line[0] < word[2]
    )


def _text_lines(words: list, blocks: list[TextBlock], near: list[Box]) -> list[tuple[Box, bool]]:
    """Bounding boxes of the OCR lines that hold a legible word next to ``near``, with
    the polarity of the block they were read in (bright text?)."""
    spans: dict[int, list[int]] = {}
    bright: dict[int, bool] = {}
    for word in words:
        if not _legible(word):
            continue
        x1, y1, x2, y2 = word.box
        span = spans.setdefault(word.line, [x1, y1, x2, y2])
        span[:] = [min(span[0], x1), min(span[1], y1), max(span[2], x2), max(span[3], y2)]
        bright[word.line] = blocks[word.block].bright
    out = []
    for line, (x1, y1, x2, y2) in spans.items():
        grown = (x1, y1 - (y2 - y1), x2, y2 + (y2 - y1))
        if any(_overlap(grown, b) for b in near):
            out.append(((x1, y1, x2, y2), bright[line]))
    return out


def _in_proportion(word, line: list) -> bool:  # type: ignore[no-untyped-def]
    """Whether a word is about as tall as the words of its line: a reading of an
    edge or of anatomy beside the text comes out much taller."""
    heights = sorted(w.box[3] - w.box[1] for w in line)
    return word.box[3] - word.box[1] <= 1.6 * heights[len(heights) // 2] + 2


def _inside(a: Box, b: TextBlock) -> bool:
    return b.x1 <= a[0] and b.y1 <= a[1] and a[2] <= b.x2 and a[3] <= b.y2


def _legible(word) -> bool:  # type: ignore[no-untyped-def]
    """A word Tesseract is sure of: real text, not a reading of anatomy or noise."""
    return word.conf >= 60 and len(normalise(word.text)) >= 2


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _palette(ds: Dataset) -> bool:
    return str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR"


def _shown(ds: Dataset, frame: np.ndarray, monochrome1: bool) -> np.ndarray:
    """The frame as a display shows it, 8-bit: palette indices through their colours."""
    if _palette(ds):
        from pydicom.pixels import apply_color_lut

        return to_display(apply_color_lut(frame, ds))
    return to_display(frame, monochrome1)


def _fill_value(
    frame: np.ndarray, fill: str, monochrome1: bool, ds: Dataset | None = None
) -> np.ndarray | int:
    if ds is not None and _palette(ds) and fill != "background":
        # The index, among those the frame uses, whose colour is darkest (brightest).
        from pydicom.pixels import apply_color_lut

        used = np.unique(frame)
        shade = apply_color_lut(used, ds).astype(np.float64).sum(axis=-1)
        return used[int(np.argmin(shade) if fill == "black" else np.argmax(shade))]
    if fill == "background":
        values, counts = np.unique(frame.reshape(-1, *frame.shape[2:]), axis=0, return_counts=True)
        return values[int(np.argmax(counts))]
    dark = (fill == "black") != monochrome1  # MONOCHROME1 shows its maximum as black
    if frame.ndim == 3:
        return frame.min(axis=(0, 1)) if dark else frame.max(axis=(0, 1))
    return frame.min() if dark else frame.max()


def _apply_masks(
    ds: Dataset,
    arr: np.ndarray,
    frames: list[np.ndarray],
    boxes: list[tuple[int, Box]],
    settings: PixelSettings,
    monochrome1: bool,
) -> None:
    if not arr.flags.writeable:
        arr = arr.copy()
        frames = _frames(ds, arr)
    pad = settings.padding
    fills: dict[int, np.ndarray | int] = {}  # per frame, from its pixels before masking
    for index, (x1, y1, x2, y2) in boxes:
        frame = frames[index]
        h, w = frame.shape[:2]
        if index not in fills:
            fills[index] = _fill_value(frame, settings.fill, monochrome1, ds)
        rows = slice(max(0, y1 - pad), min(h, y2 + pad))
        frame[rows, max(0, x1 - pad) : min(w, x2 + pad)] = fills[index]
    _store(ds, arr)


def _store(ds: Dataset, arr: np.ndarray) -> None:
    """Write the masked array back as native, uncompressed little-endian pixel data."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    if len(data) % 2:
        data += b"\x00"
    bits = int(ds.BitsAllocated)
    ds[PIXEL_DATA] = DataElement(PIXEL_DATA, "OB" if bits == 8 else "OW", data)
    if samples == 3:
        ds.PhotometricInterpretation = "RGB"  # pydicom gives RGB for any YBR input
        ds.PlanarConfiguration = 0
    meta = ds.file_meta
    syntax = meta.TransferSyntaxUID
    if syntax.is_compressed or not syntax.is_little_endian or syntax.is_deflated:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if hasattr(ds, "_is_little_endian"):
            ds.set_original_encoding(False, True)
    ds.BurnedInAnnotation = "NO"
