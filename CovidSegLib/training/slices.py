"""Slice-level preprocessing and prediction, the same code path as volume inference.

An 8-bit lung-window slice is mapped back to HU-equivalents over the model's window, then cropped, windowed and
resized by the engine's own :class:`CovidSegLib.inference.SliceSegmenter`, so a score measured on slices is a
score of the pipeline that segments volumes.
"""

from __future__ import annotations

import numpy as np

from ..preprocessing import body_box


def eight_bit_to_hu(images: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return (images.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)).astype(np.int16)


def crop_and_resize(images: np.ndarray, masks: np.ndarray, window: tuple[float, float], size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Training inputs: each slice cropped to its body box (as inference crops a volume) and resized.

    Returns float32 images ``[n, 1, size, size]`` in 0..1 and float32 masks ``[n, c, size, size]``.
    """
    import torch
    import torch.nn.functional as F

    from ..preprocessing import window_to_unit

    out_images, out_masks = [], []
    for image, mask in zip(images, masks):
        hu = eight_bit_to_hu(image[None], window)
        box = body_box(hu)
        crop = window_to_unit(box.crop(hu, fill=-1024), window)
        mask_crop = box.crop(mask.astype(np.float32), fill=0.0)
        out_images.append(F.interpolate(torch.from_numpy(crop)[None], size=(size, size), mode="bilinear",
                                        antialias=True, align_corners=False)[0])
        out_masks.append(F.interpolate(torch.from_numpy(mask_crop)[None], size=(size, size), mode="bilinear",
                                       align_corners=False)[0])
    return torch.stack(out_images).numpy(), (torch.stack(out_masks) > 0.5).float().numpy()


def predict_slices(segmenter, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Lung and infection masks at the slices' own size for 8-bit slices ``[n, h, w]``."""
    window = segmenter.card.preprocessing.window
    lungs, infection = [], []
    for start in range(0, len(images), batch_size):
        for image in images[start:start + batch_size]:
            hu = eight_bit_to_hu(image[None], window)
            box = body_box(hu)
            lung_crop, infection_crop = segmenter.predict_with_retry(segmenter.prepare(hu, box), box.side)
            lung = np.zeros(hu.shape, bool)
            inf = np.zeros(hu.shape, bool)
            box.paste(lung_crop, lung)
            box.paste(infection_crop, inf)
            lungs.append(lung[0])
            infection.append(inf[0])
    return np.stack(lungs), np.stack(infection)
