"""Cohorts of DICOM series written as DICOM SEGs, resumed with more asked of them: ``--report`` and ``--sr`` on
cases segmented before without them are written from the verified SEG (read by the SEG reader) without segmenting
again, the SR recorded in the manifest by its sha256; a missing, changed or half-written SR is written again; a case
that cannot be completed fails alone. Real series: the lungmask slices, twice (two cases)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
hd = pytest.importorskip("highdicom")

from CovidSegLib.cli import EXIT_OK, EXIT_OUTPUT, main  # noqa: E402
from CovidSegLib.measure.dicom_sr import read_severity  # noqa: E402

CASES = ("p1", "p2")


@pytest.fixture
def cases(volumes: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "cases"
    for name in CASES:
        shutil.copytree(volumes / "lungmask_dicom", folder / name)
    return folder


def segment(cases: Path, out: Path, *extra: str) -> int:
    return main(["segment", str(cases), "-o", str(out), "--format", "dicom-seg", "--quiet", *extra])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(out: Path, case: str) -> dict:
    return json.loads((out / ".covidseg" / "manifests" / f"{case}.json").read_text(encoding="utf-8"))


def rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open(encoding="utf-8") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def test_a_resumed_run_writes_the_missing_report_and_sr_from_the_seg(cases: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert segment(cases, out) == EXIT_OK
    segs = {case: (out / f"{case}.dcm").read_bytes() for case in CASES}
    assert not list(out.glob("*.sr.dcm")) and manifest(out, "p1")["extras"] == {}
    capsys.readouterr()

    assert segment(cases, out, "--report", "--sr") == EXIT_OK
    said = capsys.readouterr().out
    assert "segmented 0 of 2 cases" in said and "(2 already done, 0 failed)" in said
    for case in CASES:
        assert (out / f"{case}.dcm").read_bytes() == segs[case], "the verified SEG is kept, not redone"
        sr_file, report = out / f"{case}.sr.dcm", out / f"{case}_report"
        assert manifest(out, case)["extras"]["sr"]["sha256"] == sha256(sr_file)
        sr = hd.sr.srread(sr_file)
        evidence = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                    for s in study.ReferencedSeriesSequence for item in s.ReferencedSOPSequence}
        assert evidence == {hd.seg.segread(out / f"{case}.dcm").SOPInstanceUID}
        document = json.loads((report / "report.json").read_text(encoding="utf-8"))
        assert document["total"]["volume_ml"] > 0 and (report / "report.html").is_file()
        assert document["total"]["volume_ml"] == pytest.approx(float(rows(out)[case]["lungs_ml"]), abs=1e-3)
        assert read_severity(sr) == document["severity"]
        assert rows(out)[case]["status"] == "skipped"
        assert rows(out)[case]["note"].endswith("this run wrote its report and DICOM SR")

    # an SR deleted, one changed, a killed writer's temporary SR: written again, nothing segmented
    (out / "p1.sr.dcm").unlink()
    (out / "p1_report" / "report.html").unlink()
    leftover = out / ".p1.sr.dcm.x1y2z3.tmp.dcm"
    leftover.write_bytes(b"half an SR")
    with (out / "p2.sr.dcm").open("ab") as handle:
        handle.write(b"\0\0")
    capsys.readouterr()
    assert segment(cases, out, "--sr") == EXIT_OK
    assert "segmented 0 of 2 cases" in capsys.readouterr().out
    assert not leftover.exists()
    for case in CASES:
        assert manifest(out, case)["extras"]["sr"]["sha256"] == sha256(out / f"{case}.sr.dcm")
        assert (out / f"{case}.dcm").read_bytes() == segs[case]
    assert not (out / "p1_report" / "report.html").exists()  # no --report this time: not asked for
    assert rows(out)["p1"]["note"].endswith("this run wrote its DICOM SR")

    # nothing left to do: nothing written
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.dcm")}
    assert segment(cases, out, "--sr") == EXIT_OK
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.dcm")} == before
    assert all(row["note"].startswith("made by ") and "wrote" not in row["note"] for row in rows(out).values())

    # a SEG redone without --sr: the SR beside it described the SEG replaced, and goes
    (out / ".covidseg" / "manifests" / "p1.json").unlink()
    assert segment(cases, out) == EXIT_OK
    assert not (out / "p1.sr.dcm").exists() and (out / "p2.sr.dcm").exists()
    assert rows(out)["p1"]["status"] == "done"


def test_a_case_that_cannot_be_completed_fails_alone(cases: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert segment(cases, out) == EXIT_OK
    (out / "p1_report").write_text("a file where the report folder goes")
    assert segment(cases, out, "--report") == EXIT_OUTPUT
    assert "p1_report" in capsys.readouterr().err
    summary = rows(out)
    assert summary["p1"]["status"] == "failed" and "p1_report" in summary["p1"]["error"]
    assert summary["p2"]["status"] == "skipped" and (out / "p2_report" / "report.html").is_file()
    (out / "p1_report").unlink()
    assert segment(cases, out, "--report") == EXIT_OK  # a later run tries it again
    assert (out / "p1_report" / "report.html").is_file()
