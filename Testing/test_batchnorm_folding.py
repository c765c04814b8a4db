"""Folding BatchNorm into the convolutions must leave the network's logits as they were, on real CT."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from CovidSegLib.engine.batchnorm_folding import fold_batch_norms
from CovidSegLib.engine.inference import SliceSegmenter, whole_slice_box
from CovidSegLib.engine.model import build_network, load_model
from CovidSegLib.io.orientation import to_canonical
from CovidSegLib.io.reading import read_volume
from CovidSegLib.engine.representation import network_input, represent


@pytest.fixture(scope="module")
def ctchest_slices(volumes: Path) -> np.ndarray:
    ct, _ = to_canonical(read_volume(volumes / "ctchest4.nrrd"))
    return ct.array[::8].astype(np.float32)  # apex to base


def _batch_norm_count(network: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())


def test_the_bundled_network_gives_the_same_logits_folded(ctchest_slices: np.ndarray) -> None:
    model = load_model()
    batch = network_input(represent(ctchest_slices, model.card.preprocessing), model.card.input_size)
    network = model.network.eval()
    with torch.inference_mode():
        expected = network(batch)
    norms = _batch_norm_count(network)
    assert norms > 0 and fold_batch_norms(network) == norms
    assert _batch_norm_count(network) == 0 and fold_batch_norms(network) == 0  # a second call finds nothing
    with torch.inference_mode():
        folded = network(batch)
    assert torch.allclose(folded, expected, atol=1e-3, rtol=1e-4)
    assert (folded > 0).ne(expected > 0).float().mean() < 1e-4  # masks differ at most where a logit is ~0


def test_the_segmenter_folds_the_network_it_runs(ctchest_slices: np.ndarray) -> None:
    model = load_model()
    segmenter = SliceSegmenter(model, torch.device("cpu"))
    assert _batch_norm_count(segmenter.network) == 0
    lungs, _ = segmenter.predict(segmenter.prepare(ctchest_slices, whole_slice_box(ctchest_slices.shape[-2:])),
                                 ctchest_slices.shape[-1])
    assert lungs[len(lungs) // 2].mean() > 0.05  # mid-chest slice: the folded network still finds lung


def test_a_resnet34_network_with_trained_statistics_folds_exactly() -> None:
    """The other encoder the training scripts build; BatchNorm statistics made non-trivial so folding matters."""
    card = load_model().card
    network = build_network(replace(card, encoder="resnet34"))
    generator = torch.Generator().manual_seed(0)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    network.eval()
    batch = torch.randn(2, 1, card.input_size, card.input_size, generator=generator)
    with torch.inference_mode():
        expected = network(batch)
    norms = _batch_norm_count(network)
    assert norms > 0 and fold_batch_norms(network) == norms and _batch_norm_count(network) == 0
    with torch.inference_mode():
        folded = network(batch)
    # untrained weights give logits in the hundreds: float32 rounding is judged against their scale
    assert (folded - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_folding_is_refused_in_training_mode() -> None:
    network = build_network(load_model().card)
    with pytest.raises(ValueError, match="inference"):
        fold_batch_norms(network.train())
