"""De-identification of DICOM datasets (PS3.15 Annex E Basic Profile and options, the
TCIA preset, and Retain Safe Private by the TCIA private tag knowledge base)."""

from .dates import shift_date, shift_datetime
from .engine import (
    DeidResult,
    DeidSettings,
    PatientPseudonym,
    deidentify,
    handle_private,
    patient_key,
)
from .presets import PRESETS, canonical_preset
from .private import knowledge_base
from .profile import OPTIONS, Profile, action_for, build_profile, canonical_option
from .text import clean_text, collect_identifiers
from .uids import make_uid

__all__ = [
    "OPTIONS",
    "PRESETS",
    "DeidResult",
    "DeidSettings",
    "PatientPseudonym",
    "Profile",
    "action_for",
    "build_profile",
    "canonical_option",
    "canonical_preset",
    "clean_text",
    "collect_identifiers",
    "deidentify",
    "handle_private",
    "knowledge_base",
    "make_uid",
    "patient_key",
    "shift_date",
    "shift_datetime",
]
