"""Tell the left lung from the right from patient coordinates, never from array index.

Array index order says nothing about the patient: the same CT stored by two converters can be mirrored in
the array yet identical in space. Patient left is +x in LPS, so sides are decided in LPS millimetres.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .labels import LEFT_LUNG, RIGHT_LUNG
from .volume import Geometry

#: A second component smaller than this fraction of the largest is a stray piece, not the other lung.
MIN_LUNG_FRACTION = 0.1
#: Erosions tried to separate lungs that touch at the anterior or posterior junction line.
MAX_SEPARATING_EROSIONS = 8


def lps_left_coordinate(geometry: Geometry, indices_kji: np.ndarray) -> np.ndarray:
    """LPS x (towards patient left, mm) of voxels given as ``(N, 3)`` array indices ``[k, j, i]``."""
    return geometry.index_to_lps(np.asarray(indices_kji, dtype=float)[:, ::-1])[:, 0]


def _two_lung_seeds(lungs: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Labelled components whose two largest are both lung-sized, eroding until the lungs part if they touch."""
    structure = ndimage.generate_binary_structure(3, 1)
    mask = lungs
    for _ in range(MAX_SEPARATING_EROSIONS + 1):
        components, count = ndimage.label(mask, structure=structure)
        if count >= 2:
            sizes = np.bincount(components.ravel())[1:]
            first, second = np.sort(sizes)[::-1][:2]
            if second >= MIN_LUNG_FRACTION * first:
                return components, count
        # erode within each axial slice only: slices are thick and the junction line is in-plane
        mask = ndimage.binary_erosion(mask, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], dtype=bool))
        if not mask.any():
            return None
    return None


def split_left_right(lungs: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Label a binary both-lungs mask as left (1) and right (2) lung.

    The two largest lung-sized components (after eroding away junction lines where the lungs touch) seed
    the lungs; every lung voxel goes to its nearest seed, and the seed further towards patient left is the
    left lung. With no two lung-sized parts, a plane through the mask's centroid splits it.
    """
    lungs = np.asarray(lungs, dtype=bool)
    labels = np.zeros(lungs.shape, dtype=np.uint8)
    if not lungs.any():
        return labels
    found = _two_lung_seeds(lungs)
    if found is None:
        coordinates = lps_left_coordinate(geometry, np.argwhere(lungs))
        labels[lungs] = np.where(coordinates > coordinates.mean(), LEFT_LUNG, RIGHT_LUNG)
        return labels
    components, count = found
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    first, second = np.argsort(sizes)[::-1][:2] + 1
    centroids = np.asarray(ndimage.center_of_mass(components > 0, components, index=[first, second]))
    first_is_left = lps_left_coordinate(geometry, centroids)[0] > lps_left_coordinate(geometry, centroids)[1]
    seeds = np.zeros(lungs.shape, dtype=np.uint8)
    seeds[components == first] = LEFT_LUNG if first_is_left else RIGHT_LUNG
    seeds[components == second] = RIGHT_LUNG if first_is_left else LEFT_LUNG
    _, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=tuple(reversed(geometry.spacing)),
                                                return_indices=True)
    labels[lungs] = seeds[tuple(index[lungs] for index in nearest)]
    return labels
