"""Burned-in text generated afresh: images nobody tuned for, with every glyph known.

Each image is drawn from a seed (``generate(seed)``), so a failing one can be
replayed; the tests draw a new base seed at every run and print it. Everything
is random within what scanners and PACS show people:

- backgrounds: frames of pydicom-data and deid-data (CT, MR, CR, DX, NM), and
  synthetic noise, ultrasound-like speckle, gradients and saturated areas, alone
  or under each other;
- text: PHI blocks (names of several origins, IDs, dates in a dozen formats,
  institutions, addresses, phones), with labels and without, and annotation
  vocabulary that identifies nobody (orientation, units, technique);
- fonts from Debian's font packages (DejaVu, Liberation, FreeFont, Noto Mono:
  serif, sans and monospace, regular and bold), capital height 8-48 pixels;
- light on dark and dark on light, plain, outlined or shadowed, contrast from the
  full display range down to 15% of it; anywhere on the frame, anatomy and noise
  included; horizontal or vertical;
- 8, 12 and 16 bits (signed with a rescale too), MONOCHROME1 and 2 through a
  window, RGB, YBR_FULL and palette colour; multi-frame with text that stays or
  moves.

The image is composed as displayed (values 0-1 through the header's window),
then stored: what a viewer shows is what was drawn.
"""

from __future__ import annotations

import functools
import glob
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

FONT_DIRS = ("/usr/share/fonts/truetype",)
# Font files by family: serif, sans and monospace, regular and bold.
FONT_FILES = (
    "dejavu/DejaVuSans.ttf", "dejavu/DejaVuSans-Bold.ttf", "dejavu/DejaVuSerif.ttf",
    "dejavu/DejaVuSerif-Bold.ttf", "dejavu/DejaVuSansMono.ttf", "dejavu/DejaVuSansMono-Bold.ttf",
    "liberation2/LiberationSans-Regular.ttf", "liberation2/LiberationSans-Bold.ttf",
    "liberation2/LiberationSerif-Regular.ttf", "liberation2/LiberationSerif-Bold.ttf",
    "liberation2/LiberationMono-Regular.ttf", "liberation2/LiberationMono-Bold.ttf",
    "freefont/FreeSans.ttf", "freefont/FreeSansBold.ttf", "freefont/FreeSerif.ttf",
    "freefont/FreeSerifBold.ttf", "freefont/FreeMono.ttf", "freefont/FreeMonoBold.ttf",
    "noto/NotoMono-Regular.ttf", "noto/NotoSansMono-Bold.ttf",
)  # fmt: skip

FIRST = (
    "James", "Mary", "Robert", "Patricia", "Nicole", "Henry", "Scott", "Thomas", "Olivia",
    "Jose", "Maria", "Guadalupe", "Alejandro", "Lucia", "Wei", "Xiaoming", "Mei", "Jun",
    "Priya", "Rahul", "Anjali", "Vikram", "Mohammed", "Fatima", "Omar", "Aisha", "Yusuf",
    "Olga", "Dmitri", "Katarzyna", "Pawel", "Chinwe", "Oluwaseun", "Ngozi", "Kwame",
    "Hiroshi", "Yuki", "Haruto", "Sakura", "Minh", "Thi", "Nguyen", "Siobhan", "Eamon",
    "Ingrid", "Lars", "Astrid", "Giovanni", "Francesca", "Zeynep", "Mehmet", "Leilani",
)  # fmt: skip
LAST = (
    "Whitfield", "Kaufman", "Rivera", "Hoover", "Henry", "Thomas", "Johnson", "Okafor",
    "Garcia", "Hernandez", "Gonzalez", "Zhang", "Wang", "Li", "Chen", "Liu", "Patel",
    "Sharma", "Iyer", "Chatterjee", "Haddad", "Al-Farsi", "Abdullah", "Nasser",
    "Kowalski", "Nowak", "Ivanov", "Smirnova", "Adeyemi", "Mensah", "Okonkwo", "Tanaka",
    "Suzuki", "Yamamoto", "Tran", "Pham", "O'Brien", "McCarthy", "Lindqvist", "Johansson",
    "Rossi", "Bianchi", "Yilmaz", "Kahananui", "Van der Berg", "Dubois", "Moreau",
)  # fmt: skip
INSTITUTIONS = (
    "St. Mary's Hospital", "General Medical Center", "University Hospital",
    "Mercy Regional Clinic", "Riverside Imaging", "Northside Children's Hospital",
    "County General", "Sacred Heart Medical", "Lakeview Radiology", "Memorial Cancer Institute",
)  # fmt: skip
STREETS = ("Oak Street", "Maple Ave", "Elm Rd", "Harbor Blvd", "Pine Lane", "Main St")
CITIES = ("Springfield, IL", "Riverside, CA", "Portland, OR", "Dayton, OH", "Albany, NY")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")  # fmt: skip
# Annotation vocabulary that identifies nobody: what stays on an image.
SAFE_TEXT = (
    "L", "R", "A", "P", "H", "F", "ANT", "POST", "LEFT", "RIGHT", "AXIAL", "CORONAL",
    "SAGITTAL", "SUPINE", "PRONE", "kVp 120", "120 kV", "250 mAs", "W 400 L 40",
    "WL 40 WW 400", "5.0 mm", "2.5mm", "C5-2", "L12-5", "T2 FLAIR", "T1 SE", "DWI",
    "TR 4000", "TE 90", "FOV 350", "x1.5", "10 cm", "Gain 50%", "Depth 16cm", "FR 30Hz",
    "MI 1.2", "TIS 0.4", "2D", "CFM", "PW", "ROI 1", "Ao", "LV", "ABDOMEN", "CHEST", "PA",
    "AP", "LAT", "STANDING", "PORTABLE", "CC", "MLO", "RCC", "LMLO",
)  # fmt: skip


