"""Settings of the Clean Pixel Data pass (``[pixels]`` in node.toml).

Kept apart from the pass itself so that reading the configuration needs neither
OpenCV nor Tesseract.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from pydicom.dataset import Dataset

Box = tuple[int, int, int, int]
FILLS = ("black", "white", "background")

# Modalities whose images usually carry burned-in text: always read by OCR.
ALWAYS_OCR_MODALITIES = frozenset({"US", "SC", "OT", "XA", "XC", "ES", "DOC", "GM", "SM", "RF"})
# SOP classes of captured screens and scanned documents (Secondary Capture family,
# Video/VL photographic, ophthalmic photographs).
ALWAYS_OCR_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (all of them)
    "1.2.840.10008.5.1.4.1.1.77.1",  # VL images (endoscopy, photographs, ...)
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated documents
)
POLICIES = ("phi", "all")


@dataclass(frozen=True)
class Template:
    """Rectangles blanked on every frame of matching images, without OCR (the
    annotation layout of a known device). Empty criteria match anything;
    manufacturer and model are case-insensitive shell patterns."""

    boxes: tuple[Box, ...]
    modality: str = ""
    manufacturer: str = ""
    model: str = ""
    rows: int = 0
    columns: int = 0

    def matches(self, ds: Dataset) -> bool:
        def like(pattern: str, keyword: str) -> bool:
            value = str(ds.get(keyword, "") or "").strip().lower()
            return not pattern or fnmatch.fnmatchcase(value, pattern.lower())

        return (
            like(self.modality, "Modality")
            and like(self.manufacturer, "Manufacturer")
            and like(self.model, "ManufacturerModelName")
            and (not self.rows or int(ds.get("Rows", 0) or 0) == self.rows)
            and (not self.columns or int(ds.get("Columns", 0) or 0) == self.columns)
        )


@dataclass(frozen=True)
class PixelSettings:
    policy: str = "phi"  # "phi": mask text that matches PHI; "all": every text found
    padding: int = 2  # pixels added around each masked box
    fill: str = "black"  # "black", "white" (as displayed) or "background"
    ocr_modalities: frozenset[str] = ALWAYS_OCR_MODALITIES
    templates: tuple[Template, ...] = ()
    preload: bool = False  # True: load OCR and Presidio in each worker at start
