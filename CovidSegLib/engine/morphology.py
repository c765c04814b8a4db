"""In-plane binary erosion and dilation by the 4-neighbour cross, from shifted views of the mask.

The result is the same as ``scipy.ndimage.binary_erosion`` / ``binary_dilation`` with the cross
``[[0, 1, 0], [1, 1, 1], [0, 1, 0]]`` applied to each ``[rows, cols]`` plane (``border_value=0``), and
``Testing/test_morphology.py`` holds them to that on real masks. Why not scipy: it visits the structure
element by element for every voxel, and post-processing erodes and dilates whole lung volumes a dozen
times per CT; four ANDs or ORs of whole shifted arrays cost a fraction of that (``split_left_right`` on the
benchmark CT: docs/speed.md).
"""

from __future__ import annotations

import numpy as np


def erode_in_plane(mask: np.ndarray) -> np.ndarray:
    """Pixels set whose four in-plane neighbours are all set; outside the array counts as unset."""
    mask = np.asarray(mask, dtype=bool)
    eroded = mask.copy()
    eroded[..., 1:, :] &= mask[..., :-1, :]
    eroded[..., :-1, :] &= mask[..., 1:, :]
    eroded[..., :, 1:] &= mask[..., :, :-1]
    eroded[..., :, :-1] &= mask[..., :, 1:]
    eroded[..., 0, :] = eroded[..., -1, :] = False
    eroded[..., :, 0] = eroded[..., :, -1] = False
    return eroded


def dilate_in_plane(mask: np.ndarray) -> np.ndarray:
    """Pixels set, or with at least one of their four in-plane neighbours set."""
    mask = np.asarray(mask, dtype=bool)
    dilated = mask.copy()
    dilated[..., 1:, :] |= mask[..., :-1, :]
    dilated[..., :-1, :] |= mask[..., 1:, :]
    dilated[..., :, 1:] |= mask[..., :, :-1]
    dilated[..., :, :-1] |= mask[..., :, 1:]
    return dilated


def open_in_plane(mask: np.ndarray) -> np.ndarray:
    """Erosion then dilation: specks and one-pixel bridges go, the rest keeps its outline."""
    return dilate_in_plane(erode_in_plane(mask))