# Half the least contrast drawn (15% of the display range): a change this large
# in a glyph pixel or beside it makes it visible.
VISIBLE = 0.075


@dataclass
class TextItem:
    """One line of text on one frame: its box, the glyph pixels in it, what it says."""

    frame: int
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 on the frame
    glyphs: np.ndarray  # bool, the box's shape: pixels of the glyphs
    text: str
    phi: bool


@dataclass
class Generated:
    seed: int
    dataset: Dataset
    items: list[TextItem] = field(default_factory=list)
    description: str = ""

    @property
    def has_text(self) -> bool:
        return bool(self.items)


# --- backgrounds -------------------------------------------------------------------


def _data_dirs() -> list[str]:
    import data_store
    import deid_data

    return [
        os.path.join(os.path.dirname(data_store.__file__), "data"),
        os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files"),
        os.path.join(os.path.dirname(deid_data.__file__), "data"),
    ]


# Frames without burned-in text of their own, by file name (pydicom-data and
# deid-data): CT, MR, CR, DX, NM.
REAL_FILES = (
    "693_UNCI.dcm", "CT_small.dcm", "MR2_UNCI.dcm", "MR_small.dcm", "emri_small.dcm",
    "RG1_UNCI.dcm", "RG3_UNCI.dcm", "cat.dcm", "JPEG2000_UNC.dcm", "eCT_Supplemental.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
)  # fmt: skip


