"""Label maps written in every format, read back by slicerio and by Slicer's own MRML, atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from CovidSegLib.errors import OutputError
from CovidSegLib.labels import OUTPUT_LABELS, slicer_terminology_string
from CovidSegLib.engine.lateral import split_left_right
from CovidSegLib.io.reading import read_segmentation, read_volume
from CovidSegLib.io.writing import write_label_map


@pytest.fixture(scope="module")
def ctchest_labels(volumes: Path) -> tuple[np.ndarray, object]:
    """CovidSeg labels on the real CTChest grid: the reference lungs, and a lesion-like blob in one of them."""
    reference = read_segmentation(volumes / "ctchest4.seg.nrrd")
    layer = reference.layers[0]
    labels = np.zeros(layer.shape, dtype=np.uint8)
    labels[layer == 6] = 1
    labels[layer == 5] = 2
    k, j, i = np.argwhere(layer == 5)[len(np.argwhere(layer == 5)) // 2]
    labels[k - 1:k + 2, j - 3:j + 4, i - 3:i + 4][layer[k - 1:k + 2, j - 3:j + 4, i - 3:i + 4] == 5] = 3
    return labels, read_volume(volumes / "ctchest4.nrrd").geometry


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".seg.nrrd"])
def test_written_label_maps_read_back_identically(ctchest_labels, tmp_path: Path, suffix: str) -> None:
    labels, geometry = ctchest_labels
    path = write_label_map(labels, geometry, tmp_path / f"out{suffix}")
    back = read_segmentation(path)
    assert np.array_equal(back.layers[0], labels)
    assert back.geometry.matches(geometry, tolerance_mm=1e-6)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file may be left behind"


def test_seg_nrrd_has_named_coloured_segments_with_terminology(ctchest_labels, tmp_path: Path) -> None:
    labels, geometry = ctchest_labels
    path = write_label_map(labels, geometry, tmp_path / "labels.seg.nrrd")
    info = slicerio.read_segmentation(str(path), skip_voxels=True)
    segments = {s["name"]: s for s in info["segments"]}
    assert list(segments) == ["Left lung", "Right lung", "Infection"]
    assert segments["Left lung"]["terminology"]["type"] == ["SCT", "39607008", "Lung"]
    assert segments["Left lung"]["terminology"]["typeModifier"] == ["SCT", "7771000", "Left"]
    assert segments["Right lung"]["terminology"]["typeModifier"] == ["SCT", "24028007", "Right"]
    assert segments["Infection"]["labelValue"] == 3
    assert np.allclose(segments["Infection"]["color"], OUTPUT_LABELS[2].color, atol=1e-5)


def test_slicer_mrml_opens_seg_nrrd_as_named_segments(ctchest_labels, tmp_path: Path) -> None:
    """Slicer's real segmentation storage node (slicer-core) loads the file with names and terminology."""
    import slicer

    labels, geometry = ctchest_labels
    path = write_label_map(labels, geometry, tmp_path / "labels.seg.nrrd")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    segments = [segmentation.GetNthSegment(n) for n in range(segmentation.GetNumberOfSegments())]
    assert [s.GetName() for s in segments] == ["Left lung", "Right lung", "Infection"]
    for segment, info in zip(segments, OUTPUT_LABELS):
        assert segment.GetTerminology() == slicer_terminology_string(info)
        assert np.allclose(segment.GetColor(), info.color, atol=1e-5)


def test_failed_write_leaves_no_file_and_keeps_the_previous_one(ctchest_labels, tmp_path: Path) -> None:
    labels, geometry = ctchest_labels
    target = tmp_path / "labels.nii.gz"
    write_label_map(labels, geometry, target)
    before = target.read_bytes()
    wrong = labels.copy()
    wrong[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"values \[9\] outside the label scheme"):
        write_label_map(wrong, geometry, target)
    with pytest.raises(ValueError, match="does not match the grid"):
        write_label_map(labels[:-1], geometry, tmp_path / "short.nii.gz")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]


def test_never_overwrites_an_input(volumes: Path, ctchest_labels, tmp_path: Path) -> None:
    labels, geometry = ctchest_labels
    source = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(volumes / "ctchest4.nrrd")), str(source))
    before = source.read_bytes()
    with pytest.raises(OutputError, match="would overwrite the input or reference"):
        write_label_map(labels, geometry, source, protected=[source])
    with pytest.raises(OutputError, match="unknown output format"):
        write_label_map(labels, geometry, tmp_path / "labels.png")
    assert source.read_bytes() == before


def test_left_right_comes_from_patient_space_not_array_index(volumes: Path) -> None:
    """Merged lungs split into left/right match the expert labels, also after mirroring the array storage."""
    reference = read_segmentation(volumes / "ctchest4.seg.nrrd")
    layer, geometry = reference.layers[0], reference.geometry
    lungs = (layer == 5) | (layer == 6)  # these lungs touch: one component, plus one stray voxel
    expected = np.where(layer == 6, 1, np.where(layer == 5, 2, 0))

    def assert_sides_agree(split: np.ndarray, truth: np.ndarray) -> None:
        for side in (1, 2):
            overlap = np.sum((split == side) & (truth == side))
            dice = 2 * overlap / (np.sum(split == side) + np.sum(truth == side))
            assert dice > 0.99, f"side {side}: Dice {dice:.4f} with the expert's left/right"

    assert_sides_agree(split_left_right(lungs, geometry), expected)

    # Store the same patient mirrored: flip the i axis and move the origin to the other end, direction negated.
    mirrored_geometry = type(geometry)(
        size=geometry.size,
        spacing=geometry.spacing,
        origin=tuple(geometry.index_to_lps(np.array([[geometry.size[0] - 1, 0, 0]]))[0]),
        direction=tuple((geometry.direction_matrix @ np.diag([-1.0, 1.0, 1.0])).ravel()),
    )
    assert_sides_agree(split_left_right(lungs[:, :, ::-1], mirrored_geometry), expected[:, :, ::-1])
    # If left/right were decided by array index, one of the two calls above would have swapped them.
