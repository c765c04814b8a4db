"""Preprocessing of CT volumes for the network, the intensity part shared with training.

Intensities: HU are windowed (default -1250..250, the lung window the COVID-19-CT-Seg corpus was exported in)
and scaled to 0..1; 8-bit windowed training slices map to the same range (``training/slices.py``).
Geometry: each slice of a volume is cropped to a square around the body (one box for the whole volume, so every
slice has the same scale) and resized to the network's input size. Training sees whole slices zoomed by up to
1.35x, which covers this crop.
Work avoided: slices with no air enclosed by the body cannot contain lung and are not sent to the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .morphology import open_in_plane

#: Tissue denser than this is body (fat is about -100 HU, lung and air below -500).
BODY_HU = -500.0
#: Air or lung: inside the body this is lung, airway or bowel gas.
AIR_HU = -400.0
#: A slice needs at least this much enclosed air (mm²) to be worth segmenting (the trachea alone is ~200 mm²).
MIN_ENCLOSED_AIR_MM2 = 100.0
#: The whole-volume analyses (body box, candidate slices, body mask) look at the CT every ~3 mm in-plane:
#: coarse enough to be cheap on 0.7 mm pixels, fine enough that the body's outline stays closed.
ANALYSIS_PIXEL_MM = 3.0
#: Margin around the body box, as a fraction of its side.
BOX_MARGIN = 0.05


def window_to_unit(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU to float32 in 0..1 over ``window``, clipped."""
    low, high = window
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(1.0 / (high - low))
    return np.clip(scaled, 0.0, 1.0, out=scaled)


@dataclass(frozen=True)
class Box:
    """A square crop ``[row0:row0+side, col0:col0+side]`` of a slice; may reach outside it (padded with air)."""

    row0: int
    col0: int
    side: int

    def crop(self, slices: np.ndarray, fill: float) -> np.ndarray:
        """Cut the box out of ``slices`` (``[..., rows, cols]``), padding with ``fill`` where it leaves them."""
        rows, cols = slices.shape[-2:]
        out = np.full(slices.shape[:-2] + (self.side, self.side), fill, dtype=slices.dtype)
        r0, c0 = max(self.row0, 0), max(self.col0, 0)
        r1, c1 = min(self.row0 + self.side, rows), min(self.col0 + self.side, cols)
        out[..., r0 - self.row0:r1 - self.row0, c0 - self.col0:c1 - self.col0] = slices[..., r0:r1, c0:c1]
        return out

    def paste(self, crop: np.ndarray, target: np.ndarray) -> None:
        """Write a crop-sized result back into ``target`` (``[..., rows, cols]``), dropping the padding."""
        rows, cols = target.shape[-2:]
        r0, c0 = max(self.row0, 0), max(self.col0, 0)
        r1, c1 = min(self.row0 + self.side, rows), min(self.col0 + self.side, cols)
        target[..., r0:r1, c0:c1] = crop[..., r0 - self.row0:r1 - self.row0, c0 - self.col0:c1 - self.col0]


def analysis_stride(pixel_mm: float) -> int:
    """Rows and columns to step over so the analysis samples about every ``ANALYSIS_PIXEL_MM``."""
    return max(1, int(ANALYSIS_PIXEL_MM // pixel_mm))


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` of one slice, identical result, about 3x faster: background regions
    (4-connected, as fill_holes grows them) that do not touch the border are holes. Labelling visits each pixel
    once, where fill_holes dilates from the border one pixel a step; this runs on every slice of every CT."""
    background, count = ndimage.label(~mask)
    hole = np.ones(count + 1, dtype=bool)
    hole[0] = False
    hole[background[0]] = hole[background[-1]] = hole[background[:, 0]] = hole[background[:, -1]] = False
    return mask | hole[background]


def body_mask_2d(slice_hu: np.ndarray) -> np.ndarray:
    """The largest dense region of a slice with its holes (lungs) filled: the body, without the table."""
    return body_from_dense(open_in_plane(slice_hu > BODY_HU))


def body_from_dense(dense: np.ndarray) -> np.ndarray:
    """The body from a slice's dense (tissue) pixels: their largest region, holes filled."""
    labels, count = ndimage.label(dense)
    if count == 0:
        return dense
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return fill_holes_2d(labels == largest)


def body_box(volume_hu: np.ndarray, pixel_mm: float) -> Box:
    """Square box around the body over all slices of a canonical volume ``[slices, rows, cols]``."""
    stride = analysis_stride(pixel_mm)
    sample = volume_hu[:, ::stride, ::stride]
    projection = body_mask_2d(sample.max(axis=0))
    rows, cols = volume_hu.shape[1:]
    if not projection.any():
        side = max(rows, cols)
        return Box((rows - side) // 2, (cols - side) // 2, side)
    row_idx = np.flatnonzero(projection.any(axis=1))
    col_idx = np.flatnonzero(projection.any(axis=0))
    top, bottom = row_idx[0] * stride, min((row_idx[-1] + 1) * stride, rows)
    left, right = col_idx[0] * stride, min((col_idx[-1] + 1) * stride, cols)
    side = int(round(max(bottom - top, right - left) * (1 + 2 * BOX_MARGIN)))
    centre_row, centre_col = (top + bottom) // 2, (left + right) // 2
    return Box(centre_row - side // 2, centre_col - side // 2, side)


@dataclass(frozen=True)
class BodySample:
    """Body masks of every slice on the analysis grid (every ``stride``-th row and column), computed once and
    shared by slice selection and post-processing."""

    masks: np.ndarray  # [slices, rows // stride (rounded up), cols // stride (rounded up)] bool
    stride: int

    @classmethod
    def of(cls, volume_hu: np.ndarray, pixel_mm: float) -> "BodySample":
        stride = analysis_stride(pixel_mm)
        sample = volume_hu[:, ::stride, ::stride]
        masks = np.stack([body_mask_2d(s) for s in sample]) if len(sample) else np.zeros(sample.shape, bool)
        return cls(masks, stride)

    def on_grid(self, factor: int, shape: tuple[int, int, int]) -> np.ndarray:
        """The masks on a grid of every ``factor``-th pixel with ``shape`` (nearest sample)."""
        if factor == self.stride and self.masks.shape == tuple(shape):
            return self.masks
        rows = np.minimum(np.arange(shape[1]) * factor // self.stride, self.masks.shape[1] - 1)
        cols = np.minimum(np.arange(shape[2]) * factor // self.stride, self.masks.shape[2] - 1)
        return self.masks[:, rows[:, None], cols[None, :]]


def candidate_slices(volume_hu: np.ndarray, body: BodySample, pixel_mm: float) -> np.ndarray:
    """Indices of slices with enough air enclosed by the body to hold lung (plus one neighbour each side)."""
    stride = body.stride
    min_pixels = MIN_ENCLOSED_AIR_MM2 / (pixel_mm * pixel_mm * stride * stride)
    enclosed = body.masks & (volume_hu[:, ::stride, ::stride] < AIR_HU)
    keep = np.count_nonzero(enclosed, axis=(1, 2)) >= min_pixels
    keep = ndimage.binary_dilation(keep, iterations=1)
    return np.flatnonzero(keep)
