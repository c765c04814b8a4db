"""Density-based aeration of each lung: how much of it is well, poorly or not aerated, by HU thresholds.

The standard quantitative-CT bands (e.g. Colombi et al., Radiology 2020, whose well-aerated lung, %WAL, predicted
outcome in COVID-19 pneumonia), applied to every voxel of the lung output (a lung's voxels and the infection
attributed to it, the same voxels as its volume):

====================  ======================  ==========================================
band                  HU                      what it is
====================  ======================  ==========================================
``below_minus_950``   below -950              hyperinflated or emphysematous lung (or air)
``well_aerated``      -950 to below -700      normally aerated lung (%WAL)
``poorly_aerated``    -700 to below -300      ground glass, partial volume with vessels
``non_aerated``       -300 to +100 inclusive  consolidation, atelectasis, vessels, fluid
``above_100``         above +100              calcification, contrast-filled vessels, bone
====================  ======================  ==========================================

Each band holds its lower edge and not its upper one (a voxel at exactly -700 HU is poorly aerated, at -300 non
aerated), except that +100 itself is still non-aerated: the five bands share no voxel and leave none out, so
they sum to the lung's volume. These figures are HU thresholds on the lung output and do not use the infection
model at all; they are only as right as the lung output (a lung mask that leaks into the airway adds air below
-950 HU, one that misses a consolidated rim loses non-aerated volume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: (key, reader's name, lowest HU, highest HU) with the edges' inclusivity as in the module docstring.
BANDS = (
    ("below_minus_950", "Below -950 HU", -math.inf, -950.0),
    ("well_aerated", "Well aerated (-950 to -700 HU)", -950.0, -700.0),
    ("poorly_aerated", "Poorly aerated (-700 to -300 HU)", -700.0, -300.0),
    ("non_aerated", "Non-aerated (-300 to +100 HU)", -300.0, 100.0),
    ("above_100", "Above +100 HU", 100.0, math.inf),
)
BAND_KEYS = tuple(key for key, _, _, _ in BANDS)
AERATION_NOTE = ("Aeration is measured by HU thresholds on the lung output, independently of the infection model: "
                 "it is only as right as the lung output. Bands: below -950 HU, well aerated -950 to -700 HU, "
                 "poorly aerated -700 to -300 HU, non-aerated -300 to +100 HU, above +100 HU; each band holds its "
                 "lower edge, and +100 HU is non-aerated.")


@dataclass(frozen=True)
class Aeration:
    """Volumes (mL) of one region's lung in each band, and their share of its volume (%; NaN without lung)."""

    below_minus_950_ml: float
    well_aerated_ml: float
    poorly_aerated_ml: float
    non_aerated_ml: float
    above_100_ml: float
    below_minus_950_percent: float
    well_aerated_percent: float
    poorly_aerated_percent: float
    non_aerated_percent: float
    above_100_percent: float

    def ml(self, band: str) -> float:
        return float(getattr(self, f"{band}_ml"))

    def percent(self, band: str) -> float:
        return float(getattr(self, f"{band}_percent"))


def band_masks(hu: np.ndarray) -> dict[str, np.ndarray]:
    """One boolean mask per band (keys of :data:`BAND_KEYS`), disjoint and together covering every voxel."""
    hu = np.asarray(hu)
    return {
        "below_minus_950": hu < -950,
        "well_aerated": (hu >= -950) & (hu < -700),
        "poorly_aerated": (hu >= -700) & (hu < -300),
        "non_aerated": (hu >= -300) & (hu <= 100),
        "above_100": hu > 100,
    }


def aeration(hu: np.ndarray, lung: np.ndarray, voxel_ml: float) -> Aeration:
    """The bands of the lung voxels ``lung`` (boolean, on the grid of ``hu``, the CT in HU)."""
    if hu.shape != lung.shape:
        raise ValueError(f"CT {hu.shape} and lung mask {lung.shape} are not on the same grid")
    values = hu[lung]
    total = values.size
    counts = {key: int(np.count_nonzero(mask)) for key, mask in band_masks(values).items()}
    figures: dict[str, float] = {}
    for key in BAND_KEYS:
        figures[f"{key}_ml"] = counts[key] * voxel_ml
    for key in BAND_KEYS:
        figures[f"{key}_percent"] = 100.0 * counts[key] / total if total else math.nan
    return Aeration(**figures)
