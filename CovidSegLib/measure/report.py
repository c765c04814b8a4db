"""Reports a radiologist can check: figures (JSON, CSV row), QC pictures (PNG) and a one-page HTML.

Pictures are drawn in the canonical orientation (radiological convention: patient right on the image's left,
anterior up in axial views, superior up in coronal and sagittal ones) with the voxel spacing as aspect ratio,
lung window, each label in its scheme colour (left lung blue, right lung green, infection red, ground-glass
opacity yellow, consolidation purple). Everything is written atomically; nothing is ever
written over the CT or the labels it reports on.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .. import __version__
from ..labels import INFECTION_VALUES, LABELS, LEFT_LUNG, RIGHT_LUNG
from ..io.orientation import to_canonical
from .aeration import AERATION_NOTE, BAND_KEYS, BANDS
from .quantification import Quantification, attribute_infection, quantify
from .severity import CATEGORY_BANDS, NOT_ASSESSED, FalseInfectionFloor, false_infection_floor, floor_of_card
from ..io.volume import Volume
from ..io.writing import atomic_output, write_text

LUNG_WINDOW = (-1350.0, 150.0)
OVERLAY = {label.value: label.color for label in LABELS}
MOSAIC_SLICES = 12
__all__ = ["CSV_COLUMNS", "FalseInfectionFloor", "csv_row", "csv_text", "false_infection_floor", "floor_of_card",
           "labels_for_ct", "qc_pictures", "write_report"]
#: Aeration columns of the cohort table: both lungs first (``well_aerated_percent`` is %WAL), then each lung.
AERATION_COLUMNS = tuple(f"{region}{band}_{unit}" for region in ("", "left_", "right_") for band in BAND_KEYS
                         for unit in ("ml", "percent"))
CSV_COLUMNS = (
    "case", "status", "severity", "involvement_percent", "bilateral", "lungs_ml", "infection_ml",
    "left_lung_ml", "left_infection_ml", "left_involvement_percent",
    "right_lung_ml", "right_infection_ml", "right_involvement_percent",
    "healthy_lung_mean_hu", "infection_mean_hu", "ggo_ml", "consolidation_ml",
    "left_ggo_ml", "left_consolidation_ml", "right_ggo_ml", "right_consolidation_ml", *AERATION_COLUMNS,
    "severity_reason", "warnings",
)


def csv_row(case: str, result: Quantification | None, error: str | None = None) -> dict[str, object]:
    """One cohort row; a failed case keeps its row with the error in ``status``."""
    if result is None:
        return {"case": case, "status": f"error: {error}"}
    return {
        "case": case, "status": "ok", "severity": result.severity,
        "involvement_percent": result.total.involvement_percent, "bilateral": result.bilateral,
        "lungs_ml": result.total.volume_ml, "infection_ml": result.total.infection_ml,
        "left_lung_ml": result.left.volume_ml, "left_infection_ml": result.left.infection_ml,
        "left_involvement_percent": result.left.involvement_percent,
        "right_lung_ml": result.right.volume_ml, "right_infection_ml": result.right.infection_ml,
        "right_involvement_percent": result.right.involvement_percent,
        "healthy_lung_mean_hu": result.total.healthy_mean_hu, "infection_mean_hu": result.total.infection_mean_hu,
        "ggo_ml": result.ggo_ml, "consolidation_ml": result.consolidation_ml,
        "left_ggo_ml": result.left.ggo_ml, "left_consolidation_ml": result.left.consolidation_ml,
        "right_ggo_ml": result.right.ggo_ml, "right_consolidation_ml": result.right.consolidation_ml,
        **_aeration_cells(result), "severity_reason": result.severity_reason,
        "warnings": " | ".join(result.warnings),
    }


def _aeration_cells(result: Quantification) -> dict[str, float]:
    cells: dict[str, float] = {}
    for prefix, figures in (("", result.total), ("left_", result.left), ("right_", result.right)):
        if figures.aeration is not None:
            for band in BAND_KEYS:
                cells[f"{prefix}{band}_ml"] = figures.aeration.ml(band)
                cells[f"{prefix}{band}_percent"] = figures.aeration.percent(band)
    return cells


def csv_text(rows: Iterable[dict[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else v) for k, v in row.items()})
    return buffer.getvalue()


@dataclass(frozen=True)
class PicturePlanes:
    """Where the QC pictures cut the canonical volume ``[S, P, L]``: chosen to show the disease.

    Sagittal and coronal planes go through each lung (``"right"``/``"left"``): through the plane with the most
    infection in that lung, else through the plane with the most of that lung. The axial mosaic spans the lungs
    evenly and always holds the slice with the most infection."""

    axial: tuple[int, ...]
    most_infected_axial: int | None
    coronal: dict[str, int] = field(default_factory=dict)
    sagittal: dict[str, int] = field(default_factory=dict)


def _densest_plane(mask: np.ndarray, axis: int) -> int | None:
    counts = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(counts)) if counts.any() else None


def picture_planes(sides: np.ndarray, infected: np.ndarray) -> PicturePlanes:
    """Planes for the pictures from the lung side of each voxel (1 left, 2 right) and the infection mask."""
    lung_slices = np.flatnonzero((sides > 0).any(axis=(1, 2)))
    if lung_slices.size == 0:
        lung_slices = np.arange(sides.shape[0])
    axial = np.unique(np.linspace(lung_slices[0], lung_slices[-1], MOSAIC_SLICES).round().astype(int))
    most = _densest_plane(infected, 0)
    if most is not None and most not in axial:
        axial[np.argmin(np.abs(axial - most))] = most
        axial = np.unique(axial)
    planes = PicturePlanes(tuple(int(i) for i in axial[::-1]), most)
    for side, value in (("right", RIGHT_LUNG), ("left", LEFT_LUNG)):
        lung = sides == value
        for axis, chosen in ((1, planes.coronal), (2, planes.sagittal)):
            plane = _densest_plane(lung & infected, axis)
            plane = _densest_plane(lung, axis) if plane is None else plane
            if plane is not None:
                chosen[side] = plane
    if not planes.coronal:  # no lung: one plane through the middle
        planes.coronal["middle"], planes.sagittal["middle"] = sides.shape[1] // 2, sides.shape[2] // 2
    return planes


def _overlay(image_hu: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB picture: lung-window grey values with translucent label colours."""
    low, high = LUNG_WINDOW
    grey = np.clip((image_hu.astype(np.float32) - low) / (high - low), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for value, colour in OVERLAY.items():
        mask = labels == value
        rgb[mask] = 0.55 * rgb[mask] + 0.45 * np.asarray(colour)
    return rgb


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, facecolor="black")
    return buffer.getvalue()


