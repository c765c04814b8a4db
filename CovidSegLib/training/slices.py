"""Training inputs from 8-bit lung-window slices, prepared the way the engine prepares them at inference.

An 8-bit slice is mapped back to HU-equivalents over the model's window (:mod:`CovidSegLib.slices`), then
windowed and resized like :class:`CovidSegLib.inference.SliceSegmenter` does. Slices are used
whole: the corpus slices already show the whole body, and a body box cannot be found reliably on slices whose
contrast was enhanced (CLAHE turns the surrounding air into noise as bright as tissue). Training zooms slices by
up to 1.35x, which covers the tighter body crop volumes get at inference.
"""

from __future__ import annotations

import numpy as np

from ..preprocessing import window_to_unit
from ..slices import eight_bit_to_hu


def resize_slices(images: np.ndarray, masks: np.ndarray, window: tuple[float, float], size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Training inputs: float32 images ``[n, 1, size, size]`` in 0..1 and float32 masks ``[n, c, size, size]``."""
    import torch
    import torch.nn.functional as F

    unit = torch.from_numpy(window_to_unit(eight_bit_to_hu(images, window), window))[:, None]
    unit = F.interpolate(unit, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return unit.numpy(), resize_masks(masks, size).astype(np.float32)


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Boolean masks ``[n, c, h, w]`` resized to ``size`` x ``size`` (bilinear, then > 0.5: smooth edges)."""
    import torch
    import torch.nn.functional as F

    resized = F.interpolate(torch.from_numpy(masks.astype(np.float32)), size=(size, size), mode="bilinear",
                            align_corners=False)
    return (resized > 0.5).numpy()
