"""What a cohort case has beside its label file, and how a resumed run completes a verified case that lacks it.

- ``--report``: ``OUT/<case>_report/`` (:mod:`CovidSegLib.measure.report`), there when its ``report.html`` is;
- ``--sr``: ``OUT/<case>.sr.dcm``, the DICOM SR beside a DICOM SEG (:mod:`CovidSegLib.measure.dicom_sr`), there
  only when the manifest records it with its sha256 (:func:`.manifest.extra_problem`): an SR left by a run killed
  before its manifest, edited, or made by some other run may describe another SEG.

A rerun that asks for them on a case whose segmentation verifies does not segment again: it reads the CT and the
verified output (a DICOM SEG through its own reader, since a label-file reader cannot read one) and writes what is
missing from them, as the first run would have."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..engine.model import LoadedModel
from ..engine.pipeline import SegmentOptions, algorithm_identity
from ..io.cases import case_id
from ..io.dicom_seg import is_dicom_seg_path, read_dicom_seg_labels
from ..io.dicom_series import series_files
from ..io.volume import Volume
from ..measure.dicom_sr import sr_path_for, write_quantification_sr
from ..measure.quantification import quantify
from ..measure.report import FalseInfectionFloor, labels_for_ct, write_report
from .manifest import extra_problem

REPORT, SR = "report", "DICOM SR"
#: The manifest's key for the SR (:func:`.manifest.record_extras`).
SR_KEY = "sr"


@dataclass(frozen=True)
class Wanted:
    """What a run asks for beside each label file."""

    report: bool = False
    sr: bool = False


def report_folder(output: Path) -> Path:
    return output.parent / f"{case_id(output)}_report"


def sr_path(output: Path) -> Path:
    return sr_path_for(output)


def missing(output: Path, manifest: Mapping[str, Any] | None, wanted: Wanted) -> list[str]:
    """The extras this run asks for that a case lacks (:data:`REPORT`, :data:`SR`), in the order they are made."""
    found = []
    if wanted.report and not (report_folder(output) / "report.html").is_file():
        found.append(REPORT)
    if wanted.sr and extra_problem(manifest, SR_KEY, sr_path(output)) is not None:
        found.append(SR)
    return found


def temporary_files(output: Path) -> list[Path]:
    """Hidden temporary files a killed writer of the case's extras left (``atomic_output`` names them
    ``.NAME.*.tmp*``): the SR's beside the output, anything in the report folder."""
    sr = sr_path(output)
    found = list(sr.parent.glob(f".{glob.escape(sr.name)}.*.tmp*"))
    report = report_folder(output)
    if report.is_dir():
        found += list(report.glob(".*.tmp*"))
    return found


def labels_of(ct: Path, output: Path, volume: Volume, options: SegmentOptions) -> np.ndarray:
    """The label map of a verified output on the CT's grid: a DICOM SEG by the SEG reader (on the series it was
    made from), any label file by :func:`labels_for_ct`."""
    if is_dicom_seg_path(output):
        return read_dicom_seg_labels(output, series_files(ct, options.series), volume.geometry)
    return labels_for_ct(output, volume)


def write_sr(labels: np.ndarray, volume: Volume, seg: Path, model: LoadedModel, floor: FalseInfectionFloor | None,
             protected: list[Path]) -> Path:
    """The SR of ``labels`` (those of the SEG ``seg``), graded with the model's floor as the report grades it."""
    quantification = quantify(labels, volume.geometry, volume.array, floor)
    return write_quantification_sr(quantification, labels, volume.geometry, seg, sr_path(seg),
                                   algorithm_identity(model), protected).path


def write_missing(ct: Path, output: Path, wanted: list[str], model: LoadedModel, options: SegmentOptions,
                  floor: FalseInfectionFloor | None) -> dict[str, Path]:
    """Write the extras ``wanted`` of a verified case from its CT and output; returns what was written, by the
    manifest's key for those it records (the SR) and by name for the report. Errors as the readers and writers
    raise them (InputError, OutputError)."""
    from ..checks.intensity import prepare_ct
    from ..io.reading import read_volume

    volume = prepare_ct(read_volume(ct, options.series), options.intensity, options.window)
    labels = labels_of(ct, output, volume, options)
    written: dict[str, Path] = {}
    if REPORT in wanted:
        paths, _ = write_report(volume, labels, report_folder(output), case_id(ct),
                                {"ct": str(ct), "labels": str(output)}, protected=[ct, output], floor=floor)
        written[REPORT] = paths["html"]
    if SR in wanted:
        written[SR_KEY] = write_sr(labels, volume, output, model, floor, [ct])
    return written
