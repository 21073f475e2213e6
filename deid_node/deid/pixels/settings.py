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

POLICIES = ("phi", "all")
# "deid-node": the learned detector and reader with the fail-closed verdict;
# "presidio": Presidio's DicomImageRedactorEngine (Tesseract through pytesseract),
# for sites that validated that pipeline.
ENGINES = ("deid-node", "presidio")


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
    policy: str = "phi"  # "phi": mask all but text known to be safe; "all": every text found
    engine: str = "deid-node"  # or "presidio"
    padding: int = 2  # pixels added around each masked box
    fill: str = "black"  # "black", "white" (as displayed) or "background"
    allow: tuple[str, ...] = ()  # words that may stay besides the vocabulary (lower case)
    templates: tuple[Template, ...] = ()
    preload: bool = False  # True: load the models and Presidio in each worker at start
