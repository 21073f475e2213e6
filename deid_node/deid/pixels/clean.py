"""The Clean Pixel Data pass: find burned-in text and mask what may identify.

It runs on the original dataset, before the header is de-identified, so that the
instance's own names, IDs and dates are known to the verdict. For each frame:

1. Configured region templates (known annotation layouts) are blanked unread.
2. The frame is shown as a viewer shows it (:mod:`display`) and a learned text
   detector finds the text on it (:mod:`detect`, PP-OCRv4's DBNet).
3. Each region is read by a learned recogniser (:mod:`recognise`); reading
   decides, it does not find.
4. The verdict fails closed (:mod:`verdict`): a region stays only if it was read
   with confidence and every token of it is known to identify nobody; PHI, low
   confidence and the blocks around PHI are masked.

Frames identical to one already seen reuse its verdict; text that moves between
frames is found frame by frame. Nothing carries over from one image to the next.

Masks are written in the native pixel representation (any bits, signed or not,
grey, RGB or YBR_FULL, palette indices, every frame). Compressed input that is
masked is written back uncompressed (Explicit VR Little Endian), which is
lossless. An image where nothing is masked keeps its Pixel Data byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from deid_node.deid.pixels.detect import Region, closer, detect, lines_in
from deid_node.deid.pixels.display import frame_key, frames_of, grey, is_palette, photometric, shown
from deid_node.deid.pixels.gdcm_decoder import decode_grey
from deid_node.deid.pixels.phi import DeferredIdentifiers, Identifiers
from deid_node.deid.pixels.recognise import VERTICAL, Reading, character_columns, read_region
from deid_node.deid.pixels.settings import PixelSettings
from deid_node.deid.pixels.verdict import IDENTIFYING, Verdict, blocks, decide, reads_nothing

PIXEL_DATA = 0x7FE00010
Box = tuple[int, int, int, int]


@dataclass
class PixelResult:
    triage: str = "none"  # none | no-text | text | template
    frames: int = 0
    detected: int = 0  # regions found, over all frames looked at
    boxes: list[tuple[int, Box]] = field(default_factory=list)  # (frame, box) masked
    reasons: dict[str, int] = field(default_factory=dict)  # why regions were masked

    @property
    def masked(self) -> bool:
        return bool(self.boxes)


def clean_pixel_data(ds: Dataset, settings: PixelSettings) -> PixelResult:
    """Mask burned-in text in ``ds`` (in place) as the policy says; report what was done."""
    result = PixelResult()
    if PIXEL_DATA not in ds or int(ds.get("BitsAllocated", 0) or 0) not in (8, 16, 32):
        return result
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    templates = [t for t in settings.templates if t.matches(ds)]
    arr, ybr = _native_pixels(ds)
    ds[PIXEL_DATA] = raw  # leave the stored bytes as they were unless we mask
    frames = frames_of(ds, arr)
    result.frames = len(frames)
    ids = DeferredIdentifiers(ds)
    fixed = [b for t in templates for b in t.boxes]
    if settings.engine == "presidio":
        from deid_node.deid.pixels.presidio_engine import presidio_boxes

        # Presidio reads the first frame; its boxes are masked on every frame.
        fixed += presidio_boxes(ds)
    verdicts: dict[bytes, list[Verdict]] = {}
    for index, frame in enumerate(frames):
        # Identical frames (a cine loop's still parts) share one verdict.
        digest = frame_key(frame)
        if digest not in verdicts:
            if settings.engine == "presidio":
                verdicts[digest] = []
            else:
                verdicts[digest] = frame_verdicts(_display(ds, frame, ybr), ids, settings)
            result.detected += len(verdicts[digest])
        for box in fixed:
            result.boxes.append((index, box))
        for v in verdicts[digest]:
            if v.mask:
                result.boxes.append((index, v.region.box))
                result.reasons[v.reason] = result.reasons.get(v.reason, 0) + 1
    result.triage = (
        "template" if templates else ("text" if result.boxes or result.detected else "no-text")
    )
    if result.boxes:
        _apply_masks(ds, arr, frames, result.boxes, settings, ybr)
    return result


def frame_verdicts(display: np.ndarray, ids: Identifiers, settings: PixelSettings) -> list[Verdict]:
    """Detect, read and decide on the text of one displayed frame."""
    regions = detect(display)
    if not regions:
        return []
    if settings.policy == "all":
        readings = [Reading("", 0.0)] * len(regions)  # "all" masks unread
    else:
        regions, readings = _read_closer(display, regions)
    verdicts = decide(regions, readings, ids, settings.policy, settings.allow)
    shade = grey(display)
    reached: set[Box] = set()
    verdicts = _reached(display, shade, verdicts, reached)
    searched: set[Box] = set()
    for _ in range(GROW_ROUNDS if settings.policy != "all" else 0):
        beside = _lines_beside(display, verdicts, searched)
        if not beside:
            break
        regions = [*(v.region for v in verdicts), *beside]
        readings = [*(v.reading for v in verdicts), *(_read_lines(display, r.box) for r in beside)]
        verdicts = decide(regions, readings, ids, settings.policy, settings.allow)
        verdicts = _reached(display, shade, verdicts, reached)
    return verdicts


def _reached(
    display: np.ndarray, shade: np.ndarray, verdicts: list[Verdict], reached: set[Box]
) -> list[Verdict]:
    """Verdicts whose masked regions are followed along their line and trimmed to
    their glyphs (each once: ``reached`` holds the boxes already done)."""
    out = []
    for v in verdicts:
        if v.mask and v.region.box not in reached:
            box = v.region.box
            box = _row_reach(display, box, vertical=v.region.height > VERTICAL * v.region.width)
            v = replace(v, region=Region(_tightened(shade, box), v.region.score))
            reached.add(v.region.box)
        out.append(v)
    return out


# Above and below an annotation block that identifies, bands are searched again
# for lines the first search missed (:func:`detect.lines_in`): blocks go on at
# their line pitch, and the line the detector lost on speckle or anatomy is as
# identifying as the ones it found beside it. Each band is BAND lines tall (and
# overlaps the block's first or last line by half a line), wider than the block
# by SIDE lines each way; bands are searched for up to GROW_ROUNDS rounds while
# the block keeps growing, and what is found there joins the block (and its
# verdict). Lines missed *between* two found lines are not searched for.
BAND = 3.0
SIDE = 2.0
GROW_ROUNDS = 4


def _lines_beside(display: np.ndarray, verdicts: list[Verdict], searched: set[Box]) -> list[Region]:
    """Regions found in the bands above and below each identifying block of
    horizontal lines, other than those already known. ``searched`` collects the
    bands searched, so that a round searches only around blocks that grew."""
    regions = [v.region for v in verdicts]
    new: list[Region] = []
    for group in blocks(regions):
        lines = [regions[i].box for i in group if regions[i].width > regions[i].height]
        if not lines or not any(verdicts[i].reason in IDENTIFYING for i in group):
            continue
        line = int(np.median([b[3] - b[1] for b in lines]))
        x1, y1 = min(b[0] for b in lines), min(b[1] for b in lines)
        x2, y2 = max(b[2] for b in lines), max(b[3] for b in lines)
        side, band, half = int(SIDE * line), int(BAND * line), line // 2
        for box in (
            (x1 - side, y1 - band, x2 + side, y1 + half),
            (x1 - side, y2 - half, x2 + side, y2 + band),
        ):
            if box in searched:
                continue
            searched.add(box)
            for r in lines_in(display, box):
                if not any(_mostly_within(r.box, o.box) for o in [*regions, *new]):
                    new.append(r)
    return new


def _mostly_within(a: Box, b: Box) -> bool:
    """Whether half of box ``a`` lies within box ``b``."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w > 0 and h > 0 and w * h >= 0.5 * (a[2] - a[0]) * (a[3] - a[1])


