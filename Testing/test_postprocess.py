"""Post-processing on the real CTChest lungs: what lungmask gets wrong must come out right here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from CovidSegLib.labels import INFECTION, LEFT_LUNG, RIGHT_LUNG
from CovidSegLib.io.orientation import to_canonical
from CovidSegLib.engine.lateral import bounding_box
from CovidSegLib.engine.postprocess import keep_lung_components, postprocess
from CovidSegLib.engine.preprocessing import BodySample
from CovidSegLib.io.reading import read_segmentation, read_volume
from CovidSegLib.io.volume import Volume


@pytest.fixture(scope="module")
def canonical_case(volumes: Path):
    ct, plan = to_canonical(read_volume(volumes / "ctchest4.nrrd"))
    reference = read_segmentation(volumes / "ctchest4.seg.nrrd")
    layer = plan.to_canonical(reference.layers[0])
    return ct, layer


def test_spurious_components_holes_and_stray_infection(canonical_case) -> None:
    ct, layer = canonical_case
    lungs = (layer == 5) | (layer == 6)
    raw_lungs = lungs.copy()
    raw_lungs[15:25, 0:10, 50:80] = True  # "lung" in the air in front of the patient (outside the body)
    raw_lungs[3, 64, 64] = True  # a speck
    k, j, i = np.argwhere(layer == 6)[len(np.argwhere(layer == 6)) // 2]
    hole = np.zeros_like(lungs)
    hole[k, j - 2:j + 3, i - 2:i + 3] = True
    raw_lungs &= ~hole  # dense infection the network did not call lung
    infection = hole.copy()
    infection[20, 5, 60] = True  # "infection" outside any lung
    labels = postprocess(raw_lungs, infection, ct.geometry, ct.array)
    assert not labels[15:25, 0:10, 50:80].any(), "component outside the body must go"
    assert labels[3, 64, 64] == 0, "specks must go"
    assert labels[20, 5, 60] == 0, "infection only inside the lungs"
    assert (labels[hole] == INFECTION).all(), "the hole is lung, and infected"
    found = labels > 0
    dice = 2 * np.sum(found & lungs) / (found.sum() + lungs.sum())
    assert dice > 0.995


def test_sides_follow_patient_space(canonical_case) -> None:
    ct, layer = canonical_case
    labels = postprocess((layer == 5) | (layer == 6), np.zeros(layer.shape, bool), ct.geometry, ct.array)
    for side, code in ((LEFT_LUNG, 6), (RIGHT_LUNG, 5)):
        dice = 2 * np.sum((labels == side) & (layer == code)) / (np.sum(labels == side) + np.sum(layer == code))
        assert dice > 0.98


def test_no_lung_gives_empty_labels(canonical_case) -> None:
    ct, layer = canonical_case
    empty = np.zeros(layer.shape, bool)
    assert not postprocess(empty, empty, ct.geometry, ct.array).any()
    assert isinstance(ct, Volume)


def test_lungs_touching_the_edge_of_the_image(canonical_case) -> None:
    """Lung up to the last row and column (a tight field of view): boxes stay inside the array."""
    ct, layer = canonical_case
    real = (layer == 5) | (layer == 6)
    lungs = real.copy()
    lungs[:, -1, 60:70] = True  # small strips at the edge: the box must reach them, the filter drop them
    lungs[:, 60:70, -1] = True
    box = bounding_box(lungs)
    assert [b.stop for b in box][1:] == list(lungs.shape[1:])
    body = BodySample.of(ct.array, float(np.mean(ct.geometry.spacing[:2])))
    kept = keep_lung_components(lungs, body=body.on_grid(1, lungs.shape))
    assert np.sum(kept & real) >= real.sum() - 1 and not kept[:, -1, 60:70].any()


def test_body_masks_are_shared_across_grids(canonical_case) -> None:
    """The analysis computes body masks once; post-processing reads them on its own cell grid."""
    ct, _ = canonical_case
    body = BodySample.of(ct.array, 0.7)  # as if 0.7 mm pixels: sampled every 4th pixel
    assert body.stride == 4 and body.masks.shape == (34, 32, 32)
    cells = body.on_grid(2, (34, 64, 64))  # cells of 2 pixels: each body sample covers 2x2 cells
    assert cells.shape == (34, 64, 64)
    assert np.array_equal(cells[:, ::2, ::2], body.masks)
    assert body.masks.any() and not body.masks.all()


def test_fill_holes_2d_is_scipy_fill_holes_on_every_real_slice(canonical_case) -> None:
    """The labelling fill must give binary_fill_holes' result exactly: on each CTChest slice's body and lungs
    (holes: the lungs inside the body, vessels inside the lungs) and on the cases that tell 4- from
    8-connectivity and border from hole."""
    from scipy import ndimage

    from CovidSegLib.engine.preprocessing import fill_holes_2d

    ct, layer = canonical_case
    masks = [*(ct.array > -500), *np.isin(layer, (5, 6))]  # every slice's body and lungs
    filled_any = False
    for mask in masks:
        expected = ndimage.binary_fill_holes(mask)
        assert np.array_equal(fill_holes_2d(mask), expected)
        filled_any |= bool((expected & ~mask).any())
    assert filled_any  # the real masks do have holes to fill
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False            # a hole
    ring[1, 1] = ring[2, 2] = False  # (2, 2) touches the outside only diagonally: a hole under 4-connectivity
    open_ring = ring.copy()
    open_ring[3, 4:] = False      # a channel from it to the border: no longer a hole
    for mask in (ring, open_ring):
        assert np.array_equal(fill_holes_2d(mask), ndimage.binary_fill_holes(mask))
    assert fill_holes_2d(ring)[2, 2] and not fill_holes_2d(ring)[1, 1] and fill_holes_2d(ring)[3, 3]
    assert not fill_holes_2d(open_ring)[3, 3]


def test_decision_cells_are_set_where_any_of_their_voxels_is(canonical_case) -> None:
    """The pooled grid postprocess decides on: every cell is the OR of its voxels, edge cells included when the
    size does not divide (checked against a direct loop over cells on the real lungs, cut to odd sizes)."""
    from CovidSegLib.engine.postprocess import _max_pool_in_plane

    _, layer = canonical_case
    lungs = np.isin(layer, (5, 6))[:, 3:-2, 1:]  # rows and columns no factor below divides
    for factor in (1, 2, 3, 4):
        cells = _max_pool_in_plane(lungs, factor)
        rows, cols = -(-lungs.shape[1] // factor), -(-lungs.shape[2] // factor)
        assert cells.shape == (len(lungs), rows, cols)
        expected = np.array([[[lungs[k, r * factor:(r + 1) * factor, c * factor:(c + 1) * factor].any()
                               for c in range(cols)] for r in range(rows)] for k in range(0, len(lungs), 7)])
        assert np.array_equal(cells[::7], expected) and cells.any()


def test_lung_must_lie_in_the_body_not_merely_in_its_hull_and_a_cut_chest_wall_keeps_its_lungs() -> None:
    """Air in a concavity of the body (inside its convex hull, outside the body) is not lung; a lung open to an
    image edge the body touches (a field of view that cuts the chest wall) is."""
    from CovidSegLib.engine.postprocess import bodies_closed_at_cut_edges, body_hulls, keep_lung_components

    body = np.zeros((1, 60, 60), bool)
    body[0, 10:50, 10:50] = True
    body[0, 10:25, 25:35] = False  # a notch from the top: concave body
    lung = np.zeros_like(body)
    lung[0, 28:45, 14:46] = True  # inside the body
    notch = np.zeros_like(body)
    notch[0, 12:22, 27:33] = True  # in the notch: inside the hull, outside the body
    cells = (lung | notch) & body_hulls(body)
    assert cells[notch].all()  # the hull alone would keep it
    kept = keep_lung_components(cells, bodies_closed_at_cut_edges(body))
    assert kept[lung].all() and not kept[notch].any()

    cut = np.zeros((1, 40, 60), bool)
    cut[0, 5:35, :] = True  # the body reaches the left and right edges
    cut_lung = np.zeros_like(cut)
    cut_lung[0, 12:28, 0:20] = True  # open to the left edge
    cut[cut_lung] = False
    kept = keep_lung_components(cut_lung & body_hulls(cut), bodies_closed_at_cut_edges(cut))
    assert kept[cut_lung].all()
    assert not bodies_closed_at_cut_edges(cut)[0, :5].any()  # the air above the patient stays outside


def test_body_hulls_match_the_exact_convex_hull_within_one_pixel(volumes) -> None:
    """The OpenCV hull against scikit-image's exact one, on CTChest's real bodies and on two separate blobs."""
    from scipy import ndimage
    from skimage.morphology import convex_hull_image

    from CovidSegLib.checks.intensity import prepare_ct
    from CovidSegLib.engine.postprocess import body_hulls
    from CovidSegLib.engine.preprocessing import body_mask_2d

    canonical, _ = to_canonical(prepare_ct(read_volume(volumes / "ctchest4.nrrd")))
    two = np.zeros((1, 64, 64), bool)
    two[0, 10:20, 5:15] = two[0, 40:50, 45:60] = True
    for bodies in (np.stack([body_mask_2d(s) for s in canonical.array]), two):
        for body, hull in zip(bodies, body_hulls(bodies)):
            assert body.any()
            exact = ndimage.binary_dilation(convex_hull_image(body), iterations=1)
            assert not (hull & ~ndimage.binary_dilation(exact)).any()
            assert not (exact & ~ndimage.binary_dilation(hull)).any()
            assert not (body & ~hull).any()  # the body lies inside its hull
    spread = body_hulls(two)[0]
    assert spread[30, 30] and not spread[5, 60]  # between the blobs, not beyond them
    assert body_hulls(np.zeros((2, 16, 16), bool)).all()  # no body: nothing is dropped
