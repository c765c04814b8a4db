"""Is this grid a chest CT? Voxel spacing, field of view and extent against what chest CT can be.

A header with a slice spacing of 100 mm or 0.01 mm, or 10 mm pixels, reads without complaint, and every volume
and percentage computed on it is wrong by the same factor. Values no chest CT can have are refused; values that
are possible but unusual (thick slices, a small field of view, a scan too short to hold the lungs) are warnings
that the command line prints, the report lists and Slicer shows. Geometry is judged in the canonical axial
orientation, so "slice" means the craniocaudal axis whatever order the file stores its axes in.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..io.orientation import plan_reorientation
from ..io.volume import Geometry, Volume


@dataclass(frozen=True)
class Limits:
    """A quantity's refused range (outside ``error``) and its unusual range (outside ``usual``)."""

    what: str
    error: tuple[float, float]
    usual: tuple[float, float]
    why: str  # what an unusual value means for the results


#: Pixel spacing: chest CT reconstructs 0.3-1 mm pixels (down-sampled research copies reach about 3 mm).
PIXEL_MM = Limits("pixel spacing", (0.1, 6.0), (0.25, 3.5), "in-plane detail is coarse; small lesions are lost")
#: Slice spacing: 0.5-10 mm in practice (10 mm: older step-and-shoot protocols).
SLICE_MM = Limits("slice spacing", (0.05, 25.0), (0.3, 10.5), "volumes between slices are interpolated")
#: In-plane field of view: a chest is 250-450 mm wide.
FIELD_OF_VIEW_MM = Limits("field of view", (50.0, 1500.0), (150.0, 700.0),
                          "the lungs may be cut, or the image is not a chest CT")
#: Craniocaudal extent: adult lungs are about 200-300 mm tall; no body is taller than 2.5 m.
EXTENT_MM = Limits("craniocaudal extent", (0.0, 2500.0), (150.0, 2500.0),
                   "the scan cannot hold both whole lungs; volumes are partial")


def geometry_findings(geometry: Geometry) -> tuple[list[str], list[str]]:
    """(errors, warnings) about ``geometry``: values no chest CT can have, and values that are only unusual."""
    canonical = plan_reorientation(geometry).canonical_geometry
    spacing_l, spacing_p, spacing_s = canonical.spacing
    size_l, size_p, size_s = canonical.size
    measured = (
        (PIXEL_MM, min(spacing_l, spacing_p), "mm"), (PIXEL_MM, max(spacing_l, spacing_p), "mm"),
        (SLICE_MM, spacing_s, "mm"),
        (FIELD_OF_VIEW_MM, min(size_l * spacing_l, size_p * spacing_p), "mm"),
        (FIELD_OF_VIEW_MM, max(size_l * spacing_l, size_p * spacing_p), "mm"),
        (EXTENT_MM, size_s * spacing_s, f"mm ({size_s} slices of {spacing_s:g} mm)"),
    )
    errors: list[str] = []
    warnings: list[str] = []
    for limits, value, unit in measured:
        text = f"{limits.what} {value:g} {unit}"
        if not limits.error[0] <= value <= limits.error[1]:
            errors.append(f"{text} is impossible for a chest CT (accepted {limits.error[0]:g}-{limits.error[1]:g}"
                          " mm): the header's geometry is wrong, or this is not a CT")
        elif not limits.usual[0] <= value <= limits.usual[1]:
            warnings.append(f"{text} is unusual for a chest CT (usual {limits.usual[0]:g}-{limits.usual[1]:g} mm):"
                            f" {limits.why}")
    return list(dict.fromkeys(errors)), list(dict.fromkeys(warnings))


def check_geometry(volume: Volume) -> None:
    """Raise :class:`InputError` naming the file when its spacing or size cannot be a chest CT's."""
    errors, _ = geometry_findings(volume.geometry)
    if errors:
        raise InputError(volume.source, "; ".join(errors))


def geometry_warnings(geometry: Geometry) -> list[str]:
    """What is possible but unusual about ``geometry`` for a chest CT, each with what it means for the results."""
    return geometry_findings(geometry)[1]


#: Less lung than this is no chest CT's lungs but stray air called lung (an airway, bowel gas): "no lung found".
#: The smallest real case at hand, lungmask's two 1 mm slices, holds 41 mL of lung; the bundled model calls 12 mL
#: of bowel gas "lung" on CTChest with its lungs filled with soft tissue (Testing/test_bad_input.py).
MIN_LUNG_ML = 20.0


def no_lung_finding(lung_ml: float) -> str | None:
    """What to say when ``lung_ml`` of lung-like labels is fewer than any chest CT has; None when there are enough.
    The one rule the engine, the quantification, the Slicer module and the viewer share."""
    if lung_ml >= MIN_LUNG_ML:
        return None
    return f"no lung found ({lung_ml:.1f} mL of lung-like labels, under the {MIN_LUNG_ML:.0f} mL of any chest CT)"
