"""The Slicer module's Logic on Slicer's real MRML (slicer-core), with real CT loaded by Slicer's readers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PROJECT_ROOT

slicer = pytest.importorskip("slicer")
torch = pytest.importorskip("torch")
sys.path.insert(0, str(PROJECT_ROOT / "CovidSeg"))

from CovidSegLogic import CovidSegLogic, geometry_from_volume_node  # noqa: E402

from CovidSegLib.errors import Cancelled, InputError  # noqa: E402
from CovidSegLib.measure.evaluation import evaluate_case  # noqa: E402
from CovidSegLib.labels import OUTPUT_LABELS, SPLIT_OUTPUT_LABELS, slicer_terminology_string  # noqa: E402
from CovidSegLib.io.reading import read_volume  # noqa: E402


def load_volume(scene, path: Path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node


def load_segmentation(scene, path: Path):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", path.name)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def test_geometry_of_a_slicer_volume_node_matches_covidseglib(scene, volumes: Path) -> None:
    for name in ("ctchest4.nrrd", "totalseg_example_ct_sm.nii.gz"):
        node = load_volume(scene, volumes / name)
        assert geometry_from_volume_node(node).matches(read_volume(volumes / name).geometry, tolerance_mm=1e-4)


@pytest.fixture(scope="module")
def logic_model() -> str:
    """The bundled default model: Logic tests check real results, not only mechanics."""
    from CovidSegLib.engine.model import BUNDLED_CARD

    return str(BUNDLED_CARD)


def test_segment_creates_named_segments_on_the_volume_grid(scene, volumes: Path, logic_model: str) -> None:
    volume = load_volume(scene, volumes / "ctchest4.nrrd")
    logic = CovidSegLogic(scene)
    fractions: list[float] = []
    segmentation_node = logic.segment(volume, model_path=logic_model, progress=lambda f: fractions.append(f) and False)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    segmentation = segmentation_node.GetSegmentation()

    def segments() -> list:
        return [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]

    # the bundled card tells ground-glass opacity from consolidation
    assert [s.GetName() for s in segments()] == [info.name for info in SPLIT_OUTPUT_LABELS]
    assert [s.GetTerminology() for s in segments()] == [slicer_terminology_string(i) for i in SPLIT_OUTPUT_LABELS]
    geometry = segmentation_node.GetSegmentation().GetConversionParameter("Reference image geometry")
    assert geometry, "reference geometry must be set so DICOM SEG export works"
    left = logic.segment_mask(segmentation_node, "left_lung", volume)
    assert left.shape == slicer.util.arrayFromVolume(volume).shape
    found = sum(logic.segment_mask(segmentation_node, key, volume) for key in ("ggo", "consolidation"))

    # run again into the same node with one infection segment: the other scheme's segments are replaced
    logic.segment(volume, segmentation_node, model_path=logic_model, separate_infection=False)
    assert [s.GetName() for s in segments()] == [info.name for info in OUTPUT_LABELS]
    assert np.array_equal(logic.segment_mask(segmentation_node, "infection", volume), found > 0)


def test_lungs_are_found_where_the_reference_has_them(scene, volumes: Path, logic_model: str, tmp_path: Path) -> None:
    volume = load_volume(scene, volumes / "ctchest4.nrrd")
    reference = load_segmentation(scene, volumes / "ctchest4.seg.nrrd")
    logic = CovidSegLogic(scene)
    segmentation_node = logic.segment(volume, model_path=logic_model)
    table = logic.compare(segmentation_node, reference, volume)
    rows = {table.GetTable().GetValue(r, 0).ToString(): r for r in range(table.GetNumberOfRows())}
    dice = {name: table.GetTable().GetValue(row, 1).ToDouble() for name, row in rows.items()}
    assert dice["lungs"] > 0.9 and dice["left_lung"] > 0.85 and dice["right_lung"] > 0.85, dice

    # Compare's Dice equals `covidseg evaluate` on the same data
    from CovidSegLib.io.writing import write_label_map

    masks = logic.masks_by_label(segmentation_node, logic.default_mapping(segmentation_node), volume)
    labels = np.zeros(next(iter(masks.values())).shape, np.uint8)
    for value in sorted(masks):
        labels[masks[value]] = value
    written = write_label_map(labels, geometry_from_volume_node(volume), tmp_path / "pred.seg.nrrd",
                              label_infos=SPLIT_OUTPUT_LABELS)
    case = evaluate_case(written, volumes / "ctchest4.seg.nrrd")
    for name in ("left_lung", "right_lung", "lungs"):
        assert dice[name] == pytest.approx(case.metrics[name].dice, abs=1e-9)


def test_compare_uses_the_chosen_reference_segments(scene, volumes: Path, logic_model: str) -> None:
    volume = load_volume(scene, volumes / "ctchest4.nrrd")
    reference = load_segmentation(scene, volumes / "ctchest4.seg.nrrd")
    logic = CovidSegLogic(scene)
    swapped = logic.compare(reference, reference, volume,
                            reference_mapping={1: ["right lung"], 2: ["left lung"]})
    # the reference against itself, with left and right swapped: lungs overall still agree, each side does not
    assert swapped.GetTable().GetValue(2, 1).ToDouble() == pytest.approx(1.0)
    assert swapped.GetTable().GetValue(0, 1).ToDouble() == pytest.approx(0.0)


def test_quantify_volumes_match_voxel_counts(scene, volumes: Path, logic_model: str) -> None:
    volume = load_volume(scene, volumes / "ctchest4.nrrd")
    logic = CovidSegLogic(scene)
    segmentation_node = logic.segment(volume, model_path=logic_model)
    table, result = logic.quantify(segmentation_node, volume)
    voxel_ml = np.prod(volume.GetSpacing()) / 1000
    left = logic.segment_mask(segmentation_node, "left_lung", volume)
    ggo = logic.segment_mask(segmentation_node, "ggo", volume)
    consolidation = logic.segment_mask(segmentation_node, "consolidation", volume)
    right = logic.segment_mask(segmentation_node, "right_lung", volume)
    infection = ggo | consolidation
    assert infection.any(), "CTChest's false infection (the card: 1.8 mL) is what this counts"
    total_ml = (left.sum() + right.sum() + infection.sum()) * voxel_ml
    assert table.GetTable().GetValue(2, 1).ToDouble() == pytest.approx(total_ml)
    assert table.GetTable().GetValue(2, 2).ToDouble() == pytest.approx(infection.sum() * voxel_ml)
    columns = {table.GetTable().GetColumnName(c): c for c in range(table.GetTable().GetNumberOfColumns())}
    both = table.GetTable().GetNumberOfRows() - 1
    assert table.GetTable().GetValue(both, columns["Ground-glass opacity (mL)"]).ToDouble() == pytest.approx(
        ggo.sum() * voxel_ml)
    assert table.GetTable().GetValue(both, columns["Consolidation (mL)"]).ToDouble() == pytest.approx(
        consolidation.sum() * voxel_ml)
    for row, side in ((0, result.left), (1, result.right)):  # each lung's own share, as CovidSegLib counts it
        assert table.GetTable().GetValue(row, columns["Ground-glass opacity (mL)"]).ToDouble() == side.ggo_ml
        assert table.GetTable().GetValue(row, columns["Consolidation (mL)"]).ToDouble() == side.consolidation_ml
    assert result.left.ggo_ml + result.right.ggo_ml == pytest.approx(ggo.sum() * voxel_ml)
    assert table.GetAttribute("CovidSeg.Severity") == result.severity
    assert "automatic estimate" in table.GetAttribute("CovidSeg.SeverityNote")


def test_quantify_table_has_each_lungs_aeration_and_ctchest_is_ct0(scene, volumes: Path, logic_model: str) -> None:
    """The Quantify table's aeration columns are HU thresholds on the lung segments: per lung they sum to its
    volume and equal direct counts of the CT's voxels; CTChest (no COVID-19) is CT-0, as covidseg report says."""
    from CovidSegLib.measure.aeration import BANDS, band_masks
    from CovidSegLib.measure.quantification import attribute_infection

    volume = load_volume(scene, volumes / "ctchest4.nrrd")
    logic = CovidSegLogic(scene)
    segmentation_node = logic.segment(volume, model_path=logic_model)
    table, result = logic.quantify(segmentation_node, volume)
    values = table.GetTable()
    columns = {values.GetColumnName(c): c for c in range(values.GetNumberOfColumns())}
    hu = slicer.util.arrayFromVolume(volume)
    voxel_ml = np.prod(volume.GetSpacing()) / 1000
    labels = logic.label_map(segmentation_node, volume)
    sides = attribute_infection(labels, geometry_from_volume_node(volume))  # each lung with its infection
    masks = band_masks(hu)
    for row, lung in enumerate((sides == 1, sides == 2, sides > 0)):
        volume_ml = values.GetValue(row, columns["Volume (mL)"]).ToDouble()
        bands_ml = [values.GetValue(row, columns[f"{name} (mL)"]).ToDouble() for _, name, _, _ in BANDS]
        bands_percent = [values.GetValue(row, columns[f"{name} (%)"]).ToDouble() for _, name, _, _ in BANDS]
        assert sum(bands_ml) == pytest.approx(volume_ml) and sum(bands_percent) == pytest.approx(100)
        assert bands_ml == pytest.approx([np.count_nonzero(lung & masks[key]) * voxel_ml for key, _, _, _ in BANDS])
    assert np.count_nonzero(sides > 0) == np.count_nonzero(labels)
    assert values.GetValue(2, columns["Well aerated (-950 to -700 HU) (%)"]).ToDouble() > 70  # a healthy CT
    assert result.total.infection_ml > 0 and table.GetAttribute("CovidSeg.Severity") == "CT-0"
    assert "within the" in table.GetAttribute("CovidSeg.SeverityReason")


