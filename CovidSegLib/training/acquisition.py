"""Other acquisitions of the same patient, in HU: what another scanner, protocol or field of view would have shown.

Why: the anatomy canvas makes the field of view, the matrix and the padding value irrelevant by construction, but
not what they come with: a low-dose scan's noise, a coarse pixel, a chest wall cut by a small field of view (its
body box, and so the canvas centre, moves), padding of -3024 or -2048 outside a circular field. Each HU volume
trains once more in one such acquisition, drawn at random, so the network has seen them rather than being told
about them. The masks follow the same crop, so they stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Acquisition:
    """One drawn acquisition (recorded, so a training slice can be traced)."""

    noise_hu: float  # standard deviation of the added noise (0: none)
    pixel_mm: float  # in-plane resolution it was degraded to (0: the original)
    crop: tuple[int, int, int, int]  # rows cut at the top and bottom, columns cut at the left and right
    padding_hu: float  # value written outside a circular field of view (0: no circle)


def draw_acquisition(shape: tuple[int, int, int], pixel_mm: tuple[float, float], rng: np.random.Generator
                     ) -> Acquisition:
    """A random acquisition for a canonical volume of ``shape`` with in-plane ``pixel_mm`` (row, col)."""
    rows, cols = shape[1:]
    noise = float(rng.uniform(10.0, 60.0)) if rng.random() < 0.6 else 0.0
    coarse = float(rng.uniform(max(pixel_mm) * 1.2, 3.5)) if rng.random() < 0.4 and max(pixel_mm) < 2.5 else 0.0
    crop = (0, 0, 0, 0)
    if rng.random() < 0.5:  # a smaller or off-centre field of view: up to 15 % of each side
        crop = tuple(int(rng.uniform(0, 0.15) * n) for n in (rows, rows, cols, cols))
    padding = float(rng.choice([-3024.0, -2048.0, -1024.0])) if rng.random() < 0.4 else 0.0
    return Acquisition(noise, coarse, crop, padding)


def acquire(hu: np.ndarray, masks: list[np.ndarray], pixel_mm: tuple[float, float], acquisition: Acquisition,
            rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """The volume ``[slices, rows, cols]`` and its masks as ``acquisition`` shows them (float32 HU)."""
    top, bottom, left, right = acquisition.crop
    rows, cols = hu.shape[1:]
    window = (slice(None), slice(top, rows - bottom), slice(left, cols - right))
    out = hu[window].astype(np.float32)
    masks = [m[window] for m in masks]
    if acquisition.pixel_mm:
        factors = (1.0, pixel_mm[0] / acquisition.pixel_mm, pixel_mm[1] / acquisition.pixel_mm)
        small = ndimage.zoom(out, factors, order=1, prefilter=False, grid_mode=True, mode="nearest")
        out = ndimage.zoom(small, [a / b for a, b in zip(out.shape, small.shape)], order=1, prefilter=False,
                           grid_mode=True, mode="nearest")[:, :out.shape[1], :out.shape[2]]
    if acquisition.noise_hu:
        noise = rng.standard_normal(out.shape).astype(np.float32)
        noise = ndimage.gaussian_filter(noise, (0, 0.7, 0.7)) * np.float32(acquisition.noise_hu / 0.4)
        out += noise * (out > -1000)  # air outside the patient stays air, as reconstructions clip it
    if acquisition.padding_hu:
        r, c = np.ogrid[:out.shape[1], :out.shape[2]]
        radius = min(out.shape[1:]) / 2.0
        outside = (r - (out.shape[1] - 1) / 2.0) ** 2 + (c - (out.shape[2] - 1) / 2.0) ** 2 > radius ** 2
        out[:, outside] = acquisition.padding_hu
        masks = [np.where(outside[None], False, m) for m in masks]
    return out, masks
