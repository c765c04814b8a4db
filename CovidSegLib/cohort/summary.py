"""The summary CSV of a cohort run, and how the parts' summaries combine into one.

One row per case of the run's selection (the whole folder, or its part), in case order, rewritten atomically
after every case, so that a run killed at any moment leaves a complete, readable summary:

- ``status``: ``done`` (segmented by this run), ``skipped`` (a verified output was already there, or another
  process made it while this one ran: ``made_by`` says who), ``failed`` (``error`` says why), or ``pending``
  (not reached: the run was stopped before it);
- ``output``, ``seconds`` (the segmentation's, also for a skipped case), ``note`` (e.g. why an existing output
  was redone), then the case's figures as ``covidseg report``'s cohort table has them (severity, volumes,
  involvement, aeration).

A run over the whole folder writes ``summary.csv``; a run with ``--part I/N`` writes
``summary-part-I-of-N.csv``. ``covidseg merge-summaries OUT`` joins the N part summaries into ``summary.csv``
(refusing if a part's summary is missing, since its cases would silently be left out)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..errors import InputError
from ..io.writing import write_text
from ..measure.report import CSV_COLUMNS
from .parts import PART_SUMMARY_PATTERN, WHOLE_SUMMARY

RUN_COLUMNS = ("case", "status", "output", "seconds", "error", "note", "made_by")
#: The run's columns, then the figures (report's cohort columns, less the two the run already has).
SUMMARY_COLUMNS = RUN_COLUMNS + tuple(c for c in CSV_COLUMNS if c not in ("case", "status"))
STATUSES = ("done", "skipped", "failed", "pending")


def summary_text(rows: Iterable[Mapping[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else
                             f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_summary(path: Path, rows: Iterable[Mapping[str, object]], protected: Sequence[Path] = ()) -> Path:
    return write_text(path, summary_text(rows), protected)


def read_summary(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def part_summaries(out: Path) -> dict[int, dict[int, Path]]:
    """``{N: {I: path}}`` of the ``summary-part-I-of-N.csv`` files in ``out``."""
    found: dict[int, dict[int, Path]] = {}
    for path in sorted(out.glob("summary-part-*-of-*.csv")):
        match = PART_SUMMARY_PATTERN.match(path.name)
        if match:
            found.setdefault(int(match.group(2)), {})[int(match.group(1))] = path
    return found


def merge_part_summaries(out: Path, count: int | None = None) -> tuple[Path, list[dict[str, str]]]:
    """Join the ``count`` part summaries in ``out`` (default: the only split there) into ``out/summary.csv``,
    rows in case order; InputError (naming the folder) if a part's summary is missing or the split is
    ambiguous."""
    splits = part_summaries(out)
    if not splits:
        raise InputError(out, "holds no part summaries (summary-part-I-of-N.csv): nothing to merge")
    if count is None:
        if len(splits) > 1:
            described = ", ".join(f"N={n} ({len(parts)} files)" for n, parts in sorted(splits.items()))
            raise InputError(out, f"holds part summaries of several splits ({described}): say which with --parts N")
        count = next(iter(splits))
    parts = splits.get(count, {})
    missing = [f"summary-part-{i}-of-{count}.csv" for i in range(count) if i not in parts]
    if missing:
        raise InputError(out, f"lacks {', '.join(missing)}: those parts' jobs never started, or wrote their "
                              "summaries elsewhere; run them (or covidseg segment without --part) first")
    rows: dict[str, dict[str, str]] = {}
    for index in range(count):
        for row in read_summary(parts[index]):
            rows[row["case"]] = row  # parts are disjoint: a case id always falls in the same part
    merged = [rows[case] for case in sorted(rows)]
    return write_summary(out / WHOLE_SUMMARY, merged), merged
