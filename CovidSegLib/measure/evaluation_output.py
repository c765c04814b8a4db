"""Present evaluation results: a console table, a tidy CSV (one row per case and structure), and JSON.

JSON has no NaN or infinity, so NaN (both masks empty) is written as ``null`` and an infinite HD95 (one mask
empty) as the string ``"inf"``; the CSV writes ``nan`` and ``inf`` as Python and pandas read them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

from .evaluation import CaseResult, structures_of, summarise
from .metrics import METRIC_NAMES
from ..io.writing import write_text

TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("dice", "Dice"),
    ("nsd", "NSD"),
    ("hd95_mm", "HD95 mm"),
    ("jaccard", "Jaccard"),
    ("sensitivity", "Sens"),
    ("relative_volume_difference", "RVD"),
    ("predicted_volume_ml", "Pred mL"),
    ("reference_volume_ml", "Ref mL"),
)


def _json_number(value: float) -> float | str | None:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _cell(value: float, sd: float | None = None) -> str:
    if math.isnan(value):
        return "n/a"
    text = "inf" if math.isinf(value) else (f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}")
    if sd is not None and not math.isnan(sd):
        text += f" ± {sd:.4f}" if abs(sd) < 100 else f" ± {sd:.1f}"
    return text


def format_table(results: Sequence[CaseResult]) -> str:
    """Per-structure table; one case shows its values, several show mean ± sd (n/a: both masks empty)."""
    header = ["structure"] + [title for _, title in TABLE_METRICS]
    rows = [header]
    summary = summarise(results)
    for structure in structures_of(results):
        if len(results) == 1:
            metrics = results[0].metrics[structure]
            rows.append([structure] + [_cell(getattr(metrics, key)) for key, _ in TABLE_METRICS])
        else:
            stats = summary[structure]
            rows.append([structure] + [_cell(stats[key]["mean"], stats[key]["sd"]) for key, _ in TABLE_METRICS])
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    title = f"{len(results)} case" + ("s (mean ± sd over cases with a non-empty mask)" if len(results) > 1 else "")
    return "\n".join([title] + lines)


def csv_text(results: Iterable[CaseResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "structure", *METRIC_NAMES, "prediction", "reference"])
    for result in results:
        for structure, metrics in result.metrics.items():
            values = [repr(float(getattr(metrics, name))) for name in METRIC_NAMES]
            writer.writerow([result.case, structure, *values, result.prediction, result.reference])
    return buffer.getvalue()


def json_text(results: Sequence[CaseResult], notes: Sequence[str] = ()) -> str:
    summary = summarise(results)
    document = {
        "conventions": {
            "both_empty": "null (NaN): left out of means",
            "surface": "voxel borders (6-connectivity), Euclidean mm distances",
            "hd95": "max of the two directed 95th percentiles",
            "nsd_tolerance_mm": {s: next(r.metrics[s] for r in results if s in r.metrics).nsd_tolerance_mm
                                 for s in structures_of(results)},
        },
        "notes": list(notes),
        "cases": [
            {
                "case": r.case,
                "prediction": r.prediction,
                "reference": r.reference,
                "notes": r.notes,
                "metrics": {s: {k: _json_number(v) for k, v in m.as_dict().items()} for s, m in r.metrics.items()},
            }
            for r in results
        ],
        "summary": {
            s: {m: {k: _json_number(v) if isinstance(v, float) else v for k, v in stats.items()}
                for m, stats in ms.items()}
            for s, ms in summary.items()
        },
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def write_results(
    results: Sequence[CaseResult], out_dir: Path, notes: Sequence[str] = (), protected: Iterable[Path] = ()
) -> tuple[Path, Path]:
    """Write ``metrics.csv`` and ``metrics.json`` into ``out_dir`` (atomically; never over an input)."""
    protected = list(protected)
    csv_path = write_text(out_dir / "metrics.csv", csv_text(results), protected)
    json_path = write_text(out_dir / "metrics.json", json_text(results, notes), protected)
    return csv_path, json_path
