"""CovidSeg's segmentation of a real CT through Slicer's own display pipeline, rendered off-screen.

Slicer's red, yellow, green and 3D views (displayable managers on slicer-core, views from trame-slicer) show what the
module Logic segmented; the tests measure the pixels. The PNGs are kept in the test's temporary folder and, when
COVIDSEG_ARTEFACTS names a folder, copied there to be looked at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import colour_mask

pytest.importorskip("slicer")
pytest.importorskip("torch")
try:  # ImportError, not only ModuleNotFoundError: trame-slicer without slicer-layer-dm fails on a missing name
    import trame_slicer.views  # noqa: F401
except ImportError as error:
    pytest.skip(f"needs the view extra (trame-slicer with slicer-layer-dm): {error}", allow_module_level=True)

from CovidSegLib.labels import INFECTION_VALUES, LEFT_LUNG, LABELS_BY_VALUE, RIGHT_LUNG  # noqa: E402
from CovidSegView.render import capture, create_offscreen_views, offscreen_rendering_problem, write_png  # noqa: E402

PROBLEM = offscreen_rendering_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")
SIZE = (480, 480)
LEFT, RIGHT = (LABELS_BY_VALUE[v].color for v in (LEFT_LUNG, RIGHT_LUNG))


def keep_artefacts(paths: list[Path]) -> None:
    """Copy the pictures to $COVIDSEG_ARTEFACTS (CI keeps that folder) when it is set."""
    target = os.environ.get("COVIDSEG_ARTEFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copy(path, Path(target) / path.name)


@pytest.fixture(scope="module")
def rendered(volumes: Path, tmp_path_factory):
    """ctchest4 segmented by the module Logic with the bundled model, the axial views through the slice with the
    most infection; the four views' pixels, the label map and the scene."""
    from trame_slicer.core import SlicerApp

    from CovidSegLib.engine.model import BUNDLED_CARD
    from CovidSegView.scene import CaseScene

    app = SlicerApp()
    case = CaseScene(app, model_path=str(BUNDLED_CARD), device="cpu")
    case.load_model()
    views = create_offscreen_views(app, SIZE)
    case.open_ct(volumes / "ctchest4.nrrd")
    case.segment()
    labels = case.labels()
    k = picture_slice(labels)
    j, i = np.argwhere(labels[k] == LEFT_LUNG).mean(axis=0).round().astype(int)
    case.jump_to_voxel(k, j, i)  # sagittal through the left lung, coronal through both
    pictures = {name: capture(view) for name, view in views.items()}
    out = tmp_path_factory.mktemp("views")
    keep_artefacts([write_png(pixels, out / f"ctchest4_{name}.png") for name, pixels in pictures.items()])
    return pictures, labels, k, case, views


#: Infection voxels a slice needs for its colour to be checked: the bundled model finds only 1.8 mL (about 19 voxels
#: of 3x3x10 mm) of false infection on CTChest, 14 of them on one slice.
MIN_SHOWN_VOXELS = 5


def picture_slice(labels: np.ndarray) -> int:
    """The axial slice with the most lung among those showing some infection (any slice if none does)."""
    lung = np.isin(labels, (LEFT_LUNG, RIGHT_LUNG, *INFECTION_VALUES)).sum(axis=(1, 2))
    infected = np.isin(labels, INFECTION_VALUES).sum(axis=(1, 2)) >= MIN_SHOWN_VOXELS
    return int(np.argmax(np.where(infected, lung, -1) if infected.any() else lung))


def screen_centroid_of_voxels(case, view, voxels_kji: np.ndarray) -> np.ndarray:
    """Where Slicer draws the centre of ``voxels`` in a slice view: (column, row) in pixels, row 0 at the top."""
    import vtk

    ijk = np.append(voxels_kji[:, ::-1].mean(axis=0), 1.0)
    ras = case.ct.geometry.ijk_to_ras_matrix() @ ijk
    ras_to_xy = vtk.vtkMatrix4x4()
    ras_to_xy.DeepCopy(view.get_view_node().GetXYToRAS())
    ras_to_xy.Invert()
    x, y = ras_to_xy.MultiplyPoint(list(ras))[:2]
    return np.array([x, SIZE[1] - 1 - y])


