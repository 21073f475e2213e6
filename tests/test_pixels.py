"""Clean Pixel Data: burned-in text that nobody can read afterwards, everything else
left alone.

"Hidden" is judged as a person would: a PHI box is hidden when at least 98% of its
glyph pixels are under a mask *and* neither reader (PP-OCR's recogniser, Tesseract
in both polarities) reads any of its words from the output. OCR failing alone
proves nothing: it fails on text over noise that people read easily.

The main evidence is generated afresh at every run (:mod:`tests.burned_in`): the
base seed is drawn, printed, and can be replayed with ``DEID_PIXEL_SEED``.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
from pathlib import Path

import deid_data
import numpy as np
import pydicom
import pytest

from deid_node.config import ConfigError, parse_config
from deid_node.deid.pixels.clean import clean_pixel_data
from deid_node.deid.pixels.display import shown
from deid_node.deid.pixels.legibility import legible_words
from deid_node.deid.pixels.settings import PixelSettings, Template
from tests.conftest import CORPUS

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
ULTRASOUNDS = Path(deid_data.__file__).parent / "data" / "ultrasounds"
GENERATED_IMAGES = int(os.environ.get("DEID_PIXEL_IMAGES", "400"))


def _judge_one(seed: int):  # type: ignore[no-untyped-def]
    from tests.burned_in import generate, judge

    return judge(generate(seed), clean_pixel_data, PixelSettings())


@pytest.fixture(scope="module")
def generated_outcome() -> dict[str, object]:
    base = int(os.environ.get("DEID_PIXEL_SEED", random.SystemRandom().randrange(10**9)))
    print(f"\ngenerated burned-in set: base seed {base} (replay: DEID_PIXEL_SEED={base})")
    seeds = range(base, base + GENERATED_IMAGES)
    # Two processes (the machines have two cores); each loads the models once.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        judged = pool.map(_judge_one, seeds, chunksize=8)
    boxes = sum(j.phi_boxes for j in judged)
    text_free = [j for j in judged if j.text_free]
    outcome = {
        "base": base,
        "images": len(judged),
        "boxes": boxes,
        "hidden": sum(j.hidden for j in judged) / max(boxes, 1),
        "outside_mean": float(np.mean([j.outside for j in judged])),
        "text_free": len(text_free),
        "text_free_changed": [j.seed for j in text_free if not j.identical],
        "dishonest": [j.seed for j in judged if not j.honest],
        "missed": [m for j in judged for m in j.missed],
        "cpu_per_image": float(np.mean([j.seconds for j in judged])),
    }
    print(f"generated burned-in set: { {k: v for k, v in outcome.items() if k != 'missed'} }")
    for line in outcome["missed"]:  # type: ignore[attr-defined]
        print(f"  not hidden: seed {line}")
    return outcome


def test_generated_phi_boxes_are_hidden(generated_outcome: dict) -> None:  # type: ignore[type-arg]
    # Measured 99.0-99.3% of PHI boxes on sets of 200 fresh seeds since lines are
    # followed by the recogniser's alignment (issue 18 asks 99.5%: open).
    assert generated_outcome["images"] >= 400 or GENERATED_IMAGES < 400
    assert generated_outcome["boxes"] >= 2 * generated_outcome["images"]
    assert generated_outcome["hidden"] >= 0.975, generated_outcome["missed"]


def test_generated_masks_stay_near_the_text(generated_outcome: dict) -> None:  # type: ignore[type-arg]
    # Pixels more than 4 px from any text changed: measured 0.9-1.56% of an image on
    # average over sets of 150-400 images (1.56% on base seed 743247130, where ten
    # frames, most under 150 pixels a side or with lines followed over bone, had
    # 14-21% changed; the two worst had as much or more changed with the code of
    # 738eb5e, before this bound was raised).
    # This is a guard against regressions, not the goal: issue 18 asks 0.5% (open).
    assert generated_outcome["outside_mean"] <= 0.02
    assert not generated_outcome["dishonest"], "a reported mask is not one fill value"


def test_generated_text_free_images_keep_their_bytes(generated_outcome: dict) -> None:  # type: ignore[type-arg]
    # Measured 0-2 of about 48 per run changed: the detector takes a fold of
    # anatomy for a line, and the recogniser reads digits off it with a confidence
    # of 0.2-0.3, which fails closed (issue 18 asks none: open).
    assert generated_outcome["text_free"] >= 20
    changed = generated_outcome["text_free_changed"]
    assert len(changed) <= 0.05 * generated_outcome["text_free"], changed


def _judge_corpus_file(path: Path):  # type: ignore[no-untyped-def]
    from tests.burned_in import judge_corpus_file

    return judge_corpus_file(path, clean_pixel_data, PixelSettings())


@pytest.fixture(scope="module")
def corpus_outcome() -> dict[str, object]:
    files = sorted(CORPUS.glob("*.dcm"))
    assert len(files) >= 100, "shared corpus missing"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        judged = pool.map(_judge_corpus_file, files, chunksize=4)
    boxes = sum(j.phi_boxes for j in judged)
    hidden = sum(j.hidden for j in judged)
    missed = [m for j in judged for m in j.missed]
    print(f"\npixel pass on the shared corpus: {boxes} value boxes, {hidden / boxes:.4f} hidden")
    for line in missed:
        print(f"  not hidden: {line}")
    return {"boxes": boxes, "hidden": hidden / boxes, "missed": missed}


def test_corpus_value_boxes_are_hidden(corpus_outcome: dict) -> None:  # type: ignore[type-arg]
    # Value boxes with glyphs that stand out (347 of 656: the rest lie off the frame,
    # or show nothing). Measured 91.6% (88.5% before regions read as nothing were
    # searched closer up and identifying blocks searched for lost lines): an MR
    # series of 4-pixel text of a few grey levels and CT text over speckle and a
    # saturated body are still missed (issue 18 asks 99.5%: open).
    assert corpus_outcome["boxes"] >= 300
    assert corpus_outcome["hidden"] >= 0.90, corpus_outcome["missed"]


def _no_text_files() -> list[Path]:
    """Images of pydicom's and pydicom-data's test files that carry no burned-in text
    (CT, MR, CR, NM, RT dose, segmentations; not ultrasound or captures)."""
    import data_store

    roots = [PYDICOM_FILES, Path(data_store.__file__).parent / "data"]
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.dcm")):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue  # no file meta, broken on purpose: not an image for this test
            modality = str(ds.get("Modality", "") or "")
            if ds.get("Rows") and modality in {"CT", "MR", "CR", "NM", "RTDOSE", "SEG"}:
                found.append(path)
    return found


def test_images_without_text_keep_their_pixel_data_bytes() -> None:
    files = _no_text_files()
    assert len(files) >= 40, "PyPI test corpora missing"
    checked = 0
    changed = []
    for path in files:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            continue
        original = ds.PixelData
        try:
            result = clean_pixel_data(ds, PixelSettings())
        except Exception:
            continue  # undecodable on purpose (truncated, bad VR): quarantined in the node
        if result.masked or ds.PixelData != original:
            changed.append(f"{path.name}: {result.reasons}")
        checked += 1
    assert checked >= 40
    assert not changed


def test_a_text_free_palette_photograph_keeps_its_bytes() -> None:
    import data_store

    path = Path(data_store.__file__).parent / "data" / "OT-PAL-8-face.dcm"
    if not path.exists():
        pytest.skip("OT-PAL-8-face.dcm is not in this pydicom-data")
    ds = pydicom.dcmread(path, force=True)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    original = ds.PixelData
    result = clean_pixel_data(ds, PixelSettings())
    assert not result.masked, result.reasons
    assert ds.PixelData == original


@pytest.mark.parametrize(
    ("path", "secrets"),
    [
        (ULTRASOUNDS / "GREYSCALE_IMAGE.dcm", ["patientfive", "00079241539", "03022017"]),
        (ULTRASOUNDS / "RGB_IMAGE.dcm", ["downtime", "4142020", "cleveland"]),
        (PYDICOM_FILES / "examples_rgb_color.dcm", ["baptist"]),
        (PYDICOM_FILES / "examples_jpeg2k.dcm", ["baptist"]),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else "",
)
def test_ultrasound_identifiers_become_unreadable(path: Path, secrets: list[str]) -> None:
    ds = pydicom.dcmread(path)
    frame = ds.pixel_array[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds.pixel_array
    h, w = frame.shape[:2]
    before = legible_words(shown(ds, frame), (0, 0, w, h), secrets)
    result = clean_pixel_data(ds, PixelSettings())
    assert result.masked
    assert ds.BurnedInAnnotation == "NO"
    assert not ds.file_meta.TransferSyntaxUID.is_compressed
    frame = ds.pixel_array[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds.pixel_array
    display = shown(ds, frame)
    # Read line by line where the detector finds text, and as a whole.
    from deid_node.deid.pixels.legible import legible_identifiers

    after = legible_words(display, (0, 0, w, h), secrets)
    assert not after, f"still read: {len(after)} of {len(secrets)} (before: {len(before)})"
    assert not legible_identifiers(ds, pydicom.dcmread(path))


def test_multiframe_rle_is_masked_on_every_frame_and_written_uncompressed() -> None:
    ds = pydicom.dcmread(PYDICOM_FILES / "SC_rgb_rle_2frame.dcm")
    frames = int(ds.NumberOfFrames)
    settings = PixelSettings(templates=(Template(boxes=((10, 10, 30, 20),), modality="OT"),))
    result = clean_pixel_data(ds, settings)
    assert {f for f, _ in result.boxes} == set(range(frames))
    arr = ds.pixel_array
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.PhotometricInterpretation == "RGB"
    for i in range(frames):
        region = arr[i, 8:22, 8:32]
        assert (region == region[0, 0]).all(), "the template box is one fill colour"


def test_ybr_full_is_masked_in_ybr() -> None:
    """Uncompressed YBR_FULL keeps its colour space: masks are written as YBR samples
    (black is Y 0, Cb and Cr at their middle), nothing converted."""
    import data_store

    path = Path(data_store.__file__).parent / "data" / "SC_ybr_full_uncompressed.dcm"
    ds = pydicom.dcmread(path)
    before = pydicom.pixels.pixel_array(pydicom.dcmread(path), as_rgb=False)
    template = Template(boxes=((10, 10, 30, 20),))
    clean_pixel_data(ds, PixelSettings(padding=0, templates=(template,)))
    assert ds.PhotometricInterpretation == "YBR_FULL"
    after = pydicom.pixels.pixel_array(ds, as_rgb=False)
    assert (after[10:20, 10:30] == [0, 128, 128]).all()
    untouched = np.ones(after.shape[:2], bool)
    untouched[10:20, 10:30] = False
    assert (after[untouched] == before[untouched]).all()


def test_template_blanks_unread_and_keeps_signed_values() -> None:
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    arr_before = ds.pixel_array.copy()
    template = Template(boxes=((0, 0, 20, 10),), modality="CT", rows=128, columns=128)
    result = clean_pixel_data(ds, PixelSettings(padding=0, templates=(template,)))
    assert result.triage == "template"
    arr = ds.pixel_array
    assert arr.dtype == arr_before.dtype
    assert (arr[0:10, 0:20] == arr_before.min()).all()
    assert (arr[10:, :] == arr_before[10:, :]).all()
    other = Template(boxes=((0, 0, 20, 10),), manufacturer="NoSuchVendor*")
    ds2 = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    assert not clean_pixel_data(ds2, PixelSettings(templates=(other,))).masked


def test_vocabulary_keeps_annotations_and_refuses_identifiers() -> None:
    from deid_node.deid.pixels.vocabulary import safe_tokens

    for text in ("L", "AXIAL", "kVp 120", "W 400 L 40", "5.0 mm", "C5-2", "T2 FLAIR", "LMLO"):
        assert safe_tokens(text), text
    for text in ("JOHN", "571403367", "07/28/1942", "28.07.1942", "1942", "Sep1999", "12/05"):
        assert not safe_tokens(text), text
    assert safe_tokens("SPOT TOMO", allowed=("spot", "tomo"))


def test_a_region_stays_only_if_read_with_confidence_and_known_safe() -> None:
    from deid_node.deid.pixels.detect import Region
    from deid_node.deid.pixels.phi import Identifiers
    from deid_node.deid.pixels.recognise import Reading
    from deid_node.deid.pixels.verdict import decide

    ids = Identifiers(frozenset({"whitfield", "john"}), ("whitfield",))
    row = Region((10, 10, 200, 30), 0.9)
    cases = {
        Reading("AXIAL", 0.95): "",
        Reading("AXIAL", 0.2): "low-confidence",
        Reading("Whitfield", 0.99): "identifier",
        Reading("Name: KAUFMAN", 0.99): "identifier",  # a label
        Reading("KAUFMAN SCOTT", 0.99): "unknown-text",  # a name nobody listed
        Reading("8155012288", 0.99): "unknown-text",  # ID-like number
        Reading("L", 0.2): "",  # one letter spells nobody
    }
    for reading, reason in cases.items():
        (verdict,) = decide([row], [reading], ids, "phi")
        assert verdict.reason == reason, reading
    # A safe word in an identifying block goes with it.
    below = Region((10, 34, 120, 54), 0.9)
    verdicts = decide([row, below], [Reading("KAUFMAN", 0.99), Reading("AXIAL", 0.99)], ids, "phi")
    assert [v.reason for v in verdicts] == ["unknown-text", "block"]
    assert all(v.mask for v in decide([row], [Reading("AXIAL", 0.99)], ids, "all"))


def test_small_and_vertical_text_is_detected() -> None:
    """Capitals of 8 pixels, and text running down the frame, are found."""
    from PIL import Image, ImageDraw

    from deid_node.deid.pixels.detect import detect
    from tests.burned_in import _font_for_cap, _fonts

    font = _font_for_cap(_fonts()[0], 8)
    img = Image.new("L", (400, 300), 30)
    ImageDraw.Draw(img).text((20, 20), "Name: HENRY NICOLE", font=font, fill=220)
    line = Image.new("L", (200, 24), 30)
    ImageDraw.Draw(line).text((2, 2), "ID 571403367", font=_font_for_cap(_fonts()[0], 14), fill=220)
    img.paste(line.rotate(90, expand=True), (350, 60))
    regions = detect(np.asarray(img))
    assert any(r.box[1] <= 22 <= r.box[3] and r.box[0] <= 30 for r in regions), regions
    assert any(r.height > 2 * r.width and r.box[0] >= 340 for r in regions), regions


def test_a_masked_line_is_followed_onto_speckle_and_stops_where_the_text_does() -> None:
    """The detector splits a line where its background changes; the mask follows
    the glyphs the recogniser aligns past the region, and no further."""
    from PIL import Image, ImageDraw

    from deid_node.deid.pixels.clean import _row_reach
    from tests.burned_in import _font_for_cap, _fonts

    font = _font_for_cap(_fonts()[0], 14)
    text = "Name: HENRY NICOLE WHITFIELD"
    ink = Image.new("L", (640, 60), 0)
    ImageDraw.Draw(ink).text((20, 20), text, font=font, fill=255)
    glyphs = np.asarray(ink) > 127
    rows, cols = np.flatnonzero(glyphs.any(axis=1)), np.flatnonzero(glyphs.any(axis=0))
    background = np.full((60, 640), 30.0)
    background[:, 160:] = np.random.default_rng(7).uniform(0, 110, (60, 480))
    frame = np.where(glyphs, 140.0, background).astype(np.uint8)
    y1, y2 = int(rows[0]) - 4, int(rows[-1]) + 5
    head = (int(cols[0]) - 2, y1, 150, y2)  # the part over the plain background
    reached = _row_reach(frame, head)
    assert reached[0] <= cols[0] and reached[2] >= cols[-1], (reached, cols[0], cols[-1])
    # Over a plain background the line ends where the text does.
    plain = np.where(glyphs, 190, 30).astype(np.uint8)
    whole = (int(cols[0]) - 2, y1, int(cols[-1]) + 3, y2)
    x1, _, x2, _ = _row_reach(plain, whole)
    assert whole[0] - (y2 - y1) <= x1 and x2 <= whole[2] + (y2 - y1), (x1, x2, whole)


def test_models_ship_in_the_wheel_and_run_on_one_thread() -> None:
    from deid_node.deid.pixels.models import DETECTOR_FILE, RECOGNISER_FILE, model_path, session

    for name in (DETECTOR_FILE, RECOGNISER_FILE):
        assert model_path(name).stat().st_size > 1_000_000
        assert session(name).get_session_options().intra_op_num_threads == 1


def test_policy_all_masks_text_that_is_not_phi() -> None:
    from PIL import Image, ImageDraw

    from tests.burned_in import _font_for_cap, _fonts

    font = _font_for_cap(_fonts()[0], 16)
    img = Image.new("L", (400, 200), 20)
    draw = ImageDraw.Draw(img)
    draw.text((20, 20), "AXIAL", font=font, fill=230)
    draw.text((20, 140), "Name: KAUFMAN SCOTT", font=font, fill=230)
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 200, 400, 1
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.asarray(img).tobytes()
    phi = clean_pixel_data(ds.copy(), PixelSettings(policy="phi"))
    every = clean_pixel_data(ds.copy(), PixelSettings(policy="all"))
    assert [b[1] for _, b in phi.boxes] and all(b[1] > 100 for _, b in phi.boxes), phi
    assert any(b[1] < 60 for _, b in every.boxes), every


def test_presidio_engine_masks_what_presidio_finds() -> None:
    ds = pydicom.dcmread(ULTRASOUNDS / "GREYSCALE_IMAGE.dcm")
    before = ds.pixel_array.copy()
    result = clean_pixel_data(ds, PixelSettings(engine="presidio"))
    assert result.masked
    assert (ds.pixel_array != before).any()


def test_pixel_settings_are_validated(tmp_path: Path) -> None:
    good = parse_config(
        {
            "pixels": {
                "policy": "all",
                "engine": "presidio",
                "padding": 4,
                "fill": "white",
                "allow": ["SPOT", "tomo"],
                "template": [{"modality": "US", "rows": 480, "boxes": [[0, 0, 640, 40]]}],
            }
        },
        tmp_path,
    )
    assert good.pixels.policy == "all"
    assert good.pixels.engine == "presidio"
    assert good.pixels.allow == ("spot", "tomo")
    assert good.pixels.templates[0].boxes == ((0, 0, 640, 40),)
    for bad, key in (
        ({"policy": "some"}, "[pixels] policy"),
        ({"engine": "magic"}, "[pixels] engine"),
        ({"fill": "red"}, "[pixels] fill"),
        ({"padding": -1}, "[pixels] padding"),
        ({"allow": ["two words"]}, "[pixels] allow"),
        ({"ocr_modalities": ["US"]}, "[pixels] ocr_modalities: no longer used"),
        ({"template": [{"boxes": [[5, 5, 1, 1]]}]}, "boxes"),
        ({"template": [{"modality": "US"}]}, "boxes: required"),
        ({"colour": 1}, "[pixels] colour"),
    ):
        with pytest.raises(ConfigError, match=re.escape(key)):
            parse_config({"pixels": bad}, tmp_path)


def test_node_masks_burned_in_text_before_forwarding(archive, make_node) -> None:  # type: ignore[no-untyped-def]
    """Through a running node: storescu in, storescp out, the burned-in values gone."""
    from tests.conftest import storescu, wait_until

    sources = sorted(CORPUS.glob("6415974217_*.dcm"))[:3]
    node = make_node(archive.port, workers=1)
    node.start()
    storescu(node.port, sources)
    assert wait_until(lambda: len(archive.files()) == len(sources), timeout=120), node.log_text()
    originals = {pydicom.dcmread(p).pixel_array.tobytes(): p for p in sources}
    for path in archive.files():
        out = pydicom.dcmread(path)
        assert out.BurnedInAnnotation == "NO"
        codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
        assert "113101" in codes  # Clean Pixel Data
        assert out.pixel_array.tobytes() not in originals, "the pixels were masked"


def test_preload_loads_the_pixel_pass_in_every_worker(archive, make_node) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import wait_until

    node = make_node(archive.port, workers=2)
    text = node.config_path.read_text()
    node.config_path.write_text(text.replace("preload = false", "preload = true"))
    node.start()
    loaded = lambda: node.log_text().count('"pixel_pass_loaded"')  # noqa: E731
    assert wait_until(lambda: loaded() == 2, timeout=60), node.log_text()[-2000:]


def test_gdcm_stays_out_of_the_node_unless_asked() -> None:
    """deid_node keeps pydicom from loading GDCM (memory); DEID_NODE_GDCM=1 lets it."""
    import subprocess
    import sys

    probe = "import deid_node, pydicom.pixels, sys; print(sys.modules.get('gdcm') is not None)"
    env = {k: v for k, v in os.environ.items() if k != "DEID_NODE_GDCM"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    env["DEID_NODE_GDCM"] = "1"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "SC_rgb_small_odd_big_endian.dcm"])
def test_big_endian_input_masked_and_written_little_endian_keeps_every_value(name: str) -> None:
    """Masking writes Explicit VR Little Endian: every other value of a big-endian
    file must be re-encoded in that byte order, not copied (HighBit 7 read back as
    1792), and the pixels away from the mask keep their values."""
    from io import BytesIO

    from deid_node.pipeline.dicomfile import encode_file

    original = pydicom.dcmread(PYDICOM_FILES / name)
    ds = pydicom.dcmread(PYDICOM_FILES / name)
    result = clean_pixel_data(ds, PixelSettings(templates=(Template(boxes=((0, 0, 4, 4),)),)))
    assert result.masked
    out = pydicom.dcmread(BytesIO(encode_file(ds)))
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    changed = [
        e.keyword or str(e.tag)
        for e in original
        if e.tag not in (0x7FE00010, 0x00280301)
        and (e.tag not in out or out[e.tag].value != e.value)
    ]
    assert not changed
    # Away from the mask (its box plus padding) the pixels are as they were.
    assert (original.pixel_array[8:, 8:] == out.pixel_array[8:, 8:]).all()


def test_twelve_bit_jpeg_extended_is_decoded_and_masked() -> None:
    """pylibjpeg cannot decode 12-bit JPEG Extended (pydicom-data's JPEG-lossy.dcm,
    a CT); GDCM's reader does, lazily, and the image is masked instead of being
    quarantined as "cannot clean pixel data"."""
    from io import BytesIO

    from deid_node.deid.pixels.gdcm_decoder import decode_grey
    from deid_node.pipeline.dicomfile import encode_file

    path = PYDICOM_FILES / "JPEG-lossy.dcm"
    expected = decode_grey(pydicom.dcmread(path))
    assert expected is not None and expected.shape == (1024, 256)
    ds = pydicom.dcmread(path)
    result = clean_pixel_data(ds, PixelSettings(templates=(Template(boxes=((0, 0, 4, 4),)),)))
    assert result.masked
    out = pydicom.dcmread(BytesIO(encode_file(ds)))
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (out.pixel_array[8:, 8:] == expected[8:, 8:]).all()
