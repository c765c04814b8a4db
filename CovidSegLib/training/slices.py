"""Training inputs from slices in the model's representation, resized the way the engine resizes at inference.

Images are 8-bit slices already in the representation (:mod:`CovidSegLib.training.data`); they go through
:func:`CovidSegLib.engine.representation.network_input`, the very function the engine calls, so a training input and
an inference input of the same slice are the same tensor.
"""

from __future__ import annotations

import numpy as np

from ..engine.representation import network_input


def resize_slices(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Training inputs: float32 images ``[n, 1, size, size]`` in 0..1 and float32 masks ``[n, c, size, size]``."""
    return network_input(images, size).numpy(), resize_masks(masks, size).astype(np.float32)


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Boolean masks ``[n, c, h, w]`` resized to ``size`` x ``size`` (bilinear, then > 0.5: smooth edges)."""
    import torch
    import torch.nn.functional as F

    if masks.shape[-2:] == (size, size):
        return masks.astype(bool)
    resized = F.interpolate(torch.from_numpy(masks.astype(np.float32)), size=(size, size), mode="bilinear",
                            align_corners=False)
    return (resized > 0.5).numpy()
