"""Reports on real volumes: figures equal direct voxel counts, pictures are real PNGs, the HTML renders in
headless Chromium, and a cohort run gives one CSV row per case with an error row for a bad file."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from CovidSegLib.checks.intensity import prepare_ct
from CovidSegLib.engine.lateral import lps_left_coordinate
from CovidSegLib.io.reading import read_segmentation, read_volume
from CovidSegLib.measure.report import labels_for_ct, write_report
from CovidSegLib.io.writing import write_label_map

from conftest import run_cli


@pytest.fixture(scope="module")
def reported(volumes: Path, tmp_path_factory) -> tuple[Path, np.ndarray, object]:
    """Report of the real CTChest with its expert lungs and a lesion placed in the left lung."""
    ct = prepare_ct(read_volume(volumes / "ctchest4.nrrd"))
    layer = read_segmentation(volumes / "ctchest4.seg.nrrd").layers[0]
    labels = np.zeros(layer.shape, np.uint8)
    labels[layer == 6], labels[layer == 5] = 1, 2
    left = np.argwhere(labels == 1)
    lateral = np.argsort(lps_left_coordinate(ct.geometry, left))[::-1][:3000]  # far from where the lungs touch
    labels[tuple(left[lateral].T)] = 3
    folder = tmp_path_factory.mktemp("labels")
    labels_path = write_label_map(labels, ct.geometry, folder / "ctchest4.seg.nrrd")
    out = tmp_path_factory.mktemp("report")
    result = run_cli("report", str(volumes / "ctchest4.nrrd"), str(labels_path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out, labels, ct


def test_report_volumes_equal_voxel_counts(reported) -> None:
    out, labels, ct = reported
    document = json.loads((out / "report.json").read_text(encoding="utf-8"))
    voxel_ml = np.prod(ct.geometry.spacing) / 1000
    assert document["total"]["volume_ml"] == pytest.approx(np.count_nonzero(labels) * voxel_ml)
    assert document["total"]["infection_ml"] == pytest.approx(3000 * voxel_ml)
    assert document["left"]["infection_ml"] == pytest.approx(3000 * voxel_ml)
    assert document["severity"] == "CT-1" and "automatic estimate" in document["severity_note"]
    row = next(csv.DictReader((out / "case.csv").open()))
    assert row["status"] == "ok" and float(row["infection_ml"]) == pytest.approx(3000 * voxel_ml, abs=1e-3)


def test_report_volumes_on_totalsegmentator_lobes(volumes: Path, tmp_path: Path) -> None:
    ct = prepare_ct(read_volume(volumes / "totalseg_example_ct_sm.nii.gz"))
    lobes = read_segmentation(volumes / "totalseg_example_ct_sm_seg.nii.gz").layers[0]
    labels = np.where(np.isin(lobes, [10, 11]), 1, np.where(np.isin(lobes, [12, 13, 14]), 2, 0)).astype(np.uint8)
    labels_path = write_label_map(labels, ct.geometry, tmp_path / "labels.nii.gz")
    assert np.array_equal(labels_for_ct(labels_path, ct), labels)
    write_report(ct, labels, tmp_path / "out", "totalseg")
    document = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert document["left"]["volume_ml"] == pytest.approx(np.count_nonzero(labels == 1) * 0.027)
    assert document["right"]["volume_ml"] == pytest.approx(np.count_nonzero(labels == 2) * 0.027)
    assert any("outside the usual adult range" in w for w in document["warnings"])  # a 9 cm crop of the lungs


def test_pictures_are_real_pngs_with_the_overlay(reported) -> None:
    out, _, _ = reported
    for name in ("axial.png", "coronal.png", "sagittal.png"):
        image = np.asarray(Image.open(out / name).convert("RGB")).astype(int)
        assert image.shape[0] > 300 and image.shape[1] > 300
        red = (image[..., 0] > image[..., 1] + 60) & (image[..., 0] > image[..., 2] + 60)
        lung = (image[..., 2] > image[..., 0] + 40) | (image[..., 1] > image[..., 0] + 40)  # blue or green
        assert lung.any(), f"{name}: no lung overlay"
        if name == "axial.png":
            assert red.any(), "the mosaic must show the infection"


def test_html_renders_in_headless_chromium(reported, tmp_path: Path) -> None:
    out, _, _ = reported
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (scripts/test.sh installs it where apt-get is available)")
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
         "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'id="severity"' in dom and "CT-1" in dom and dom.count("<img") == 3
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'q'}", f"--screenshot={shot}",
                    "--window-size=1200,1600", (out / "report.html").as_uri()], capture_output=True, timeout=120)
    picture = np.asarray(Image.open(shot).convert("L"))
    assert picture.std() > 20, "the rendered page must not be blank"


def test_cohort_gives_one_row_per_case_and_an_error_row(volumes: Path, reported, tmp_path: Path) -> None:
    out, labels, ct = reported
    cts, segs = tmp_path / "cts", tmp_path / "labels"
    cts.mkdir()
    segs.mkdir()
    shutil.copy(volumes / "ctchest4.nrrd", cts / "a.nrrd")
    shutil.copy(volumes / "ctchest4.nrrd", cts / "b.nrrd")
    shutil.copy(volumes / "highdicom_ct_image.dcm", cts / "c.dcm")
    write_label_map(labels, ct.geometry, segs / "a.seg.nrrd")
    write_label_map(labels, ct.geometry, segs / "b.nii.gz")
    result = run_cli("report", str(cts), str(segs), "-o", str(tmp_path / "out"))
    assert result.returncode == 3 and "c.dcm: 2D image" in result.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "cases.csv").open()))
    assert [r["case"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["status"] == rows[1]["status"] == "ok" and rows[2]["status"].startswith("error: ")
    assert rows[0]["lungs_ml"] == rows[1]["lungs_ml"]
    assert (tmp_path / "out" / "a" / "report.html").is_file()


def test_ggo_and_consolidation_in_a_label_file_reach_the_report(volumes: Path, tmp_path: Path) -> None:
    from CovidSegLib.labels import LABELS

    ct = prepare_ct(read_volume(volumes / "ctchest4.nrrd"))
    layer = read_segmentation(volumes / "ctchest4.seg.nrrd").layers[0]
    labels = np.where(layer == 6, 1, np.where(layer == 5, 2, 0)).astype(np.uint8)
    right = np.argwhere(labels == 2)
    lateral = right[np.argsort(lps_left_coordinate(ct.geometry, right))]
    labels[tuple(lateral[:800].T)] = 4
    labels[tuple(lateral[800:1200].T)] = 5
    path = write_label_map(labels, ct.geometry, tmp_path / "fine.nii.gz", label_infos=LABELS)
    assert np.array_equal(labels_for_ct(path, ct), labels)
    _, result = write_report(ct, labels_for_ct(path, ct), tmp_path / "out", "fine")
    voxel_ml = np.prod(ct.geometry.spacing) / 1000
    assert result.ggo_ml == pytest.approx(800 * voxel_ml)
    assert result.consolidation_ml == pytest.approx(400 * voxel_ml)
    assert result.total.infection_ml == pytest.approx(1200 * voxel_ml)
    assert result.right.ggo_ml == result.ggo_ml and result.left.ggo_ml == 0  # the lesion lies in the right lung
    assert result.right.consolidation_ml == result.consolidation_ml
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    import re

    table = page[page.index('<table id="figures">'):page.index("</table>")]
    header = re.findall(r"<th>([^<]*)</th>", table.split("</tr>")[0])
    right_row = table.split("<th>Right lung</th>")[1].split("</tr>")[0]
    row = dict(zip(header[1:], re.findall(r"<td>([^<]*)</td>", right_row)))
    assert float(row["Ground-glass opacity (mL)"]) == pytest.approx(800 * voxel_ml, abs=0.05)
    assert float(row["Consolidation (mL)"]) == pytest.approx(400 * voxel_ml, abs=0.05)
    assert float(row["Infection (mL)"]) == pytest.approx(1200 * voxel_ml, abs=0.05)
    assert 'id="infection-classes"' in page
    import csv

    with (tmp_path / "out" / "case.csv").open(encoding="utf-8") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["ggo_ml"]) == float(row["right_ggo_ml"]) == pytest.approx(800 * voxel_ml)
    assert float(row["consolidation_ml"]) == pytest.approx(400 * voxel_ml)
    assert float(row["left_consolidation_ml"]) == 0


def test_pictures_cut_through_the_disease(reported) -> None:
    """The mosaic holds the slice with the most infection; sagittal and coronal panels go through each lung,
    the left one through its lesion (a midline sagittal shows almost no lung)."""
    from CovidSegLib.io.orientation import plan_reorientation

    out, labels, ct = reported
    planes = json.loads((out / "report.json").read_text(encoding="utf-8"))["picture_planes"]
    canonical = plan_reorientation(ct.geometry).to_canonical(labels)
    infection_per_slice = (canonical == 3).sum(axis=(1, 2))
    assert planes["most_infected_axial"] == int(np.argmax(infection_per_slice))
    assert planes["most_infected_axial"] in planes["axial"] and len(planes["axial"]) <= 12
    assert set(planes["sagittal"]) == set(planes["coronal"]) == {"right", "left"}
    assert (canonical[:, :, planes["sagittal"]["left"]] == 3).any()
    assert (canonical[:, planes["coronal"]["left"], :] == 3).any()
    assert (canonical[:, :, planes["sagittal"]["right"]] == 2).any()
    midline = canonical.shape[2] // 2
    assert (canonical[:, :, planes["sagittal"]["right"]] > 0).sum() > (canonical[:, :, midline] > 0).sum()
    for name in ("coronal.png", "sagittal.png"):
        image = np.asarray(Image.open(out / name).convert("RGB")).astype(int)
        red = (image[..., 0] > image[..., 1] + 60) & (image[..., 0] > image[..., 2] + 60)
        assert red.any(), f"{name} must show the infection"
        assert image.shape[1] > 1.5 * image.shape[0], f"{name}: one panel per lung"


def test_the_floor_comes_from_held_out_ct_only() -> None:
    from CovidSegLib.measure.report import false_infection_floor

    scores = {"ct_without_covid": {"held": {"in_training_data": False, "false_infection_ml": 12.0},
                                   "seen": {"in_training_data": True, "false_infection_ml": 0.0},
                                   "coarse": {"in_training_data": False, "false_infection_ml": 900.0,
                                              "geometry_warnings": ["pixel spacing 5.3 mm is unusual"]}}}
    floor = false_infection_floor("m", scores)
    # a CT it trained on would understate it; a CT the tool warns about says nothing of those it accepts
    assert floor.ml == 12.0 and floor.measured_on == ("held: 12.0 mL",)
    assert false_infection_floor("x", {"held_out": {"lungs": 0.9}}) is None
    # figures of other models in the card's scores (k-fold studies, siblings) are not this model's
    other = {"cross_validation": {"with_medseg": {"popi (fold 1)": {"false_infection_ml": 146.0}}}}
    assert false_infection_floor("m", {**scores, **other}).ml == 12.0
    # this recipe's k-fold models on the CT each held out count, at the shipped floor only, and not on a CT
    # whose geometry the card warns about
    recipe = {"min_hu": -800.0, "cross_validation": {"floors_hu": [None, -800.0], "false_infection_ml": {
        "fresh (fold 1)": [40.0, 20.0], "coarse (fold 2)": [500.0, 300.0]}}}
    floor = false_infection_floor("m", scores, recipe)
    assert floor.ml == 20.0 and "fresh (fold 1), k-fold model of this recipe: 20.0 mL" in floor.measured_on
    assert false_infection_floor("m", scores, {**recipe, "min_hu": -700.0}).ml == 12.0  # no column for it


def test_the_bundled_floor_and_ctchest_is_ct0_with_the_reason(volumes: Path, tmp_path: Path) -> None:
    """Slicer's CTChest has no COVID-19; the bundled model finds about 1.8 mL of infection in it (the card),
    0.03 % of the lungs, which the involvement bands alone call CT-1. Through the real command it is CT-0, and
    the report says why."""
    import CovidSegLib.engine.model as model_module
    from CovidSegLib.measure.report import floor_of_card

    card = model_module.read_card(model_module.BUNDLED_CARD)
    floor = floor_of_card(card)
    recipe = card.infection_floor["cross_validation"]
    column = recipe["floors_hu"].index(card.infection_floor["min_hu"])
    popi = recipe["false_infection_ml"]["popi_phase00 (fold 1)"][column]
    own = card.scores["ct_without_covid"]["ctchest4"]["false_infection_ml"]
    assert floor.ml == pytest.approx(max(popi, own)) and floor.ml > 5 * own  # one sample is not the floor
    assert not any(s.startswith(("copdgene", "totalseg")) for s in floor.measured_on)  # coarse or partial scans

    result = run_cli("segment", str(volumes / "ctchest4.nrrd"), "-o", str(tmp_path / "ctchest4.seg.nrrd"),
                     "--report", "--quiet")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "ctchest4_report" / "report.json").read_text(encoding="utf-8"))
    found = document["total"]["infection_ml"]
    assert 0 < found <= floor.ml and document["total"]["involvement_percent"] > 0  # found some, as the card says
    assert document["severity"] == "CT-0"
    assert document["severity_reason"].startswith(
        f"CT-0: {found:.1f} mL of infection found, within the {floor.ml:.0f} mL this model finds on CT without "
        "COVID-19") and document["severity_reason"].endswith("it would be CT-1")
    assert document["false_infection_floor_ml"] == pytest.approx(floor.ml)
    page = (tmp_path / "ctchest4_report" / "report.html").read_text(encoding="utf-8")
    assert "Severity <b>CT-0</b>" in page and "bilateral" not in page.split('id="severity"')[1].split("</p>")[0]
    assert document["severity_reason"] in page
    assert page.index('id="severity"') < page.index('id="false-infection"') < page.index('id="figures"')
    row = next(csv.DictReader((tmp_path / "ctchest4_report" / "case.csv").open(encoding="utf-8")))
    assert row["severity"] == "CT-0" and row["severity_reason"] == document["severity_reason"]


def test_infection_above_the_floor_keeps_its_category(volumes: Path, tmp_path: Path) -> None:
    from CovidSegLib.measure.quantification import quantify
    from CovidSegLib.measure.severity import FalseInfectionFloor

    ct = prepare_ct(read_volume(volumes / "ctchest4.nrrd"))
    layer = read_segmentation(volumes / "ctchest4.seg.nrrd").layers[0]
    labels = np.where(layer == 6, 1, np.where(layer == 5, 2, 0)).astype(np.uint8)
    floor = FalseInfectionFloor(10.0, ("somewhere: 10.0 mL",), "m")
    voxels = int(10.0 / ct.geometry.voxel_volume_ml)  # just within 10 mL, then just above
    left = np.argwhere(labels == 1)
    within, above = labels.copy(), labels.copy()
    within[tuple(left[:voxels].T)] = 3
    above[tuple(left[:voxels + 2].T)] = 3
    assert quantify(within, ct.geometry, ct.array, floor).severity == "CT-0"
    result = quantify(above, ct.geometry, ct.array, floor)
    assert result.severity == "CT-1" and result.severity_reason.startswith("CT-1: 0.")
    assert quantify(within, ct.geometry, ct.array).severity == "CT-1"  # no floor: the bands alone


def test_infection_within_the_models_false_infection_floor_is_flagged(volumes: Path, tmp_path: Path) -> None:
    import CovidSegLib.engine.model as model_module
    from CovidSegLib.measure.report import floor_of_card

    card = model_module.read_card(model_module.BUNDLED_CARD)
    floor = floor_of_card(card)
    assert floor is not None

    ct = prepare_ct(read_volume(volumes / "ctchest4.nrrd"))
    layer = read_segmentation(volumes / "ctchest4.seg.nrrd").layers[0]
    labels = np.where(layer == 6, 1, np.where(layer == 5, 2, 0)).astype(np.uint8)
    left = np.argwhere(labels == 1)
    below = max(1, int(0.5 * floor.ml / ct.geometry.voxel_volume_ml))  # half the floor
    labels[tuple(left[:below].T)] = 3
    labels_path = write_label_map(labels, ct.geometry, tmp_path / "small.seg.nrrd")
    result = run_cli("report", str(volumes / "ctchest4.nrrd"), str(labels_path), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert document["false_infection_floor_ml"] == pytest.approx(floor.ml)
    assert f"within the {floor.ml:.0f} mL" in document["false_infection_note"]
    assert document["severity"] == "CT-0"
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'id="false-infection"' in page and f"within the {floor.ml:.0f} mL" in page
    assert page.index('id="severity"') < page.index('id="false-infection"') < page.index('id="figures"')


def test_no_floor_note_when_the_infection_is_above_it(reported) -> None:
    out, _, _ = reported
    document = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert document["total"]["infection_ml"] > document["false_infection_floor_ml"]
    assert document["false_infection_note"] == ""
    assert 'id="false-infection"' not in (out / "report.html").read_text(encoding="utf-8")


def test_no_lung_is_not_assessed_and_no_infection_draws_no_floor_note(volumes: Path, tmp_path: Path) -> None:
    """An --allow-empty result (no lung found) has no involvement to grade: "not assessed" in the report, its
    JSON and CSV row, never CT-0 ("no disease"). And 0 mL of infection is not "possibly false infection"."""
    from CovidSegLib.measure.report import csv_row
    from CovidSegLib.measure.severity import FalseInfectionFloor

    ct = prepare_ct(read_volume(volumes / "ctchest4.nrrd"))
    floor = FalseInfectionFloor(15.0, ("somewhere: 15.0 mL",), "m")
    empty = np.zeros(ct.array.shape, np.uint8)
    written, result = write_report(ct, empty, tmp_path / "empty", "empty", floor=floor)
    assert result.severity == "not assessed" and result.severity_reason.startswith("not assessed: no lung found")
    document = json.loads(written["json"].read_text(encoding="utf-8"))
    assert document["severity"] == "not assessed" and document["false_infection_note"] == ""
    page = written["html"].read_text(encoding="utf-8")
    assert "Severity <b>not assessed</b>: no lung was found." in page and "CT-0</b>" not in page
    assert 'id="false-infection"' not in page
    assert csv_row("empty", result)["severity"] == "not assessed"
    assert next(csv.DictReader(written["csv"].open(encoding="utf-8")))["severity"] == "not assessed"

    layer = read_segmentation(volumes / "ctchest4.seg.nrrd").layers[0]
    lungs = np.where(layer == 6, 1, np.where(layer == 5, 2, 0)).astype(np.uint8)
    written, result = write_report(ct, lungs, tmp_path / "healthy", "healthy", floor=floor)
    assert result.severity == "CT-0" and result.severity_reason == "CT-0: no infection found"
    assert floor.note(0.0) == "" and json.loads(written["json"].read_text())["false_infection_note"] == ""
    assert 'id="false-infection"' not in written["html"].read_text(encoding="utf-8")
    assert "may be entirely false infection" in floor.note(1.0)  # some infection within the floor: said