@functools.cache
def _real_frames() -> list[tuple[str, np.ndarray]]:
    """(modality, displayed frame as float 0-1) of each real background file."""
    from deid_node.deid.pixels.display import grey_display

    found: dict[str, str] = {}
    for d in _data_dirs():
        for path in glob.glob(os.path.join(d, "**", "*.dcm"), recursive=True):
            name = os.path.basename(path)
            if name in REAL_FILES and name not in found:
                found[name] = path
    out = []
    for name in sorted(found):
        ds = pydicom.dcmread(found[name])
        arr = ds.pixel_array
        frame = arr[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr
        display = grey_display(ds, frame).astype(np.float32) / 255.0
        out.append((str(ds.get("Modality", "OT")), display))
    return out


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    return cv2.resize(
        img, (w, h), interpolation=cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR
    )


def _smooth_field(rng: random.Random, h: int, w: int) -> np.ndarray:
    nrng = np.random.default_rng(rng.getrandbits(32))
    coarse = nrng.random((max(2, h // 64), max(2, w // 64))).astype(np.float32)
    return _resize(coarse, h, w)


def _background(rng: random.Random, h: int, w: int) -> tuple[str, np.ndarray]:
    """(modality, grey background 0-1)."""
    nrng = np.random.default_rng(rng.getrandbits(32))
    kind = rng.choice(("real", "real", "real", "noise", "speckle", "gradient", "saturated"))
    if kind == "real":
        modality, frame = rng.choice(_real_frames())
        # A random crop of at least half the frame, resized to the target size.
        fh, fw = frame.shape
        ch, cw = rng.randint(fh // 2, fh), rng.randint(fw // 2, fw)
        y, x = rng.randint(0, fh - ch), rng.randint(0, fw - cw)
        bg = _resize(np.ascontiguousarray(frame[y : y + ch, x : x + cw]), h, w)
    elif kind == "noise":
        modality = rng.choice(("CT", "MR", "CR", "MG"))
        level = rng.uniform(0.1, 0.9)
        bg = level + nrng.normal(0, rng.uniform(0.02, 0.2), (h, w)).astype(np.float32)
    elif kind == "speckle":
        modality = "US"
        tissue = _smooth_field(rng, h, w) * rng.uniform(0.3, 0.8)
        bg = tissue * nrng.rayleigh(0.8, (h, w)).astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        fan = np.abs(xx - w / 2) < (yy + 1) * rng.uniform(0.4, 0.9)
        bg = np.where(fan, bg, 0)
    elif kind == "gradient":
        modality = rng.choice(("CR", "DX", "OT"))
        a, b = rng.uniform(0, 1), rng.uniform(0, 1)
        ramp = np.linspace(a, b, w if rng.random() < 0.5 else h, dtype=np.float32)
        bg = np.broadcast_to(ramp[None, :] if ramp.size == w else ramp[:, None], (h, w)).copy()
        bg += nrng.normal(0, rng.uniform(0, 0.05), (h, w)).astype(np.float32)
    else:
        modality = rng.choice(("CR", "DX", "MG", "XA"))
        bg = _smooth_field(rng, h, w) * rng.uniform(0.2, 1.0)
        for _ in range(rng.randint(1, 4)):
            y1, x1 = rng.randint(0, h - 1), rng.randint(0, w - 1)
            y2, x2 = rng.randint(y1, h), rng.randint(x1, w)
            bg[y1:y2, x1:x2] = rng.choice((0.0, 1.0))
    return modality, np.clip(bg, 0, 1).astype(np.float32)


# --- text --------------------------------------------------------------------------


def _date(rng: random.Random) -> str:
    """A date in one of 13 spellings, month-year ones included."""
    y, m = rng.randint(1925, 2024), rng.randint(1, 12)
    if rng.random() < 0.25:
        mon = MONTHS[m - 1]
        return rng.choice((f"{mon[:3]}{y}", f"{mon} {y}", f"{y}-{m:02d}"))
    return _date_of(rng, y, m, rng.randint(1, 28))


def _person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(LAST), rng.choice(FIRST)


def _name_text(rng: random.Random, last: str, first: str) -> str:
    forms = (
        f"{last}, {first}", f"{first} {last}", f"{last} {first}", f"{last.upper()}^{first.upper()}",
        f"{last.upper()} {first.upper()}", f"{first[0]}. {last}",
    )  # fmt: skip
    text = rng.choice(forms)
    return text.upper() if rng.random() < 0.4 else text


def _patient_id(rng: random.Random) -> str:
    form = rng.randint(0, 3)
    if form == 0:
        return str(rng.randint(10**5, 10**10))
    if form == 1:
        return "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2)) + str(
            rng.randint(10**5, 10**7)
        )
    if form == 2:
        return f"{rng.randint(100, 999)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
    return f"MRN{rng.randint(10**6, 10**8)}"


@dataclass
class Patient:
    last: str
    first: str
    patient_id: str
    birth: tuple[int, int, int]
    institution: str
    accession: str
    physician: tuple[str, str]


def _patient(rng: random.Random) -> Patient:
    last, first = _person(rng)
    return Patient(
        last, first, _patient_id(rng),
        (rng.randint(1925, 2020), rng.randint(1, 12), rng.randint(1, 28)),
        rng.choice(INSTITUTIONS), f"A{rng.randint(10**6, 10**8)}", _person(rng),
    )  # fmt: skip


def _phi_lines(rng: random.Random, p: Patient) -> list[str]:
    """A patient block: some of name, ID, birth date, study date, institution,
    address, phone, accession, physician, with labels or without."""
    y, m, d = p.birth
    birth = _date_of(rng, y, m, d)
    fields = [
        ("Name", _name_text(rng, p.last, p.first)),
        (rng.choice(("ID", "Patient ID", "MRN", "PID")), p.patient_id),
        (rng.choice(("DOB", "Birth", "Born")), birth),
        (rng.choice(("Date", "Study Date", "Exam")), _date(rng)),
        (rng.choice(("Inst", "Institution", "Hospital")), p.institution),
        ("Addr", f"{rng.randint(1, 9999)} {rng.choice(STREETS)}"),
        ("", rng.choice(CITIES) + f" {rng.randint(10000, 99999)}"),
        (rng.choice(("Tel", "Phone")), _phone(rng)),
        (rng.choice(("Acc", "Accession")), p.accession),
        (rng.choice(("Ref", "Dr", "Physician")), f"Dr. {p.physician[0]}"),
    ]  # fmt: skip
    chosen = rng.sample(fields, rng.randint(1, min(6, len(fields))))
    labelled = rng.random() < 0.6
    return [f"{k}: {v}" if labelled and k else v for k, v in chosen]


def _phone(rng: random.Random) -> str:
    return f"({rng.randint(200, 999)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}"


def _date_of(rng: random.Random, y: int, m: int, d: int) -> str:
    """A day in one of ten spellings."""
    mon = MONTHS[m - 1][:3]
    forms = (
        f"{m:02d}/{d:02d}/{y}", f"{d:02d}.{m:02d}.{y}", f"{y}-{m:02d}-{d:02d}",
        f"{y}{m:02d}{d:02d}", f"{d:02d}-{mon.upper()}-{y}", f"{mon} {d}, {y}",
        f"{d} {MONTHS[m - 1]} {y}", f"{y}/{m:02d}/{d:02d}", f"{m:02d}-{d:02d}-{y % 100:02d}",
        f"{d:02d}/{m:02d}/{y}",
    )  # fmt: skip
    return rng.choice(forms)


@functools.cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@functools.cache
def _fonts() -> tuple[str, ...]:
    found = tuple(
        os.path.join(d, f)
        for f in FONT_FILES
        for d in FONT_DIRS
        if os.path.exists(os.path.join(d, f))
    )
    if len(found) < 10:
        raise RuntimeError("fonts missing: scripts/setup.sh --test installs Debian's font packages")
    return found


def _font_for_cap(path: str, cap: int) -> ImageFont.FreeTypeFont:
    """The font at the size whose capital H is ``cap`` pixels tall."""
    ref = _font(path, 100)
    _, top, _, bottom = ref.getbbox("H")
    return _font(path, max(4, round(cap * 100 / max(1, bottom - top))))


def _render_lines(
    lines: list[str], font: ImageFont.FreeTypeFont, spacing: float, right: bool
) -> list[tuple[np.ndarray, int, int]]:
    """Each line's coverage (0-1) and its offset in the block (x, y)."""
    out = []
    y = 0
    ascent, descent = font.getmetrics()
    pitch = round((ascent + descent) * spacing)
    widths = [max(1, int(font.getlength(t)) + 2) for t in lines]
    block_w = max(widths)
    for text, w in zip(lines, widths, strict=True):
        img = Image.new("L", (w, ascent + descent + 2), 0)
        ImageDraw.Draw(img).text((1, 1), text, font=font, fill=255)
        cov = np.asarray(img, dtype=np.float32) / 255.0
        out.append((cov, block_w - w if right else 0, y))
        y += pitch
    return out


# --- composing and storing ----------------------------------------------------------


def _blur(plane: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.blur(plane, (7, 7))


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0


def generate(seed: int) -> Generated:
    """One image from ``seed``: the same seed gives the same image."""
    rng = random.Random(seed)
    size_class = rng.random()
    if size_class < 0.08:
        h, w = rng.randint(64, 200), rng.randint(64, 200)
    elif size_class < 0.94:
        h, w = rng.randint(256, 1024), rng.randint(256, 1024)
    else:
        h, w = rng.randint(1800, 3000), rng.randint(1500, 2600)  # mammogram, CR
    modality, bg = _background(rng, h, w)
    colour = rng.random() < 0.25
    nframes = 1 if rng.random() < 0.85 else rng.randint(2, 4)
    moving = nframes > 1 and rng.random() < 0.5
    text_free = rng.random() < 0.12
    patient = _patient(rng)

    # Frames as displayed: grey (h, w) or colour (h, w, 3), float 0-1.
    frames = []
    nrng = np.random.default_rng(rng.getrandbits(32))
    for k in range(nframes):
        f = bg if k == 0 else np.clip(bg + nrng.normal(0, 0.01, bg.shape).astype(np.float32), 0, 1)
        if colour:
            tint = np.array([rng.uniform(0.7, 1.0) for _ in range(3)], dtype=np.float32)
            f = f[:, :, None] * tint[None, None, :]
        frames.append(f.copy())

    items: list[TextItem] = []
    descr = [f"{w}x{h}", modality, "colour" if colour else "grey", f"{nframes}f"]
    if not text_free:
        blocks = [(_phi_lines(rng, patient), True)]
        if rng.random() < 0.5:
            blocks.append(
                (_phi_lines(rng, _patient(rng)) if rng.random() < 0.3 else [_date(rng)], True)
            )
        for _ in range(rng.randint(0, 3)):
            blocks.append(([rng.choice(SAFE_TEXT)], False))
        occupied: list[tuple[int, int, int, int]] = []
        for lines, phi in blocks:
            items += _draw_block(rng, frames, lines, phi, moving, occupied, colour, descr)
    ds = _store(rng, frames, modality, colour, patient, descr)
    return Generated(seed, ds, items, " ".join(descr))


def _draw_block(
    rng: random.Random,
    frames: list[np.ndarray],
    lines: list[str],
    phi: bool,
    moving: bool,
    occupied: list[tuple[int, int, int, int]],
    colour: bool,
    descr: list[str],
) -> list[TextItem]:
    h, w = frames[0].shape[:2]
    path = rng.choice(_fonts())
    cap = round(8 * (6 ** rng.random()))  # 8-48, more small than large
    cap = min(cap, max(8, h // 8))
    font = _font_for_cap(path, cap)
    rendered = _render_lines(lines, font, rng.uniform(1.1, 1.6), rng.random() < 0.3)
    vertical = rng.random() < 0.12
    rot = rng.choice((1, 3))
    bh = max(y + c.shape[0] for c, _, y in rendered)
    bw = max(x + c.shape[1] for c, x, _ in rendered)
    if vertical:
        bh, bw = bw, bh
    if bh + 8 > h or bw + 8 > w:
        return []
    for _ in range(20):
        y0, x0 = rng.randint(2, h - bh - 2), rng.randint(2, w - bw - 2)
        box = (x0 - 4, y0 - 4, x0 + bw + 4, y0 + bh + 4)
        if not any(_touch(box, o) for o in occupied):
            break
    else:
        return []
    occupied.append(box)
    style = rng.choice(("plain", "plain", "outline", "shadow"))
    contrast = rng.uniform(0.15, 1.0) if rng.random() < 0.7 else 1.0
    light = rng.random() < 0.6
    hue = np.array(
        rng.choice(((1, 1, 1), (1, 1, 0), (0, 1, 0), (0, 1, 1), (1, 0.5, 0), (1, 0, 0))),
        dtype=np.float32,
    )
    descr.append(f"[{Path(path).stem} {cap}px {style} c{contrast:.2f} {'V' if vertical else 'H'}]")
    items = []
    step = (rng.randint(-6, 6), rng.randint(-6, 6)) if moving else (0, 0)
    for k, frame in enumerate(frames):
        dx, dy = step[0] * k, step[1] * k
        ox = min(max(0, x0 + dx), w - bw - 1)
        oy = min(max(0, y0 + dy), h - bh - 1)
        for (cov, lx, ly), text in zip(rendered, lines, strict=True):
            if vertical:
                cov = np.rot90(cov, rot)
                lh, lw = cov.shape
                # Lines of a vertical block stack along x.
                px = ox + ly
                py = oy + (bh - lh - lx if rot == 1 else lx)
                px = min(max(0, px), w - lw)
                py = min(max(0, py), h - lh)
            else:
                lh, lw = cov.shape
                px, py = ox + lx, oy + ly
            if py + lh > h or px + lw > w:
                continue
            region = frame[py : py + lh, px : px + lw]
            untouched = region.copy()
            plane = region if region.ndim == 2 else region.max(axis=2)
            base = float(np.mean(plane))
            grain = float(np.std(plane - _blur(plane)))
            level, dark_level = _levels(base, contrast, light, grain)
            alpha = cov[:, :, None] if region.ndim == 3 else cov
            if style == "outline":
                ring = _dilate(cov > 0.3, 1 if lh < 30 else 2) & ~(cov > 0.5)
                r = ring[:, :, None] if region.ndim == 3 else ring
                region[...] = np.where(r, dark_level, region)
            elif style == "shadow":
                sh = np.zeros_like(cov)
                sh[1:, 1:] = cov[:-1, :-1]
                s = sh[:, :, None] if region.ndim == 3 else sh
                region[...] = region * (1 - s) + dark_level * s
            ink = level * hue if region.ndim == 3 and colour else level
            region[...] = region * (1 - alpha) + ink * alpha
            # Glyph pixels a person can see: the text (or its outline, its shadow
            # next to it) changed them or a neighbour by half the least contrast
            # drawn. Text crossing into a background at its own level is not
            # there to read, and no mask is owed for it.
            change = np.abs(region - untouched)
            if change.ndim == 3:
                change = change.max(axis=2)
            glyphs = (cov >= 0.5) & _dilate(change >= VISIBLE, 1)
            ys, xs = np.nonzero(glyphs)
            if not len(ys):
                continue
            gy1, gy2, gx1, gx2 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            items.append(
                TextItem(
                    k,
                    (px + gx1, py + gy1, px + gx2, py + gy2),
                    glyphs[gy1:gy2, gx1:gx2].copy(),
                    text,
                    phi,
                )
            )
    return items


def _levels(base: float, contrast: float, light: bool, noise: float) -> tuple[float, float]:
    """The text's level and its outline's: ``contrast`` away from the background's
    mean, and at least 1.5 times the background's grain (text a person reads over
    noise stands out from it), on the side asked for if it has room, else on the
    side with more room."""
    want = max(contrast, 1.5 * noise)
    room_light, room_dark = 1.0 - base, base
    if (light and room_light < want and room_dark > room_light) or (
        not light and room_dark < want and room_light > room_dark
    ):
        light = not light
    c = min(want, room_light if light else room_dark)
    if light:
        return base + c, max(0.0, base - c * 0.5)
    return base - c, min(1.0, base + c * 0.5)


def _touch(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _store(
    rng: random.Random,
    frames: list[np.ndarray],
    modality: str,
    colour: bool,
    p: Patient,
    descr: list[str],
) -> Dataset:
    """The displayed frames as a DICOM dataset whose viewer shows them as drawn."""
    h, w = frames[0].shape[:2]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientName = f"{p.last}^{p.first}"
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = f"{p.birth[0]:04d}{p.birth[1]:02d}{p.birth[2]:02d}"
    ds.InstitutionName = p.institution
    ds.AccessionNumber = p.accession
    ds.ReferringPhysicianName = f"{p.physician[0]}^{p.physician[1]}"
    ds.StudyDate = "20240105"
    ds.Rows, ds.Columns = h, w
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    stack = np.stack(frames)
    if colour:
        rgb = np.clip(np.rint(stack * 255), 0, 255).astype(np.uint8)
        form = rng.choice(("RGB", "YBR_FULL"))
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        if form == "YBR_FULL":
            from pydicom.pixels import convert_color_space

            rgb = convert_color_space(rgb, "RGB", "YBR_FULL")
        ds.PhotometricInterpretation = form
        data = rgb
    else:
        form = rng.choice(("M2-8", "M2-12", "M2-16s", "M1-12", "M1-16", "PAL"))
        ds.SamplesPerPixel = 1
        if form == "PAL":
            ds.PhotometricInterpretation = "PALETTE COLOR"
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit, ds.PixelRepresentation = 7, 0
            data = np.clip(np.rint(stack * 255), 0, 255).astype(np.uint8)
            ramp = np.arange(256, dtype=np.uint16) * 257
            tint = [rng.uniform(0.6, 1.0) for _ in range(3)]
            for colour_name, t in zip(("Red", "Green", "Blue"), tint, strict=True):
                setattr(ds, f"{colour_name}PaletteColorLookupTableDescriptor", [256, 0, 16])
                lut = (ramp * t).astype("<u2")
                ds[f"{colour_name}PaletteColorLookupTableData"] = pydicom.DataElement(
                    {"Red": 0x00281201, "Green": 0x00281202, "Blue": 0x00281203}[colour_name],
                    "OW",
                    lut.tobytes(),
                )
        else:
            mono1 = form.startswith("M1")
            bits = int(re.sub(r"\D", "", form.split("-")[1]))
            signed = form.endswith("s")
            ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
            ds.BitsAllocated = 8 if bits == 8 else 16
            ds.BitsStored, ds.HighBit = bits, bits - 1
            ds.PixelRepresentation = 1 if signed else 0
            shown = 1.0 - stack if mono1 else stack
            if bits == 8:
                data = np.clip(np.rint(shown * 255), 0, 255).astype(np.uint8)
            else:
                top = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
                bottom = -(1 << (bits - 1)) if signed else 0
                width = rng.randint(256, max(257, min(4000, top - bottom)))
                lo = rng.randint(bottom, top - width)
                intercept = -1024 if signed else 0
                stored = np.rint(lo + shown * (width - 1)).astype(np.int32)
                data = stored.astype(np.int16 if signed else np.uint16)
                centre = lo + 0.5 + (width - 1) / 2
                ds.WindowCenter = f"{centre + intercept:.1f}"
                ds.WindowWidth = str(width)
                ds.RescaleIntercept, ds.RescaleSlope = str(intercept), "1"
        descr.append(form)
    if len(frames) == 1:
        data = data[0]
    ds.PixelData = np.ascontiguousarray(data).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    ds.is_little_endian, ds.is_implicit_VR = True, False  # noqa: for pydicom's writer
    return ds


def write(generated: Generated, path: Path) -> Path:
    generated.dataset.save_as(path, enforce_file_format=True)
    return path


# --- judging ------------------------------------------------------------------------

GLYPHS_UNDER_MASK = 0.98  # share of a PHI box's visible glyph pixels a mask must cover
NEAR_TEXT = 4  # pixels this close to text may change


@dataclass
class Judged:
    """How a de-identified image fared against what was drawn on it."""

    seed: int
    phi_boxes: int = 0
    hidden: int = 0
    missed: list[str] = field(default_factory=list)  # "seed frame: why" (no PHI text)
    outside: float = 0.0  # share of pixels more than NEAR_TEXT from any text changed
    text_free: bool = False
    identical: bool = True  # Pixel Data byte for byte (checked on text-free images)
    honest: bool = True  # every reported mask is one fill value on the output
    seconds: float = 0.0  # CPU seconds of the pixel pass


def judge(generated: Generated, clean, settings) -> Judged:  # type: ignore[no-untyped-def]
    """Run ``clean(ds, settings)`` (the pass) on the generated image, as a file read
    back, and judge it: a PHI box is hidden when at least 98% of its visible glyph
    pixels are under a mask and neither reader reads any of its words (three
    characters or more) from the output crop."""
    import io
    import time

    from deid_node.deid.pixels.display import shown
    from deid_node.deid.pixels.legibility import legible_words, words_of

    buffer = io.BytesIO()
    generated.dataset.save_as(buffer, enforce_file_format=True)
    before = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    ds = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    start = time.process_time()
    result = clean(ds, settings)
    out = Judged(generated.seed, seconds=time.process_time() - start)
    out.text_free = not generated.items
    out.identical = ds.PixelData == before.PixelData
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    h, w = int(ds.Rows), int(ds.Columns)
    old, new = before.pixel_array, ds.pixel_array
    masks = [np.zeros((h, w), bool) for _ in range(nframes)]
    pad = settings.padding
    for k, (x1, y1, x2, y2) in result.boxes:
        area = (
            slice(max(0, y1 - pad), min(h, y2 + pad)),
            slice(max(0, x1 - pad), min(w, x2 + pad)),
        )
        masks[k][area] = True
        values = (new[k] if nframes > 1 else new)[area]
        flat = values.reshape(-1, values.shape[-1]) if values.ndim == 3 else values.reshape(-1, 1)
        if len(flat) and not (flat == flat[0]).all():
            out.honest = False
    outside = []
    for k in range(nframes):
        f0 = old[k] if nframes > 1 else old
        f1 = new[k] if nframes > 1 else new
        near = np.zeros((h, w), bool)
        items = [it for it in generated.items if it.frame == k]
        for it in items:
            x1, y1, x2, y2 = it.box
            near[
                max(0, y1 - NEAR_TEXT) : y2 + NEAR_TEXT, max(0, x1 - NEAR_TEXT) : x2 + NEAR_TEXT
            ] = True
        changed = f0 != f1
        if changed.ndim == 3:
            changed = changed.any(axis=2)
        outside.append(float((changed & ~near).mean()))
        display = None
        for it in items:
            if not it.phi or not it.glyphs.any():
                continue
            out.phi_boxes += 1
            x1, y1, x2, y2 = it.box
            covered = float(masks[k][y1:y2, x1:x2][it.glyphs].mean())
            if covered < GLYPHS_UNDER_MASK:
                out.missed.append(
                    f"{generated.seed} frame {k}: {covered:.0%} of the glyphs under a mask"
                )
                continue
            if display is None:
                display = shown(ds, f1)
            m = max(2, (y2 - y1) // 4)
            read = legible_words(display, (x1 - m, y1 - m, x2 + m, y2 + m), words_of(it.text))
            if read:
                out.missed.append(f"{generated.seed} frame {k}: {len(read)} word(s) still read")
                continue
            out.hidden += 1
    out.outside = float(np.mean(outside))
    return out


def _corpus_glyphs(
    display: np.ndarray, box: list[int]
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """A corpus box clipped to the frame, and its glyph pixels: those that stand out
    from the background at the box's border (its median) by more than the border's
    own spread and by at least a tenth of the display range."""
    from deid_node.deid.pixels.display import grey

    h, w = display.shape[:2]
    x1, y1, x2, y2 = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
    crop = grey(display)[y1:y2, x1:x2].astype(np.int16)
    if crop.size == 0:
        return (x1, y1, x2, y2), np.zeros((0, 0), bool)
    ring = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
    level = np.median(ring)
    spread = np.percentile(np.abs(ring - level), 90)
    return (x1, y1, x2, y2), np.abs(crop - level) > max(25.5, spread)


def judge_corpus_file(path: Path, clean, settings) -> Judged:  # type: ignore[no-untyped-def]
    """The same rule on a file of the shared corpus, whose ``.json`` gives each value's
    box (not its glyphs: the pixels in the box that stand out from its border are
    taken for them). Pixels away from every box, labels included, count as outside."""
    import json
    import time

    from deid_node.deid.pixels.display import shown
    from deid_node.deid.pixels.legibility import legible_words, words_of

    before = pydicom.dcmread(path)
    ds = pydicom.dcmread(path)
    start = time.process_time()
    result = clean(ds, settings)
    out = Judged(0, seconds=time.process_time() - start)
    shown_before = shown(before, before.pixel_array)
    shown_after = shown(ds, ds.pixel_array) if result.masked else shown_before
    h, w = shown_before.shape[:2]
    masked = np.zeros((h, w), dtype=bool)
    pad = settings.padding
    for _frame, (x1, y1, x2, y2) in result.boxes:
        masked[max(0, y1 - pad) : y2 + pad, max(0, x1 - pad) : x2 + pad] = True
    near = np.zeros((h, w), dtype=bool)
    annotations = json.loads(path.with_suffix(".json").read_text())["annotation"]
    for ann in annotations:
        for part in ("key", "value"):
            if "bbox" in ann.get(part, {}):
                x1, y1, x2, y2 = ann[part]["bbox"]
                near[
                    max(0, y1 - NEAR_TEXT) : y2 + NEAR_TEXT, max(0, x1 - NEAR_TEXT) : x2 + NEAR_TEXT
                ] = True
    for ann in annotations:
        value = ann.get("value", {})
        if "bbox" not in value:
            continue
        (x1, y1, x2, y2), glyphs = _corpus_glyphs(shown_before, value["bbox"])
        if not glyphs.any():
            continue
        out.phi_boxes += 1
        under = float(masked[y1:y2, x1:x2][glyphs].mean())
        read = legible_words(shown_after, (x1, y1, x2, y2), words_of(value["text"]))
        if under >= GLYPHS_UNDER_MASK and not read:
            out.hidden += 1
        else:
            out.missed.append(f"{path.name}: {under:.0%} under masks, {len(read)} word(s) read")
    changed = before.pixel_array != ds.pixel_array
    if changed.ndim == 3:
        changed = changed.any(axis=2)
    out.outside = float((changed & ~near).mean())
    return out
