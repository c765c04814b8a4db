"""Reports a radiologist can check: figures (JSON, CSV row), QC pictures (PNG) and a one-page HTML.

Pictures are drawn in the canonical orientation (radiological convention: patient right on the image's left,
anterior up in axial views, superior up in coronal and sagittal ones) with the voxel spacing as aspect ratio,
lung window, left lung blue, right lung green, infection red. Everything is written atomically; nothing is ever
written over the CT or the labels it reports on.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import __version__
from .orientation import to_canonical
from .quantification import Quantification, quantify
from .volume import Volume
from .writing import atomic_output, write_text

LUNG_WINDOW = (-1350.0, 150.0)
OVERLAY = {1: (0.33, 0.60, 0.86), 2: (0.30, 0.74, 0.46), 3: (0.90, 0.20, 0.18)}
MOSAIC_SLICES = 12
CSV_COLUMNS = (
    "case", "status", "severity", "involvement_percent", "bilateral", "lungs_ml", "infection_ml",
    "left_lung_ml", "left_infection_ml", "left_involvement_percent",
    "right_lung_ml", "right_infection_ml", "right_involvement_percent",
    "healthy_lung_mean_hu", "infection_mean_hu", "warnings",
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
        "warnings": " | ".join(result.warnings),
    }


def csv_text(rows: Iterable[dict[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else v) for k, v in row.items()})
    return buffer.getvalue()


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


def qc_pictures(ct: Volume, labels: np.ndarray) -> dict[str, bytes]:
    """``axial.png`` (mosaic of evenly spaced lung slices), ``coronal.png`` and ``sagittal.png`` through the lungs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    canonical, plan = to_canonical(ct)
    hu = canonical.array
    canonical_labels = plan.to_canonical(labels)
    spacing_l, spacing_p, spacing_s = canonical.geometry.spacing
    lung_slices = np.flatnonzero(canonical_labels.any(axis=(1, 2)))
    if lung_slices.size == 0:
        lung_slices = np.arange(hu.shape[0])
    centre = np.argwhere(canonical_labels > 0).mean(axis=0).astype(int) if canonical_labels.any() else \
        np.asarray(hu.shape) // 2
    pictures = {}

    # canonical index order is [S, P, L]: axial rows run anterior->posterior, columns patient right->left
    chosen = np.unique(np.linspace(lung_slices[0], lung_slices[-1], MOSAIC_SLICES).round().astype(int))[::-1]
    columns = 4
    rows = math.ceil(len(chosen) / columns)
    figure = Figure(figsize=(3 * columns, 3 * rows * hu.shape[1] * spacing_p / (hu.shape[2] * spacing_l)))
    for n, index in enumerate(chosen):
        axis = figure.add_subplot(rows, columns, n + 1)
        axis.imshow(_overlay(hu[index], canonical_labels[index]), aspect=spacing_p / spacing_l)
        axis.set_title(f"slice {index}", color="white", fontsize=8)
        axis.axis("off")
    figure.subplots_adjust(0.01, 0.01, 0.99, 0.95, 0.02, 0.12)
    pictures["axial.png"] = _png(figure)

    for name, image, label_image, aspect in (
        ("coronal.png", hu[::-1, centre[1], :], canonical_labels[::-1, centre[1], :], spacing_s / spacing_l),
        ("sagittal.png", hu[::-1, :, centre[2]], canonical_labels[::-1, :, centre[2]], spacing_s / spacing_p),
    ):
        figure = Figure(figsize=(6, 6))
        axis = figure.add_subplot(1, 1, 1)
        axis.imshow(_overlay(image, label_image), aspect=aspect)
        axis.set_title(name[:-4], color="white")
        axis.axis("off")
        pictures[name] = _png(figure)
    return pictures


def _html(case: str, result: Quantification, pictures: dict[str, bytes], sources: dict[str, str]) -> str:
    def number(value: float, digits: int = 1) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    rows = "".join(
        f"<tr><th>{name}</th><td>{number(f.volume_ml, 0)}</td><td>{number(f.infection_ml)}</td>"
        f"<td>{number(f.involvement_percent)}</td><td>{number(f.healthy_mean_hu, 0)}</td>"
        f"<td>{number(f.infection_mean_hu, 0)}</td></tr>"
        for name, f in (("Left lung", result.left), ("Right lung", result.right), ("Both lungs", result.total)))
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
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
<p class="severity" id="severity">Severity <b>{result.severity}</b>: {number(result.total.involvement_percent)}% of
both lungs involved{", bilateral" if result.bilateral else ""}.</p>
<p class="note">{html.escape(result.severity_note)}. Categories (MosMedData): CT-0 no involvement, CT-1 under 25%,
CT-2 25% to under 50%, CT-3 50% to 75%, CT-4 over 75%.</p>
<table id="figures"><tr><th>Region</th><th>Volume (mL)</th><th>Infection (mL)</th><th>Involvement (%)</th>
<th>Healthy lung mean HU</th><th>Infection mean HU</th></tr>{rows}</table>
{f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else ""}
<h2>Pictures</h2><p>Left lung blue, right lung green, infection red; patient right on the image's left.</p>{images}
<h2>Sources</h2><ul>{source_lines}<li>CovidSeg {__version__}</li></ul></body></html>
"""


def write_report(ct: Volume, labels: np.ndarray, out_dir: Path, case: str, sources: dict[str, str] | None = None,
                 protected: Sequence[Path] = ()) -> tuple[dict[str, Path], Quantification]:
    """``report.json``, ``case.csv``, ``axial.png``, ``coronal.png``, ``sagittal.png`` and ``report.html``.

    Returns the written paths and the figures (for a cohort table)."""
    if labels.shape != ct.array.shape:
        raise ValueError(f"labels {labels.shape} and CT {ct.array.shape} are not on the same grid")
    sources = dict(sources or {})
    result = quantify(labels, ct.geometry, ct.array)
    pictures = qc_pictures(ct, labels)
    out_dir = Path(out_dir)
    written = {}
    document = {"case": case, "sources": sources, "software": f"CovidSeg {__version__}", **asdict(result)}
    written["json"] = write_text(out_dir / "report.json", json.dumps(_without_nan(document), indent=2,
                                                                     allow_nan=False) + "\n", protected)
    written["csv"] = write_text(out_dir / "case.csv", csv_text([csv_row(case, result)]), protected)
    for name, data in pictures.items():
        with atomic_output(out_dir / name, protected) as temporary:
            temporary.write_bytes(data)
        written[name] = out_dir / name
    written["html"] = write_text(out_dir / "report.html", _html(case, result, pictures, sources), protected)
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
    from .reading import read_segmentation

    segmentation = read_segmentation(labels_path)
    masks = mapped_masks(segmentation, default_mapping(segmentation))
    labels = np.zeros(ct.array.shape, np.uint8)
    for value in sorted(masks):  # infection values last: they override the lung they lie in
        mask = masks[value]
        if not segmentation.geometry.matches(ct.geometry):
            mask = align_to_grid(mask, segmentation.geometry, ct.geometry, segmentation.source)
        labels[mask] = value
    return labels
