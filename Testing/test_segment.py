"""The segmentation engine and ``covidseg segment``: model loading, real volumes, batch, cancel, OOM fallback.

Mechanics are tested with a small untrained network saved in the real model format, so these tests need no
trained weights; what the bundled model finds is tested in ``test_bundled_model.py``. The untrained network
finds no lung, which ``covidseg segment`` refuses unless ``--allow-empty`` asks for the empty result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import slicerio

torch = pytest.importorskip("torch")

from CovidSegLib.errors import Cancelled, CovidSegError, ModelError  # noqa: E402
from CovidSegLib.engine.inference import (SliceSegmenter, inference_step, plan_interpolation, segment_volume,  # noqa: E402
                                   select_device)
from CovidSegLib.checks.intensity import prepare_ct  # noqa: E402
from CovidSegLib.engine.model import build_network, load_model, save_model  # noqa: E402
from CovidSegLib.engine.pipeline import SegmentOptions, segment_file  # noqa: E402
from CovidSegLib.io.reading import read_volume  # noqa: E402
from CovidSegLib.training.train import TrainConfig, make_card  # noqa: E402

from conftest import run_cli  # noqa: E402

NAMES = ["Left lung", "Right lung", "Infection"]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """An untrained resnet18 U-Net at 64 px, saved as safetensors + card like any real model."""
    torch.manual_seed(0)
    config = TrainConfig(corpus="", out_dir="", name="test-unet", input_size=64)
    card = make_card(config)
    path = tmp_path_factory.mktemp("model") / "test-unet.json"
    save_model(build_network(card), card, path)
    return path


@pytest.mark.parametrize("name", ["ctchest4.nrrd", "totalseg_example_ct_sm.nii.gz", "lungmask_dicom"])
def test_segment_writes_named_segments_on_the_input_grid(volumes: Path, small_model: Path, tmp_path: Path,
                                                         name: str) -> None:
    out = tmp_path / "labels.seg.nrrd"
    result = run_cli("segment", str(volumes / name), "-o", str(out), "--model", str(small_model), "--quiet",
                     "--allow-empty")
    assert result.returncode == 0, result.stderr
    segmentation = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in segmentation["segments"]] == NAMES
    geometry = read_volume(volumes / name).geometry
    expected = np.eye(4)
    expected[:3, :3] = geometry.direction_matrix @ np.diag(geometry.spacing)
    expected[:3, 3] = geometry.origin
    assert np.allclose(segmentation["ijkToLPS"], expected, atol=1e-6)
    assert segmentation["voxels"].shape == geometry.size  # slicerio gives (i, j, k)
    assert set(np.unique(segmentation["voxels"])) <= {0, 1, 2, 3}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_segment_other_formats(volumes: Path, small_model: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"labels{suffix}"
    result = run_cli("segment", str(volumes / "ctchest4.nrrd"), "-o", str(out), "--model", str(small_model),
                     "--quiet", "--allow-empty")
    assert result.returncode == 0, result.stderr
    assert read_volume(out).geometry.matches(read_volume(volumes / "ctchest4.nrrd").geometry)


def test_batch_mode_segments_every_ct_and_reports_bad_ones(volumes: Path, small_model: Path, tmp_path: Path
                                                           ) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(volumes / "ctchest4.nrrd", cases / "a.nrrd")
    shutil.copy(volumes / "totalseg_example_ct_sm.nii.gz", cases / "b.nii.gz")
    shutil.copytree(volumes / "lungmask_dicom", cases / "c_dicom")
    shutil.copy(volumes / "highdicom_ct_image.dcm", cases / "d_single.dcm")  # 2D: an error row, not a crash
    shutil.copy(volumes / "ctchest4.seg.nrrd", cases / "a.seg.nrrd")  # a segmentation: not a case
    out = tmp_path / "out"
    result = run_cli("segment", str(cases), "-o", str(out), "--format", ".nii.gz", "--model", str(small_model),
                     "--quiet", "--allow-empty")
    assert result.returncode == 3
    assert "d_single.dcm: 2D image" in result.stderr
    assert "segmented 3 of 4 cases" in result.stdout
    # the run's summary beside the outputs, its records (manifests, claims) hidden in .covidseg/ (docs/cohorts.md)
    assert sorted(p.name for p in out.iterdir()) == [".covidseg", "a.nii.gz", "b.nii.gz", "c_dicom.nii.gz",
                                                     "summary.csv"]


def test_wrong_or_corrupt_model_files_are_refused(volumes: Path, small_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    shutil.copytree(small_model.parent, folder)
    card_path = folder / small_model.name
    weights = card_path.with_suffix(".safetensors")

    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    with pytest.raises(ModelError, match="does not match the model card's"):
        load_model(card_path)
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["weights_sha256"] = __import__("hashlib").sha256(weights.read_bytes()).hexdigest()
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_model(card_path)

    shutil.copy(small_model.with_suffix(".safetensors"), weights)
    card = json.loads(small_model.read_text(encoding="utf-8"))
    card["encoder"] = "resnet34"  # a card that does not describe these weights
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="weights do not fit the network in test-unet.json: .* missing"):
        load_model(card_path)

    (folder / "pickle.json").write_text("{not json")
    with pytest.raises(ModelError, match="pickle.json: not a model card"):
        load_model(folder / "pickle.json")
    result = run_cli("segment", str(volumes / "ctchest4.nrrd"), "-o", str(tmp_path / "x.seg.nrrd"), "--model",
                     str(card_path), "--quiet")
    assert result.returncode == 5 and "weights do not fit" in result.stderr
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_cancel_stops_and_writes_nothing(volumes: Path, small_model: Path, tmp_path: Path) -> None:
    model = load_model(small_model)
    seen: list[float] = []

    def cancel_half_way(fraction: float) -> bool:
        seen.append(fraction)
        return fraction >= 0.3

    out = tmp_path / "labels.seg.nrrd"
    with pytest.raises(Cancelled, match="cancelled"):
        segment_file(volumes / "ctchest4.nrrd", out, model, SegmentOptions(batch_size=4), cancel_half_way)
    assert 0.3 <= seen[-1] < 1.0 and seen == sorted(seen)
    assert not out.exists() and not list(tmp_path.iterdir())


class RunsOutOfMemoryAbove(torch.nn.Module):
    """Wraps a real network; like a GPU, it fails on batches larger than ``limit``."""

    def __init__(self, network: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.network, self.limit, self.calls = network, limit, []

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(batch))
        if len(batch) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.network(batch)


def test_out_of_memory_halves_the_batch_and_gives_the_same_result(volumes: Path, small_model: Path) -> None:
    volume = prepare_ct(read_volume(volumes / "ctchest4.nrrd"))
    model = load_model(small_model)
    expected = segment_volume(volume, model, batch_size=16).labels
    wrapped = RunsOutOfMemoryAbove(model.network, limit=5)
    model.network = wrapped
    result = segment_volume(volume, model, batch_size=16)
    assert np.array_equal(result.labels, expected)
    assert result.batch_size == 4  # 16 -> 8 -> 4, then kept for the following batches
    assert wrapped.calls[:3] == [16, 8, 4] and max(wrapped.calls[3:]) <= 4


def test_real_errors_are_not_mistaken_for_out_of_memory(small_model: Path) -> None:
    segmenter = SliceSegmenter(load_model(small_model), torch.device("cpu"), batch_size=4)
    with pytest.raises(RuntimeError, match="to have 1 channels"):
        segmenter.predict(torch.zeros(4, 3, 64, 64), 64)  # wrong channel count: a bug, not memory


def test_device_selection() -> None:
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(CovidSegError, match="no CUDA GPU is available"):
            select_device("cuda")
    with pytest.raises(CovidSegError, match="unknown device 'tpu'"):
        select_device("tpu")


def test_segment_refuses_to_overwrite_its_input(volumes: Path, small_model: Path, tmp_path: Path) -> None:
    ct = tmp_path / "ct.nrrd"
    shutil.copy(volumes / "ctchest4.nrrd", ct)
    before = ct.read_bytes()
    result = run_cli("segment", str(ct), "-o", str(ct), "--model", str(small_model), "--quiet")
    assert result.returncode == 4 and "would overwrite" in result.stderr
    assert ct.read_bytes() == before


def test_segment_with_report_writes_both(volumes: Path, small_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "case.seg.nrrd"
    result = run_cli("segment", str(volumes / "ctchest4.nrrd"), "-o", str(out), "--model", str(small_model),
                     "--report", "--quiet", "--allow-empty")
    assert result.returncode == 0, result.stderr
    report = tmp_path / "case_report"
    assert out.is_file() and (report / "report.html").is_file() and (report / "axial.png").is_file()
    assert json.loads((report / "report.json").read_text(encoding="utf-8"))["case"] == "case"


def test_thin_slices_are_inferred_about_every_2_5_mm_without_bridging_gaps() -> None:
    assert [inference_step(s) for s in (0.625, 1.0, 1.25, 2.5, 3.0, 10.0)] == [4, 2, 2, 1, 1, 1]
    slices = np.array([*range(0, 10), 20, 21, 22])  # two runs of candidate slices
    inferred, between = plan_interpolation(slices, 3)
    assert inferred.tolist() == [0, 3, 6, 9, 20, 22]  # each run's first and last slice are inferred
    assert between[:, 0].astype(int).tolist() == [1, 2, 4, 5, 7, 8, 21]
    row = between[-1]  # slice 21: halfway between inferred slices 20 and 22 (positions 4 and 5)
    assert (int(row[1]), int(row[2]), row[3]) == (4, 5, 0.5)
    assert plan_interpolation(slices, 1)[1].shape == (0, 4)
