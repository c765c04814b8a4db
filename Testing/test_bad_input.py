"""Bad input, end to end through ``covidseg segment``: each kind is refused with its exit code and a message that
names the file and says what is wrong, no output file appears, and the input is left byte for byte as it was.

Every bad file is made in ``tmp_path`` from the real CTs in ``../shared/data``. The command runs in-process
(``cli.main``: one torch import for the whole suite) with the bundled model; the disk-full case runs it as a
real process under a file-size limit, so its writes really fail.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from CovidSegLib.cli import EXIT_INPUT, EXIT_OUTPUT, main, progress_display
from CovidSegLib.checks.plausibility import MIN_LUNG_ML

from conftest import PROJECT_ROOT

pytest.importorskip("torch")


@dataclass(frozen=True)
class Bad:
    """A bad input: the path given to ``covidseg segment``, the expected exit code and message, extra options."""

    path: Path
    exit_code: int
    message: str  # a substring of the error, after the file's name
    output: Path | None = None  # default: OUT/labels.seg.nrrd in an empty folder
    options: tuple[str, ...] = ()


def ct_image(volumes: Path) -> sitk.Image:
    return sitk.ReadImage(str(volumes / "ctchest4.nrrd"))


def write_like(array: np.ndarray, reference: sitk.Image, path: Path, compress: bool = True) -> Path:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(path), compress)
    return path


def cut(path: Path, fraction: float) -> Path:
    """Keep the first ``fraction`` of the file, as an interrupted copy does."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str) -> Path:
    """The CT as a DICOM series, one file per slice with its position, like a scanner's export."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        tags = {"0008|0060": "CT", "0020|000e": series_uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.9",
                "0008|0018": f"{series_uid}.{k + 1}", "0020|0013": str(k + 1), "0028|1052": "0", "0028|1053": "1",
                "0020|0037": "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))),
                "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k))))}
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_image)
    return folder


def with_spacing(volumes: Path, tmp: Path, spacing: tuple[float, float, float], name: str) -> Path:
    image = ct_image(volumes)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(tmp / name))
    return tmp / name


def truncated_copy(volumes: Path, tmp: Path, name: str, fraction: float) -> Path:
    return cut(Path(shutil.copy(volumes / name, tmp / f"cut_{name}")), fraction)


def ct_written_as(volumes: Path, tmp: Path, name: str, compress: bool) -> Path:
    sitk.WriteImage(ct_image(volumes), str(tmp / name), compress)
    return tmp / name


def ct_array(volumes: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(ct_image(volumes))


def make_nan(volumes: Path, tmp: Path) -> Path:
    array = ct_array(volumes).astype(np.float32)
    array[10, 60:70, 60:70] = np.nan
    return write_like(array, ct_image(volumes), tmp / "nan.nrrd")


def make_corrupt_gzip(volumes: Path, tmp: Path) -> Path:
    path = Path(shutil.copy(volumes / "totalseg_example_ct_sm.nii.gz", tmp / "flipped.nii.gz"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one damaged byte in the middle of the stream
    path.write_bytes(bytes(data))
    return path


def make_mhd_with_short_data(volumes: Path, tmp: Path) -> Path:
    sitk.WriteImage(ct_image(volumes), str(tmp / "ct.mhd"), False)
    cut(tmp / "ct.raw", 0.9)
    return tmp / "ct.mhd"


def make_no_lung(volumes: Path, tmp: Path) -> Path:
    """The real CT with its lungs (expert masks) filled with soft tissue: a body, air around it, no lung."""
    array = ct_array(volumes)
    lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(volumes / "ctchest4.seg.nrrd")))
    lungs = lungs.reshape(array.shape + (-1,)).max(axis=-1) if lungs.ndim == 4 else lungs
    array[np.isin(lungs, (5, 6))] = 40
    return write_like(array, ct_image(volumes), tmp / "no_lung.nrrd")


def make_two_series(volumes: Path, tmp: Path) -> Path:
    write_dicom_series(ct_image(volumes), tmp / "two_series", "1.2.826.0.1.3680043.2.1125.1")
    other = tmp / "second"
    write_dicom_series(ct_image(volumes), other, "1.2.826.0.1.3680043.2.1125.2")
    for item in other.iterdir():
        item.rename(tmp / "two_series" / f"b_{item.name}")
    return tmp / "two_series"


def make_gap(volumes: Path, tmp: Path) -> Path:
    folder = write_dicom_series(ct_image(volumes), tmp / "gap", "1.2.826.0.1.3680043.2.1125.3")
    (folder / "slice017.dcm").unlink()
    return folder


def make_damaged_slice(volumes: Path, tmp: Path) -> Path:
    folder = write_dicom_series(ct_image(volumes), tmp / "damaged", "1.2.826.0.1.3680043.2.1125.4")
    cut(folder / "slice017.dcm", 0.9)
    return folder


def make_4d(volumes: Path, tmp: Path) -> Path:
    image = ct_image(volumes)
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(tmp / "4d.nii.gz"))
    return tmp / "4d.nii.gz"


def make_vector(volumes: Path, tmp: Path) -> Path:
    image = ct_image(volumes)
    sitk.WriteImage(sitk.Compose(image, image, image), str(tmp / "rgb.nrrd"))
    return tmp / "rgb.nrrd"


def make_noise(volumes: Path, tmp: Path) -> Path:
    noise = np.random.default_rng(0).integers(-1024, 1500, ct_array(volumes).shape).astype(np.int16)
    return write_like(noise, ct_image(volumes), tmp / "noise.nrrd")


def make_output_under_a_file(volumes: Path, tmp: Path) -> Bad:
    (tmp / "notes.txt").write_text("a file, not a folder")
    return Bad(volumes / "ctchest4.nrrd", EXIT_OUTPUT, "notes.txt is a file, not a folder",
               output=tmp / "notes.txt" / "labels.seg.nrrd")


def make_output_is_input(volumes: Path, tmp: Path) -> Bad:
    ct = Path(shutil.copy(volumes / "ctchest4.nrrd", tmp / "ct.nrrd"))
    return Bad(ct, EXIT_OUTPUT, "it would overwrite the input", output=ct)


#: name -> how to make it in a temporary folder; each gives a path (exit 3 with the message) or a full Bad.
KINDS: dict[str, tuple[Callable[[Path, Path], Path | Bad], str]] = {
    "nii.gz cut at half": (lambda v, t: truncated_copy(v, t, "totalseg_example_ct_sm.nii.gz", 0.5),
                           "truncated: the compressed data ends before its end marker"),
    "nii.gz cut at 90%": (lambda v, t: truncated_copy(v, t, "totalseg_example_ct_sm.nii.gz", 0.9),
                          "truncated: the compressed data ends before its end marker"),
    "nii.gz with a damaged byte": (make_corrupt_gzip, "damaged: the compressed data is corrupt"),
    "plain nii cut at 90%": (lambda v, t: cut(ct_written_as(v, t, "ct.nii", False), 0.9),
                             "truncated: the header describes 128x128x34 voxels"),
    "raw nrrd cut at 90%": (lambda v, t: cut(ct_written_as(v, t, "ct.nrrd", False), 0.9),
                            "truncated: the header describes 128x128x34 samples"),
    "gzip nrrd cut at half": (lambda v, t: truncated_copy(v, t, "ctchest4.nrrd", 0.5),
                              "truncated: the compressed data ends"),
    "mha cut at 90%": (lambda v, t: cut(ct_written_as(v, t, "ct.mha", False), 0.9),
                       "truncated: the header describes 128x128x34 voxels"),
    "mhd whose raw data is cut": (make_mhd_with_short_data, "but the data in ct.raw holds only"),
    "empty file": (lambda v, t: (t / "empty.nii.gz").write_bytes(b"") or t / "empty.nii.gz",
                   "cannot be read as a medical image"),
    "slice spacing 100 mm": (lambda v, t: with_spacing(v, t, (0.7, 0.7, 100.0), "thick.nrrd"),
                             "slice spacing 100 mm is impossible for a chest CT"),
    "slice spacing 0.01 mm": (lambda v, t: with_spacing(v, t, (0.7, 0.7, 0.01), "thin.nrrd"),
                              "slice spacing 0.01 mm is impossible for a chest CT"),
    "pixels of 10 mm": (lambda v, t: with_spacing(v, t, (10.0, 10.0, 5.0), "coarse.nrrd"),
                        "pixel spacing 10 mm is impossible for a chest CT"),
    "volume of noise": (make_noise, "neighbouring voxels are unrelated"),
    "chest without lungs": (make_no_lung, "under the 20 mL of any chest CT): is this a chest CT? Nothing was written"),
    "8-bit windowed export": (lambda v, t: write_like(np.clip((ct_array(v) + 1250) * 255 / 1500, 0, 255)
                                                      .astype(np.uint8), ct_image(v), t / "8bit.nrrd"),
                              "looks like an 8-bit image that was already windowed"),
    "MR-like values": (lambda v, t: write_like(ct_array(v) + 3024, ct_image(v), t / "mr.nrrd"),
                       "nothing negative"),
    "constant volume": (lambda v, t: write_like(np.full_like(ct_array(v), -1000), ct_image(v), t / "flat.nrrd"),
                        "constant volume: every voxel is -1000"),
    "NaN voxels": (make_nan, "100 voxels are NaN or infinite"),
    "2D image": (lambda v, t: Path(shutil.copy(v / "highdicom_ct_image.dcm", t / "single.dcm")), "2D image"),
    "4D image": (make_4d, "4D image: CovidSeg needs a 3D volume"),
    "vector image": (make_vector, "3 components per voxel: not a scalar CT volume"),
    "label map given as CT": (lambda v, t: Path(shutil.copy(v / "totalseg_example_ct_sm_seg.nii.gz",
                                                            t / "labels.nii.gz")),
                              "this is a label map (only the values 0, "),
    "DICOM folder with two equal series": (make_two_series, "2 DICOM series of 34 files each"),
    "DICOM series missing a middle slice": (make_gap, "gap: 20.00 mm between slice016.dcm and slice018.dcm"),
    "DICOM series with a truncated slice": (make_damaged_slice, "cannot be read (truncated or corrupt): slice017.dcm"),
    "output folder is a file": (make_output_under_a_file, ""),
    "output equal to the input": (make_output_is_input, ""),
}


def digests(path: Path) -> dict[str, str]:
    """sha256 of the file, or of every file in the folder, by relative name."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(f.relative_to(path) if path.is_dir() else f.name): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in files}