def test_bad_input_gets_the_library_message(scene, volumes: Path, logic_model: str) -> None:
    logic = CovidSegLogic(scene)
    single = load_volume(scene, volumes / "highdicom_ct_image.dcm")
    with pytest.raises(InputError, match="2D image"):
        logic.segment(single, model_path=logic_model)
    volume = load_volume(scene, volumes / "ctchest4.nrrd")
    slicer.util.updateVolumeFromArray(volume, slicer.util.arrayFromVolume(volume) + 3024)
    with pytest.raises(InputError, match="not in Hounsfield units"):
        logic.segment(volume, model_path=logic_model)
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


def test_cancel_leaves_no_segmentation(scene, volumes: Path, logic_model: str) -> None:
    volume = load_volume(scene, volumes / "ctchest4.nrrd")
    with pytest.raises(Cancelled):
        CovidSegLogic(scene).segment(volume, model_path=logic_model, progress=lambda f: f > 0.2)
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


def test_unusual_geometry_is_a_warning_on_the_nodes_and_impossible_geometry_an_error(scene, volumes: Path,
                                                                                    logic_model: str) -> None:
    logic = CovidSegLogic(scene)
    volume = load_volume(scene, volumes / "ctchest4.nrrd")
    assert logic.warnings(logic.segment(volume, model_path=logic_model)) == []  # a real chest CT: nothing to say
    pixel = volume.GetSpacing()[0]
    volume.SetSpacing(pixel, pixel, 15.0)  # thicker slices than any chest CT protocol
    segmentation_node = logic.segment(volume, model_path=logic_model)
    (warning,) = logic.warnings(segmentation_node)
    assert warning.startswith("slice spacing 15 mm is unusual for a chest CT")
    table, result = logic.quantify(segmentation_node, volume)
    assert warning in logic.warnings(table) and warning in result.warnings
    volume.SetSpacing(pixel, pixel, 100.0)
    with pytest.raises(InputError, match="ctchest4.nrrd: slice spacing 100 mm is impossible for a chest CT"):
        logic.segment(volume, model_path=logic_model)


def test_labels_no_segment_takes_are_refused_not_dropped(scene, volumes: Path) -> None:
    """Importing labels into segments that cannot hold them (consolidation into the three-label scheme) would
    lose those voxels without a word: it is an error."""
    volume = load_volume(scene, volumes / "ctchest4.nrrd")
    labels = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    labels[10, 50:60, 50:60] = 5
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "target")
    with pytest.raises(ValueError, match=r"values \[5\] that no segment"):
        CovidSegLogic(scene).labels_to_segmentation(labels, volume, node, OUTPUT_LABELS)
    CovidSegLogic(scene).labels_to_segmentation(labels, volume, node)  # by default: the segments they need
    segmentation = node.GetSegmentation()
    assert segmentation.GetSegment("consolidation") is not None and segmentation.GetSegment("infection") is None
