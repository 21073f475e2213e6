"""Which words read from the pixels are PHI.

Three detectors, any of which is enough:

- Presidio's analyzer on the words of the image: its pattern recognizers (dates,
  phone numbers, e-mail addresses, ...). It runs on a blank spaCy English
  pipeline: the official spaCy models are not on PyPI and nothing may be
  downloaded at run time; no recogniser used here needs a statistical model.
- Matching of each word, and of the words of a line run together, against the
  instance's own identifying values (what ``use_metadata`` does in Presidio's
  DICOM redactor with a deny list), exactly or approximately: OCR of burned-in
  text drops and confuses characters ("RIVERA" read as "‘IWERA"), which exact
  deny lists miss. (Presidio's deny list of the same values found nothing more
  on the 271 files of the three test corpora, and compiling its pattern cost
  about 4 ms for each new patient.)
- Labels: a word after "Name:", "DOB:", "Patient ID:" and the like on the same
  line is a value, whatever OCR made of it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

from deid_node.deid.text import date_variants, identifiers_dated_and_named, name_parts

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTH_NAMES = (
    "january", "february", "march", "april", "may", "june", "july", "august",
    "september", "october", "november", "december",
)  # fmt: skip

# Words that introduce an identifying value in burned-in annotations (normalised).
LABELS = frozenset(
    {
        "name", "patient", "patientname", "pt", "id", "patientid", "pid", "mrn", "dob",
        "birth", "birthdate", "born", "date", "studydate", "examdate", "institution",
        "institutionname", "hospital", "clinic", "accession", "acc", "accessionno",
        "age", "physician", "referring", "doctor", "dr", "address", "phone", "tel", "ssn",
        "sex", "operator", "station",
    }
)  # fmt: skip
# Words of labels that are common words too: they mark an identity annotation.
_GENERIC_LABELS = frozenset({"study", "exam", "series", "acquired", "acq"})
# A word that is only a label word (never masked by itself under the PHI policy).
_GENERIC = frozenset({"name", "id", "date", "patient", "study", "of", "no", "nr", "the", "and"})


def normalise(text: str) -> str:
    return _NON_ALNUM.sub("", text.lower())


# Labels long enough to be recognised through an OCR error or two.
_LONG_LABELS = tuple(sorted(label for label in LABELS if len(label) >= 4))


def looks_like_label(word: str) -> bool:
    """Whether a normalised word is, or is an OCR misreading of, a label word
    ("patent" for "patient", "instituti" for "institution")."""
    if word in LABELS or word in _GENERIC_LABELS:
        return True
    if len(word) < 4:
        return False
    limit = 1 if len(word) < 7 else 2
    return any(
        abs(len(label) - len(word)) <= limit
        and Levenshtein.distance(word, label, score_cutoff=limit) <= limit
        for label in _LONG_LABELS
    )


def labelled(words: Sequence[str]) -> bool:
    """Whether words read in a row, in order, hold a label: one of them, or two or
    three of them joined (OCR breaks long labels up: "Inst tution", "Inst tuti6n")."""
    return _labelled([normalise(w) for w in words])


def _labelled(norm: list[str]) -> bool:
    if any(looks_like_label(w) for w in norm if w):
        return True
    for i in range(len(norm) - 1):
        for span in (2, 3):
            joined = "".join(norm[i : i + span])
            if len(joined) >= 7 and looks_like_label(joined):
                return True
    return False


def _date_spellings(value: str) -> set[str]:
    """Normalised spellings of a DA value as burned into images: numeric orders and
    month names, with and without separators (normalisation drops them anyway)."""
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", value.strip()[:8])
    if not m:
        return set()
    y, mo, d = m.groups()
    if not 1 <= int(mo) <= 12:
        return set()
    short, full = _MONTHS[int(mo) - 1], _MONTH_NAMES[int(mo) - 1]
    di = str(int(d))
    out = {normalise(v) for v in date_variants(value[:8])}
    for mon in (short, full):
        out |= {
            f"{y}{mon}{d}", f"{d}{mon}{y}", f"{di}{mon}{y}", f"{mon}{d}{y}", f"{mon}{di}{y}",
            f"{y}{mon}{di}",
        }  # fmt: skip
    out |= {f"{mo}{d}{y}", f"{d}{mo}{y}", f"{y}{mo}{d}", f"{mo}{d}{y[2:]}", f"{d}{mo}{y[2:]}"}
    return out


def _age_spellings(value: str) -> set[str]:
    m = re.fullmatch(r"0*(\d+)([DWMY]?)", value.strip())
    if not m:
        return set()
    n, unit = m.groups()
    return {n, normalise(value), f"{n}{unit.lower()}"} - {""}


@dataclass(frozen=True)
class Identifiers:
    """The instance's identifying values, prepared for matching."""

    tokens: frozenset[str]  # normalised words of those values (2+ characters)
    joined: tuple[str, ...]  # normalised whole values (dates in every spelling, IDs)


