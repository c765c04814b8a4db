"""How much of each lung is involved: volumes, involvement, mean HU, laterality, and a severity category.

Conventions:
- A lung's volume includes the infection inside it. Infection voxels are attributed to a lung by splitting the
  whole lungs (infection included) into left and right, so involvement is reported per lung even though the
  label map stores infection as one label.
- Severity follows MosMedData's CT-0..CT-4 on the involvement of both lungs together, except that infection
  within the model's measured false infection on CT without COVID-19 is CT-0 (:mod:`.severity`, which also
  words the reason); where no lung was found it is "not assessed". It is an automatic estimate from an automatic
  segmentation, and every output says so.
- Each region's aeration (well, poorly and non-aerated lung by HU thresholds, :mod:`.aeration`) is measured on
  the same voxels as its volume, when the CT is given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..labels import CONSOLIDATION, GGO, INFECTION_VALUES, LEFT_LUNG, RIGHT_LUNG
from ..engine.lateral import split_left_right
from ..checks.plausibility import geometry_warnings, no_lung_finding
from ..io.volume import Geometry
from .aeration import Aeration, aeration
from .severity import FalseInfectionFloor, grade, severity_category

__all__ = ["LungFigures", "Quantification", "attribute_infection", "quantify", "severity_category"]

SEVERITY_NOTE = "automatic estimate from an automatic segmentation; not a diagnosis, review the images"
#: Adult total lung volumes outside this range (mL) point at a failed segmentation or an unusual scan.
PLAUSIBLE_TOTAL_LUNG_ML = (1000.0, 10000.0)


@dataclass(frozen=True)
class LungFigures:
    volume_ml: float  # lung including its infection
    infection_ml: float
    involvement_percent: float
    healthy_mean_hu: float
    infection_mean_hu: float
    #: the infection's classes, when the labels tell them apart (4 and 5); a label map that also holds
    #: unclassified infection (3) has infection_ml above their sum
    ggo_ml: float | None = None
    consolidation_ml: float | None = None
    #: volumes by density band (HU thresholds on the lung output, independent of the infection model)
    aeration: Aeration | None = None


@dataclass
class Quantification:
    left: LungFigures
    right: LungFigures
    total: LungFigures
    bilateral: bool
    severity: str
    severity_note: str = SEVERITY_NOTE
    #: why this category, e.g. "CT-0: 1.8 mL of infection found, within the 15 mL this model finds on CT ..."
    severity_reason: str = ""
    ggo_ml: float | None = None
    consolidation_ml: float | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def attribute_infection(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Lung side (1 left, 2 right) of every lung or infection voxel.

    Lung voxels keep their label. Infection voxels take the side of the whole-lung split (lungs with their
    infection, :func:`split_left_right`), not of the nearest lung label: a fully consolidated slab of one
    lung can lie closer, in-plane, to the other lung than to the rest of its own.
    """
    sides = np.where(np.isin(labels, (LEFT_LUNG, RIGHT_LUNG)), labels, 0).astype(np.uint8)
    infection = np.isin(labels, INFECTION_VALUES)
    if infection.any():
        sides[infection] = split_left_right((sides > 0) | infection, geometry)[infection]
    return sides


def _figures(in_lung: np.ndarray, infected: np.ndarray, hu: np.ndarray | None, voxel_ml: float,
             classes: tuple[np.ndarray, np.ndarray] | None = None) -> LungFigures:
    """One region's figures; ``classes``: the GGO and consolidation masks, when the labels have them."""
    lung_voxels = int(np.count_nonzero(in_lung))
    infected_voxels = int(np.count_nonzero(infected & in_lung))

    def mean_hu(mask: np.ndarray) -> float:
        return float(hu[mask].mean()) if hu is not None and mask.any() else math.nan

    ggo_ml, consolidation_ml = ((np.count_nonzero(mask & in_lung) * voxel_ml for mask in classes) if classes
                                else (None, None))
    return LungFigures(
        volume_ml=lung_voxels * voxel_ml,
        infection_ml=infected_voxels * voxel_ml,
        involvement_percent=100.0 * infected_voxels / lung_voxels if lung_voxels else math.nan,
        healthy_mean_hu=mean_hu(in_lung & ~infected),
        infection_mean_hu=mean_hu(in_lung & infected),
        ggo_ml=ggo_ml,
        consolidation_ml=consolidation_ml,
        aeration=aeration(hu, in_lung, voxel_ml) if hu is not None else None,
    )


def quantify(labels: np.ndarray, geometry: Geometry, hu: np.ndarray | None = None,
             floor: FalseInfectionFloor | None = None) -> Quantification:
    """Figures for one case from its label map (and the CT in HU on the same grid, for mean HU and aeration).

    ``floor``: the model's false infection on CT without COVID-19 (:func:`.severity.floor_of_card`); infection
    within it is CT-0. Without it the category follows the involvement alone."""
    if hu is not None and hu.shape != labels.shape:
        raise ValueError(f"CT {hu.shape} and labels {labels.shape} are not on the same grid")
    voxel_ml = geometry.voxel_volume_ml
    sides = attribute_infection(labels, geometry)
    infected = np.isin(labels, INFECTION_VALUES)
    has_fine_classes = bool(np.isin(labels, (GGO, CONSOLIDATION)).any())
    classes = (labels == GGO, labels == CONSOLIDATION) if has_fine_classes else None
    left = _figures(sides == LEFT_LUNG, infected, hu, voxel_ml, classes)
    right = _figures(sides == RIGHT_LUNG, infected, hu, voxel_ml, classes)
    total = _figures(sides > 0, infected, hu, voxel_ml, classes)
    warnings = geometry_warnings(geometry)
    low, high = PLAUSIBLE_TOTAL_LUNG_ML
    no_lung = no_lung_finding(total.volume_ml)
    if no_lung:
        warnings.append(f"{no_lung}: check that the image is a chest CT")
    elif not low <= total.volume_ml <= high:
        warnings.append(f"total lung volume {total.volume_ml:.0f} mL is outside the usual adult range "
                        f"{low / 1000:g}-{high / 1000:g} L: check the segmentation and the scan's extent")
    lungs = sides > 0
    if lungs.any() and (lungs[0].any() or lungs[-1].any()):
        warnings.append("lung reaches the first or last slice: the scan may not cover both lungs, volumes are "
                        "then too small")
    severity, reason = grade(total.involvement_percent, total.infection_ml, floor)
    return Quantification(
        left=left,
        right=right,
        total=total,
        bilateral=left.infection_ml > 0 and right.infection_ml > 0,
        severity=severity,
        severity_reason=reason,
        ggo_ml=total.ggo_ml,
        consolidation_ml=total.consolidation_ml,
        warnings=warnings,
    )
