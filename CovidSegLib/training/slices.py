"""Slice-level preprocessing and prediction for 8-bit lung-window slices (training data, slice datasets).

An 8-bit slice is mapped back to HU-equivalents over the model's window and run through the engine's own
:class:`CovidSegLib.inference.SliceSegmenter` (same windowing, resizing, thresholding as volumes). Slices are used
whole: the corpus slices already show the whole body, and a body box cannot be found reliably on slices whose
contrast was enhanced (CLAHE turns the surrounding air into noise as bright as tissue). Training zooms slices by
up to 1.35x, which covers the tighter body crop volumes get at inference.
"""

from __future__ import annotations

import numpy as np

from ..preprocessing import Box, window_to_unit


def eight_bit_to_hu(images: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return (images.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)).astype(np.int16)


def resize_slices(images: np.ndarray, masks: np.ndarray, window: tuple[float, float], size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Training inputs: float32 images ``[n, 1, size, size]`` in 0..1 and float32 masks ``[n, c, size, size]``."""
    import torch
    import torch.nn.functional as F

    unit = torch.from_numpy(window_to_unit(eight_bit_to_hu(images, window), window))[:, None]
    unit = F.interpolate(unit, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    resized = F.interpolate(torch.from_numpy(masks.astype(np.float32)), size=(size, size), mode="bilinear",
                            align_corners=False)
    return unit.numpy(), (resized > 0.5).float().numpy()


def predict_slices(segmenter, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Lung and infection masks at the slices' own size for square 8-bit slices ``[n, h, w]``."""
    window = segmenter.card.preprocessing.window
    whole = Box(0, 0, max(images.shape[1:]))
    lungs, infection = [], []
    for start in range(0, len(images), batch_size):
        hu = eight_bit_to_hu(images[start:start + batch_size], window)
        lung_crop, infection_crop = segmenter.predict_with_retry(segmenter.prepare(hu, whole), whole.side)
        lung = np.zeros(hu.shape, bool)
        inf = np.zeros(hu.shape, bool)
        whole.paste(lung_crop, lung)
        whole.paste(infection_crop, inf)
        lungs.append(lung)
        infection.append(inf)
    return np.concatenate(lungs), np.concatenate(infection)
