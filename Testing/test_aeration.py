"""Aeration by density on real CT: the bands split each lung's volume exactly, edges fall where the docs say,
denser lung moves volume out of the well-aerated band, and the figures reach the report, the cohort table and
the JSON."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from CovidSegLib.checks.intensity import prepare_ct
from CovidSegLib.io.reading import read_segmentation, read_volume
from CovidSegLib.io.writing import write_label_map
from CovidSegLib.measure.aeration import BAND_KEYS, aeration
from CovidSegLib.measure.quantification import quantify

from conftest import run_cli


@pytest.fixture(scope="module")
def ctchest(volumes: Path):
    """Slicer's CTChest (real HU) with its expert lungs as CovidSeg labels (1 left, 2 right)."""
    ct = prepare_ct(read_volume(volumes / "ctchest4.nrrd"))
    layer = read_segmentation(volumes / "ctchest4.seg.nrrd").layers[0]
    labels = np.where(layer == 6, 1, np.where(layer == 5, 2, 0)).astype(np.uint8)
    return ct, labels


def test_the_bands_sum_to_each_lungs_volume(ctchest) -> None:
    ct, labels = ctchest
    result = quantify(labels, ct.geometry, ct.array)
    for region in (result.left, result.right, result.total):
        bands = region.aeration
        assert sum(bands.ml(b) for b in BAND_KEYS) == pytest.approx(region.volume_ml)
        assert sum(bands.percent(b) for b in BAND_KEYS) == pytest.approx(100.0)
    for band in BAND_KEYS:
        assert result.left.aeration.ml(band) + result.right.aeration.ml(band) == pytest.approx(
            result.total.aeration.ml(band))
    # a healthy CT: most of the lung is well aerated, and hardly any of it denser than soft tissue
    assert result.total.aeration.well_aerated_percent > 70
    assert result.total.aeration.above_100_percent < 1


def test_band_edges_follow_the_documented_inclusivity(ctchest) -> None:
    ct, labels = ctchest
    hu = ct.array.astype(np.float32)
    lung = labels == 1
    where = np.argwhere(lung)[:9]
    edges = [-950.5, -950, -700.5, -700, -300.5, -300, 100, 100.5, -3000]
    expected = ["below_minus_950", "well_aerated", "well_aerated", "poorly_aerated", "poorly_aerated",
                "non_aerated", "non_aerated", "above_100", "below_minus_950"]
    only = np.zeros_like(lung)
    only[tuple(where.T)] = True
    hu[tuple(where.T)] = edges
    bands = aeration(hu, only, 1.0)
    for band in BAND_KEYS:
        assert bands.ml(band) == expected.count(band), band


def test_denser_lung_moves_volume_from_well_to_poorly_aerated(ctchest) -> None:
    """Raising the left lung by 300 HU (as diffuse ground glass would) empties its well-aerated band into the
    poorly aerated one; the right lung is untouched."""
    ct, labels = ctchest
    before = quantify(labels, ct.geometry, ct.array)
    denser = ct.array.astype(np.int32).copy()
    denser[labels == 1] += 300
    after = quantify(labels, ct.geometry, denser)
    assert after.left.volume_ml == before.left.volume_ml
    moved = before.left.aeration.well_aerated_ml - after.left.aeration.well_aerated_ml
    assert moved > 0.5 * before.left.aeration.well_aerated_ml
    assert after.left.aeration.poorly_aerated_ml > before.left.aeration.poorly_aerated_ml + 0.5 * moved
    assert after.right.aeration == before.right.aeration


def test_aeration_reaches_the_report_and_the_cohort_table(ctchest, volumes: Path, tmp_path: Path) -> None:
    ct, labels = ctchest
    cts, segs = tmp_path / "cts", tmp_path / "labels"
    cts.mkdir()
    (cts / "ctchest4.nrrd").symlink_to(volumes / "ctchest4.nrrd")
    write_label_map(labels, ct.geometry, segs / "ctchest4.seg.nrrd")
    result = run_cli("report", str(cts), str(segs), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    expected = quantify(labels, ct.geometry, ct.array)
    document = json.loads((tmp_path / "out" / "ctchest4" / "report.json").read_text(encoding="utf-8"))
    assert document["left"]["aeration"]["well_aerated_ml"] == pytest.approx(expected.left.aeration.well_aerated_ml)
    assert document["total"]["aeration"]["below_minus_950_percent"] == pytest.approx(
        expected.total.aeration.below_minus_950_percent)
    row = next(csv.DictReader((tmp_path / "out" / "cases.csv").open(encoding="utf-8")))
    for region, figures in (("", expected.total), ("left_", expected.left), ("right_", expected.right)):
        for band in BAND_KEYS:
            assert float(row[f"{region}{band}_ml"]) == pytest.approx(figures.aeration.ml(band), abs=1e-3)
            assert float(row[f"{region}{band}_percent"]) == pytest.approx(figures.aeration.percent(band), abs=1e-3)
    page = (tmp_path / "out" / "ctchest4" / "report.html").read_text(encoding="utf-8")
    table = page[page.index('<table id="aeration">'):]
    table = table[:table.index("</table>")]
    left = re.findall(r"<td>([\d.]+) mL \(([\d.]+)%\)</td>", table.split("<th>Left lung</th>")[1].split("</tr>")[0])
    assert [float(p) for _, p in left] == pytest.approx(
        [expected.left.aeration.percent(b) for b in BAND_KEYS], abs=0.05)
    assert "independently of the infection model" in page and "only as right as the lung output" in page
