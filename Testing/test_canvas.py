"""The anatomy canvas and representation on real CT: what the network sees must not depend on the field of view,
the matrix shape, the padding value or the pixel size, and a denser lung must look denser.

These check the representation itself (CovidSegLib.engine.canvas, CovidSegLib.engine.anatomy), model-free; the
same properties through a trained model are Testing/test_invariance.py's."""

from __future__ import annotations

import numpy as np
import pytest

from CovidSegLib.checks.intensity import prepare_ct
from CovidSegLib.engine.anatomy import anatomy_network_input, masks_on_canvas, render_hu
from CovidSegLib.engine.canvas import (BODY_WIDTH_MM, CROP_WIDTH_MM, Placement, estimated_pixel_mm, slice_placement,
                                       volume_placement)
from CovidSegLib.engine.preprocessing import body_mask_2d
from CovidSegLib.engine.representation import RADIOPAEDIA_CLIP, Preprocessing
from CovidSegLib.io.orientation import to_canonical
from CovidSegLib.io.reading import read_volume

ANATOMY = Preprocessing(mode="anatomy", crop="none", clip_hu=RADIOPAEDIA_CLIP)


@pytest.fixture(scope="module")
def lungmask_slices(volumes):
    """lungmask's two real 512x512 DICOM slices (0.625 mm pixels) through both lungs, canonical."""
    canonical, _ = to_canonical(prepare_ct(read_volume(volumes / "lungmask_dicom")))
    spacing = canonical.geometry.spacing
    return canonical.array.astype(np.float32), (float(spacing[1]), float(spacing[0]))