def qc_pictures(ct: Volume, labels: np.ndarray) -> tuple[dict[str, bytes], PicturePlanes]:
    """``axial.png`` (mosaic of lung slices with the most infected one), ``coronal.png`` and ``sagittal.png``
    (one panel through each lung, where its infection is densest), and the planes they show."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    canonical, plan = to_canonical(ct)
    hu = canonical.array
    canonical_labels = plan.to_canonical(labels)
    spacing_l, spacing_p, spacing_s = canonical.geometry.spacing
    planes = picture_planes(attribute_infection(canonical_labels, canonical.geometry),
                            np.isin(canonical_labels, INFECTION_VALUES))
    pictures = {}

    # canonical index order is [S, P, L]: axial rows run anterior->posterior, columns patient right->left
    columns = 4
    rows = math.ceil(len(planes.axial) / columns)
    figure = Figure(figsize=(3 * columns, 3 * rows * hu.shape[1] * spacing_p / (hu.shape[2] * spacing_l)))
    for n, index in enumerate(planes.axial):
        axis = figure.add_subplot(rows, columns, n + 1)
        axis.imshow(_overlay(hu[index], canonical_labels[index]), aspect=spacing_p / spacing_l)
        most = " (most infection)" if index == planes.most_infected_axial else ""
        axis.set_title(f"slice {index}{most}", color="white", fontsize=8)
        axis.axis("off")
    figure.subplots_adjust(0.01, 0.01, 0.99, 0.95, 0.02, 0.12)
    pictures["axial.png"] = _png(figure)

    for name, chosen, cut, aspect in (
        ("coronal", planes.coronal, lambda index: np.s_[::-1, index, :], spacing_s / spacing_l),
        ("sagittal", planes.sagittal, lambda index: np.s_[::-1, :, index], spacing_s / spacing_p),
    ):
        figure = Figure(figsize=(6 * len(chosen), 6))
        for n, (side, index) in enumerate(chosen.items()):
            axis = figure.add_subplot(1, len(chosen), n + 1)
            axis.imshow(_overlay(hu[cut(index)], canonical_labels[cut(index)]), aspect=aspect)
            axis.set_title(f"{name}, {side} lung" if side != "middle" else name, color="white")
            axis.axis("off")
        pictures[f"{name}.png"] = _png(figure)
    return pictures, planes


def _html(case: str, result: Quantification, pictures: dict[str, bytes], sources: dict[str, str],
          floor_note: str = "") -> str:
    def number(value: float, digits: int = 1) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    split = result.ggo_ml is not None  # the labels tell ground-glass opacity from consolidation

    def classes(f) -> str:
        return f"<td>{number(f.ggo_ml)}</td><td>{number(f.consolidation_ml)}</td>" if split else ""

    rows = "".join(
        f"<tr><th>{name}</th><td>{number(f.volume_ml, 0)}</td><td>{number(f.infection_ml)}</td>{classes(f)}"
        f"<td>{number(f.involvement_percent)}</td><td>{number(f.healthy_mean_hu, 0)}</td>"
        f"<td>{number(f.infection_mean_hu, 0)}</td></tr>"
        for name, f in (("Left lung", result.left), ("Right lung", result.right), ("Both lungs", result.total)))
    class_headers = "<th>Ground-glass opacity (mL)</th><th>Consolidation (mL)</th>" if split else ""
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
    # "bilateral" describes disease: infection the floor calls indistinguishable from false infection is not
    bilateral = ", bilateral" if result.bilateral and result.severity != "CT-0" else ""
    involved = ("no lung was found" if result.severity == NOT_ASSESSED else
                f"{number(result.total.involvement_percent)}% of both lungs involved{bilateral}")
    legend = "ground-glass opacity yellow, consolidation purple" if split else "infection red"
    images = "".join(
        f'<figure><img alt="{name[:-4]}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption>{name[:-4]}</figcaption></figure>" for name, data in pictures.items())
    source_lines = "".join(f"<li>{k}: {html.escape(v)}</li>" for k, v in sources.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>CovidSeg report: {html.escape(case)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:4px 10px;text-align:right}}th{{text-align:left}}
figure{{display:inline-block;margin:0.5em}}img{{max-width:34em;background:#000}}
.severity{{font-size:1.4em}}.note{{color:#a33}}</style></head>
<body><h1>CovidSeg report: {html.escape(case)}</h1>
<p class="severity" id="severity">Severity <b>{result.severity}</b>: {involved}.</p>
<p id="severity-reason">{html.escape(result.severity_reason)}.</p>
<p class="note">{html.escape(result.severity_note)}. Categories (MosMedData): {CATEGORY_BANDS}; infection
within what the model finds on CT without COVID-19 is CT-0.</p>
{f'<p class="note" id="false-infection">{html.escape(floor_note)}</p>' if floor_note else ""}
<table id="figures"><tr><th>Region</th><th>Volume (mL)</th><th>Infection (mL)</th>{class_headers}
<th>Involvement (%)</th><th>Healthy lung mean HU</th><th>Infection mean HU</th></tr>{rows}</table>
{'<p class="note" id="infection-classes">Ground-glass opacity and consolidation are told apart by density '
 '(see the model card): read them as an estimate.</p>' if split else ""}
{_aeration_html(result, number)}
{f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else ""}
<h2>Pictures</h2><p>Left lung blue, right lung green, {legend}; patient right on the image's left.</p>{images}
<h2>Sources</h2><ul>{source_lines}<li>CovidSeg {__version__}</li></ul></body></html>
"""


