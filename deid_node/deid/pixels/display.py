"""A frame as a person sees it on a viewer: what the text detector and the readers
look at, since burned-in text is a problem exactly when a person can read it.

Grey frames go through the Modality LUT (rescale) and the first VOI window or
VOI LUT of the header, as a viewer opens them; without a window, or where the
window shows the frame as one flat shade, the frame's own range is stretched.
MONOCHROME1 is inverted (its maximum shows black). Palette frames go through their
colour tables; YBR frames are converted to RGB by the decoder. The result is
8-bit, grey (rows, cols) or colour (rows, cols, 3).
"""

from __future__ import annotations

import hashlib

import numpy as np
from pydicom.dataset import Dataset

# Grey levels: a windowed frame spanning fewer is shown at its full range instead.
WINDOW_SHOWS_NOTHING = 16


def photometric(ds: Dataset) -> str:
    return str(ds.get("PhotometricInterpretation", "") or "").strip().upper()


def is_palette(ds: Dataset) -> bool:
    return photometric(ds) == "PALETTE COLOR"


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] onto 0-255, clipped."""
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (values.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(out, 0, 255).astype(np.uint8)


def _first(value: object) -> float | None:
    """The first of a multi-valued DS (several windows: a viewer opens the first)."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, list | tuple) or (
            hasattr(value, "__iter__") and not isinstance(value, str | bytes)
        ):
            value = next(iter(value))  # type: ignore[arg-type]
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, StopIteration):
        return None


def _window(ds: Dataset) -> tuple[float, float] | None:
    """The first window (centre, width) of the header, if it is usable."""
    centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if centre is None or width is None or width < 1:
        return None
    return centre, width


def _rescaled(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    slope = _first(ds.get("RescaleSlope"))
    intercept = _first(ds.get("RescaleIntercept"))
    if slope in (None, 1.0) and intercept in (None, 0.0):
        return frame
    return frame.astype(np.float32) * np.float32(slope or 1.0) + np.float32(intercept or 0.0)


def grey_display(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    """An 8-bit view of one grey frame through the header's LUTs (see the module)."""
    values = _rescaled(ds, frame)
    window = _window(ds)
    if window is not None:
        # DICOM's linear window (PS3.3 C.11.2.1.2.1).
        centre, width = window
        lo, hi = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
        out = _stretch(values, lo, hi)
        if int(out.max()) - int(out.min()) < WINDOW_SHOWS_NOTHING:
            # A window that shows the frame as one flat shade (pixels re-encoded
            # without their header being fixed) is not what a person looks at for
            # long: they re-window, and read whatever the full range shows.
            out = _stretch(values, float(values.min()), float(values.max()))
    elif "VOILUTSequence" in ds and ds.VOILUTSequence:
        from pydicom.pixels import apply_voi_lut

        looked_up = apply_voi_lut(np.asarray(frame), ds)
        out = _stretch(looked_up, float(looked_up.min()), float(looked_up.max()))
    else:
        lo, hi = float(values.min()), float(values.max())
        if values.dtype == np.uint8 and lo == 0 and hi == 255:
            out = values
        else:
            out = _stretch(values, lo, hi)
    if photometric(ds) == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out)


def colour_display(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    """An 8-bit RGB view of one colour frame (RGB, or palette indices)."""
    if is_palette(ds):
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(frame, ds)
        bits = 16 if rgb.dtype.itemsize > 1 and int(rgb.max(initial=0)) > 255 else 8
        return np.ascontiguousarray((rgb >> (bits - 8)).astype(np.uint8))
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    hi = float(frame.max(initial=0))
    return _stretch(frame, 0.0, hi if hi > 0 else 1.0)


def shown(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    """The frame as displayed: grey or RGB, 8-bit."""
    if frame.ndim == 3 or is_palette(ds):
        return colour_display(ds, frame)
    return grey_display(ds, frame)


def grey(display: np.ndarray) -> np.ndarray:
    """A grey version of a displayed frame that keeps coloured text: per pixel, the
    channel farthest from mid-grey (yellow, green or red text stays at an extreme)."""
    if display.ndim == 2:
        return display
    a = display.astype(np.int16)
    hi, lo = a.max(axis=2), a.min(axis=2)
    return np.where(hi - 128 >= 128 - lo, hi, lo).astype(np.uint8)


def frames_of(ds: Dataset, arr: np.ndarray) -> list[np.ndarray]:
    """The frames of a pixel array as views: (rows, cols) or (rows, cols, samples)."""
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return [arr[i] for i in range(arr.shape[0])]
    return [arr]


def frame_key(frame: np.ndarray) -> bytes:
    """A digest of a frame's values: identical frames (a cine loop's still parts)
    are looked at once."""
    return hashlib.blake2b(frame.tobytes(), digest_size=16).digest()
