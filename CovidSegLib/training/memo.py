"""One network pass per input batch, however many thresholds and floors a study measures.

Sweeps (``crossval_report``, ``Testing/benchmarks/threshold_sweep.py``) run ``covidseg segment``'s whole path
once per probability threshold and per infection density floor, so that every figure comes from the product's
own code. Only the thresholding and the floor differ between those runs: the network sees the same batches each
time. :func:`memoised` gives a model whose network remembers its output for each input batch it has seen, so
the path stays the product's and the network work is paid once.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..engine.model import LoadedModel


class MemoisedNetwork(torch.nn.Module):
    """``network`` with its outputs remembered by input content (shape, dtype and bytes).

    Keyed by content, not identity: each run of the path prepares its batches afresh. The memory held is the
    outputs of every distinct batch seen, so wrap per CT or per fold, not for a whole corpus.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.outputs: dict[bytes, torch.Tensor] = {}
        self.passes = 0  # batches the wrapped network actually ran (tests and logs)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        key = batch_key(batch)
        if key not in self.outputs:
            self.outputs[key] = self.network(batch)
            self.passes += 1
        return self.outputs[key]


def batch_key(batch: torch.Tensor) -> bytes:
    """A digest of what the network sees: shape, dtype and values (memory layout does not matter)."""
    digest = hashlib.blake2b(f"{tuple(batch.shape)} {batch.dtype}".encode(), digest_size=32)
    digest.update(batch.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


def memoised(model: "LoadedModel") -> "LoadedModel":
    """``model`` with a :class:`MemoisedNetwork`; its ``with_threshold`` / ``with_floor`` variants share it.

    The network is wrapped as the engine runs it on the CPU (BatchNorms folded, int8 where the card is calibrated
    for it), so every segmenter of the variants runs the same prepared network and shares its memory."""
    from ..engine.inference import inference_network

    network, precision = inference_network(model, torch.device("cpu"))
    wrapper = MemoisedNetwork(network)
    wrapper.inference_precision = precision
    return replace(model, network=wrapper)