def test_slice_views_show_each_lung_in_its_colour(rendered) -> None:
    pictures = rendered[0]
    # red (axial) and green (coronal) cut both lungs; yellow (sagittal) goes through the left lung only
    expected = {"red": ((LEFT, RIGHT), ()), "green": ((LEFT, RIGHT), ()), "yellow": ((LEFT,), (RIGHT,))}
    for name, (shown, absent) in expected.items():
        for colour in shown:
            share = colour_mask(pictures[name], colour).mean()
            assert share > 0.02, f"{name} view: segment colour {colour} covers only {share:.1%}"
        for colour in absent:
            assert colour_mask(pictures[name], colour).mean() < 0.002, f"{name} view shows {colour}"
        grey = pictures[name].std(axis=-1) < 3
        assert grey.mean() > 0.3, f"{name} view: the CT must show around the segments"


def test_axial_view_draws_the_lungs_where_they_are_radiological_convention(rendered) -> None:
    pictures, labels, k, case, views = rendered
    red = pictures["red"]
    for value, colour in ((LEFT_LUNG, LEFT), (RIGHT_LUNG, RIGHT)):
        voxels = np.argwhere(labels[k] == value)
        voxels = np.c_[np.full(len(voxels), k), voxels]
        expected = screen_centroid_of_voxels(case, views["red"], voxels)
        drawn = np.argwhere(colour_mask(red, colour))[:, ::-1].mean(axis=0)
        assert np.linalg.norm(drawn - expected) < 12, f"label {value}: drawn at {drawn}, lies at {expected}"
        # drawn area against the voxels' area at the view's scale (fill plus outline, so a few % larger)
        field_of_view_mm = views["red"].get_view_node().GetFieldOfView()[0]
        pixels_per_mm = SIZE[0] / field_of_view_mm
        spacing = case.ct.geometry.spacing
        expected_area = len(voxels) * spacing[0] * spacing[1] * pixels_per_mm ** 2
        drawn_area = colour_mask(red, colour).sum()
        assert 0.85 < drawn_area / expected_area < 1.2, (value, drawn_area, expected_area)
    left_x = np.argwhere(colour_mask(red, LEFT))[:, 1].mean()
    right_x = np.argwhere(colour_mask(red, RIGHT))[:, 1].mean()
    assert right_x < SIZE[0] / 2 < left_x, "patient left must be on the screen's right in the axial view"


def test_axial_view_shows_the_infection_where_the_model_found_it(rendered) -> None:
    """Each infection class on the shown slice (ground-glass opacity and consolidation with the bundled card)
    is drawn in its own colour."""
    pictures, labels, k, _, _ = rendered
    shown = {value: int((labels[k] == value).sum()) for value in INFECTION_VALUES}
    if max(shown.values()) < MIN_SHOWN_VOXELS:
        pytest.skip(f"the model finds too little infection in ctchest4 ({shown} voxels on slice {k})")
    for value, voxels in shown.items():
        drawn = colour_mask(pictures["red"], LABELS_BY_VALUE[value].color).sum()
        if voxels >= MIN_SHOWN_VOXELS:
            assert drawn > 2 * voxels, (value, voxels, drawn)  # a 3 mm voxel spans several screen pixels
        elif voxels == 0:
            assert drawn < 5, (value, drawn)


def test_3d_view_shows_both_lung_surfaces_from_the_front(rendered) -> None:
    pictures = rendered[0]
    three_d = pictures["3d"]
    left, right = colour_mask(three_d, LEFT, min_cosine=0.95), colour_mask(three_d, RIGHT, min_cosine=0.95)
    assert left.mean() > 0.05 and right.mean() > 0.05, (left.mean(), right.mean())
    # Slicer's default 3D camera looks at the patient from the front: patient left on the screen's right
    assert np.argwhere(right)[:, 1].mean() < np.argwhere(left)[:, 1].mean()


def test_opacity_and_visibility_controls_change_the_picture(rendered) -> None:
    pictures, _, _, case, views = rendered
    try:
        case.set_segment_visible("left_lung", False)
        hidden = capture(views["red"])
        assert colour_mask(hidden, LEFT).mean() < 0.002 and colour_mask(hidden, RIGHT).mean() > 0.03
        case.set_segment_visible("left_lung", True)
        case.set_opacity(1.0)
        opaque = capture(views["red"])
        chroma = lambda pixels: np.ptp(pixels.astype(int), axis=-1)[colour_mask(pixels, RIGHT)].mean()  # noqa: E731
        assert chroma(opaque) > 1.5 * chroma(pictures["red"]), "an opaque fill hides more of the CT"
    finally:
        case.set_segment_visible("left_lung", True)
        case.set_opacity(0.5)