def rendered(hu: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    return render_hu(hu, volume_placement(hu, pixel_mm), ANATOMY).astype(np.int16)


def patient_on_canvas(hu: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """The body on the canvas, 8 mm wider: what must not change. The air beyond may: a scanner's noisy air that
    a crop replaces by the canvas' even air looks different after CLAHE, and holds no patient."""
    from scipy import ndimage

    body = masks_on_canvas(np.stack([body_mask_2d(s) for s in hu]), volume_placement(hu, pixel_mm))
    return ndimage.binary_dilation(body, iterations=5, structure=np.ones((1, 3, 3), bool))


def assert_same_view(a: np.ndarray, b: np.ndarray, patient: np.ndarray, mean_levels: float = 1.0,
                     share_within_8: float = 0.99) -> None:
    """The two renderings agree on the patient, in both channels."""
    difference = np.abs(a - b).transpose(1, 0, 2, 3)[:, patient]
    assert difference.mean() <= mean_levels, difference.mean()
    assert (difference <= 8).mean() >= share_within_8, (difference <= 8).mean()


def test_more_air_around_the_patient_changes_nothing(lungmask_slices) -> None:
    hu, pixel_mm = lungmask_slices
    for pad in (1, 49, 50, 51):  # the placement moves with the patient, to the pixel, whatever the pad
        moved = volume_placement(np.pad(hu, ((0, 0), (pad, 0), (pad, 0)), constant_values=-1024.0), pixel_mm)
        assert moved.centre == pytest.approx(np.add(volume_placement(hu, pixel_mm).centre, pad))
    for fill in (-1024.0, -2048.0, -3024.0):  # a larger field of view, padded as scanners pad it
        padded = np.pad(hu, ((0, 0), (48, 48), (48, 48)), constant_values=fill)
        assert_same_view(rendered(padded, pixel_mm), rendered(hu, pixel_mm), patient_on_canvas(hu, pixel_mm))


def test_a_non_square_matrix_changes_nothing(lungmask_slices) -> None:
    hu, pixel_mm = lungmask_slices
    body_rows = np.flatnonzero(body_mask_2d(hu.max(axis=0)).any(axis=1))
    cropped = hu[:, body_rows[0] - 10:body_rows[-1] + 10]  # rows of air cut off: 512 x ~340
    assert cropped.shape[1] < hu.shape[1] - 60
    # CLAHE equalises each tile by its histogram: the tiles at the body's edge lose the scanner's noisy air with
    # the crop, so a few per cent of the patient's pixels there move by more than 8 levels
    assert_same_view(rendered(cropped, pixel_mm), rendered(hu, pixel_mm), patient_on_canvas(hu, pixel_mm),
                     share_within_8=0.97)
    widened = np.pad(hu, ((0, 0), (0, 0), (128, 128)), constant_values=-1024.0)  # 512 x 768
    assert_same_view(rendered(widened, pixel_mm), rendered(hu, pixel_mm), patient_on_canvas(hu, pixel_mm))


def test_another_pixel_size_gives_the_same_view_at_the_canvas_resolution(lungmask_slices) -> None:
    import cv2

    hu, pixel_mm = lungmask_slices
    coarse = np.stack([cv2.resize(s, (256, 256), interpolation=cv2.INTER_AREA) for s in hu])  # 1.25 mm pixels
    a, b = rendered(coarse, (pixel_mm[0] * 2, pixel_mm[1] * 2)), rendered(hu, pixel_mm)
    for channel in (0, 1):
        correlation = np.corrcoef(a[:, channel].ravel(), b[:, channel].ravel())[0, 1]
        assert correlation > 0.97, (channel, correlation)
    assert np.abs(a[:, 1] - b[:, 1]).mean() < 3  # the density channel: HU, whatever the pixel size


def test_a_denser_lung_looks_denser_in_the_density_channel_only(lungmask_slices) -> None:
    """Parenchyma raised by +300 HU (ground-glass density): the density channel rises by 300 / 1324 of its range
    inside the lung; CLAHE (the structure channel) equalises most of the rise away, which is why the density
    channel exists."""
    hu, pixel_mm = lungmask_slices
    body = np.stack([body_mask_2d(s) for s in hu])
    lung = body & (hu < -500)
    denser = np.where(lung, hu + 300, hu)
    placement = volume_placement(hu, pixel_mm)
    lung_on_canvas = masks_on_canvas(lung, placement)
    before = render_hu(hu, placement, ANATOMY).astype(float)
    after = render_hu(denser, placement, ANATOMY).astype(float)
    density_rise = (after[:, 1] - before[:, 1])[lung_on_canvas].mean()
    structure_rise = (after[:, 0] - before[:, 0])[lung_on_canvas].mean()
    assert density_rise == pytest.approx(300 / 1324 * 255, rel=0.1)
    assert structure_rise < density_rise / 2


def test_masks_survive_the_trip_to_the_canvas_and_back(lungmask_slices) -> None:
    hu, pixel_mm = lungmask_slices
    lung = np.stack([body_mask_2d(s) & (s < -500) for s in hu])
    placement = volume_placement(hu, pixel_mm)
    on_canvas = masks_on_canvas(lung, placement).astype(np.float32)
    back = np.stack([placement.from_canvas(c, hu.shape[1:], 0.0) >= 0.5 for c in on_canvas])
    dice = 2 * (back & lung).sum() / (back.sum() + lung.sum())
    assert dice > 0.95, dice


def test_placement_maps_pixel_centres_exactly() -> None:
    placement = Placement(centre=(100.0, 50.0), pixel_mm=(0.8, 0.8))
    matrix = placement.matrix()
    assert matrix @ np.array([50.0, 100.0, 1.0]) == pytest.approx([127.5, 127.5])  # the centre: the middle
    assert matrix @ np.array([52.0, 100.0, 1.0]) == pytest.approx([127.5 + 1.0, 127.5])  # 2 px x 0.8 mm = 1.6 mm


def test_pixel_size_of_a_slice_without_spacing_comes_from_its_body(volumes, lungmask_slices) -> None:
    canonical, _ = to_canonical(prepare_ct(read_volume(volumes / "ctchest4.nrrd")))
    body = body_mask_2d(canonical.array[20])  # through both lungs; the body 326 mm wide at 3.05 mm pixels
    assert estimated_pixel_mm(body) == pytest.approx(float(canonical.geometry.spacing[0]), rel=0.05)
    placement = slice_placement(body, None)
    assert placement.pixel_mm[0] * (np.ptp(np.flatnonzero(body.any(axis=0))) + 1) == pytest.approx(BODY_WIDTH_MM)
    hu, pixel_mm = lungmask_slices  # its 320 mm field of view cuts the body at both sides: a crop
    assert estimated_pixel_mm(body_mask_2d(hu[0])) == pytest.approx(CROP_WIDTH_MM / hu.shape[2])
    assert CROP_WIDTH_MM / hu.shape[2] == pytest.approx(pixel_mm[1], rel=0.1)


def test_a_corpus_patient_is_placed_at_one_pixel_size_whatever_joins_one_slices_body(volumes) -> None:
    """CTChest's lung slices as an 8-bit corpus patient; on two slices a bright table band, touching both image
    edges, joins the body, so those slices alone would take the crop's pixel size. The patient's median keeps
    every slice at CTChest's own scale."""
    from CovidSegLib.engine.canvas import body_mask_8bit
    from CovidSegLib.training.canvas_slices import corpus_on_canvas, pixel_mm_per_patient
    from CovidSegLib.training.data import NO_PATIENT, SliceSet

    canonical, _ = to_canonical(prepare_ct(read_volume(volumes / "ctchest4.nrrd")))
    clean = (np.clip((canonical.array[10:24] + 1250.0) / 1500.0, 0, 1) * 255).astype(np.uint8)
    eight_bit = clean.copy()
    rows = np.flatnonzero(body_mask_2d(canonical.array[16]).any(axis=1))
    eight_bit[[3, 9], rows[-1] - 2:rows[-1] + 4, :] = 200  # the table, joined to the body, edge to edge
    own = np.array([estimated_pixel_mm(body_mask_8bit(image)) for image in eight_bit])
    assert own[3] == own[9] == pytest.approx(CROP_WIDTH_MM / eight_bit.shape[2])  # the misfire
    truth = float(canonical.geometry.spacing[0])
    n = len(eight_bit)
    masks = np.zeros(eight_bit.shape, bool)

    def mid_chest_widths(images: np.ndarray) -> np.ndarray:
        """The body's width on the canvas, in canvas pixels, along the canvas' middle row (above the table)."""
        corpus = SliceSet(images, masks, masks, np.ones(n, bool), np.ones(n, bool), [f"s{i}" for i in range(n)],
                          ["corpus/ctchest"] * n)
        placed = corpus_on_canvas(corpus, ANATOMY).images[:, 0]
        return np.array([body_mask_8bit(image)[ANATOMY.canvas_size // 2].sum() for image in placed])

    with_table, without = mid_chest_widths(eight_bit), mid_chest_widths(clean)
    assert np.abs(with_table - without).max() <= 2  # the table changes no slice's scale
    expected = pixel_mm_per_patient(own, ["corpus/ctchest"] * n)
    assert expected == pytest.approx(np.median(own)) and np.median(own) == pytest.approx(truth, rel=0.05)
    assert pixel_mm_per_patient(own, [NO_PATIENT] * n) == pytest.approx(own)  # no patient id: each its own


def test_the_network_input_flags_where_density_is_absent() -> None:
    images = np.full((2, 2, 8, 8), 255, np.uint8)
    tensor = anatomy_network_input(images, np.array([True, False]))
    assert tuple(tensor.shape) == (2, 3, 8, 8)
    assert float(tensor[0, 1].mean()) == 1.0 and float(tensor[0, 2].mean()) == 1.0
    assert float(tensor[1, 1].abs().sum()) == 0.0 and float(tensor[1, 2].abs().sum()) == 0.0
    assert float(tensor[1, 0].mean()) == 1.0  # the structure image is there either way
