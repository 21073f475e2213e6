"""The data dictionary's VR of a tag, in the one form the engine and its checks use."""

from __future__ import annotations

import functools

from pydicom.datadict import dictionary_VR


@functools.lru_cache(maxsize=8192)
def dictionary_vr(tag: int) -> str:
    """The dictionary VR of ``tag``, ``""`` when unknown.

    Ambiguous VRs ("US or SS", "OB or OW") give their first form: every caller
    here only asks whether a value is text, a date, a UID or binary.
    """
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return ""
