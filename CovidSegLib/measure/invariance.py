"""Metamorphic probes of a model through ``covidseg segment``'s path: the same anatomy acquired otherwise must give
the same volumes, a denser lung must be called infection, and drawn lesions must be found.

Why: a figure that does not survive padding is not a figure. Each probe writes a variant of a real CT to a file,
segments it with :func:`CovidSegLib.engine.pipeline.segment_file` (the product's reading, checks, engine and
writing) and reads the volumes from the label map. The variants:

- acquisition (the answer must not move): 32 px of air padded around the slice (-1024 HU, and -3024 HU as
  scanners pad outside their field of view), rows cropped to a non-square matrix, columns of air added left and
  right, the lateral chest wall cut by a small field of view, the in-plane pixel size halved by resampling, the
  slice order reversed;
- density (the answer must move): the parenchyma of the model's own lungs (voxels below -500 HU) raised by a
  fixed HU, to ground-glass (+300) and consolidation (+600) density;
- lesions: a synthetic diffuse lesion with its exact mask (:mod:`CovidSegLib.training.lesions`' drawing is in
  the training room, so its mask is passed in by the caller).

Testing/test_invariance.py asserts the targets on the bundled model; Testing/benchmarks/invariance_probes.py
prints the figures for any model.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..engine.model import LoadedModel
from ..engine.pipeline import SegmentOptions, segment_file
from ..io.reading import image_from_array
from ..io.volume import Geometry, Volume
from ..labels import INFECTION_VALUES

LUNG_VALUES = (1, 2, *INFECTION_VALUES)


@dataclass(frozen=True)
class Volumes:
    """What a segmentation measured, in mL."""

    lung_ml: float
    infection_ml: float


@dataclass(frozen=True)
class ProbeResult:
    variant: str
    volumes: Volumes
    #: lung volume of the variant over the unchanged CT's lungs inside the variant's field of view
    lung_ratio: float


def shifted_origin(geometry: Geometry, di: float, dj: float, dk: float = 0.0) -> tuple[float, float, float]:
    """The LPS origin of a grid whose voxel (0, 0, 0) is voxel ``(di, dj, dk)`` of ``geometry``."""
    return tuple(float(v) for v in geometry.index_to_lps(np.array([[di, dj, dk]]))[0])


def padded(volume: Volume, pixels: int, fill: float) -> Volume:
    """``pixels`` of ``fill`` around every slice: a larger field of view."""
    array = np.pad(volume.array, ((0, 0), (pixels, pixels), (pixels, pixels)), constant_values=fill)
    g = volume.geometry
    geometry = replace(g, size=(g.size[0] + 2 * pixels, g.size[1] + 2 * pixels, g.size[2]),
                       origin=shifted_origin(g, -pixels, -pixels))
    return Volume(array.astype(volume.array.dtype), geometry, volume.source)


def cropped(volume: Volume, rows: int, cols: int) -> Volume:
    """The centre ``rows`` x ``cols`` of every slice: a non-square matrix, or a field of view that cuts the body."""
    g = volume.geometry
    r0, c0 = (g.size[1] - rows) // 2, (g.size[0] - cols) // 2
    array = volume.array[:, r0:r0 + rows, c0:c0 + cols]
    geometry = replace(g, size=(cols, rows, g.size[2]), origin=shifted_origin(g, c0, r0))
    return Volume(np.ascontiguousarray(array), geometry, volume.source)


def widened(volume: Volume, cols: int, fill: float = -1024.0) -> Volume:
    """``cols`` columns of air added on each side: a wide, non-square matrix."""
    array = np.pad(volume.array, ((0, 0), (0, 0), (cols, cols)), constant_values=fill)
    g = volume.geometry
    geometry = replace(g, size=(g.size[0] + 2 * cols, g.size[1], g.size[2]), origin=shifted_origin(g, -cols, 0))
    return Volume(array.astype(volume.array.dtype), geometry, volume.source)


def resampled(volume: Volume, factor: float) -> Volume:
    """The same slices at ``factor`` times the in-plane pixel count (linear interpolation), same field of view."""
    import SimpleITK as sitk

    g = volume.geometry
    size = [int(round(g.size[0] * factor)), int(round(g.size[1] * factor)), g.size[2]]
    spacing = [g.spacing[0] * g.size[0] / size[0], g.spacing[1] * g.size[1] / size[1], g.spacing[2]]
    # voxel centres: the new grid's first voxel sits half a new voxel in from the old grid's edge
    origin = shifted_origin(g, -0.5 + 0.5 * spacing[0] / g.spacing[0], -0.5 + 0.5 * spacing[1] / g.spacing[1])
    image = image_from_array(volume.array.astype(np.float32), g)
    result = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, g.direction, -1024.0)
    array = np.round(sitk.GetArrayFromImage(result)).astype(volume.array.dtype)
    return Volume(array, Geometry(tuple(size), tuple(spacing), origin, g.direction), volume.source)


def reversed_slices(volume: Volume) -> Volume:
    """The slices stored in the opposite order (the k axis flipped), the same anatomy in patient space."""
    g = volume.geometry
    direction = g.direction_matrix.copy()
    direction[:, 2] *= -1
    geometry = replace(g, origin=shifted_origin(g, 0, 0, g.size[2] - 1), direction=tuple(direction.ravel()))
    return Volume(np.ascontiguousarray(volume.array[::-1]), geometry, volume.source)


def acquisition_variants(volume: Volume) -> dict[str, Callable[[Volume, float], Volume]]:
    """The acquisition probes for a CT of this size, by name: each makes the variant of a volume, padding with the
    fill it is given (air for the CT, background for its labels, so the unchanged CT's labels can be brought into
    the variant's field of view)."""
    rows, cols = volume.geometry.size[1], volume.geometry.size[0]
    return {
        "padded 32 px of -1024 HU": lambda v, fill: padded(v, 32, fill),
        "padded 32 px of -3024 HU": lambda v, fill: padded(v, 32, -3024.0 if fill else 0.0),
        f"rows cropped to {int(rows * 0.77)} (non-square)": lambda v, fill: cropped(v, int(rows * 0.77), cols),
        f"{cols // 2} px of air left and right": lambda v, fill: widened(v, cols // 2, fill),
        f"cropped to {int(rows * 0.69)}x{int(cols * 0.69)} (chest wall cut)":
            lambda v, fill: cropped(v, int(rows * 0.69), int(cols * 0.69)),
        "pixel size halved (resampled)": lambda v, fill: resampled(v, 2.0) if fill else v,
        "slice order reversed": lambda v, fill: reversed_slices(v),
    }


def write_ct(volume: Volume, path: Path) -> Path:
    """A variant as a real file (NRRD), read back by the product as any CT."""
    import SimpleITK as sitk

    sitk.WriteImage(image_from_array(volume.array, volume.geometry), str(path), True)
    return path


def measure_labels(labels: np.ndarray, geometry: Geometry) -> Volumes:
    ml = geometry.voxel_volume_ml
    return Volumes(float(np.isin(labels, LUNG_VALUES).sum() * ml), float(np.isin(labels, INFECTION_VALUES).sum() * ml))


def segment_variant(volume: Volume, model: LoadedModel, folder: Path, name: str, options: SegmentOptions
                    ) -> np.ndarray:
    """Labels of ``volume`` through ``covidseg segment``'s path (written, segmented, written, read back)."""
    import SimpleITK as sitk

    safe = "".join(c if c.isalnum() else "_" for c in name)
    ct = write_ct(volume, folder / f"{safe}.nrrd")
    output = folder / f"{safe}_labels.nii.gz"
    segment_file(ct, output, model, replace(options, output_format=".nii.gz", allow_empty=True))
    return sitk.GetArrayFromImage(sitk.ReadImage(str(output)))


def acquisition_probes(volume: Volume, model: LoadedModel, options: SegmentOptions = SegmentOptions()
                       ) -> list[ProbeResult]:
    """The unchanged CT first, then each acquisition variant. A variant's lung volume is compared with the unchanged
    CT's lungs inside the variant's field of view (all of them, unless it cuts into the lungs): a cut lung can only
    be measured where it was scanned. (Resampling is compared with the whole unchanged lung.)"""
    with tempfile.TemporaryDirectory(prefix="covidseg-probe-") as temporary:
        folder = Path(temporary)
        base_labels = segment_variant(volume, model, folder, "unchanged", options)
        base = measure_labels(base_labels, volume.geometry)
        results = [ProbeResult("unchanged", base, 1.0)]
        for name, make in acquisition_variants(volume).items():
            variant = make(volume, -1024.0)
            expected_labels = make(volume.with_array(base_labels.astype(np.int16)), 0.0)
            expected = measure_labels(expected_labels.array, expected_labels.geometry)
            found = measure_labels(segment_variant(variant, model, folder, name, options), variant.geometry)
            ratio = found.lung_ml / expected.lung_ml if expected.lung_ml else float("nan")
            results.append(ProbeResult(name, found, ratio))
    return results


@dataclass(frozen=True)
class DensityResult:
    rise_hu: float
    raised_ml: float  # the parenchyma raised
    called_infection: float  # share of it the model calls infection
    inside_lung: float  # share of it still inside the lung output


def density_probes(volume: Volume, model: LoadedModel, rises_hu: tuple[float, ...] = (300.0, 600.0),
                   options: SegmentOptions = SegmentOptions()) -> list[DensityResult]:
    """Raise the parenchyma of the model's own lungs (below -500 HU) by each rise; how much of it is then infection,
    and how much still lung."""
    results = []
    with tempfile.TemporaryDirectory(prefix="covidseg-probe-") as temporary:
        folder = Path(temporary)
        lungs = np.isin(segment_variant(volume, model, folder, "unchanged", options), LUNG_VALUES)
        parenchyma = lungs & (volume.array < -500)
        for rise in rises_hu:
            denser = volume.with_array(np.where(parenchyma, volume.array + rise, volume.array)
                                       .astype(volume.array.dtype))
            labels = segment_variant(denser, model, folder, f"denser by {rise:g} HU", options)
            results.append(DensityResult(rise, float(parenchyma.sum() * volume.geometry.voxel_volume_ml),
                                         float(np.isin(labels, INFECTION_VALUES)[parenchyma].mean()),
                                         float(np.isin(labels, LUNG_VALUES)[parenchyma].mean())))
    return results


@dataclass(frozen=True)
class LesionResult:
    lesion_ml: float
    dice: float  # of the model's infection against the drawn lesion
    sensitivity: float
    inside_lung: float  # share of the lesion inside the lung output
    infection_ml: float


def lesion_probe(volume: Volume, lesion: np.ndarray, model: LoadedModel,
                 options: SegmentOptions = SegmentOptions()) -> LesionResult:
    """Segment a CT holding a drawn lesion (``volume``, its exact mask ``lesion`` on the same grid)."""
    with tempfile.TemporaryDirectory(prefix="covidseg-probe-") as temporary:
        labels = segment_variant(volume, model, Path(temporary), "lesion", options)
    infection, lungs = np.isin(labels, INFECTION_VALUES), np.isin(labels, LUNG_VALUES)
    overlap = float((infection & lesion).sum())
    ml = volume.geometry.voxel_volume_ml
    return LesionResult(float(lesion.sum() * ml), 2 * overlap / max(float(infection.sum() + lesion.sum()), 1.0),
                        overlap / max(float(lesion.sum()), 1.0), float(lungs[lesion].mean()),
                        float(infection.sum() * ml))
