"""Metrics against hand-computed values and an independent implementation (MONAI) on real lung masks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from CovidSegLib.measure.metrics import rand_error, structure_metrics
from CovidSegLib.io.reading import read_segmentation


def test_hand_computed_boxes() -> None:
    """Two boxes on a 10x10x10 grid with 2 x 1 x 1 mm voxels (k, j, i), shifted by one voxel along i."""
    reference = np.zeros((10, 10, 10), bool)
    predicted = np.zeros((10, 10, 10), bool)
    reference[2:6, 2:6, 2:6] = True  # 64 voxels
    predicted[2:6, 2:6, 3:7] = True  # 64 voxels, 48 shared
    m = structure_metrics(predicted, reference, (2.0, 1.0, 1.0), nsd_tolerance_mm=1.0)
    assert m.dice == pytest.approx(2 * 48 / 128)
    assert m.jaccard == pytest.approx(48 / 80)
    assert m.sensitivity == pytest.approx(48 / 64)
    assert m.specificity == pytest.approx((1000 - 80) / (1000 - 64))
    assert m.relative_volume_difference == 0.0
    assert m.predicted_volume_ml == pytest.approx(64 * 2 / 1000)
    # Every border voxel of one box is within 1 mm (one i-step) of the other's border: NSD 1, HD95 1 mm.
    assert m.nsd == pytest.approx(1.0)
    assert m.hd95_mm == pytest.approx(1.0)
    # Rand: N = 1000 voxels, 32 voxels disagree (16 + 16); disagreeing pairs are those split in exactly one
    # partition. By hand: agreement pairs from the 2x2 table [[48, 16], [16, 920]].
    pairs = lambda n: n * (n - 1) // 2  # noqa: E731
    together = pairs(48) + pairs(16) + pairs(16) + pairs(920)
    rows = pairs(64) + pairs(936)
    apart = pairs(1000) - 2 * rows + together
    assert m.rand_error == pytest.approx(1 - (together + apart) / pairs(1000))
    assert 0 < m.rand_error < 0.07


def test_nsd_counts_border_voxels_beyond_tolerance() -> None:
    """A 2-voxel shift along k (2 mm voxels = 4 mm) against a 3 mm tolerance: only the side faces stay within."""
    reference = np.zeros((12, 8, 8), bool)
    reference[2:6, 2:6, 2:6] = True
    predicted = np.roll(reference, 2, axis=0)
    m = structure_metrics(predicted, reference, (2.0, 1.0, 1.0), nsd_tolerance_mm=3.0)
    # Border of a 4x4x4 box: 64 - 8 interior = 56 voxels. Each box's border voxels in the two k-layers that do
    # not overlap the other box are >= 4 mm away, except those within 3 mm... computed directly instead:
    ref_border = reference & ~ndimage.binary_erosion(reference, border_value=0)
    pred_border = predicted & ~ndimage.binary_erosion(predicted, border_value=0)
    d_pred = ndimage.distance_transform_edt(~ref_border, sampling=(2, 1, 1))[pred_border]
    d_ref = ndimage.distance_transform_edt(~pred_border, sampling=(2, 1, 1))[ref_border]
    expected = (np.sum(d_pred <= 3) + np.sum(d_ref <= 3)) / (d_pred.size + d_ref.size)
    assert m.nsd == pytest.approx(expected)
    assert 0 < m.nsd < 1
    assert m.hd95_mm == pytest.approx(4.0)


def test_empty_masks_follow_the_benchmark_convention() -> None:
    empty = np.zeros((5, 5, 5), bool)
    both = structure_metrics(empty, empty, (1, 1, 1), 1.0)
    scores = ("dice", "jaccard", "nsd", "hd95_mm", "sensitivity", "specificity", "relative_volume_difference",
              "rand_error")
    assert all(math.isnan(getattr(both, name)) for name in scores)
    assert both.predicted_volume_ml == both.reference_volume_ml == 0.0
    some = empty.copy()
    some[1:3, 1:3, 1:3] = True
    missed = structure_metrics(empty, some, (1, 1, 1), 1.0)
    assert missed.dice == 0 and missed.nsd == 0 and missed.sensitivity == 0 and math.isinf(missed.hd95_mm)
    assert missed.relative_volume_difference == -1.0
    false_alarm = structure_metrics(some, empty, (1, 1, 1), 1.0)
    assert false_alarm.dice == 0 and math.isnan(false_alarm.sensitivity) and false_alarm.specificity < 1


def test_rand_error_of_identical_and_complementary_partitions() -> None:
    mask = np.zeros((4, 4, 4), bool)
    mask[:2] = True
    assert rand_error(mask, mask) == 0.0
    assert rand_error(mask, ~mask) == 0.0  # the same partition with the labels swapped


@pytest.fixture(scope="module")
def real_lung_pairs(volumes: Path) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """Expert lung masks of the real CTChest volume against plausible errors (anisotropic 3 x 3 x 10 mm)."""
    reference = read_segmentation(volumes / "ctchest4.seg.nrrd")
    spacing = tuple(reversed(reference.geometry.spacing))
    right = reference.layers[0] == 5
    left = reference.layers[0] == 6
    shifted = np.roll(right, 2, axis=2)
    shrunk = ndimage.binary_erosion(left, iterations=2)
    grown_cut = ndimage.binary_dilation(right, iterations=1)
    grown_cut[:, :40] = False
    return [(shifted, right, spacing), (shrunk, left, spacing), (grown_cut, right, spacing), (left, right, spacing)]


@pytest.mark.parametrize("tolerance", [1.0, 3.0, 7.0])
def test_nsd_and_hd95_match_monai_on_real_masks(real_lung_pairs, tolerance: float) -> None:
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    for predicted, reference, spacing in real_lung_pairs:
        ours = structure_metrics(predicted, reference, spacing, tolerance)
        p = torch.from_numpy(predicted)[None, None].float()
        r = torch.from_numpy(reference)[None, None].float()
        nsd = compute_surface_dice(p, r, [tolerance], spacing=spacing).item()
        hd95 = compute_hausdorff_distance(p, r, percentile=95, spacing=spacing).item()
        assert ours.nsd == pytest.approx(nsd, abs=1e-6)
        assert ours.hd95_mm == pytest.approx(hd95, abs=1e-4)


def test_dice_on_real_masks_matches_direct_count(real_lung_pairs) -> None:
    for predicted, reference, spacing in real_lung_pairs:
        expected = 2 * np.sum(predicted & reference) / (predicted.sum() + reference.sum())
        assert structure_metrics(predicted, reference, spacing, 1.0).dice == pytest.approx(expected)
