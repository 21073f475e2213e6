"""``[pixels] engine = "presidio"``: Presidio's DicomImageRedactorEngine finds what
to mask, for sites that validated that pipeline (Tesseract through pytesseract,
then Presidio's analyzer with the header's values as a deny list; the MIDI-B
runner-up's approach). The node writes the masks itself, in the native pixel
representation on every frame (Presidio's own writer re-encodes the pixel data,
one frame, 8-bit greyscale or RGB).

Presidio runs on a blank spaCy English pipeline: its default constructor
downloads a model, which a hospital network cannot.
"""

from __future__ import annotations

import functools

from pydicom.dataset import Dataset

from deid_node.deid.pixels.phi import analyzer

Box = tuple[int, int, int, int]


@functools.cache
def _engine():  # type: ignore[no-untyped-def]
    from presidio_image_redactor import DicomImageRedactorEngine, ImageAnalyzerEngine

    return DicomImageRedactorEngine(
        image_analyzer_engine=ImageAnalyzerEngine(analyzer_engine=analyzer())
    )


def presidio_boxes(ds: Dataset) -> list[Box]:
    """The boxes Presidio would redact on the dataset's (first) frame."""
    _, found = _engine().redact_and_return_bbox(ds, fill="contrast", use_metadata=True)
    return [(b["left"], b["top"], b["left"] + b["width"], b["top"] + b["height"]) for b in found]
