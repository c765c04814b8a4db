"""``covidseg evaluate`` on real reference segmentations: files, folders, label mappings, bad labels."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from CovidSegLib.measure.evaluation import evaluate_case, parse_mapping
from CovidSegLib.io.reading import image_from_array, read_segmentation
from CovidSegLib.io.writing import write_label_map

from conftest import run_cli


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.sum(a & b) / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def reference(volumes: Path):
    return read_segmentation(volumes / "ctchest4.seg.nrrd")


def _prediction(reference, tmp_path: Path, name: str, erosions: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """A CovidSeg-labelled NIfTI made from the expert lungs, each eroded in-plane ``erosions`` times."""
    layer = reference.layers[0]
    in_plane = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool)
    left = ndimage.binary_erosion(layer == 6, in_plane, iterations=erosions) if erosions else layer == 6
    right = ndimage.binary_erosion(layer == 5, in_plane, iterations=erosions) if erosions else layer == 5
    labels = np.zeros(layer.shape, np.uint8)
    labels[left], labels[right] = 1, 2
    path = write_label_map(labels, reference.geometry, tmp_path / f"{name}.nii.gz")
    return path, left, right


def test_same_file_gives_dice_one_for_both_lungs(volumes: Path, tmp_path: Path) -> None:
    seg = volumes / "ctchest4.seg.nrrd"
    result = run_cli("evaluate", str(seg), str(seg), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    table = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert table["left_lung"][1] == "1.0000" and table["right_lung"][1] == "1.0000"
    assert table["infection"][1] == "n/a"  # no infection in either: NaN, not a perfect score
    document = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    metrics = document["cases"][0]["metrics"]
    assert metrics["left_lung"]["dice"] == metrics["right_lung"]["dice"] == 1.0
    assert metrics["left_lung"]["hd95_mm"] == 0.0 and metrics["lungs"]["nsd"] == 1.0
    assert metrics["infection"]["dice"] is None
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert [r["structure"] for r in rows] == ["left_lung", "right_lung", "lungs", "infection"]
    assert float(rows[0]["dice"]) == 1.0 and rows[3]["dice"] == "nan"


def test_different_masks_give_hand_checked_values(reference, tmp_path: Path) -> None:
    path, left, right = _prediction(reference, tmp_path, "case", erosions=1)
    ref_left, ref_right = reference.layers[0] == 6, reference.layers[0] == 5
    result = evaluate_case(path, reference.source)
    assert result.metrics["left_lung"].dice == pytest.approx(_dice(left, ref_left))
    assert result.metrics["right_lung"].dice == pytest.approx(_dice(right, ref_right))
    assert result.metrics["lungs"].dice == pytest.approx(_dice(left | right, ref_left | ref_right))
    assert result.metrics["left_lung"].sensitivity == pytest.approx(left.sum() / ref_left.sum())
    voxel_ml = np.prod(reference.geometry.spacing) / 1000
    assert result.metrics["right_lung"].predicted_volume_ml == pytest.approx(right.sum() * voxel_ml)
    # one in-plane erosion moves the border by one 3.05 mm voxel: outside the 1 mm NSD tolerance, inside 3.1 mm
    assert result.metrics["left_lung"].nsd < 0.6
    loose = evaluate_case(path, reference.source, tolerances={k: 3.1 for k in ("left_lung", "right_lung", "lungs",
                                                                              "infection")})
    assert loose.metrics["left_lung"].nsd > 0.95 > 0.6 > result.metrics["left_lung"].nsd
    assert 0.9 < result.metrics["left_lung"].dice < 0.99


def test_folder_mode_pairs_by_name_and_summarises(reference, tmp_path: Path) -> None:
    predictions, references = tmp_path / "pred", tmp_path / "ref"
    references.mkdir()
    dice = []
    for name, erosions in (("a", 0), ("b", 1), ("c", 2)):
        _, left, _ = _prediction(reference, predictions, name, erosions)
        dice.append(_dice(left, reference.layers[0] == 6))
        (references / f"{name}.seg.nrrd").write_bytes(Path(reference.source).read_bytes())
    (references / "unmatched.seg.nrrd").write_bytes(Path(reference.source).read_bytes())
    result = run_cli("evaluate", str(predictions), str(references), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "no prediction for reference unmatched.seg.nrrd" in result.stdout
    document = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    assert [c["case"] for c in document["cases"]] == ["a", "b", "c"]
    summary = document["summary"]["left_lung"]["dice"]
    assert summary["mean"] == pytest.approx(statistics.fmean(dice))
    assert summary["sd"] == pytest.approx(statistics.stdev(dice))
    assert summary["n"] == 3
    assert f"{statistics.fmean(dice):.4f} ± {statistics.stdev(dice):.4f}" in result.stdout


def test_reference_with_foreign_codes_needs_a_mapping(volumes: Path, reference, tmp_path: Path) -> None:
    """ctchest4 saved as a plain label map (5 right, 6 left): refused without a mapping, scored with one."""
    plain = tmp_path / "ctchest4_labels.nrrd"
    sitk.WriteImage(image_from_array(reference.layers[0], reference.geometry), str(plain))
    pred, _, _ = _prediction(reference, tmp_path, "pred", erosions=0)
    refused = run_cli("evaluate", str(pred), str(plain), "-o", str(tmp_path / "out"))
    assert refused.returncode == 3
    # 5 happens to be a CovidSeg value (consolidation), 6 and 7 are not: refused rather than misread
    assert "ctchest4_labels.nrrd: label values [6, 7] are not in the CovidSeg scheme" in refused.stderr
    assert not (tmp_path / "out").exists(), "a refused run writes nothing"
    mapped = run_cli("evaluate", str(pred), str(plain), "--ref-map", "5=right_lung,6=left_lung", "-o",
                     str(tmp_path / "out"))
    assert mapped.returncode == 0, mapped.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["cases"][0]["metrics"]["lungs"]["dice"] == 1.0


def test_totalsegmentator_lobes_map_to_lungs(volumes: Path) -> None:
    seg = volumes / "totalseg_example_ct_sm_seg.nii.gz"
    lobes = read_segmentation(seg).layers[0]
    result = evaluate_case(seg, seg, parse_mapping("totalseg-lobes"),
                           parse_mapping("10+11=left_lung,12+13+14=right_lung"))
    voxel_ml = 27 / 1000
    assert result.metrics["left_lung"].dice == 1.0
    assert result.metrics["left_lung"].reference_volume_ml == pytest.approx(np.isin(lobes, [10, 11]).sum() * voxel_ml)
    assert result.metrics["right_lung"].reference_volume_ml == pytest.approx(np.isin(lobes, [13, 14]).sum() * voxel_ml)
    swapped = evaluate_case(seg, seg, parse_mapping("totalseg-lobes"),
                            parse_mapping("10+11=right_lung,13+14=left_lung"))
    assert swapped.metrics["left_lung"].dice == 0.0


def test_cropped_reference_is_placed_on_the_prediction_grid(reference, tmp_path: Path) -> None:
    """Slicer often saves a segmentation cropped to its extent: the evaluation must still line voxels up."""
    image = image_from_array(reference.layers[0], reference.geometry)
    cropped = sitk.RegionOfInterest(image, size=[80, 100, 25], index=[20, 10, 3])
    path = tmp_path / "cropped.nrrd"
    sitk.WriteImage(cropped, str(path))
    pred, left, right = _prediction(reference, tmp_path, "pred", erosions=0)
    result = evaluate_case(pred, path, reference_mapping=parse_mapping("5=right_lung,6=left_lung"))
    assert any("resampled" in note for note in result.notes)
    inside = np.zeros(left.shape, bool)
    inside[3:28, 10:110, 20:100] = True
    assert result.metrics["left_lung"].dice == pytest.approx(_dice(left, left & inside))


def test_outputs_never_overwrite_inputs_and_bad_options_exit_2(reference, tmp_path: Path) -> None:
    pred, _, _ = _prediction(reference, tmp_path / "preds", "x", erosions=0)
    protected = run_cli("evaluate", str(tmp_path / "preds"), str(tmp_path / "preds"), "-o", str(tmp_path / "preds"))
    assert protected.returncode == 4 and "refusing to write here" in protected.stderr
    bad_map = run_cli("evaluate", str(pred), str(pred), "--ref-map", "5=spleen")
    assert bad_map.returncode == 2 and "unknown label 'spleen'" in bad_map.stderr


def test_ground_glass_and_consolidation_are_scored_when_both_sides_hold_them(reference, tmp_path: Path) -> None:
    """On CTChest's expert lungs with a lesion drawn in the right lung: a prediction that calls part of the
    reference's consolidation ground glass gets hand-checked per-class Dice, the infection scored as their union;
    one that found nothing scores 0 on each class; against a reference with infection as one label (3) no class
    is scored."""
    layer = reference.layers[0]
    base = np.where(layer == 6, 1, np.where(layer == 5, 2, 0)).astype(np.uint8)
    lesion = np.zeros(layer.shape, bool)
    lesion[15:20, 40:70, 70:100] = True
    lesion &= base == 2
    dense = lesion.copy()
    dense[:, :55] = False  # the reference's consolidation: the lesion's lower rows
    truth, found = base.copy(), base.copy()
    truth[lesion], truth[dense] = 4, 5
    moved = dense.copy()
    moved[:, 55:60] = False  # the prediction calls 5 rows of the consolidation ground glass
    found[lesion], found[moved] = 4, 5
    truth_path = write_label_map(truth, reference.geometry, tmp_path / "truth.nii.gz")
    found_path = write_label_map(found, reference.geometry, tmp_path / "found.seg.nrrd")
    metrics = evaluate_case(found_path, truth_path).metrics
    assert list(metrics) == ["left_lung", "right_lung", "lungs", "infection", "ggo", "consolidation"]
    assert metrics["infection"].dice == pytest.approx(1.0)
    assert metrics["consolidation"].dice == pytest.approx(_dice(moved, dense))
    assert metrics["ggo"].dice == pytest.approx(_dice(lesion & ~moved, lesion & ~dense))
    assert 0.3 < metrics["consolidation"].dice < 0.95

    # a prediction that found no infection at all scores 0 on the reference's classes, not "not scored"
    nothing_path = write_label_map(base, reference.geometry, tmp_path / "nothing.nii.gz")
    missed = evaluate_case(nothing_path, truth_path).metrics
    assert missed["ggo"].dice == missed["consolidation"].dice == missed["infection"].dice == 0.0

    merged = base.copy()
    merged[lesion] = 3
    merged_path = write_label_map(merged, reference.geometry, tmp_path / "merged.nii.gz")
    result = run_cli("evaluate", str(found_path), str(merged_path), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert [r["structure"] for r in rows] == ["left_lung", "right_lung", "lungs", "infection"]
    assert float(rows[3]["dice"]) == pytest.approx(1.0)
