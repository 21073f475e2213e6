"""Burned-in identifiers a reader still finds on an image: ``deid-node verify``'s
pixel check. The frame is searched as the pass searches it (the same detector
and recogniser) and every reading is compared with the original instance's
identifying values, so verify never says OK over a name it can read."""

from __future__ import annotations

from pydicom.dataset import Dataset

from deid_node.deid.pixels.detect import detect
from deid_node.deid.pixels.display import frame_key, frames_of, shown
from deid_node.deid.pixels.legibility import plain
from deid_node.deid.pixels.phi import identifiers_of
from deid_node.deid.pixels.recognise import read_region

SHORTEST = 3  # words of identifying values shorter than this turn up anywhere


def legible_identifiers(output: Dataset, original: Dataset) -> list[int]:
    """Indexes of the output's frames on which an identifier of ``original`` is read."""
    ids = identifiers_of(original)
    words = [w for w in ids.tokens if (len(w) >= SHORTEST and not w.isdigit()) or len(w) >= 4]
    values = [j for j in ids.joined if len(j) >= 4]
    seen: dict[bytes, bool] = {}
    leaking = []
    for index, frame in enumerate(frames_of(output, output.pixel_array)):
        digest = frame_key(frame)
        if digest not in seen:
            display = shown(output, frame)
            texts = [plain(read_region(display, r.box).text) for r in detect(display)]
            seen[digest] = any(w in t for t in texts for w in words + values)
        if seen[digest]:
            leaking.append(index)
    return leaking
