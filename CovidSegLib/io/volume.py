"""The one volume type the library passes around: a voxel array plus its place in patient space.

Arrays are indexed ``[k, j, i]`` (slice, row, column), as SimpleITK's ``GetArrayFromImage`` returns them;
``spacing``, ``origin`` and ``direction`` follow ITK (LPS patient coordinates, ``direction`` columns are the
i, j, k axes). Keeping ITK's convention means geometry is copied, never recomputed, so it round-trips exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Voxel grid in LPS patient space (ITK convention)."""

    size: tuple[int, int, int]  # (i, j, k) = (columns, rows, slices)
    spacing: tuple[float, float, float]  # mm along i, j, k
    origin: tuple[float, float, float]  # LPS mm of voxel (0, 0, 0)
    direction: tuple[float, ...]  # 3x3 row-major, columns are the i, j, k axes in LPS

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def array_shape(self) -> tuple[int, int, int]:
        """Shape of the numpy array for this grid, ``(k, j, i)``."""
        return (self.size[2], self.size[1], self.size[0])

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` continuous (i, j, k) indices to LPS millimetres."""
        ijk = np.asarray(ijk, dtype=float)
        scaled = ijk * np.asarray(self.spacing)
        return scaled @ self.direction_matrix.T + np.asarray(self.origin)

    def ijk_to_ras_matrix(self) -> np.ndarray:
        """4x4 IJK-to-RAS matrix, the form Slicer's volume nodes use."""
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        matrix = np.eye(4)
        matrix[:3, :3] = lps_to_ras @ self.direction_matrix @ np.diag(self.spacing)
        matrix[:3, 3] = lps_to_ras @ np.asarray(self.origin)
        return matrix

    def matches(self, other: "Geometry", tolerance_mm: float = 1e-3) -> bool:
        """Same grid up to ``tolerance_mm`` (file formats store geometry with different precision)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, rtol=0, atol=tolerance_mm)
            and np.allclose(self.origin, other.origin, rtol=0, atol=tolerance_mm)
            and np.allclose(self.direction, other.direction, rtol=0, atol=1e-5)
        )


@dataclass(frozen=True)
class Volume:
    """A 3D voxel array ``[k, j, i]`` with its geometry and where it came from."""

    array: np.ndarray
    geometry: Geometry
    source: str = "<in-memory volume>"
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"{self.source}: expected a 3D array, got shape {self.array.shape}")
        if tuple(self.array.shape) != self.geometry.array_shape:
            raise ValueError(
                f"{self.source}: array shape {self.array.shape} does not match geometry {self.geometry.array_shape}"
            )

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same grid and provenance, new voxels (for label maps derived from this volume)."""
        return replace(self, array=array)

    @property
    def name(self) -> str:
        return Path(self.source).name
