"""int8 convolutions on x86 CPUs: the bundled card's calibration, how far int8 agrees with float32 on real CT, and
what is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import slicerio
import torch

from CovidSegLib.engine.inference import SliceSegmenter, whole_slice_box
from CovidSegLib.engine.int8_inference import (convolutions, int8_supported, layers_worth_int8, quantize_convolutions,
                                        record_ranges)
from CovidSegLib.engine.model import load_model
from CovidSegLib.io.orientation import to_canonical
from CovidSegLib.io.reading import read_volume
from CovidSegLib.slices.evaluation import dice_figures

from conftest import run_cli

needs_int8 = pytest.mark.skipif(not int8_supported(), reason="no x86 quantized engine on this machine")


@pytest.fixture(scope="module")
def ctchest_slices(volumes: Path) -> np.ndarray:
    ct, _ = to_canonical(read_volume(volumes / "ctchest4.nrrd"))
    return ct.array[::4].astype(np.float32)  # apex to base


def _logits(segmenter: SliceSegmenter, slices: np.ndarray) -> torch.Tensor:
    return segmenter.logits(segmenter.prepare(slices, whole_slice_box(slices.shape[-2:])))


def test_the_cards_int8_layers_are_the_deep_3x3_convolutions(ctchest_slices: np.ndarray) -> None:
    """The card names exactly the layers worth_int8 picks, measured on real CT; the head never runs in int8."""
    model = load_model()
    segmenter = SliceSegmenter(model, torch.device("cpu"), channels_last=False, int8=False)
    batch = segmenter.prepare(ctchest_slices[:4], whole_slice_box(ctchest_slices.shape[-2:]))
    seen = record_ranges(segmenter.network, [batch])
    chosen = layers_worth_int8(segmenter.network, seen, model.card.input_size)
    calibration = model.card.int8_calibration
    assert list(calibration["ranges"]) == chosen
    assert 0 < len(chosen) < len(convolutions(segmenter.network))
    assert not any(name.startswith("segmentation_head") for name in chosen)
    assert calibration["activation_levels"] == 127


@needs_int8
def test_int8_logits_stay_close_to_float32_on_real_ct(ctchest_slices: np.ndarray) -> None:
    int8 = SliceSegmenter(load_model(), torch.device("cpu"))
    float32 = SliceSegmenter(load_model(), torch.device("cpu"), int8=False)
    assert (int8.precision, float32.precision) == ("int8", "float32")
    quantized, expected = _logits(int8, ctchest_slices), _logits(float32, ctchest_slices)
    assert not torch.equal(quantized, expected)  # int8 did run
    error = (quantized - expected).abs()
    assert error.mean() < 0.02 * expected.abs().mean()
    lungs_int8, lungs_float = quantized[:, 0] > 0, expected[:, 0] > 0
    assert lungs_int8.ne(lungs_float).float().mean() < 2e-3
    assert lungs_float.float().mean() > 0.05  # the slices do show lung


def test_the_loaded_network_stays_float32_for_other_segmenters() -> None:
    model = load_model()
    SliceSegmenter(model, torch.device("cpu"))
    assert SliceSegmenter(model, torch.device("cpu"), int8=False).precision == "float32"
    assert all(isinstance(dict(model.network.named_modules())[name], torch.nn.Conv2d)
               for name in model.card.int8_calibration["ranges"])


def test_a_calibration_that_does_not_fit_the_network_is_refused() -> None:
    model = load_model()
    network = model.network.eval()
    ranges = dict(model.card.int8_calibration["ranges"])
    with pytest.raises(ValueError, match="not convolutions of this network"):
        quantize_convolutions(network, {"ranges": {**ranges, "encoder.layer9.conv1": [0, 1, 0, 1]}})
    with pytest.raises(ValueError, match="not convolutions of this network"):
        quantize_convolutions(network, {"ranges": {"segmentation_head.0": [0, 1, 0, 1]}})
    with pytest.raises(ValueError, match="activation levels"):
        quantize_convolutions(network, {"activation_levels": 1000, "ranges": ranges})
    with pytest.raises(ValueError, match="for inference"):
        quantize_convolutions(model.network.train(), {"ranges": ranges})


@needs_int8
def test_segment_runs_int8_by_default_and_float32_on_request(volumes: Path, tmp_path: Path) -> None:
    """The product path, both ways, on Slicer's CTChest: the labels agree closely."""
    outputs = {}
    for precision, extra in (("int8", []), ("float32", ["--float32"])):
        out = tmp_path / f"{precision}.seg.nrrd"
        result = run_cli("segment", str(volumes / "ctchest4.nrrd"), "-o", str(out), "--quiet", "--device", "cpu",
                         *extra)
        assert result.returncode == 0, result.stderr
        assert f"on cpu in {precision}" in result.stdout
        outputs[precision] = slicerio.read_segmentation(str(out))["voxels"]
    int8, float32 = outputs["int8"], outputs["float32"]
    lungs = (1, 2)
    assert dice_figures(np.isin(int8, lungs), np.isin(float32, lungs))["pooled_dice"] > 0.995
    assert abs(int(np.count_nonzero(int8 >= 3)) - int(np.count_nonzero(float32 >= 3))) <= 0.2 * max(
        np.count_nonzero(float32 >= 3), 100)
