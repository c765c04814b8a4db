"""Cohorts through the real command on real CT: several processes on one folder, one killed mid-case and
restarted, produce exactly the label files of one uninterrupted run, each case segmented once; a rerun skips
what is done and redoes what no longer verifies; ``--part I/N`` shares split the folder and merge back."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from conftest import run_cli

GOOD = ("a", "b", "c", "d")
FORMAT = ".nii.gz"  # ITK's NIfTI writer is deterministic: a rerun writes the same bytes (.seg.nrrd has a date)


def command() -> list[str]:
    script = shutil.which("covidseg", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "CovidSegLib"]


def start(source: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(command() + ["segment", str(source), "-o", str(out), "--format", FORMAT, "--quiet",
                                         *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8")


def summary(path: Path) -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def completions(stdout: str) -> list[str]:
    """Cases a process segmented to the end (its "CT -> OUTPUT (...)" lines)."""
    return [Path(line.split(" -> ")[1].split(" (")[0]).name for line in stdout.splitlines() if " -> " in line]


@pytest.fixture(scope="module")
def cohort(volumes: Path, tmp_path_factory) -> Path:
    """Four real CTs (CTChest, a slab of it, the TotalSegmentator example, CTChest as MHA) and a truncated file."""
    folder = tmp_path_factory.mktemp("cohort") / "in"
    folder.mkdir()
    shutil.copy(volumes / "ctchest4.nrrd", folder / "a.nrrd")
    image = sitk.ReadImage(str(volumes / "ctchest4.nrrd"))
    sitk.WriteImage(image[:, :, 4:30], str(folder / "b.nrrd"), useCompression=True)
    shutil.copy(volumes / "totalseg_example_ct_sm.nii.gz", folder / "c.nii.gz")
    sitk.WriteImage(image, str(folder / "d.mha"), useCompression=True)
    data = (volumes / "ctchest4.nrrd").read_bytes()
    (folder / "bad.nrrd").write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture(scope="module")
def reference(cohort: Path, tmp_path_factory) -> Path:
    """One uninterrupted run of one process."""
    out = tmp_path_factory.mktemp("reference") / "out"
    result = run_cli("segment", str(cohort), "-o", str(out), "--format", FORMAT, "--quiet")
    assert result.returncode == 3, result.stderr  # the truncated file is an input error, the others are written
    assert "bad.nrrd" in result.stderr
    rows = summary(out / "summary.csv")
    assert [rows[c]["status"] for c in GOOD] == ["done"] * 4 and rows["bad"]["status"] == "failed"
    assert "bad.nrrd" in rows["bad"]["error"] and sorted(completions(result.stdout)) == [f"{c}{FORMAT}" for c in GOOD]
    return out


def label_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob(f"*{FORMAT}"))}


def leftovers(out: Path) -> list[str]:
    """Hidden temporary files, claims and anything else a run should not leave behind."""
    hidden = [p.name for p in out.rglob(".*.tmp*")] + [p.name for p in out.rglob(".*.stale")]
    return hidden + [p.name for p in (out / ".covidseg" / "claims").glob("*.claim")]


def claimed_by(out: Path, pid: int) -> str | None:
    """The case process ``pid`` holds a claim on, if any."""
    for claim in (out / ".covidseg" / "claims").glob("*.claim"):
        try:
            if json.loads(claim.read_text(encoding="utf-8"))["pid"] == pid:
                return claim.name[: -len(".claim")]
        except (OSError, ValueError, KeyError):
            pass
    return None


def test_concurrent_processes_one_killed_and_restarted_match_one_run(cohort: Path, reference: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    victim, *others = [start(cohort, out) for _ in range(3)]
    deadline = time.monotonic() + 180
    while not claimed_by(out, victim.pid) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert claimed_by(out, victim.pid), "the first process never took a case"
    time.sleep(0.8)  # into its segmentation
    victim.send_signal(signal.SIGKILL)
    victim_out, _ = victim.communicate(timeout=60)  # reaped: no zombie holds the claim
    abandoned = claimed_by(out, victim.pid)
    assert abandoned, "killed with its claim in place, as after a crash or kill -9"
    restarted = start(cohort, out)  # the killed job, submitted again
    results = [(p, *p.communicate(timeout=400)) for p in others + [restarted]]
    seconds = time.monotonic() - started

    for process, stdout, stderr in results:
        assert process.returncode == 3, stderr  # every process reports the bad file
        assert "bad.nrrd" in stderr
    assert completions(victim_out) == [], "killed before its first case was finished"
    done = sorted(name for _, stdout, _ in results for name in completions(stdout))
    assert done == [f"{c}{FORMAT}" for c in GOOD], "each case segmented to the end exactly once"
    assert label_files(out) == label_files(reference), "byte for byte the uninterrupted run's label files"
    assert leftovers(out) == [], "no temporary file, stale claim or claim left behind"
    rows = summary(out / "summary.csv")
    assert set(rows) == set(GOOD) | {"bad"} and rows["bad"]["status"] == "failed"
    assert all(rows[c]["status"] in ("done", "skipped") and rows[c]["lungs_ml"] for c in GOOD)
    makers = {c: json.loads((out / ".covidseg" / "manifests" / f"{c}.json").read_text())["made"]["by"] for c in GOOD}
    assert f"pid {victim.pid}" not in " ".join(makers.values())
    assert makers[abandoned].split(" pid ")[1] in {str(p.pid) for p, _, _ in results}  # taken over by a survivor
    taken_over = [line for _, stdout, _ in results for line in stdout.splitlines() if "in progress by" in line]
    print(f"3 processes, one killed and restarted: {seconds:.1f} s; makers {makers}; case {abandoned} abandoned "
          f"by the killed one; {len(taken_over)} waits for a case another process held")

    # a rerun: nothing to do but the bad file, and nothing written over
    before = {p.name: p.stat().st_mtime_ns for p in out.glob(f"*{FORMAT}")}
    again = run_cli("segment", str(cohort), "-o", str(out), "--format", FORMAT, "--quiet")
    assert again.returncode == 3 and completions(again.stdout) == []
    rows = summary(out / "summary.csv")
    assert [rows[c]["status"] for c in GOOD] == ["skipped"] * 4 and rows["bad"]["status"] == "failed"
    assert all(rows[c]["note"].startswith("made by ") for c in GOOD)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob(f"*{FORMAT}")} == before


def test_a_rerun_redoes_exactly_the_outputs_that_no_longer_verify(cohort: Path, reference: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    damaged = out / f"b{FORMAT}"
    damaged.write_bytes(damaged.read_bytes()[:-100])  # truncated, as by a full disk outside CovidSeg
    (out / ".covidseg" / "manifests" / "c.json").unlink()  # as if the run died between label file and manifest
    result = run_cli("segment", str(cohort), "-o", str(out), "--format", FORMAT, "--quiet")
    assert result.returncode == 3, result.stderr
    assert sorted(completions(result.stdout)) == [f"b{FORMAT}", f"c{FORMAT}"]
    rows = summary(out / "summary.csv")
    assert rows["b"]["status"] == "done" and "sha256" in rows["b"]["note"]
    assert rows["c"]["status"] == "done" and "no manifest" in rows["c"]["note"]
    assert rows["a"]["status"] == rows["d"]["status"] == "skipped"
    assert label_files(out) == label_files(reference)


def test_sigterm_abandons_the_case_cleanly(cohort: Path, tmp_path: Path) -> None:
    """What SLURM sends at a time limit or scancel: the case in progress is left, claim released, summary written."""
    out = tmp_path / "out"
    process = start(cohort, out)
    deadline = time.monotonic() + 180
    while not claimed_by(out, process.pid) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    case = claimed_by(out, process.pid)
    assert case
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 6 and "interrupted" in stderr
    assert leftovers(out) == [] and not (out / f"{case}{FORMAT}").exists()
    assert summary(out / "summary.csv")[case]["status"] == "pending"


def test_parts_split_the_folder_and_merge_into_one_summary(cohort: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    parts = [start(cohort, out, "--part", f"{i}/2") for i in range(2)]  # two array tasks at once
    outputs = [p.communicate(timeout=400) for p in parts]
    shares = [summary(out / f"summary-part-{i}-of-2.csv") for i in range(2)]
    assert all(shares) and not set(shares[0]) & set(shares[1])
    assert set(shares[0]) | set(shares[1]) == set(GOOD) | {"bad"}
    for share, (stdout, _) in zip(shares, outputs):
        assert sorted(completions(stdout)) == sorted(f"{c}{FORMAT}" for c in share if c != "bad")
    assert label_files(out) == label_files(reference)
    assert not (out / "summary.csv").exists()
    merged = run_cli("merge-summaries", str(out))
    assert merged.returncode == 3, merged.stderr  # the bad file failed
    rows = summary(out / "summary.csv")
    assert list(rows) == sorted(GOOD + ("bad",)) and rows["bad"]["status"] == "failed"
    assert all(rows[c]["status"] == "done" for c in GOOD)
    (out / "summary-part-1-of-2.csv").unlink()
    missing = run_cli("merge-summaries", str(out))
    assert missing.returncode == 3 and "summary-part-1-of-2.csv" in missing.stderr
    usage = run_cli("segment", str(cohort / "a.nrrd"), "-o", str(tmp_path / "x.nii.gz"), "--part", "0/2")
    assert usage.returncode == 2 and "--part" in usage.stderr
    assert run_cli("segment", str(cohort), "-o", str(out), "--part", "2/2").returncode == 2
    assert os.listdir(tmp_path) == ["out"]
