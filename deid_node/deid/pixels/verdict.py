"""Which detected regions of text are masked: the pass fails closed.

A region stays only when it was read with confidence and every token of it is
known not to identify anyone (:mod:`vocabulary`), and it is not part of an
annotation block that identifies. Everything else is masked:

- a region that matches PHI: a label such as Name, DOB, ID or MRN, one of the
  instance's own identifying values in any spelling (:func:`phi.identifies`),
  an entity Presidio's analyzer finds in it (dates, phones, e-mails, ...), any
  date, an ID-like number, or any word outside the vocabulary (names included);
- a region read with low confidence, or of more than one line;
- every region of an annotation block (rows stacked or side by side at the
  text's own size) that holds a PHI region: a label whose value was read as
  something else, a value the reader missed.

Regions read as fewer than three letters and digits stay (a marker, a unit, or
the detector firing on anatomy, where the recogniser reads a character or two of
punctuation or nothing), unless they are the instance's own identifiers or sit
in an identifying block. The recall of that choice is what the generated
burned-in test measures.
Under the "all" policy every region is masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deid_node.deid.pixels.detect import Region
from deid_node.deid.pixels.phi import Identifiers, identifies, presidio_hits
from deid_node.deid.pixels.recognise import Reading
from deid_node.deid.pixels.vocabulary import safe_tokens, tokens

# The recogniser's probability for its least sure character. PP-OCR's own
# pipeline drops readings whose mean is under 0.5; here the least sure character
# must reach it, so one doubtful character makes the reading doubtful.
MIN_CONFIDENCE = 0.5
# Below this the recogniser has read nothing: what it gives for any texture (on
# the text-free CT, MR and radiographs of pydicom-data and of the generated set,
# 0.09-0.2, often in the Chinese half of its dictionary). Text people read came
# out at 0.22 and above on generated images.
NOTHING_READ = 0.2


# Reasons that make a region's block identifying (a doubtful reading does not).
IDENTIFYING = frozenset({"identifier", "unknown-text", "entity"})


@dataclass(frozen=True)
class Verdict:
    region: Region
    reading: Reading
    mask: bool
    reason: str  # why it is masked ("" if it stays): a kind, never the text


# Readings with fewer letters and digits than this spell no name, ID or date: a
# lone letter, an orientation marker, a unit, or the detector firing on anatomy
# (what it reads there is a character or two of punctuation). They stay, unless
# they are the instance's own identifiers or sit in an identifying block. A
# doubtful reading needs one more to be masked as doubtful.
MIN_IDENTIFYING = 3


def reads_nothing(reading: Reading) -> bool:
    """Whether a reading is of nothing that could spell a name, ID or date: too few
    letters and digits, or too unsure to be text at all."""
    return (
        sum(c.isalnum() for c in reading.text) < MIN_IDENTIFYING
        or reading.confidence < NOTHING_READ
    )


def _reason(reading: Reading, ids: Identifiers, allowed: Sequence[str]) -> str:
    """Why a reading is masked, or "" if it may stay."""
    words = tokens(reading.text)
    if words and identifies(words, ids):
        return "identifier"
    shown = sum(c.isalnum() for c in reading.text)
    if shown < MIN_IDENTIFYING or reading.confidence < NOTHING_READ:
        return ""
    if reading.confidence < MIN_CONFIDENCE:
        # A doubtful reading must show more to be taken for text: dark folds of a
        # brain or bowel gas read as three letters or so, with little confidence.
        return "low-confidence" if shown > MIN_IDENTIFYING else ""
    if not safe_tokens(reading.text, allowed):
        return "unknown-text"
    if presidio_hits(reading.text.split()):
        return "entity"
    return ""


def decide(
    regions: Sequence[Region],
    readings: Sequence[Reading],
    ids: Identifiers,
    policy: str,
    allowed: Sequence[str] = (),
) -> list[Verdict]:
    """One verdict per region (same order)."""
    if policy == "all":
        return [Verdict(r, t, True, "policy-all") for r, t in zip(regions, readings, strict=True)]
    reasons = [_reason(reading, ids, allowed) for reading in readings]
    # Blocks of an annotation: a PHI region takes its block with it.
    for group in blocks(regions):
        if len(group) > 1 and any(reasons[i] in IDENTIFYING for i in group):
            for i in group:
                if not reasons[i]:
                    reasons[i] = "block"
    return [
        Verdict(r, t, bool(reason), reason)
        for r, t, reason in zip(regions, readings, reasons, strict=True)
    ]


def blocks(regions: Sequence[Region]) -> list[list[int]]:
    """Indexes of regions that form one annotation block: rows of about the same
    height stacked at a line's pitch (overlapping, or aligned on a common left or
    right edge), or words of one row a few characters apart."""
    order = sorted(range(len(regions)), key=lambda i: (regions[i].box[1], regions[i].box[0]))
    parent = {i: i for i in order}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for n, i in enumerate(order):
        a = regions[i].box
        ha = a[3] - a[1]
        for j in order[n + 1 :]:
            b = regions[j].box
            hb = b[3] - b[1]
            h = max(ha, hb)
            if b[1] - a[3] > 1.0 * h:
                break
            if not 0.5 <= ha / max(hb, 1) <= 2.0:
                continue
            same_row = min(a[3], b[3]) - max(a[1], b[1]) >= 0.5 * min(ha, hb)
            if same_row:
                near = max(a[0], b[0]) - min(a[2], b[2]) <= 3 * h
            else:
                near = (
                    (a[0] < b[2] and b[0] < a[2])
                    or abs(a[0] - b[0]) <= 2 * h
                    or abs(a[2] - b[2]) <= 2 * h
                )
            if near:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())