def _read_closer(display: np.ndarray, regions: list[Region]) -> tuple[list[Region], list[Reading]]:
    """Every region read. A region the reader reads nothing in is searched again
    closer up (:func:`detect.closer`), and the regions found there replace it:
    the detector sees text there, and fail closed means looking harder rather than
    letting it stay unread. Those are read and decided like any other; if nothing
    is found closer up, the region stays as it was, read as nothing."""
    out_regions: list[Region] = []
    out_readings: list[Reading] = []
    for region in regions:
        reading = _read_lines(display, region.box)
        parts = closer(display, region.box) if reads_nothing(reading) else []
        if parts:
            out_regions += parts
            out_readings += [_read_lines(display, p.box) for p in parts]
        else:
            out_regions.append(region)
            out_readings.append(reading)
    return out_regions, out_readings


# A box's margins are trimmed where they are plain background: rows and columns at
# its edges whose pixels all lie within this many grey levels of the margin's
# median. Only where the margin itself is that plain: over texture nothing is
# trimmed. Visible glyph pixels differ from their background by more (the least
# contrast a person reads is about 15% of the range, 38 levels; half of it at an
# anti-aliased edge).
PLAIN = 12


def _tightened(shade: np.ndarray, box: Box) -> Box:
    """``box`` without the plain background at its edges (DB's regions reach about a
    third of the text height past it), one pixel kept around the text."""
    x1, y1, x2, y2 = box
    crop = shade[y1:y2, x1:x2]
    if crop.shape[0] < 4 or crop.shape[1] < 4:
        return box
    # The rows above and below the text: DB's regions reach past it vertically.
    edge = np.concatenate([crop[0], crop[-1]]).astype(np.int16)
    level = int(np.median(edge))
    if np.abs(edge - level).max() > PLAIN:
        return box
    ink = np.abs(crop.astype(np.int16) - level) > PLAIN
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(rows):
        return box
    return (
        x1 + max(0, int(cols[0]) - 1),
        y1 + max(0, int(rows[0]) - 1),
        x1 + min(crop.shape[1], int(cols[-1]) + 2),
        y1 + min(crop.shape[0], int(rows[-1]) + 2),
    )


