"""De-identification of DICOM datasets (PS3.15 Annex E Basic Profile and options)."""

from .dates import shift_date, shift_datetime
from .engine import (
    DeidResult,
    DeidSettings,
    PatientPseudonym,
    deidentify,
    handle_private,
    patient_key,
)
from .profile import OPTIONS, Profile, action_for, build_profile, canonical_option
from .text import clean_text
from .uids import make_uid

__all__ = [
    "OPTIONS",
    "DeidResult",
    "DeidSettings",
    "PatientPseudonym",
    "Profile",
    "action_for",
    "build_profile",
    "canonical_option",
    "clean_text",
    "deidentify",
    "handle_private",
    "make_uid",
    "patient_key",
    "shift_date",
    "shift_datetime",
]
