"""The shifted-array erosion and dilation give scipy's result, voxel for voxel, on real lungs and bodies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from CovidSegLib.engine.morphology import dilate_in_plane, erode_in_plane, open_in_plane
from CovidSegLib.engine.preprocessing import BODY_HU
from CovidSegLib.io.reading import read_segmentation, read_volume

IN_PLANE_CROSS = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], dtype=bool)


@pytest.fixture(scope="module")
def ctchest(volumes: Path) -> tuple[np.ndarray, np.ndarray]:
    hu = read_volume(volumes / "ctchest4.nrrd").array
    layer = read_segmentation(volumes / "ctchest4.seg.nrrd").layers[0]
    return hu, (layer == 5) | (layer == 6)


def test_erosions_and_dilations_of_real_lungs_match_scipy(ctchest) -> None:
    _, lungs = ctchest
    eroded, dilated = lungs, lungs
    for step in range(6):  # repeated, as the left/right split erodes until the lungs part
        eroded, expected = erode_in_plane(eroded), ndimage.binary_erosion(eroded, IN_PLANE_CROSS)
        assert np.array_equal(eroded, expected), f"erosion {step + 1}"
        dilated, expected = dilate_in_plane(dilated), ndimage.binary_dilation(dilated, IN_PLANE_CROSS)
        assert np.array_equal(dilated, expected), f"dilation {step + 1}"
    assert eroded.sum() < lungs.sum() < dilated.sum()


def test_opening_of_every_body_slice_matches_scipy(ctchest) -> None:
    hu, _ = ctchest
    dense = hu > BODY_HU
    for index, plane in enumerate(dense):
        assert np.array_equal(open_in_plane(plane), ndimage.binary_opening(plane, iterations=1)), f"slice {index}"


def test_the_array_border_counts_as_unset() -> None:
    full = np.ones((2, 4, 5), dtype=bool)
    eroded = erode_in_plane(full)
    assert np.array_equal(eroded, ndimage.binary_erosion(full, IN_PLANE_CROSS))
    assert eroded[:, 1:-1, 1:-1].all() and not eroded[:, 0].any() and not eroded[:, :, -1].any()
    corner = np.zeros((1, 3, 3), dtype=bool)
    corner[0, 0, 0] = True
    assert dilate_in_plane(corner).sum() == 3  # itself and its two neighbours inside the array
