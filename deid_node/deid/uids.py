"""Deterministic UID replacement.

A keyed hash (not a random UID or a lookup table) makes the same original UID map to the
same new UID on every node and every run that shares the key, so studies stay together
without shared state, and the mapping cannot be reversed without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re

MAX_UID_LENGTH = 64
_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.?$")


def make_uid(original: str, key: bytes, root: str = "2.25.") -> str:
    """Return the UID that replaces ``original`` under ``key``.

    With the default root the result is a 2.25 UUID-derived UID (PS3.5 B.2) built from the
    first 128 bits of HMAC-SHA256; with an organisation root the hash digits are
    truncated so the whole UID stays within 64 characters. Padding (NUL, spaces) of the
    original is ignored, so raw and decoded values map alike.
    """
    if not _ROOT.match(root):
        raise ValueError(f"invalid UID root {root!r}")
    if not root.endswith("."):
        root += "."
    digest = hmac.new(key, original.strip("\x00 ").encode("utf-8", "surrogatepass"), hashlib.sha256)
    raw = digest.digest()
    if root == "2.25.":
        return root + str(int.from_bytes(raw[:16], "big"))
    room = MAX_UID_LENGTH - len(root)
    if room < 1:
        raise ValueError(f"UID root {root!r} leaves no room for a suffix")
    # str() of a positive int never starts with 0 (unless it is 0 itself), and a prefix
    # of it keeps that property.
    return root + str(int.from_bytes(raw, "big"))[:room]
