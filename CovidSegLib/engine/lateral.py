"""Tell the left lung from the right from patient coordinates, never from array index.

Array index order says nothing about the patient: the same CT stored by two converters can be mirrored in
the array yet identical in space. Patient left is +x in LPS, so sides are decided in LPS millimetres.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..labels import LEFT_LUNG, RIGHT_LUNG
from .morphology import dilate_in_plane, erode_in_plane
from ..io.volume import Geometry

#: A second component smaller than this fraction of the largest is a stray piece, not the other lung.
MIN_LUNG_FRACTION = 0.1
#: Erosions tried to separate lungs that touch at the anterior or posterior junction line.
MAX_SEPARATING_EROSIONS = 8


def lps_left_coordinate(geometry: Geometry, indices_kji: np.ndarray) -> np.ndarray:
    """LPS x (towards patient left, mm) of voxels given as ``(N, 3)`` array indices ``[k, j, i]``."""
    return geometry.index_to_lps(np.asarray(indices_kji, dtype=float)[:, ::-1])[:, 0]


def _two_lung_seeds(lungs: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """Labelled components whose two largest are both lung-sized, eroding until the lungs part if they touch;
    with the number of erosions that took."""
    structure = ndimage.generate_binary_structure(3, 1)
    mask = lungs
    for erosions in range(MAX_SEPARATING_EROSIONS + 1):
        components, count = ndimage.label(mask, structure=structure)
        if count >= 2:
            sizes = np.bincount(components.ravel())[1:]
            first, second = np.sort(sizes)[::-1][:2]
            if second >= MIN_LUNG_FRACTION * first:
                return components, count, erosions
        # erode within each axial slice only: slices are thick and the junction line is in-plane
        mask = erode_in_plane(mask)
        if not mask.any():
            return None
    return None


def centroid(mask: np.ndarray) -> np.ndarray:
    """Mean array index ``[k, j, i]`` of a mask's voxels, from its projections (no coordinate list)."""
    total = mask.sum()
    return np.array([np.dot(np.arange(mask.shape[axis]), mask.sum(axis=tuple(a for a in range(3) if a != axis)))
                     / total for axis in range(3)])


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``, one voxel larger on each side (within the array)."""
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(present[0] - 1, 0), min(present[-1] + 2, mask.shape[axis])))
    return tuple(box)


def split_left_right(lungs: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Label a binary both-lungs mask as left (1) and right (2) lung.

    The two largest lung-sized components (after eroding away junction lines where the lungs touch) seed the
    lungs, and the seed further towards patient left is the left lung. The seeds then grow back through the lung
    mask, in-plane, one voxel a step; a voxel both reach in the same step, and any stray piece neither reaches,
    goes by its side of the plane midway between the seeds. With no two lung-sized parts, a plane through the
    mask's centroid splits it. Works on the lungs' bounding box with boolean arrays only: a 512x512x600 CT must
    stay within a few GB.
    """
    lungs = np.asarray(lungs, dtype=bool)
    labels = np.zeros(lungs.shape, dtype=np.uint8)
    if not lungs.any():
        return labels
    box = bounding_box(lungs)
    offset = np.array([b.start for b in box])
    inside = lungs[box]
    found = _two_lung_seeds(inside)
    if found is None:
        coordinates = lps_left_coordinate(geometry, np.argwhere(inside) + offset)
        labels[box][inside] = np.where(coordinates > coordinates.mean(), LEFT_LUNG, RIGHT_LUNG)
        return labels
    components, count, erosions = found
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    first, second = np.argsort(sizes)[::-1][:2] + 1
    first_mask, second_mask = components == first, components == second
    del components
    first_x, second_x = lps_left_coordinate(geometry, np.stack([centroid(first_mask), centroid(second_mask)]) + offset)
    left, right = (first_mask, second_mask) if first_x > second_x else (second_mask, first_mask)
    midline = (first_x + second_x) / 2.0
    # Uneroded seeds are whole connected components already: growing them in-plane cannot add a voxel.
    for _ in range(MAX_SEPARATING_EROSIONS + 2 if erosions else 0):
        grown_left = dilate_in_plane(left) & inside & ~right
        grown_right = dilate_in_plane(right) & inside & ~left
        if np.array_equal(grown_left, left) and np.array_equal(grown_right, right):
            break
        contested = grown_left & grown_right
        left, right = grown_left & ~contested, grown_right & ~contested
    undecided = inside & ~left & ~right  # contested voxels and pieces the seeds never reached
    if undecided.any():
        positions = np.argwhere(undecided)
        on_left = lps_left_coordinate(geometry, positions + offset) > midline
        left[tuple(positions[on_left].T)] = True
        right[tuple(positions[~on_left].T)] = True
    view = labels[box]
    view[left] = LEFT_LUNG
    view[right] = RIGHT_LUNG
    return labels
