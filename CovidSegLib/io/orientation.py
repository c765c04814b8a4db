"""Bring any volume to one canonical axial orientation for processing, and map results back exactly.

Canonical means array axes ``[k, j, i]`` run towards patient Superior, Posterior and Left (DICOM's LPS, the
orientation of an ordinary axial CT), so slice-wise networks always see axial slices with the patient's right
on the image's left, anterior at the top. Only axis permutations and flips are used: no voxel is resampled,
and the inverse returns the very array on the input's grid, whose geometry is copied rather than recomputed,
so the round trip is exact. Residual obliquity (a tilted gantry) stays in the canonical direction matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from .volume import Geometry, Volume


@dataclass(frozen=True)
class Reorientation:
    """How the input grid maps onto the canonical one.

    ``source_axis[c]`` is the input index axis (0=i, 1=j, 2=k) that becomes canonical axis ``c`` (L, P, S), and
    ``flip[c]`` says whether it runs the other way.
    """

    source_axis: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    input_geometry: Geometry
    canonical_geometry: Geometry

    @property
    def is_identity(self) -> bool:
        return self.source_axis == (0, 1, 2) and not any(self.flip)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Input-grid array ``[k, j, i]`` to canonical ``[S, P, L]`` (a view when possible)."""
        # numpy axis of index axis a is 2 - a; canonical numpy axis n holds canonical index axis 2 - n.
        numpy_order = [2 - self.source_axis[2 - n] for n in range(3)]
        result = np.transpose(array, numpy_order)
        for canonical_axis, flipped in enumerate(self.flip):
            if flipped:
                result = np.flip(result, axis=2 - canonical_axis)
        return result

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Canonical array back to the input grid's ``[k, j, i]`` order (exact inverse of ``to_canonical``)."""
        for canonical_axis, flipped in enumerate(self.flip):
            if flipped:
                array = np.flip(array, axis=2 - canonical_axis)
        numpy_order = [2 - self.source_axis[2 - n] for n in range(3)]
        return np.ascontiguousarray(np.transpose(array, np.argsort(numpy_order)))


def _closest_axes(direction: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """For each patient axis (L, P, S), the index axis most aligned with it and whether it points backwards."""
    best = max(
        permutations(range(3)),
        key=lambda perm: sum(abs(direction[patient_axis, perm[patient_axis]]) for patient_axis in range(3)),
    )
    flips = tuple(bool(direction[patient_axis, best[patient_axis]] < 0) for patient_axis in range(3))
    return tuple(best), flips  # type: ignore[return-value]


def plan_reorientation(geometry: Geometry) -> Reorientation:
    """Work out the permutation and flips that make ``geometry`` canonical, and the canonical geometry."""
    direction = geometry.direction_matrix
    source_axis, flip = _closest_axes(direction)
    size = np.asarray(geometry.size)
    spacing = np.asarray(geometry.spacing)
    canonical_direction = np.empty((3, 3))
    corner = np.zeros(3)  # input index of the canonical grid's first voxel
    for canonical_axis in range(3):
        axis = source_axis[canonical_axis]
        sign = -1.0 if flip[canonical_axis] else 1.0
        canonical_direction[:, canonical_axis] = sign * direction[:, axis]
        corner[axis] = size[axis] - 1 if flip[canonical_axis] else 0
    canonical = Geometry(
        size=tuple(int(size[a]) for a in source_axis),
        spacing=tuple(float(spacing[a]) for a in source_axis),
        origin=tuple(float(v) for v in geometry.index_to_lps(corner[np.newaxis])[0]),
        direction=tuple(float(v) for v in canonical_direction.ravel()),
    )
    return Reorientation(source_axis, flip, geometry, canonical)


def to_canonical(volume: Volume) -> tuple[Volume, Reorientation]:
    """The volume in canonical orientation, and the plan that maps results back to its grid."""
    plan = plan_reorientation(volume.geometry)
    canonical = Volume(plan.to_canonical(volume.array), plan.canonical_geometry, volume.source, volume.notes)
    return canonical, plan


def from_canonical(array: np.ndarray, plan: Reorientation) -> np.ndarray:
    """A canonical-orientation result (e.g. labels) on the input's exact grid."""
    if tuple(array.shape) != plan.canonical_geometry.array_shape:
        raise ValueError(f"array shape {array.shape} is not the canonical grid {plan.canonical_geometry.array_shape}")
    return plan.from_canonical(array)
