"""Synthetic COVID-19 lesions in HU on CT without COVID-19, with exact masks.

Why: the corpus shows mild and moderate focal ground glass in 20 patients; it has no diffuse disease, no
consolidation of whole lobes, and no HU. A model trained on it calls a uniformly denser lung healthy and loses the
lung where it is opacified. Yao et al. 2020 ("Label-free segmentation of COVID-19 lesions in lung CT", arXiv
2009.06456) showed that simple lesions synthesised on normal CT teach a network real ones. Here each lesion is
drawn in 3D inside the lungs of a real CT without COVID-19:

- **extent**: focal (a few blobs, 1-10 % of the lungs), lobar (most of one lung's upper or lower half), diffuse
  (most of both lungs);
- **distribution**: peripheral (towards the pleura), dependent (posterior) or anywhere;
- **density**: ground glass (-750 to -300 HU) or consolidation (-150 to +40 HU). Lung below the target density
  is raised to it, lung denser already (vessels, airway walls) keeps its HU, so vessels show through ground glass
  as they do in patients, and disappear in consolidation;
- **texture**: plain, crazy paving (ground glass with a fine network of thickened septa) or reticulation (lines
  over faint ground glass), and the CT's own noise on top.

The mask is where the lesion was drawn at half its full rise or more, inside the lungs: exact by construction.
The lungs stay lung: the lung mask is unchanged, whatever the density drawn into it.

Hard negatives (:func:`draw_dependent_density`): a supine patient's lung is denser towards the back (gravity,
dependent atelectasis), by tens of HU up to about a hundred and more. The faintest synthetic ground glass is no
denser than that, and the anatomy candidates' false infection on CT without COVID-19 lay there (lungmask's slices,
lung median -727 HU: the posterior bands of both lungs; CTChest: the posterior right lower lobe). So a CT without
COVID-19 can also be rendered with such a gradient and no infection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

EXTENTS = ("focal", "lobar", "diffuse")
DISTRIBUTIONS = ("peripheral", "dependent", "anywhere")
TEXTURES = ("plain", "crazy_paving", "reticulation")
#: Normal lung parenchyma is about -850 HU; ground glass starts where it is clearly denser.
GGO_HU = (-750.0, -300.0)
CONSOLIDATION_HU = (-150.0, 40.0)


@dataclass(frozen=True)
class Lesion:
    """One drawn lesion's recipe (recorded with the training data, so a slice can be traced to how it was made)."""

    extent: str
    distribution: str
    texture: str
    target_hu: float
    lung_fraction: float  # share of the lungs inside the lesion