def _aeration_html(result: Quantification, number) -> str:
    """The aeration table: mL and % of each lung per density band (nothing without the CT's HU)."""
    regions = (("Left lung", result.left), ("Right lung", result.right), ("Both lungs", result.total))
    if any(f.aeration is None for _, f in regions):
        return ""
    headers = "".join(f"<th>{html.escape(name)}</th>" for _, name, _, _ in BANDS)
    rows = "".join(
        f"<tr><th>{name}</th>" + "".join(
            f"<td>{number(f.aeration.ml(band), 0)} mL ({number(f.aeration.percent(band))}%)</td>" for band in BAND_KEYS)
        + "</tr>" for name, f in regions)
    return (f'<h2>Aeration by density</h2><table id="aeration"><tr><th>Region</th>{headers}</tr>{rows}</table>'
            f'<p class="note" id="aeration-note">{html.escape(AERATION_NOTE)} Well-aerated lung as a share of the '
            f'lung (%WAL): {number(result.total.aeration.well_aerated_percent)}% of both lungs.</p>')


def write_report(ct: Volume, labels: np.ndarray, out_dir: Path, case: str, sources: dict[str, str] | None = None,
                 protected: Sequence[Path] = (), floor: FalseInfectionFloor | None = None
                 ) -> tuple[dict[str, Path], Quantification]:
    """``report.json``, ``case.csv``, ``axial.png``, ``coronal.png``, ``sagittal.png`` and ``report.html``.

    ``floor`` (from the model card, :func:`floor_of_card`): infection within what the model calls infection on
    CT without COVID-19 is CT-0, and a note next to the severity says so. Returns the written paths and the
    figures (for a cohort table)."""
    if labels.shape != ct.array.shape:
        raise ValueError(f"labels {labels.shape} and CT {ct.array.shape} are not on the same grid")
    sources = dict(sources or {})
    result = quantify(labels, ct.geometry, ct.array, floor)
    pictures, planes = qc_pictures(ct, labels)
    floor_note = floor.note(result.total.infection_ml) if floor is not None else ""
    out_dir = Path(out_dir)
    written = {}
    document = {"case": case, "sources": sources, "software": f"CovidSeg {__version__}", **asdict(result),
                "false_infection_floor_ml": floor.ml if floor is not None else None,
                "false_infection_note": floor_note, "picture_planes": asdict(planes)}
    written["json"] = write_text(out_dir / "report.json", json.dumps(_without_nan(document), indent=2,
                                                                     allow_nan=False) + "\n", protected)
    written["csv"] = write_text(out_dir / "case.csv", csv_text([csv_row(case, result)]), protected)
    for name, data in pictures.items():
        with atomic_output(out_dir / name, protected) as temporary:
            temporary.write_bytes(data)
        written[name] = out_dir / name
    written["html"] = write_text(out_dir / "report.html", _html(case, result, pictures, sources, floor_note),
                                     protected)
    return written, result


def _without_nan(value: object) -> object:
    """JSON has no NaN: write null (e.g. mean HU of an infection that is absent)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return value


def labels_for_ct(labels_path: Path, ct: Volume) -> np.ndarray:
    """A CovidSeg label map (1 left, 2 right, 3 infection, 4 GGO, 5 consolidation) from any label file, on the
    CT's grid."""
    from .evaluation import align_to_grid, default_mapping, mapped_masks
    from ..io.reading import read_segmentation

    segmentation = read_segmentation(labels_path)
    masks = mapped_masks(segmentation, default_mapping(segmentation))
    labels = np.zeros(ct.array.shape, np.uint8)
    for value in sorted(masks):  # infection values last: they override the lung they lie in
        mask = masks[value]
        if not segmentation.geometry.matches(ct.geometry):
            mask = align_to_grid(mask, segmentation.geometry, ct.geometry, segmentation.source)
        labels[mask] = value
    return labels