# A region that reads as (almost) nothing may be lines the detector ran together
# (lines set close): where its rows (columns, for vertical text) show a clear gap
# between bands of ink, each band is read on its own.
LINE_GAP_INK = 24  # grey levels from the region's median that count as ink
MIN_BAND = 6  # pixels: a band thinner than this holds no line


def _read_lines(display: np.ndarray, box: Box) -> Reading:
    reading = read_region(display, box)
    if sum(c.isalnum() for c in reading.text) >= 3:
        return reading
    x1, y1, x2, y2 = box
    vertical = y2 - y1 > x2 - x1
    crop = grey(display[y1:y2, x1:x2]).astype(np.int16)
    ink = np.abs(crop - int(np.median(crop))) > LINE_GAP_INK
    profile = ink.any(axis=0 if vertical else 1)
    bands = _bands(profile)
    if len(bands) < 2:
        return reading
    parts = [(x1 + a, y1, x1 + b, y2) if vertical else (x1, y1 + a, x2, y1 + b) for a, b in bands]
    read = [r for r in (read_region(display, p) for p in parts) if r.text]
    if not read:
        return reading
    return Reading(" ".join(r.text for r in read), min(r.confidence for r in read))


def _bands(profile: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True (ink) at least MIN_BAND long, each widened by a pixel or two."""
    out = []
    start = None
    for i, on in enumerate([*profile.tolist(), False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            if i - start >= MIN_BAND:
                out.append((max(0, start - 2), min(len(profile), i + 2)))
            start = None
    return out


# A masked line is followed along its row (its column, for vertical text) past
# the region the detector gave: the detector splits a line where its background
# changes (text running from air onto anatomy or speckle), and the rest of a name
# or ID is still there to read. The recogniser reads the row a few text heights
# further each way, and CTC's alignment of its characters with the row says how
# far the glyphs go; a character within a word gap or two of the line's end
# continues it. Fail closed: any character counts, however unsure.
#
# The end of the line is read with a little of the line before it for context:
# given the whole line, the recogniser attends to its clear part and drops a
# faint tail; given the next chunk alone, it reads nothing there.
BACK = 2.0  # text heights of the line read with its continuation
AHEAD = 4.0  # text heights read past its end, per round
REACH_ROUNDS = 6  # rounds while the line keeps going
WORD_GAP = 2.0  # text heights: a character this close to the line continues it
# CTC puts a character at a step inside its glyph, not at its edge: the last
# character's far side lies up to about a character's width past its step, and a
# character is narrower than the height of its line's region.
END_MARGIN = 1.0


def _row_reach(display: np.ndarray, box: Box, vertical: bool = False) -> Box:
    """``box`` widened along its line (a column for vertical text) over the text
    that goes on past it."""
    if vertical:
        # The frame turned a quarter makes the column a row ([i, j] there is
        # [j, width - 1 - i] here); text that ran the other way is upside down.
        width = display.shape[1]
        x1, y1, x2, y2 = box
        a, b, c, d = _line_reach(np.rot90(display, 1), (y1, width - x2, y2, width - x1), True)
        return (width - d, a, width - b, c)
    return _line_reach(display, box, False)


def _line_reach(display: np.ndarray, box: Box, either_way_up: bool) -> Box:
    x1, y1, x2, y2 = box
    width = display.shape[1]
    height = y2 - y1
    back, ahead, gap = int(BACK * height), int(AHEAD * height), WORD_GAP * height
    margin = int(np.ceil(END_MARGIN * height))

    def spans(a: int, b: int) -> list[tuple[int, int]]:
        crop = np.ascontiguousarray(display[y1:y2, a:b])
        found = [(a + s, a + e) for s, e in character_columns(crop)]
        if either_way_up:
            turned = np.ascontiguousarray(crop[::-1, ::-1])
            found += [(b - e, b - s) for s, e in character_columns(turned)]
        return found

    for _ in range(REACH_ROUNDS):
        if x2 >= width:
            break
        right = x2
        for s, e in sorted(spans(max(x1, x2 - back), min(width, x2 + ahead))):
            if s <= right + gap and e > right:
                right = e
        if right == x2:
            break
        x2 = min(width, right + margin)
    for _ in range(REACH_ROUNDS):
        if x1 <= 0:
            break
        left = x1
        for s, e in sorted(spans(max(0, x1 - ahead), min(x2, x1 + back)), key=lambda p: -p[1]):
            if e >= left - gap and s < left:
                left = s
        if left == x1:
            break
        x1 = max(0, left - margin)
    return (x1, y1, x2, y2)


def _native_pixels(ds: Dataset) -> tuple[np.ndarray, bool]:
    """The pixel values to mask, in the stored representation where it can be kept:
    uncompressed YBR_FULL stays YBR (masks written in it), anything compressed comes
    as the decoder gives it. Returns (array, whether it holds YBR_FULL samples)."""
    fast = _native_grey(ds)
    if fast is not None:
        return fast, False
    syntax = ds.file_meta.get("TransferSyntaxUID")
    ybr = (
        photometric(ds) == "YBR_FULL"
        and syntax is not None
        and not syntax.is_compressed
        and int(ds.get("SamplesPerPixel", 1) or 1) == 3
    )
    if ybr:
        from pydicom.pixels import pixel_array

        return pixel_array(ds, as_rgb=False), True
    try:
        return ds.pixel_array, False
    except Exception:
        # What pylibjpeg cannot decode (12-bit JPEG Extended), GDCM may.
        decoded = decode_grey(ds)
        if decoded is None:
            raise
        return decoded, False


def _display(ds: Dataset, frame: np.ndarray, ybr: bool) -> np.ndarray:
    if ybr:
        from pydicom.pixels import convert_color_space

        return convert_color_space(frame, "YBR_FULL", "RGB")
    return shown(ds, frame)


def _native_grey(ds: Dataset) -> np.ndarray | None:
    """The one grey frame of an uncompressed little-endian unsigned image, read straight
    from its bytes (read-only; what ``pixel_array`` gives, without its per-call
    bookkeeping); None otherwise."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or syntax.is_compressed or syntax.is_deflated or not syntax.is_little_endian:
        return None
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return None
    bits = int(ds.BitsAllocated)
    stored = int(ds.get("BitsStored", bits) or bits)
    if bits not in (8, 16) or int(ds.get("PixelRepresentation", 0) or 0) != 0 or is_palette(ds):
        return None
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    value = ds.get_item(PIXEL_DATA).value
    if not rows or not cols or not isinstance(value, bytes) or len(value) < rows * cols * bits // 8:
        return None
    arr = np.frombuffer(value, dtype="<u1" if bits == 8 else "<u2", count=rows * cols)
    if stored < bits:  # bits above BitsStored are not part of the value
        arr = arr & ((1 << stored) - 1)
    return arr.reshape(rows, cols)


def _fill_value(frame: np.ndarray, fill: str, ds: Dataset, ybr: bool) -> np.ndarray | int:
    """The stored value a mask is filled with: black or white as displayed, or the
    frame's most common value."""
    if fill == "background":
        values, counts = np.unique(frame.reshape(-1, *frame.shape[2:]), axis=0, return_counts=True)
        return values[int(np.argmax(counts))]
    if is_palette(ds):
        # The index, among those the frame uses, whose colour is darkest (brightest).
        from pydicom.pixels import apply_color_lut

        used = np.unique(frame)
        shade = apply_color_lut(used, ds).astype(np.float64).sum(axis=-1)
        return used[int(np.argmin(shade) if fill == "black" else np.argmax(shade))]
    if ybr:
        top = 255 if frame.dtype.itemsize == 1 else int(frame.max())
        return np.array(
            [0 if fill == "black" else top, (top + 1) // 2, (top + 1) // 2], dtype=frame.dtype
        )
    dark = (fill == "black") != (photometric(ds) == "MONOCHROME1")  # MONOCHROME1: max shows black
    if frame.ndim == 3:
        return frame.min(axis=(0, 1)) if dark else frame.max(axis=(0, 1))
    return frame.min() if dark else frame.max()


def _apply_masks(
    ds: Dataset,
    arr: np.ndarray,
    frames: list[np.ndarray],
    boxes: list[tuple[int, Box]],
    settings: PixelSettings,
    ybr: bool,
) -> None:
    if not arr.flags.writeable:
        arr = arr.copy()
        frames = frames_of(ds, arr)
    pad = settings.padding
    fills: dict[int, np.ndarray | int] = {}  # per frame, from its pixels before masking
    for index, (x1, y1, x2, y2) in boxes:
        frame = frames[index]
        h, w = frame.shape[:2]
        if index not in fills:
            fills[index] = _fill_value(frame, settings.fill, ds, ybr)
        rows = slice(max(0, y1 - pad), min(h, y2 + pad))
        frame[rows, max(0, x1 - pad) : min(w, x2 + pad)] = fills[index]
    _store(ds, arr, ybr)


def _store(ds: Dataset, arr: np.ndarray, ybr: bool) -> None:
    """Write the masked array back as native, uncompressed little-endian pixel data."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    if len(data) % 2:
        data += b"\x00"
    bits = int(ds.BitsAllocated)
    ds[PIXEL_DATA] = DataElement(PIXEL_DATA, "OB" if bits == 8 else "OW", data)
    if samples == 3:
        # Decoders give RGB for compressed YBR; uncompressed YBR_FULL was kept as it was.
        ds.PhotometricInterpretation = "YBR_FULL" if ybr else "RGB"
        ds.PlanarConfiguration = 0
    meta = ds.file_meta
    syntax = meta.TransferSyntaxUID
    if syntax.is_compressed or not syntax.is_little_endian or syntax.is_deflated:
        # Every value still held as the bytes read must be decoded first, in the byte
        # order it was read in: the writer copies raw bytes of the encoding it is told
        # the dataset came in, and a big-endian US (HighBit 7) copied into a
        # little-endian file reads as 1792.
        _decode_all(ds)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if hasattr(ds, "_is_little_endian"):
            ds.set_original_encoding(False, True)
    ds.BurnedInAnnotation = "NO"


def _decode_all(ds: Dataset) -> None:
    """Convert every element of ``ds`` (sequence items included) from the bytes it
    was read as into its value, so that it is encoded afresh when written."""
    for tag in list(ds.keys()):
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value or ():
                _decode_all(item)