def identifiers_of(ds: Dataset) -> Identifiers:
    """Identifying values of the original dataset (read before any change)."""
    values, dated_named = identifiers_dated_and_named(ds)
    # Dates by their day only (what is spelt out): the images of a series differ in
    # their times, and the key stays the same across them.
    days = {(vr, value if vr == "PN" else value[:8]) for vr, value in dated_named}
    age = str(ds.get("PatientAge", "") or "")
    return _prepared(tuple(values), tuple(sorted(days)), age)


class DeferredIdentifiers(Identifiers):
    """:func:`identifiers_of` a dataset, worked out when first read. Most frames with
    candidate rows are settled without the instance's values (rows that match a
    patient block seen before, text too small to read: 77 of the 121 images of the
    shared corpus), and walking the dataset for them costs about as much as the
    stroke search of an MR slice. The dataset must not change before then: the pass
    reads it before it masks anything. (The fields are properties here, read from
    the identifiers once worked out; the frozen parent sets none of them.)"""

    def __init__(self, ds: Dataset) -> None:
        object.__setattr__(self, "_dataset", ds)
        object.__setattr__(self, "_ready", None)

    def _worked_out(self) -> Identifiers:
        if self._ready is None:
            object.__setattr__(self, "_ready", identifiers_of(self._dataset))
        return self._ready

    @property
    def tokens(self) -> frozenset[str]:
        return self._worked_out().tokens

    @property
    def joined(self) -> tuple[str, ...]:
        return self._worked_out().joined


@functools.lru_cache(maxsize=64)
def _prepared(
    values: tuple[str, ...], dated_named: tuple[tuple[str, str], ...], age: str
) -> Identifiers:
    """The matching forms of an instance's identifying values. Cached: the images
    of a series carry the same values, and spelling out every date and name part
    costs more than reading them from the dataset."""
    phrases: set[str] = set(values)
    joined: set[str] = set()
    for vr, value in dated_named:
        if vr == "PN":
            phrases.update(name_parts(value))
        else:
            joined |= _date_spellings(value[:8])
    ages = _age_spellings(age) if age else set()
    tokens: set[str] = set()
    for phrase in phrases:
        for word in re.split(r"[\s^,/\\\-]+", phrase):
            w = normalise(word)
            if len(w) >= 2 and w not in _GENERIC:
                tokens.add(w)
        n = normalise(phrase)
        if len(n) >= 4:
            joined.add(n)
    tokens |= ages
    joined = {j for j in joined if len(j) >= 4}
    return Identifiers(frozenset(tokens), tuple(sorted(joined)))


@functools.cache
def analyzer():  # type: ignore[no-untyped-def]
    """Presidio's analyzer on a blank spaCy English pipeline (nothing to download)."""
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank-en"}])
    engine.nlp = {"en": spacy.blank("en")}
    return AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])


# Presidio entity types that identify by their form; the others it reports on
# numbers (bank, passport, driver's licence at low scores) only with context words.
# Names are found through the header's values (a blank spaCy pipeline finds none).
_PRESIDIO_ENTITIES = ["DATE_TIME", "PHONE_NUMBER", "EMAIL_ADDRESS", "US_SSN",
                      "URL", "IP_ADDRESS", "MEDICAL_LICENSE", "UK_NHS"]  # fmt: skip


