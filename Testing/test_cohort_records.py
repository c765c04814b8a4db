"""The records that let processes share a cohort: claims (one process per case; a dead or silent holder's claim
is taken over, a live one's never), parts (a fixed, disjoint share per case id), input fingerprints (real CT
files and a DICOM folder) and output manifests (an output verifies only against the input, model, options and
bytes it was made from)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CovidSegLib.cohort import claims as claims_module
from CovidSegLib.cohort.claims import Holder, read_holder, this_process, try_claim
from CovidSegLib.cohort.fingerprint import input_fingerprint
from CovidSegLib.cohort.parts import Part, part_of


def finished_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_held_case_cannot_be_claimed_twice(tmp_path: Path) -> None:
    first, other = try_claim(tmp_path, "a", this_process())
    assert first is not None and other is None
    second, holder = try_claim(tmp_path, "a", this_process())  # another token: another process, as far as claims go
    assert second is None and holder == first.holder
    assert holder.describe() == f"{socket.gethostname()} pid {os.getpid()}"
    elsewhere, _ = try_claim(tmp_path, "b", this_process())
    assert elsewhere is not None  # a claim is per case
    first.release()
    assert not (tmp_path / "a.claim").exists()
    again, _ = try_claim(tmp_path, "a", this_process())
    assert again is not None
    again.release()
    elsewhere.release()


def test_a_killed_holders_claim_is_taken_over(tmp_path: Path) -> None:
    dead = replace(this_process(), pid=finished_pid(), start_ticks=None)
    (tmp_path / "a.claim").write_text(json.dumps(dead.__dict__), encoding="utf-8")
    claim, other = try_claim(tmp_path, "a", this_process())
    assert claim is not None and other is None and claim.still_held()
    claim.release()


def test_a_live_process_with_a_reused_pid_does_not_hold_the_claim(tmp_path: Path) -> None:
    """Same host, the pid now names another process (this one, started at another time): stale."""
    reused = replace(this_process(), pid=os.getpid(), start_ticks=(this_process().start_ticks or 0) + 1)
    if this_process().start_ticks is None:
        pytest.skip("no /proc: process start times unknown here")
    (tmp_path / "a.claim").write_text(json.dumps(reused.__dict__), encoding="utf-8")
    claim, _ = try_claim(tmp_path, "a", this_process())
    assert claim is not None
    claim.release()


def test_a_claim_from_another_host_is_stale_only_when_silent(tmp_path: Path) -> None:
    remote = Holder("another-host.example", 4242, None, "t0", time.time())
    path = tmp_path / "a.claim"
    path.write_text(json.dumps(remote.__dict__), encoding="utf-8")
    claim, holder = try_claim(tmp_path, "a", this_process())
    assert claim is None and holder.describe() == "another-host.example pid 4242"  # its pid means nothing here
    old = time.time() - claims_module.STALE_AFTER_S - 5
    os.utime(path, (old, old))
    claim, holder = try_claim(tmp_path, "a", this_process())
    assert claim is not None and holder is None
    claim.release()


def test_a_fresh_claim_renamed_by_mistake_is_put_back(tmp_path: Path) -> None:
    """Two processes judged the same stale claim; the first took over; the second must not remove the fresh claim
    it finds in its place."""
    path = tmp_path / "a.claim"
    path.write_text("stale", encoding="utf-8")
    judged = path.read_bytes(), path.stat()
    path.unlink()
    fresh, _ = try_claim(tmp_path, "a", this_process())
    claims_module._remove_stale(path, *judged)
    assert fresh.still_held() and read_holder(path)[0] == fresh.holder
    assert [p.name for p in tmp_path.iterdir()] == ["a.claim"]
    fresh.release()


def test_a_heartbeat_keeps_a_claim_fresh_and_stops_when_it_is_lost(tmp_path: Path, monkeypatch) -> None:
    """One heartbeat step, run directly (no waiting on the thread's clock): it touches a claim this process holds,
    and neither touches nor goes on once another process took the claim over."""
    monkeypatch.setattr(claims_module, "HEARTBEAT_S", 3600.0)  # the thread's own beat never comes in this test
    claim, _ = try_claim(tmp_path, "a", this_process())
    old = time.time() - 1000
    os.utime(claim.path, (old, old))
    assert claim.beat()
    assert claim.path.stat().st_mtime > old + 900  # touched again
    claim.path.write_text(json.dumps({**claim.holder.__dict__, "token": "another"}), encoding="utf-8")
    os.utime(claim.path, (old, old))
    assert not claim.beat() and claim.path.stat().st_mtime == old  # another process's claim: left alone
    claim.release()  # releasing a lost claim removes nothing
    assert claim.path.exists()
    claim._beat.join(timeout=60)
    assert not claim._beat.is_alive()  # released: the thread ends


def test_the_heartbeat_thread_ends_when_its_claim_is_lost(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(claims_module, "HEARTBEAT_S", 0.0)  # beat continuously until the claim is lost
    claim, _ = try_claim(tmp_path, "a", this_process())
    claim.path.unlink()  # taken over (as another process would, judging it stale)
    claim._beat.join(timeout=60)
    assert not claim._beat.is_alive() and not claim.still_held()
    claim.release()


def test_parts_are_disjoint_cover_every_case_and_do_not_move() -> None:
    cases = [f"case{n:03d}" for n in range(200)]
    parts = [Part(i, 4) for i in range(4)]
    for case in cases:
        assert sum(p.holds(case) for p in parts) == 1
    sizes = [sum(p.holds(c) for c in cases) for p in parts]
    assert min(sizes) > 25  # unequal, but no part empty or swollen
    # pinned: a case's part is a function of its id alone, the same in every version (an array whose tasks run
    # different versions must still split the cases the same way)
    assert part_of("ctchest4", 4) == 0 and part_of("a", 4) == 2
    assert Part.parse(" 3/8 ") == Part(3, 8) and Part(3, 8).summary_name == "summary-part-3-of-8.csv"
    for bad in ("8/8", "-1/4", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--part"):
            Part.parse(bad)


def test_fingerprints_see_every_byte_of_real_inputs(volumes: Path, tmp_path: Path) -> None:
    ct = tmp_path / "ctchest4.nrrd"
    shutil.copy(volumes / "ctchest4.nrrd", ct)
    before = input_fingerprint(ct)
    assert before["files"][0]["name"] == "ctchest4.nrrd" and before["files"][0]["size"] == ct.stat().st_size
    data = bytearray(ct.read_bytes())
    data[-1] ^= 1  # one bit of the last voxel's compressed stream; same size
    ct.write_bytes(bytes(data))
    assert input_fingerprint(ct)["files"][0]["size"] == before["files"][0]["size"]
    assert input_fingerprint(ct) != before

    # a detached header: the data file it names is part of the input
    image = sitk.ReadImage(str(volumes / "ctchest4.nrrd"))
    sitk.WriteImage(image, str(tmp_path / "detached.mhd"))
    names = [f["name"] for f in input_fingerprint(tmp_path / "detached.mhd")["files"]]
    assert names[0] == "detached.mhd" and len(names) == 2 and names[1].startswith("detached.")

    # a DICOM folder: each of its files, by name relative to the folder (moving the cohort changes nothing)
    dicom = tmp_path / "series"
    shutil.copytree(volumes / "lungmask_dicom", dicom)
    print_ = input_fingerprint(dicom)
    assert [f["name"] for f in print_["files"]] == ["0.dcm", "1.dcm"]
    moved = tmp_path / "elsewhere" / "series"
    shutil.copytree(dicom, moved)
    assert input_fingerprint(moved) == print_
    (moved / "1.dcm").unlink()
    assert input_fingerprint(moved) != print_


def test_an_output_verifies_only_against_what_made_it(volumes: Path, tmp_path: Path) -> None:
    """Each way the manifest check can fail, on a real CT's real label file (written here, not segmented: the
    check does not care who wrote it)."""
    from CovidSegLib.checks.intensity import prepare_ct
    from CovidSegLib.cohort.manifest import expectation_for, verification_problem, write_manifest
    from CovidSegLib.engine.model import BUNDLED_CARD, read_card
    from CovidSegLib.engine.pipeline import SegmentOptions
    from CovidSegLib.io.reading import read_segmentation, read_volume
    from CovidSegLib.io.writing import write_label_map

    ct = tmp_path / "in" / "a.nrrd"
    ct.parent.mkdir()
    shutil.copy(volumes / "ctchest4.nrrd", ct)
    card, options = read_card(BUNDLED_CARD), SegmentOptions(output_format=".nii.gz")
    volume = prepare_ct(read_volume(ct))
    layer = read_segmentation(volumes / "ctchest4.seg.nrrd").layers[0]
    labels = np.where(layer == 6, 1, np.where(layer == 5, 2, 0)).astype(np.uint8)
    output = write_label_map(labels, volume.geometry, tmp_path / "out" / "a.nii.gz")
    manifest = tmp_path / "out" / ".covidseg" / "manifests" / "a.json"
    expected = expectation_for(ct, output, card, options)
    assert verification_problem(manifest, output, expected) == "the output has no manifest (an interrupted run, " \
                                                                "or one before manifests)"
    write_manifest(manifest, expected, output, volume.geometry, {"by": "test"}, {}, [ct])
    assert verification_problem(manifest, output, expected) is None
    # a GPU run, or a bigger batch, makes the same labels: still done
    assert verification_problem(manifest, output, expectation_for(
        ct, output, card, replace(options, device="cuda", batch_size=32))) is None

    assert "other options" in verification_problem(manifest, output, expectation_for(
        ct, output, card, replace(options, separate_infection=False)))
    assert "another model" in verification_problem(manifest, output, expectation_for(
        ct, output, replace(card, weights_sha256="0" * 64), options))
    original = ct.read_bytes()
    ct.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert verification_problem(manifest, output, expectation_for(ct, output, card, options)).startswith(
        "the input changed")
    ct.write_bytes(original)

    kept = output.read_bytes()
    output.write_bytes(kept + b"\0")
    assert "sha256" in verification_problem(manifest, output, expected)
    output.write_bytes(kept)
    document = json.loads(manifest.read_text(encoding="utf-8"))
    document["output"]["geometry"]["size"] = [128, 128, 33]
    manifest.write_text(json.dumps(document), encoding="utf-8")
    assert "grid" in verification_problem(manifest, output, expected)
    manifest.write_text("{", encoding="utf-8")
    assert verification_problem(manifest, output, expected) == "its manifest is unreadable"
    output.unlink()
    assert verification_problem(manifest, output, expected) == "its output is missing"
