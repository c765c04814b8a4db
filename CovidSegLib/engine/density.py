"""Rules on the found infection's density in HU: ground-glass opacity vs consolidation, and a floor under which
"infection" is normal lung.

Why density and not the network: the network sees the corpus' CLAHE representation, which equalises contrast
locally and so erases the absolute density that tells the two apart. Measured on the 50 MedSeg slices with
expert GGO / consolidation masks: inside the expert infection, a 3x3 convolution on the network's last decoder
features finds consolidation with Dice 0.12 (5-fold cross-validation), one on the CLAHE image with 0.22, and a
threshold on density with 0.64 to 0.67. The radiological definitions are about density too (consolidation is
dense enough to hide the vessels, ground glass is not), and quantitative CT papers draw the line between about
-500 and -300 HU.

The rule (which HU, how much in-plane smoothing against noise) lives in the model card, where
``python -m CovidSegLib.training.infection_split`` writes it with its cross-validated figures. Only voxels the
model already called infection are split, so the union of the two classes is the infection, voxel for voxel.

The floor (:class:`InfectionFloor`) answers the other side of the same representation problem: CLAHE makes a
faintly denser patch of emphysematous or dependent lung look like ground glass. Ground-glass opacity is by
definition denser than the lung around it, and quantitative CT puts it above about -750 HU (Lung CT Analyzer's
"infiltrated" band starts there), so infection that is less dense than the floor after in-plane smoothing is
given back to the lung it lies in. Its figures are in the card that sets it. It needs HU and a pixel size, so it
runs where the other 3D post-processing runs (``covidseg segment``, the Slicer Logic) and not on lone slices
(``predict-slices``), which have neither for certain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy import ndimage

from ..labels import CONSOLIDATION, GGO, INFECTION


@dataclass(frozen=True)
class InfectionSplit:
    """Consolidation is infection at least ``consolidation_min_hu`` dense after an in-plane Gaussian of
    ``smoothing_mm`` (CT noise is 20-40 HU per voxel on thin slices); the rest of the infection is GGO."""

    consolidation_min_hu: float
    smoothing_mm: float = 0.0

    @classmethod
    def from_card(cls, entry: dict | None) -> "InfectionSplit | None":
        """The rule a card's ``infection_split`` entry holds, or None when the card has none."""
        if not entry:
            return None
        return cls(float(entry["consolidation_min_hu"]), float(entry.get("smoothing_mm", 0.0)))

    def card_entry(self) -> dict:
        return {"consolidation_min_hu": self.consolidation_min_hu, "smoothing_mm": self.smoothing_mm}


@dataclass(frozen=True)
class InfectionFloor:
    """Infection less dense than ``min_hu`` after an in-plane Gaussian of ``smoothing_mm`` is normal lung."""

    min_hu: float
    smoothing_mm: float = 0.0

    @classmethod
    def from_card(cls, entry: dict | None) -> "InfectionFloor | None":
        """The rule a card's ``infection_floor`` entry holds, or None when the card has none."""
        if not entry:
            return None
        floor = cls(float(entry["min_hu"]), float(entry.get("smoothing_mm", 0.0)))
        if not -1024 <= floor.min_hu <= 0 or floor.smoothing_mm < 0:
            raise ValueError(f"infection_floor {entry} is not a density floor in lung (-1024..0 HU, smoothing >= 0)")
        return floor

    def card_entry(self) -> dict:
        return {"min_hu": self.min_hu, "smoothing_mm": self.smoothing_mm}


def smoothed_density(hu: np.ndarray, pixel_mm: tuple[float, float], smoothing_mm: float) -> np.ndarray:
    """``hu`` (``[rows, cols]`` or ``[k, rows, cols]``) as float32 after an in-plane Gaussian of ``smoothing_mm``
    (never across slices: slice thickness varies far more than pixel size)."""
    density = hu.astype(np.float32, copy=False)
    if smoothing_mm <= 0:
        return density
    sigma = (smoothing_mm / pixel_mm[0], smoothing_mm / pixel_mm[1])
    if density.ndim == 3:
        sigma = (0.0, *sigma)
    return ndimage.gaussian_filter(density, sigma, mode="nearest")


def split_infection(labels: np.ndarray, hu: np.ndarray, pixel_mm: tuple[float, float],
                    rule: InfectionSplit) -> np.ndarray:
    """``labels`` (one slice or a ``[k, rows, cols]`` volume, infection = ``INFECTION``) with each infection voxel
    relabelled ``CONSOLIDATION`` or ``GGO`` by ``rule``; ``pixel_mm`` is the (row, column) spacing.

    Slice by slice, each smoothed only over its infection's box (plus the smoothing's reach): a CT with little
    infection costs little, and memory stays one slice's box of float32 whatever the CT's size."""
    if labels.shape != hu.shape:
        raise ValueError(f"labels {labels.shape} and HU {hu.shape} are not on one grid")
    split = labels.copy()
    volume_labels, volume_hu, volume_split = (a[None] if a.ndim == 2 else a for a in (labels, hu, split))
    for k, box, dense in _dense_in_infection_boxes(volume_labels == INFECTION, volume_hu, pixel_mm,
                                                   rule.smoothing_mm, rule.consolidation_min_hu):
        inside = volume_labels[k][box] == INFECTION
        volume_split[k][box][inside & dense] = CONSOLIDATION
        volume_split[k][box][inside & ~dense] = GGO
    return split


def apply_infection_floor(infection: np.ndarray, hu: np.ndarray, pixel_mm: tuple[float, float],
                          floor: InfectionFloor) -> np.ndarray:
    """``infection`` (``[k, rows, cols]``) without the voxels less dense than ``floor``; ``pixel_mm`` is the (row,
    column) spacing. Slice by slice over each slice's infection box, as :func:`split_infection`: memory stays one
    box of float32 whatever the CT's size."""
    if infection.shape != hu.shape:
        raise ValueError(f"infection {infection.shape} and HU {hu.shape} are not on one grid")
    kept = infection.copy()
    for k, box, dense in _dense_in_infection_boxes(infection, hu, pixel_mm, floor.smoothing_mm, floor.min_hu):
        kept[k][box] &= dense
    return kept


def _dense_in_infection_boxes(infection: np.ndarray, hu: np.ndarray, pixel_mm: tuple[float, float],
                              smoothing_mm: float, min_hu: float
                              ) -> Iterator[tuple[int, tuple[slice, slice], np.ndarray]]:
    """For each slice ``k`` of ``infection`` (``[k, rows, cols]``) with some: its infection's box, widened by the
    smoothing's reach (scipy truncates at 4 sigma, so inside the box the density is the whole slice's), and where
    the smoothed HU in that box is at least ``min_hu``. Memory stays one box of float32 whatever the CT's size."""
    margin = int(np.ceil(4 * smoothing_mm / min(pixel_mm)))
    for k in np.flatnonzero(infection.any(axis=(1, 2))):
        box = _bounding_box(infection[k], margin)
        yield int(k), box, smoothed_density(hu[k][box], pixel_mm, smoothing_mm) >= min_hu


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The box of a slice's ``mask``, widened by ``margin`` pixels (the smoothing's reach), clipped to the slice."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (slice(max(0, rows[0] - margin), min(mask.shape[0], rows[-1] + 1 + margin)),
            slice(max(0, cols[0] - margin), min(mask.shape[1], cols[-1] + 1 + margin)))