def all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_input_is_refused_and_leaves_nothing(kind: str, volumes: Path, tmp_path: Path, capsys) -> None:
    make, message = KINDS[kind]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    made = make(volumes, inputs)
    bad = made if isinstance(made, Bad) else Bad(made, EXIT_INPUT, message)
    output = bad.output or tmp_path / "out" / "labels.seg.nrrd"
    before, inputs_before = digests(bad.path), all_files(inputs)

    code = main(["segment", str(bad.path), "-o", str(output), "--quiet", *bad.options])

    error = capsys.readouterr().err
    assert code == bad.exit_code, error
    named = bad.path if bad.exit_code == EXIT_INPUT else output
    assert f"covidseg: error: {named}: " in error and bad.message in error, error
    assert "Traceback" not in error
    assert digests(bad.path) == before, "the input must be left as it was"
    assert all_files(inputs) == inputs_before, "nothing may be written beside the input"
    assert not (tmp_path / "out").exists() or not all_files(tmp_path / "out"), "no output, not even a partial one"


def test_the_suite_covers_at_least_15_kinds() -> None:
    assert len(KINDS) >= 15


def test_what_little_was_found_is_written_only_when_asked_for(volumes: Path, tmp_path: Path, capsys) -> None:
    """Air left in the CT without lungs (airways, bowel gas) draws a few mL of lung-like labels: under any chest
    CT's lungs, so "no lung found", written only with --allow-empty, and then as found."""
    ct = make_no_lung(volumes, tmp_path)
    output = tmp_path / "out" / "labels.nii.gz"
    assert main(["segment", str(ct), "-o", str(output), "--quiet", "--allow-empty"]) == 0
    assert "note: no lung found" in capsys.readouterr().out
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    assert 0 < np.count_nonzero(labels) * 3.05 * 3.05 * 10 / 1000 < MIN_LUNG_ML  # ctchest4's voxels: 0.093 mL


