"""Quantification on real lungs: volumes are voxel counts times voxel volume, categories break at their edges."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from CovidSegLib.engine.lateral import lps_left_coordinate
from CovidSegLib.measure.quantification import quantify, severity_category
from CovidSegLib.io.reading import read_segmentation, read_volume


@pytest.mark.parametrize("percent, category", [
    (0.0, "CT-0"), (1e-9, "CT-1"), (24.999, "CT-1"), (25.0, "CT-2"), (49.999, "CT-2"), (50.0, "CT-3"),
    (75.0, "CT-3"), (75.001, "CT-4"), (100.0, "CT-4"), (math.nan, "not assessed"),
])
def test_severity_category_edges(percent: float, category: str) -> None:
    assert severity_category(percent) == category


@pytest.fixture(scope="module")
def ctchest(volumes: Path):
    reference = read_segmentation(volumes / "ctchest4.seg.nrrd")
    layer = reference.layers[0]
    labels = np.zeros(layer.shape, np.uint8)
    labels[layer == 6] = 1
    labels[layer == 5] = 2
    hu = read_volume(volumes / "ctchest4.nrrd").array
    return labels, reference.geometry, hu


def test_volumes_match_voxel_counts_on_real_lungs(ctchest) -> None:
    labels, geometry, hu = ctchest
    labels = labels.copy()
    right = np.argwhere(labels == 2)
    towards_patient_left = lps_left_coordinate(geometry, right)
    lesion = right[np.argsort(towards_patient_left)[:4000]]  # the most lateral part of the right lung
    labels[tuple(lesion.T)] = 3
    result = quantify(labels, geometry, hu)
    voxel_ml = np.prod(geometry.spacing) / 1000
    assert result.left.volume_ml == pytest.approx(np.sum(labels == 1) * voxel_ml)
    assert result.right.volume_ml == pytest.approx((np.sum(labels == 2) + 4000) * voxel_ml)
    assert result.right.infection_ml == pytest.approx(4000 * voxel_ml) and result.left.infection_ml == 0
    assert result.total.involvement_percent == pytest.approx(100 * 4000 / np.sum(labels > 0))
    assert result.right.infection_mean_hu == pytest.approx(hu[labels == 3].mean())
    assert result.left.healthy_mean_hu == pytest.approx(hu[labels == 1].mean())
    assert not result.bilateral and result.severity == severity_category(result.total.involvement_percent)
    assert -950 < result.left.healthy_mean_hu < -700, "expert lung masks on a real CT: lung HU"


def test_healthy_case_is_ct0_and_plausible(ctchest) -> None:
    labels, geometry, hu = ctchest
    result = quantify(labels, geometry, hu)
    assert result.severity == "CT-0" and result.total.infection_ml == 0
    assert 5000 < result.total.volume_ml < 7000  # 6327 mL by the expert masks
    assert "automatic estimate" in result.severity_note


def test_implausible_volumes_and_cut_off_lungs_are_warned(ctchest) -> None:
    labels, geometry, _ = ctchest
    small = np.zeros_like(labels)
    small[10:12, 40:60, 40:60] = 1
    assert any("outside the usual adult range" in w for w in quantify(small, geometry).warnings)
    cut = labels.copy()
    cut[:, :, :] = 0
    cut[0:20] = labels[0:20]
    cut[0, 60:70, 30:40] = 1  # lung on the first slice
    assert any("first or last slice" in w for w in quantify(cut, geometry).warnings)
    assert quantify(np.zeros_like(labels), geometry).warnings == [
        "no lung found (0.0 mL of lung-like labels, under the 20 mL of any chest CT): check that the image is a "
        "chest CT"]
    speck = np.zeros_like(labels)
    speck[15, 60:63, 60:63] = 1  # an airway's few voxels called lung: the same rule as covidseg segment's
    warnings = quantify(speck, geometry).warnings
    assert len(warnings) == 1 and warnings[0].startswith("no lung found (") and "outside" not in warnings[0]


def test_infection_filling_whole_slices_of_one_lung_stays_with_that_lung(ctchest) -> None:
    """Nearest-label attribution would hand such a slab to the other lung, which is closer in-plane."""
    labels, geometry, hu = ctchest
    labels = labels.copy()
    slices = np.flatnonzero((labels == 2).any(axis=(1, 2)))
    slab = np.zeros(labels.shape, bool)
    slab[slices[len(slices) // 3: 2 * len(slices) // 3]] = True
    slab &= labels == 2
    labels[slab] = 3
    result = quantify(labels, geometry, hu)
    voxel_ml = np.prod(geometry.spacing) / 1000
    assert result.right.infection_ml >= 0.98 * slab.sum() * voxel_ml
    assert result.left.infection_ml <= 0.02 * slab.sum() * voxel_ml


def test_ggo_and_consolidation_are_reported_separately(ctchest) -> None:
    labels, geometry, hu = ctchest
    labels = labels.copy()
    right = np.argwhere(labels == 2)
    lateral = right[np.argsort(lps_left_coordinate(geometry, right))]
    labels[tuple(lateral[:1000].T)] = 4  # ground-glass opacity
    labels[tuple(lateral[1000:1500].T)] = 5  # consolidation
    result = quantify(labels, geometry, hu)
    voxel_ml = np.prod(geometry.spacing) / 1000
    assert result.ggo_ml == pytest.approx(1000 * voxel_ml)
    assert result.consolidation_ml == pytest.approx(500 * voxel_ml)
    assert result.right.infection_ml == pytest.approx(1500 * voxel_ml)
    assert quantify(np.where(labels >= 4, 3, labels).astype(np.uint8), geometry).ggo_ml is None