def smooth_noise(shape: tuple[int, ...], sigma_voxels: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise smoothed to ``sigma_voxels`` and scaled to unit standard deviation: blobs of that size."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_voxels, mode="reflect")
    return field / max(float(field.std()), 1e-6)


def sigma_in_voxels(sigma_mm: float, spacing_zyx: tuple[float, float, float]) -> tuple[float, float, float]:
    return tuple(sigma_mm / s for s in spacing_zyx)


def distribution_weight(lungs: np.ndarray, spacing_zyx: tuple[float, float, float], distribution: str
                        ) -> np.ndarray:
    """0..1 preference of each lung voxel: near the pleura (peripheral), towards the back (dependent: rows grow
    posterior in the canonical display orientation), or flat."""
    if distribution == "peripheral":
        depth = ndimage.distance_transform_edt(lungs, sampling=spacing_zyx)
        return np.exp(-depth / 20.0).astype(np.float32)
    if distribution == "dependent":
        rows = np.flatnonzero(lungs.any(axis=(0, 2)))
        top, bottom = (rows[0], rows[-1]) if len(rows) else (0, lungs.shape[1] - 1)
        ramp = np.clip((np.arange(lungs.shape[1], dtype=np.float32) - top) / max(bottom - top, 1), 0, 1)
        return np.broadcast_to(ramp[None, :, None], lungs.shape).astype(np.float32)
    return np.ones(lungs.shape, np.float32)


def lesion_region(lungs: np.ndarray, spacing_zyx: tuple[float, float, float], extent: str, distribution: str,
                  rng: np.random.Generator) -> np.ndarray:
    """Where the lesion lies: the highest-scoring share of the allowed lung, the score being smooth noise plus the
    distribution's preference."""
    allowed = lungs.copy()
    if extent == "focal":
        fraction, blob_mm = rng.uniform(0.01, 0.10), rng.uniform(6.0, 14.0)
    elif extent == "lobar":
        fraction, blob_mm = rng.uniform(0.5, 0.9), rng.uniform(15.0, 30.0)
        allowed &= one_lung_half(lungs, rng)
    else:
        fraction, blob_mm = rng.uniform(0.7, 1.0), rng.uniform(15.0, 30.0)
    if not allowed.any():
        return np.zeros_like(lungs)
    score = smooth_noise(lungs.shape, sigma_in_voxels(blob_mm, spacing_zyx), rng)
    score += 2.0 * distribution_weight(lungs, spacing_zyx, distribution)
    cut = np.quantile(score[allowed], 1.0 - fraction)
    region = allowed & (score >= cut)
    return ndimage.binary_opening(region, iterations=1) & lungs if extent == "focal" else region


def one_lung_half(lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The upper or lower half of the left or right lung (canonical columns: patient right on the image's left),
    a stand-in for a lobe."""
    cols = np.flatnonzero(lungs.any(axis=(0, 1)))
    slices = np.flatnonzero(lungs.any(axis=(1, 2)))
    keep = np.zeros(lungs.shape, bool)
    if not len(cols):
        return keep
    middle_col, middle_slice = (cols[0] + cols[-1]) // 2, (slices[0] + slices[-1]) // 2
    col_part = slice(0, middle_col) if rng.random() < 0.5 else slice(middle_col, None)
    slice_part = slice(0, middle_slice) if rng.random() < 0.5 else slice(middle_slice, None)
    keep[slice_part, :, col_part] = True
    return keep


def septal_lines(shape: tuple[int, ...], spacing_zyx: tuple[float, float, float], rng: np.random.Generator,
                 cell_mm: float) -> np.ndarray:
    """0..1 thin lines of a polygonal network, cells about ``cell_mm`` across: where a smooth noise field crosses
    zero (its level set is a network of closed curves), about one voxel wide."""
    field = smooth_noise(shape, sigma_in_voxels(cell_mm / 2.5, spacing_zyx), rng)
    gradient = np.sqrt(sum(g * g for g in np.gradient(field)))
    return np.clip(1.0 - np.abs(field) / np.maximum(gradient, 1e-3), 0.0, 1.0).astype(np.float32)


def draw_lesion(hu: np.ndarray, lungs: np.ndarray, spacing_zyx: tuple[float, float, float],
                rng: np.random.Generator, extent: str | None = None, texture: str | None = None,
                consolidation: bool | None = None,
                ggo_hu: tuple[float, float] = GGO_HU) -> tuple[np.ndarray, np.ndarray, Lesion]:
    """A random lesion in the lungs of a canonical HU volume: the new HU (float32), its mask, and its recipe.
    ``extent``, ``texture`` and ``consolidation`` fix what is otherwise drawn (a probe of diffuse disease);
    ``ggo_hu`` is the range ground glass' target density is drawn from."""
    drawn_extent = EXTENTS[rng.integers(len(EXTENTS))]  # always drawn, in this order: seeds keep their lesions
    distribution = DISTRIBUTIONS[rng.integers(len(DISTRIBUTIONS))]
    drawn_consolidation = rng.random() < 0.3
    extent = extent or drawn_extent
    consolidation = drawn_consolidation if consolidation is None else consolidation
    if consolidation:
        texture = "plain"
    elif texture is None:
        texture = TEXTURES[rng.integers(len(TEXTURES))]
    low, high = CONSOLIDATION_HU if consolidation else ggo_hu
    if texture == "reticulation":
        high = -600.0  # lines over faint ground glass
    target = float(rng.uniform(low, high))
    region = lesion_region(lungs, spacing_zyx, extent, distribution, rng)
    out = hu.astype(np.float32, copy=True)
    mask = np.zeros_like(lungs)
    if region.any():
        # a soft edge (1.5 mm): the mask is where the lesion's full rise is at least half there
        feather = ndimage.gaussian_filter(region.astype(np.float32), sigma_in_voxels(1.5, spacing_zyx)) * lungs
        mask = feather >= 0.5
        level = target + 25.0 * smooth_noise(hu.shape, sigma_in_voxels(1.5, spacing_zyx), rng)
        if texture != "plain":
            lines = septal_lines(hu.shape, spacing_zyx, rng, rng.uniform(6.0, 12.0))
            level = level + rng.uniform(150.0, 300.0) * lines
        raised = np.maximum(out, np.minimum(level, 60.0))  # denser lung keeps its HU; nothing past soft tissue
        out = out + feather * (raised - out)
    fraction = float(mask.sum() / max(lungs.sum(), 1))
    return out, mask, Lesion(extent, distribution, texture, target, fraction)


#: The dependent gradient's rise at the back of the lung, in HU (drawn per rendering), and the lung it applies to.
DEPENDENT_RISE_HU = (40.0, 130.0)
PARENCHYMA_MAX_HU = -500.0


def draw_dependent_density(hu: np.ndarray, lungs: np.ndarray, spacing_zyx: tuple[float, float, float],
                           rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A CT without COVID-19 with its lung parenchyma (below :data:`PARENCHYMA_MAX_HU`) denser towards the back, as
    a supine patient's is: a rise growing from nothing at the front of the lungs to a random
    :data:`DEPENDENT_RISE_HU` at the back, modulated by smooth noise (patchy, as dependent atelectasis is). Vessels
    and airway walls keep their HU. Returns the new HU (float32) and the rise drawn; it is no infection."""
    rise = float(rng.uniform(*DEPENDENT_RISE_HU))
    ramp = distribution_weight(lungs, spacing_zyx, "dependent") ** 1.5
    patches = 1.0 + 0.3 * smooth_noise(hu.shape, sigma_in_voxels(15.0, spacing_zyx), rng)
    out = hu.astype(np.float32, copy=True)
    parenchyma = lungs & (out < PARENCHYMA_MAX_HU)
    out[parenchyma] += (rise * ramp * np.clip(patches, 0.4, 1.6))[parenchyma]
    return out, rise


def lungs_from_hu(hu: np.ndarray, pixel_area_mm2: float) -> np.ndarray:
    """Lungs of a CT without COVID-19 and without a lung mask, for placing lesions only (not as a lung label): air
    below -400 HU inside each slice's body, keeping per slice the regions of at least 600 mm² whose median is above
    -970 HU (the trachea and main bronchi are smaller and hold air at -1000 HU, lung is about -850), then only 3D
    components of at least 2 % of the largest (bowel gas)."""
    from ..engine.preprocessing import body_mask_2d

    air = np.zeros(hu.shape, bool)
    for index, values in enumerate(hu):
        labels, count = ndimage.label(body_mask_2d(values) & (values < -400))
        if not count:
            continue
        sizes = np.bincount(labels.ravel())[1:] * pixel_area_mm2
        medians = ndimage.median(values, labels, np.arange(1, count + 1))
        keep = np.concatenate([[False], (sizes >= 600.0) & (np.asarray(medians) > -970.0)])
        air[index] = keep[labels]
    labels, count = ndimage.label(air)
    if count == 0:
        return air
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= 0.02 * sizes.max()
    keep[0] = False
    return keep[labels]