def test_a_chosen_series_of_two_is_read(volumes: Path, tmp_path: Path, capsys) -> None:
    folder = make_two_series(volumes, tmp_path)
    output = tmp_path / "out.seg.nrrd"
    assert main(["segment", str(folder), "-o", str(output), "--quiet",
                 "--series", "1.2.826.0.1.3680043.2.1125.2"]) == 0, capsys.readouterr().err
    assert "DICOM series 1.2.826.0.1.3680043.2.1125.2 (34 files)" in capsys.readouterr().out
    assert output.is_file()


def test_unusual_geometry_is_segmented_with_a_printed_warning(volumes: Path, tmp_path: Path, capsys) -> None:
    ct = with_spacing(volumes, tmp_path, (3.05, 3.05, 15.0), "thick_slices.nrrd")
    assert main(["segment", str(ct), "-o", str(tmp_path / "out.seg.nrrd"), "--quiet", "--report"]) == 0
    warning = "warning: slice spacing 15 mm is unusual for a chest CT"
    assert warning in capsys.readouterr().err
    report = (tmp_path / "out_report" / "report.html").read_text(encoding="utf-8")
    assert warning.removeprefix("warning: ") in report


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused_before_any_work(volumes: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code = main(["segment", str(volumes / "ctchest4.nrrd"), "-o", str(folder / "x.seg.nrrd"), "--quiet"])
    finally:
        folder.chmod(0o755)
    assert code == EXIT_OUTPUT and "is not writable" in capsys.readouterr().err
    assert not all_files(folder)


def limit_file_size() -> None:
    """In the child: any write beyond 4 kB fails (EFBIG), the way a full disk fails a write (ENOSPC)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.parametrize("suffix", [".seg.nrrd", ".nii"])
def test_disk_full_while_writing_leaves_no_partial_output(volumes: Path, tmp_path: Path, suffix: str) -> None:
    output = tmp_path / "out" / f"labels{suffix}"
    before = digests(volumes / "ctchest4.nrrd")
    result = subprocess.run([sys.executable, "-m", "CovidSegLib", "segment", str(volumes / "ctchest4.nrrd"), "-o",
                             str(output), "--quiet"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            encoding="utf-8",
                            timeout=300, preexec_fn=limit_file_size)
    assert result.returncode == EXIT_OUTPUT, result.stderr
    assert f"covidseg: error: {output}: cannot write (" in result.stderr and "Traceback" not in result.stderr
    assert not all_files(tmp_path / "out"), "neither the output nor its temporary file may remain"
    assert digests(volumes / "ctchest4.nrrd") == before


class Log:
    """A log file stand-in: records what is written, and is not a terminal."""

    def __init__(self, terminal: bool = False) -> None:
        self.text, self.terminal = "", terminal

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.terminal


def test_progress_in_a_log_is_a_few_lines_not_a_flood_of_carriage_returns() -> None:
    log, terminal = Log(), Log(terminal=True)
    for stream in (log, terminal):
        with progress_display("ct.nrrd", stream=stream) as progress:
            for step in range(201):
                assert progress(step / 200) is False
    assert "\r" not in log.text
    assert log.text.splitlines() == [f"ct.nrrd: {p}%" for p in (0, 25, 50, 75, 100)]
    assert "\r" in terminal.text and "100%" in terminal.text  # the tqdm bar, as before
    quiet = Log()
    with progress_display("ct.nrrd", quiet=True, stream=quiet) as progress:
        progress(0.5)
    assert quiet.text == ""


def test_segment_run_as_a_batch_job_logs_progress_as_lines(volumes: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "CovidSegLib", "segment", str(volumes / "ctchest4.nrrd"), "-o",
                             str(tmp_path / "x.seg.nrrd")], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            encoding="utf-8",
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("ctchest4.nrrd: ")] == \
        [f"ctchest4.nrrd: {p}%" for p in (0, 25, 50, 75, 100)]
