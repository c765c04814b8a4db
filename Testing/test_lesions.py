"""Synthetic lesions and other acquisitions for training (CovidSegLib.training.lesions, .acquisition), drawn on
Slicer's CTChest, a real CT without COVID-19 that no model trains on, with its experts' lungs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from CovidSegLib.checks.intensity import prepare_ct
from CovidSegLib.io.orientation import to_canonical
from CovidSegLib.io.reading import read_volume
from CovidSegLib.training.acquisition import Acquisition, acquire
from CovidSegLib.training.lesions import DEPENDENT_RISE_HU, draw_dependent_density, draw_lesion, lungs_from_hu


@pytest.fixture(scope="module")
def ctchest(volumes):
    """CTChest canonical in HU, its lungs (segments 5 and 6 of its segmentation) and its spacing (z, y, x)."""
    ct = prepare_ct(read_volume(volumes / "ctchest4.nrrd"))
    canonical, plan = to_canonical(ct)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(volumes / "ctchest4.seg.nrrd")))
    lungs = plan.to_canonical(np.isin(labels, (5, 6)))
    spacing = canonical.geometry.spacing
    return canonical.array.astype(np.float32), lungs, (float(spacing[2]), float(spacing[1]), float(spacing[0]))


def test_lesions_lie_in_the_lungs_raise_them_and_leave_the_rest(ctchest) -> None:
    hu, lungs, spacing = ctchest
    extents = set()
    for seed in range(12):
        new, mask, lesion = draw_lesion(hu, lungs, spacing, np.random.default_rng(seed))
        extents.add(lesion.extent)
        assert mask.any() and not (mask & ~lungs).any(), lesion
        assert np.array_equal(new[~lungs], hu[~lungs])  # nothing outside the lungs moves
        rise = new - hu
        assert rise.min() >= 0  # lesions only add density
        # inside the mask the lung is at least half-way to the lesion's density (vessels keep theirs)
        parenchyma = mask & (hu < lesion.target_hu - 100)
        assert np.median(new[parenchyma] - hu[parenchyma]) >= 0.5 * np.median(lesion.target_hu - hu[parenchyma])
        # outside the mask the lung changes by less than the lesion's half rise
        assert np.percentile(rise[lungs & ~mask], 99) <= 0.5 * max(lesion.target_hu + 850, 100) + 50, lesion
        if lesion.extent == "diffuse":
            assert lesion.lung_fraction >= 0.5, lesion
        if lesion.extent == "focal":
            assert lesion.lung_fraction <= 0.15, lesion
    assert extents == {"focal", "lobar", "diffuse"}


def test_ground_glass_is_drawn_from_the_range_asked_for(ctchest) -> None:
    hu, lungs, spacing = ctchest
    targets = [draw_lesion(hu, lungs, spacing, np.random.default_rng(seed), consolidation=False, texture="plain",
                           ggo_hu=(-650.0, -300.0))[2].target_hu for seed in range(8)]
    assert min(targets) >= -650.0 and max(targets) <= -300.0


def test_a_dependent_gradient_raises_the_back_of_the_lung_only(ctchest) -> None:
    """The hard negative: parenchyma denser towards the back by up to DEPENDENT_RISE_HU, the front and everything
    that is not parenchyma (vessels, the body) unchanged."""
    hu, lungs, spacing = ctchest
    new, rise = draw_dependent_density(hu, lungs, spacing, np.random.default_rng(5))
    assert DEPENDENT_RISE_HU[0] <= rise <= DEPENDENT_RISE_HU[1]
    parenchyma = lungs & (hu < -500)
    assert np.array_equal(new[~parenchyma], hu[~parenchyma])
    change = new - hu
    rows = np.flatnonzero(lungs.any(axis=(0, 2)))
    front, back = np.zeros_like(lungs), np.zeros_like(lungs)
    front[:, rows[0]:rows[0] + len(rows) // 4], back[:, rows[-1] - len(rows) // 4:rows[-1] + 1] = True, True
    assert change[parenchyma & front].mean() < 0.15 * rise < 0.4 * rise < change[parenchyma & back].mean()
    assert change.min() >= 0 and change.max() <= 1.6 * rise + 1e-3


def test_a_lesion_is_drawn_again_from_its_seed(ctchest) -> None:
    hu, lungs, spacing = ctchest
    first = draw_lesion(hu, lungs, spacing, np.random.default_rng(7))
    again = draw_lesion(hu, lungs, spacing, np.random.default_rng(7))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_lungs_found_by_hu_agree_with_the_experts(ctchest) -> None:
    """Where a CT without COVID-19 has no lung mask (POPI), lesions are placed in lungs found by HU."""
    hu, lungs, spacing = ctchest
    found = lungs_from_hu(hu, spacing[1] * spacing[2])
    dice = 2 * (found & lungs).sum() / (found.sum() + lungs.sum())
    assert dice > 0.9, dice


def test_another_acquisition_crops_the_masks_with_the_image(ctchest) -> None:
    hu, lungs, spacing = ctchest
    acquisition = Acquisition(noise_hu=30.0, pixel_mm=5.0, crop=(4, 6, 8, 10), padding_hu=-3024.0)
    new, (lung,) = acquire(hu, [lungs], spacing[1:], acquisition, np.random.default_rng(0))
    assert new.shape == lung.shape == (hu.shape[0], hu.shape[1] - 10, hu.shape[2] - 18)
    assert np.array_equal(lung, lungs[:, 4:-6, 8:-10] & (new > -3000))  # masks follow; nothing outside the circle
    soft_tissue = (hu[:, 4:-6, 8:-10] > 0) & (hu[:, 4:-6, 8:-10] < 80) & (new > -3000)
    assert (new - hu[:, 4:-6, 8:-10])[soft_tissue].std() > 10  # noise was added
    assert (new == -3024.0).any()
