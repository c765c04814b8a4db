"""Segmentation metrics for one binary structure: overlap, surface distance, volume and Rand error.

Conventions (stated because published numbers differ on them):
- Surfaces are voxel borders: the voxels of a mask that have a 6-neighbour outside it (the volume's edge
  counts as outside), as MONAI's ``get_mask_edges`` and medpy define them. Distances are Euclidean in mm,
  using the voxel spacing.
- NSD (normalised surface Dice) at tolerance tau: the fraction of both borders' voxels lying within tau mm
  of the other border (Nikolov et al.; MONAI ``compute_surface_dice`` without sub-voxels).
- HD95: the larger of the two directed 95th percentiles of border-to-border distances (MONAI, DeepMind).
- Both masks empty: every metric is NaN (nnU-Net, COVID-19-CT-Seg benchmark), so empty cases are left out of
  means rather than counted as perfect. One empty: Dice, Jaccard, NSD 0; HD95 infinite.
- Rand error = 1 - Rand index of the two binary partitions of the volume (fraction of voxel pairs on which they
  disagree), computed exactly from the 2x2 contingency table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

#: NSD tolerances of the COVID-19-CT-Seg benchmark (Ma et al. 2021): 1 mm for lungs, 3 mm for lesions.
LUNG_NSD_TOLERANCE_MM = 1.0
LESION_NSD_TOLERANCE_MM = 3.0


@dataclass(frozen=True)
class StructureMetrics:
    dice: float
    jaccard: float
    nsd: float
    hd95_mm: float
    sensitivity: float
    specificity: float
    relative_volume_difference: float
    rand_error: float
    predicted_volume_ml: float
    reference_volume_ml: float
    nsd_tolerance_mm: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


METRIC_NAMES: tuple[str, ...] = tuple(StructureMetrics.__dataclass_fields__)


def border(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (outside the array counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union plus one voxel (distances need nothing outside)."""
    union = a | b
    slices = []
    for axis in range(union.ndim):
        other = tuple(x for x in range(union.ndim) if x != axis)
        present = np.flatnonzero(union.any(axis=other))
        slices.append(slice(max(present[0] - 1, 0), present[-1] + 2))
    return a[tuple(slices)], b[tuple(slices)]


def border_distances(
    predicted: np.ndarray, reference: np.ndarray, spacing_kji: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each predicted border voxel to the reference border, and the other way round."""
    predicted, reference = _crop_to_union(predicted, reference)
    predicted_border, reference_border = border(predicted), border(reference)
    to_reference = ndimage.distance_transform_edt(~reference_border, sampling=spacing_kji)
    to_predicted = ndimage.distance_transform_edt(~predicted_border, sampling=spacing_kji)
    return to_reference[predicted_border], to_predicted[reference_border]


def rand_error(predicted: np.ndarray, reference: np.ndarray) -> float:
    """1 - Rand index of two binary partitions, exact, from the 2x2 contingency table."""
    total = predicted.size
    both = int(np.count_nonzero(predicted & reference))
    predicted_count = int(np.count_nonzero(predicted))
    reference_count = int(np.count_nonzero(reference))
    cells = [both, predicted_count - both, reference_count - both, total - predicted_count - reference_count + both]

    def pairs(n: int) -> int:
        return n * (n - 1) // 2

    agreements_together = sum(pairs(n) for n in cells)
    rows = pairs(predicted_count) + pairs(total - predicted_count)
    columns = pairs(reference_count) + pairs(total - reference_count)
    all_pairs = pairs(total)
    # Rand index = (pairs together in both + pairs apart in both) / all pairs
    apart_in_both = all_pairs - rows - columns + agreements_together
    return 1.0 - (agreements_together + apart_in_both) / all_pairs


def structure_metrics(
    predicted: np.ndarray,
    reference: np.ndarray,
    spacing_kji: tuple[float, float, float],
    nsd_tolerance_mm: float,
) -> StructureMetrics:
    """All metrics for one binary structure on one grid; ``spacing_kji`` follows the array's axis order."""
    predicted = np.asarray(predicted, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    if predicted.shape != reference.shape:
        raise ValueError(f"masks differ in shape: {predicted.shape} vs {reference.shape}")
    voxel_ml = float(np.prod(spacing_kji)) / 1000.0
    true_positive = int(np.count_nonzero(predicted & reference))
    predicted_count = int(np.count_nonzero(predicted))
    reference_count = int(np.count_nonzero(reference))
    false_positive = predicted_count - true_positive
    false_negative = reference_count - true_positive
    true_negative = predicted.size - true_positive - false_positive - false_negative
    volumes = dict(
        predicted_volume_ml=predicted_count * voxel_ml,
        reference_volume_ml=reference_count * voxel_ml,
        nsd_tolerance_mm=nsd_tolerance_mm,
    )
    nan = math.nan
    if predicted_count == 0 and reference_count == 0:
        return StructureMetrics(nan, nan, nan, nan, nan, nan, nan, nan, **volumes)
    dice = 2.0 * true_positive / (predicted_count + reference_count)
    jaccard = true_positive / (predicted_count + reference_count - true_positive)
    if predicted_count and reference_count:
        to_reference, to_predicted = border_distances(predicted, reference, spacing_kji)
        within = np.count_nonzero(to_reference <= nsd_tolerance_mm) + np.count_nonzero(to_predicted <= nsd_tolerance_mm)
        nsd = within / (to_reference.size + to_predicted.size)
        hd95 = float(max(np.percentile(to_reference, 95), np.percentile(to_predicted, 95)))
    else:
        nsd, hd95 = 0.0, math.inf
    return StructureMetrics(
        dice=dice,
        jaccard=jaccard,
        nsd=float(nsd),
        hd95_mm=hd95,
        sensitivity=true_positive / reference_count if reference_count else nan,
        specificity=true_negative / (true_negative + false_positive) if (true_negative + false_positive) else nan,
        relative_volume_difference=(predicted_count - reference_count) / reference_count if reference_count else nan,
        rand_error=rand_error(predicted, reference),
        **volumes,
    )