def presidio_hits(words: Sequence[str]) -> set[int]:
    """Indexes of the words Presidio's analyzer finds PHI in."""
    text = " ".join(words)
    if not text.strip():
        return set()
    results = analyzer().analyze(text=text, language="en", entities=_PRESIDIO_ENTITIES)
    hits: set[int] = set()
    starts = []
    pos = 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    for r in results:
        if r.score < 0.3:
            continue
        for i, s in enumerate(starts):
            if s < r.end and r.start < s + len(words[i]):
                hits.add(i)
    return hits


def _token_match(word: str, ids: Identifiers) -> bool:
    if word in ids.tokens:
        return True
    if len(word) < 4:
        return False
    limit = 1 if len(word) < 8 else 2
    for t in ids.tokens:
        if (
            abs(len(t) - len(word)) <= limit
            and len(t) >= 4
            and Levenshtein.distance(word, t, score_cutoff=limit) <= limit
        ):
            return True
    for j in ids.joined:
        if len(word) >= 6 and len(j) >= 6 and fuzz.partial_ratio(word, j) >= 88:
            return True
    return False


def identifies(words: Sequence[str], ids: Identifiers) -> bool:
    """Whether words read from a row of an annotation make it an identity annotation:
    a label ("Name", "DOB", also misread) or a word or run of words that matches one
    of the instance's identifying values. Cheap: no Presidio."""
    norm = [normalise(w) for w in words]
    if _labelled(norm):
        return True
    if any(w and _token_match(w, ids) for w in norm):
        return True
    return bool(_joined_hits(norm, ids))


def phi_words(
    lines: Sequence[Sequence[str]],
    ids: Identifiers,
    boxes: Sequence[Sequence[tuple[int, int, int, int]]] | None = None,
) -> list[set[int]]:
    """For each OCR line (its words in order), the indexes of the words that are PHI."""
    flat = [w for line in lines for w in line]
    offsets = []
    n = 0
    for line in lines:
        offsets.append(n)
        n += len(line)
    presidio = presidio_hits(flat)
    out: list[set[int]] = []
    for li, line in enumerate(lines):
        norm = [normalise(w) for w in line]
        hits = {i for i in range(len(line)) if offsets[li] + i in presidio}
        hits |= {i for i, w in enumerate(norm) if w and _token_match(w, ids)}
        hits |= _joined_hits(norm, ids)
        hits |= _after_label(line, norm, boxes[li] if boxes is not None else None)
        # a one- or two-character word next to a hit is part of the same value
        for i, w in enumerate(norm):
            near_hit = (i - 1) in hits or (i + 1) in hits
            if i not in hits and 0 < len(w) <= 2 and w not in _GENERIC and near_hit:
                hits.add(i)
        out.append(hits)
    return out


def _joined_hits(norm: list[str], ids: Identifiers) -> set[int]:
    """Words that together spell a whole value ("2013 Jul 13", "06/16/1976")."""
    if not ids.joined or len(norm) < 2:
        return set()
    text = "".join(norm)
    spans = []
    pos = 0
    for w in norm:
        spans.append((pos, pos + len(w)))
        pos += len(w)
    hits: set[int] = set()
    for j in ids.joined:
        if len(j) > len(text) + 2:
            continue
        al = fuzz.partial_ratio_alignment(j, text, score_cutoff=85 if len(j) >= 8 else 100)
        if al is None:
            continue
        for i, (s, e) in enumerate(spans):
            if s < al.dest_end and al.dest_start < e:
                hits.add(i)
    return hits


def _after_label(
    line: Sequence[str], norm: list[str], boxes: Sequence[tuple[int, int, int, int]] | None
) -> set[int]:
    """Words after a label: one that ends with a colon ("DOB:", "Patient ID:"), or the
    label words a line starts with (OCR often drops the colon). The value ends at a
    gap wider than three character heights (what follows is other text)."""
    start = 0
    for i, raw in enumerate(line[:-1]):
        if raw.rstrip().endswith((":", ";")) and norm[i] in LABELS:
            start = i + 1
            break
    else:
        while start < min(2, len(norm) - 1) and norm[start] in LABELS:
            start += 1
    if not start:
        return set()
    end = len(line)
    if boxes is not None:
        for i in range(start + 1, len(line)):
            height = max(boxes[i][3] - boxes[i][1], boxes[i - 1][3] - boxes[i - 1][1], 1)
            if boxes[i][0] - boxes[i - 1][2] > 3 * height:
                end = i
                break
    return set(range(start, end))
