"""Cohorts through the real command on real CT: several processes on one folder, one killed mid-case and
restarted, produce exactly the label files of one uninterrupted run, each case segmented once; a rerun skips
what is done and redoes what no longer verifies; ``--part I/N`` shares split the folder and merge back.

Nothing here waits a guessed time: a process to be killed or stopped mid-case is started with
``COVIDSEG_TEST_HOLD`` (CovidSegLib/cohort/hold.py) and holds its case in the middle until the test has done what
it tests; the test waits for the marker it writes. Every process a test starts is killed if the test fails."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import SimpleITK as sitk

from CovidSegLib.cohort.hold import HOLD_VARIABLE

from conftest import run_cli

GOOD = ("a", "b", "c", "d")
FORMAT = ".nii.gz"  # ITK's NIfTI writer is deterministic: a rerun writes the same bytes (.seg.nrrd has a date)


def command() -> list[str]:
    script = shutil.which("covidseg", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "CovidSegLib"]


#: Bounded waits for what a process is about to do (a marker, a claim): a deadline, never a timed expectation.
DEADLINE_S = 300.0


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen]]:
    """Where a test puts every process it starts: those still running when it ends (an assert failed) are killed."""
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.communicate()


def start(source: Path, out: Path, *extra: str, started: list[subprocess.Popen],
          hold: Path | None = None) -> subprocess.Popen:
    """``covidseg segment`` as a process; with ``hold``, it holds its first case mid-segmentation (hold.py)."""
    environment = {k: v for k, v in os.environ.items() if k != HOLD_VARIABLE}
    if hold is not None:
        environment[HOLD_VARIABLE] = str(hold)
    process = subprocess.Popen(command() + ["segment", str(source), "-o", str(out), "--format", FORMAT, "--quiet",
                                            *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               encoding="utf-8", env=environment)
    started.append(process)
    return process


def held_case(hold: Path, process: subprocess.Popen) -> str:
    """The case ``process`` holds in the middle of its segmentation, once its marker is there."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and process.poll() is None:
        markers = list(hold.glob(f"*.{process.pid}.held"))
        if markers:
            return markers[0].name.rsplit(".", 2)[0]
        time.sleep(0.05)
    raise AssertionError(f"process {process.pid} never held a case (exit code {process.poll()})")


def wait_until_each_claimed(out: Path, waiting: list[subprocess.Popen]) -> None:
    """Until each process has been seen holding a claim (it has passed the cases before it)."""
    seen: set[int] = set()
    deadline = time.monotonic() + DEADLINE_S
    while len(seen) < len(waiting) and time.monotonic() < deadline:
        seen.update(p.pid for p in waiting if claimed_by(out, p.pid))
        assert all(p.poll() is None for p in waiting), "a process ended while another still held a case"
        time.sleep(0.05)
    assert len(seen) == len(waiting), "a process never took a case"


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
    """The first process takes case a and is held in its middle; two more start, pass over the case it holds
    (a live claim) and take others; then it is killed with kill -9, its claim left in place, and started again."""
    out, hold = tmp_path / "out", tmp_path / "hold"
    with processes() as started:
        began = time.monotonic()
        victim = start(cohort, out, hold=hold, started=started)
        assert held_case(hold, victim) == "a" and claimed_by(out, victim.pid) == "a"  # the first case, mid-way
        others = [start(cohort, out, started=started) for _ in range(2)]
        wait_until_each_claimed(out, others)  # each passed case a, held by a live process, and took another
        victim.send_signal(signal.SIGKILL)
        victim_out, _ = victim.communicate(timeout=60)  # reaped: no zombie holds the claim
        abandoned = claimed_by(out, victim.pid)
        assert abandoned == "a", "killed with its claim in place, as after a crash or kill -9"
        restarted = start(cohort, out, started=started)  # the killed job, submitted again
        results = [(p, *p.communicate(timeout=600)) for p in others + [restarted]]
    seconds = time.monotonic() - began

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
    out, hold = tmp_path / "out", tmp_path / "hold"
    with processes() as started:
        process = start(cohort, out, hold=hold, started=started)
        case = held_case(hold, process)  # in the middle of its segmentation
        assert claimed_by(out, process.pid) == case
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 6 and "interrupted" in stderr
    assert leftovers(out) == [] and not (out / f"{case}{FORMAT}").exists()
    assert summary(out / "summary.csv")[case]["status"] == "pending"


def test_parts_split_the_folder_and_merge_into_one_summary(cohort: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with processes() as started:
        parts = [start(cohort, out, "--part", f"{i}/2", started=started) for i in range(2)]  # two array tasks at once
        outputs = [p.communicate(timeout=600) for p in parts]
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
