"""Intensity sanity checks: make sure a volume is a 3D CT in Hounsfield units before anything uses it.

A network trained on HU silently produces nonsense on an 8-bit windowed export, an MR image or a CT whose
rescale slope/intercept was dropped. These checks turn each of those into a clear error, or, for 8-bit
windowed images, into an explicit opt-in mapping back to HU (``intensity="windowed"``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import InputError
from .plausibility import check_geometry
from ..io.volume import Volume

IntensityMode = Literal["hu", "windowed"]

#: The window the COVID-19-CT-Seg radiopaedia cases were exported with before scaling to 0..255.
DEFAULT_WINDOW: tuple[float, float] = (-1250.0, 250.0)
#: HU below this is air or lung; any chest CT has plenty of it.
AIR_LIKE_HU = -500.0
MIN_AIR_FRACTION = 0.01
#: Padding values in real scanners go down to -3024 (and -32768 for "no data"); anything lower is not HU.
LOWEST_PLAUSIBLE_HU = -32768.0
HIGHEST_PLAUSIBLE_HU = 40000.0
#: An image of non-negative integers with at most this many distinct values is a label map, not a CT.
MAX_LABEL_VALUES = 64
#: Neighbouring voxels of any real CT are strongly alike (r about 0.95 or more on the test CTs, even at 3 mm
#: pixels); in noise they are unrelated (r about 0).
MIN_NEIGHBOUR_CORRELATION = 0.5
#: Statistics on ~2 million voxels are as good as on all of them and keep the check cheap on 512x512x600.
SAMPLE_VOXELS = 2_000_000


@dataclass(frozen=True)
class IntensityStats:
    minimum: float
    maximum: float
    air_fraction: float


def _sample(array: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil((array.size / SAMPLE_VOXELS) ** (1 / 3))))
    return array[::step, ::step, ::step]


def intensity_stats(array: np.ndarray) -> IntensityStats:
    """Range of the whole array and the fraction of air-like voxels in a regular subsample."""
    sample = _sample(array)
    return IntensityStats(
        minimum=float(array.min()),
        maximum=float(array.max()),
        air_fraction=float(np.count_nonzero(sample < AIR_LIKE_HU)) / sample.size,
    )


def check_volume_shape(volume: Volume) -> None:
    """Reject empty and 2D inputs (a single slice has no 3D context and no slice spacing)."""
    size = volume.geometry.size
    if volume.array.size == 0:
        raise InputError(volume.source, f"empty volume (size {size})")
    if min(size) < 2:
        raise InputError(
            volume.source,
            f"2D image (size {size[0]}x{size[1]}x{size[2]}): CovidSeg needs a 3D CT volume with at least 2 slices",
        )
    if not all(np.isfinite(volume.geometry.spacing)) or min(volume.geometry.spacing) <= 0:
        raise InputError(volume.source, f"no valid voxel spacing (spacing {volume.geometry.spacing})")


def check_finite_and_varying(volume: Volume) -> None:
    array = volume.array
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(volume.source, f"{bad} voxels are NaN or infinite")
    if array.min() == array.max():
        raise InputError(volume.source, f"constant volume: every voxel is {array.flat[0]}")


def label_values(array: np.ndarray) -> np.ndarray | None:
    """The distinct values of ``array`` if it looks like a label map (few non-negative integers), else None.

    A segmentation opened as the CT would otherwise be refused as an "8-bit windowed image", which sends the
    user after the wrong fix."""
    sample = _sample(array)
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(sample, np.round(sample)):
        return None
    values = np.unique(sample)
    return values if values.size <= MAX_LABEL_VALUES and values.min() >= 0 else None


def check_hounsfield(volume: Volume) -> IntensityStats:
    """Raise :class:`InputError` unless the values look like a chest CT in HU."""
    stats = intensity_stats(volume.array)
    value_range = f"values {stats.minimum:g}..{stats.maximum:g}"
    labels = label_values(volume.array) if stats.minimum >= 0 else None
    if labels is not None:
        shown = ", ".join(f"{v:g}" for v in labels[:8]) + (", ..." if labels.size > 8 else "")
        raise InputError(volume.source, f"this is a label map (only the values {shown}), not a CT: give the CT "
                                        "image itself, and the label map as labels or reference")
    if stats.minimum >= 0 and stats.maximum <= 255:
        raise InputError(
            volume.source,
            f"not in Hounsfield units ({value_range}): this looks like an 8-bit image that was already windowed. "
            f"If it is a windowed export, run with --intensity windowed --window LOW,HIGH "
            f"(default {DEFAULT_WINDOW[0]:g},{DEFAULT_WINDOW[1]:g}, the COVID-19-CT-Seg radiopaedia export)",
        )
    if stats.minimum >= 0:
        raise InputError(
            volume.source,
            f"not in Hounsfield units ({value_range}, nothing negative): air is about -1000 HU in a CT, so this is "
            "an MR-like image or a CT stored without its rescale slope/intercept",
        )
    if stats.minimum < LOWEST_PLAUSIBLE_HU or stats.maximum > HIGHEST_PLAUSIBLE_HU:
        raise InputError(volume.source, f"not in Hounsfield units ({value_range} is outside any CT's range)")
    if stats.air_fraction < MIN_AIR_FRACTION:
        raise InputError(
            volume.source,
            f"not a chest CT in Hounsfield units ({value_range}): only {100 * stats.air_fraction:.2f}% of voxels are "
            f"air or lung (< {AIR_LIKE_HU:g} HU), a chest CT has far more",
        )
    return stats


def neighbour_correlation(array: np.ndarray) -> float:
    """Correlation of each voxel with its neighbour along the rows, on up to 8 evenly spaced slices."""
    sample = array[:: max(1, array.shape[0] // 8)].astype(np.float32)
    left, right = sample[:, :, :-1].ravel(), sample[:, :, 1:].ravel()
    if left.size < 2 or left.std() == 0 or right.std() == 0:
        return 1.0  # nothing to judge (a constant volume is refused by its own check)
    return float(np.corrcoef(left, right)[0, 1])


def check_structure(volume: Volume) -> None:
    """Refuse a volume of noise: its values can look like HU, and the network may still "find" lungs in it."""
    correlation = neighbour_correlation(volume.array)
    if correlation < MIN_NEIGHBOUR_CORRELATION:
        raise InputError(volume.source, f"not an image of a body: neighbouring voxels are unrelated (correlation "
                                        f"{correlation:.2f}, a CT has over {MIN_NEIGHBOUR_CORRELATION:g}): this is "
                                        "noise or scrambled data")


def windowed_to_hu(volume: Volume, window: tuple[float, float] = DEFAULT_WINDOW) -> Volume:
    """Map an 8-bit windowed image (0..255 spans ``window``) back to approximate HU, as int16.

    Values outside the window were clipped when the image was exported, so this is exact only inside it.
    """
    low, high = window
    if not low < high:
        raise ValueError(f"window must be LOW,HIGH with LOW < HIGH, got {window}")
    minimum, maximum = float(volume.array.min()), float(volume.array.max())
    if minimum < 0 or maximum > 255:
        raise InputError(
            volume.source,
            f"--intensity windowed expects 8-bit values 0..255, but the image holds {minimum:g}..{maximum:g}",
        )
    hu = volume.array.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)
    return volume.with_array(np.round(hu).astype(np.int16))


def prepare_ct(
    volume: Volume, intensity: IntensityMode = "hu", window: tuple[float, float] = DEFAULT_WINDOW
) -> Volume:
    """Validate a CT for segmentation and return it in HU; raise :class:`InputError` with the reason otherwise."""
    check_volume_shape(volume)
    check_geometry(volume)
    check_finite_and_varying(volume)
    if intensity == "windowed":
        volume = windowed_to_hu(volume, window)
    elif intensity != "hu":
        raise ValueError(f"unknown intensity mode {intensity!r}; use 'hu' or 'windowed'")
    check_hounsfield(volume)
    check_structure(volume)
    return volume


def hu_range(text: str) -> tuple[float, float]:
    """argparse type of a ``LOW,HIGH`` range in HU (a window, a clip), LOW below HIGH."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be LOW,HIGH in HU, got {text!r}") from None
    if not low < high:
        raise argparse.ArgumentTypeError(f"LOW must be below HIGH, got {text!r}")
    return low, high
