"""A whole CT volume as anatomy training slices: as scanned, in other acquisitions, and with synthetic lesions.

Each rendering of a volume is placed on the canvas by its own spacing and body (one placement per rendering, as
the engine places a volume), so a cropped acquisition moves the canvas centre the way a small field of view would.
Synthetic lesions are drawn only on CTs without COVID-19 (``healthy``): on a COVID-19 CT a drawn lesion could
overlap an unlabelled real one. Where a healthy CT has no lung mask (POPI), lesions are placed in lungs found by
HU (:func:`CovidSegLib.training.lesions.lungs_from_hu`), and its lungs stay unlabelled. A lesion trains on the
slices it reaches only; a CT with no lung in its chosen slices gets none. A healthy CT can also be rendered with a
dependent density gradient and no infection (hard negatives, on its lung slices).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..engine.canvas import volume_placement
from ..engine.representation import Preprocessing
from .acquisition import acquire, draw_acquisition
from .canvas_slices import hu_slices_on_canvas
from .data import SliceSet
from .lesions import GGO_HU, draw_dependent_density, draw_lesion, lungs_from_hu


@dataclass(frozen=True)
class HuRenderings:
    """How many more renderings each HU volume gets in training (anatomy representation only)."""

    acquisitions: int = 0  # each in a random other acquisition (noise, resolution, field of view, padding)
    lesions: int = 0  # CTs without COVID-19: each with a random synthetic lesion, in its lung slices
    seed: int = 0
    #: CTs without COVID-19: each with a dependent density gradient and no infection (lesions.draw_dependent_density)
    dependent_negatives: int = 0
    ggo_hu: tuple[float, float] = GGO_HU  # the synthetic ground glass' density range


def case_generator(seed: int, case: str) -> np.random.Generator:
    """One generator per (seed, case): a case's renderings do not depend on which other cases are loaded."""
    return np.random.default_rng([seed, zlib.crc32(case.encode("utf-8"))])


def canvas_case_slices(case: str, hu: np.ndarray, spacing_zyx: tuple[float, float, float], lungs: np.ndarray,
                       infection: np.ndarray, has_lungs: bool, has_infection: bool, chosen: np.ndarray,
                       preprocessing: Preprocessing, renderings: HuRenderings, healthy: bool) -> SliceSet:
    """The ``chosen`` slices of a canonical volume in every rendering; names tell renderings apart only where
    their content differs from the scan (a lesion), so validation scores each scanned slice once."""
    pixel_mm = (float(spacing_zyx[1]), float(spacing_zyx[2]))
    rng = case_generator(renderings.seed, case)

    def rendered(volume: np.ndarray, lung: np.ndarray, lesion: np.ndarray, slices: np.ndarray, names: list[str],
                 infection_known: bool) -> SliceSet:
        placement = volume_placement(volume, pixel_mm, preprocessing.canvas_size, preprocessing.canvas_pixel_mm)
        return hu_slices_on_canvas(volume[slices], lung[slices], lesion[slices], placement, preprocessing, names,
                                   case, has_lungs, infection_known)

    scan_names = [f"{case}/{k}" for k in chosen]
    parts = [rendered(hu, lungs, infection, chosen, scan_names, has_infection)]
    for _ in range(renderings.acquisitions):
        acquisition = draw_acquisition(hu.shape, pixel_mm, rng)
        volume, (lung, lesion) = acquire(hu, [lungs, infection], pixel_mm, acquisition, rng)
        parts.append(rendered(volume, lung, lesion, chosen, scan_names, has_infection))
    if not healthy or not (renderings.lesions or renderings.dependent_negatives):
        return SliceSet.concatenate(parts)
    # where lesions and hard negatives are drawn: the lung label, or (no label, POPI) the lungs found by HU, once
    where = lungs if has_lungs else lungs_from_hu(hu, pixel_mm[0] * pixel_mm[1])
    for index in range(renderings.lesions if where[chosen].any() else 0):
        volume, lesion, recipe = draw_lesion(hu, where, spacing_zyx, rng, ggo_hu=renderings.ggo_hu)
        # only the slices the lesion reaches: the others are the scan again, weighing the CT many times over
        lesion_slices = chosen[lesion[chosen].any(axis=(1, 2))]
        if not len(lesion_slices):
            continue
        names = [f"{case}/lesion-{index}-{recipe.extent}-{recipe.texture}/{k}" for k in lesion_slices]
        parts.append(rendered(volume, lungs | lesion if has_lungs else lungs, lesion, lesion_slices, names, True))
    lung_slices = chosen[where[chosen].any(axis=(1, 2))]
    # drawn after the lesions: a recipe without hard negatives keeps its lesions
    for index in range(renderings.dependent_negatives if len(lung_slices) else 0):
        volume, _ = draw_dependent_density(hu, where, spacing_zyx, rng)
        names = [f"{case}/dependent-{index}/{k}" for k in lung_slices]
        parts.append(rendered(volume, lungs, np.zeros_like(infection), lung_slices, names, True))
    return SliceSet.concatenate(parts)
