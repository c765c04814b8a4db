"""One CT file (or DICOM folder) in, one label file out (the discovery of cases is io.cases')."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..io.cases import case_id
from ..io.dicom_seg import DICOM_SEG_FORMAT, DICOM_SEG_SUFFIX, AlgorithmIdentity, is_dicom_seg_path, write_dicom_seg
from ..io.dicom_series import require_dicom_series, series_files
from .inference import EngineSwitches, ProgressCallback, SegmentationResult, segment_volume
from ..checks.intensity import DEFAULT_WINDOW, IntensityMode, prepare_ct
from .model import LoadedModel
from ..checks.plausibility import geometry_warnings
from ..io.reading import read_volume
from ..io.writing import LABEL_SUFFIXES, check_not_protected, check_output_folder, output_suffix, write_label_map


@dataclass(frozen=True)
class SegmentOptions:
    device: str = "auto"
    batch_size: int | None = None
    intensity: IntensityMode = "hu"
    window: tuple[float, float] = DEFAULT_WINDOW
    output_format: str = ".seg.nrrd"
    allow_empty: bool = False  # write an empty segmentation when no lung is found, instead of refusing
    series: str | None = None  # DICOM SeriesInstanceUID, for a folder with several series
    #: ground-glass opacity and consolidation as two labels, when the model card has a rule for it
    separate_infection: bool = True
    #: int8 convolutions on an x86 CPU when the card is calibrated (CovidSegLib.engine.int8_inference); False: float32
    int8: bool = True






def output_path_for(ct: Path, out: Path, output_format: str, batch: bool) -> Path:
    """``out`` itself when it names a label file or a DICOM SEG (single case), else ``out/<case><format>``
    (``<case>.dcm`` for the format ``dicom-seg``)."""
    if not batch and (any(out.name.lower().endswith(s) for s in LABEL_SUFFIXES) or is_dicom_seg_path(out)):
        return out
    return out / f"{case_id(ct)}{DICOM_SEG_SUFFIX if output_format == DICOM_SEG_FORMAT else output_format}"


def algorithm_identity(model: LoadedModel) -> AlgorithmIdentity:
    """What a DICOM SEG or SR names as its algorithm: CovidSeg, its version, the model card's name and weights."""
    from .. import __version__

    return AlgorithmIdentity(__version__, model.card.name, model.card.weights_sha256)


def check_output(ct: Path, output: Path) -> None:
    """What can be refused before any work: an unknown format, overwriting the input, an unwritable folder, and
    a DICOM SEG of a CT that is no DICOM series (it would have nothing to reference)."""
    if is_dicom_seg_path(output):
        require_dicom_series(ct)
    else:
        output_suffix(output)
    check_not_protected(output, [ct])
    check_output_folder(output)


def segment_file(ct: Path, output: Path, model: LoadedModel, options: SegmentOptions,
                 progress: ProgressCallback | None = None) -> SegmentationResult:
    """Read, check, segment and write one case; the output appears only when all of it succeeded.

    No lung found is an error unless ``options.allow_empty``: an empty segmentation of a chest CT is a failure,
    and written as a result it would read as "0 mL of lung" downstream. Unusual geometry comes back as
    ``warning: ...`` notes."""
    check_output(ct, output)  # refuse an unknown format, or overwriting the input, before any work
    volume = prepare_ct(read_volume(ct, options.series), options.intensity, options.window)
    result = segment_volume(volume, model, options.device, options.batch_size, progress,
                            EngineSwitches(int8_on_cpu=options.int8), options.separate_infection)
    if result.no_lung and not options.allow_empty:
        raise InputError(ct, f"{result.no_lung}: is this a chest CT? Nothing was written (--allow-empty writes "
                             "what was found)")
    if is_dicom_seg_path(output):  # read back and checked against the labels before it appears
        written = write_dicom_seg(result.labels, volume.geometry, output, series_files(ct, options.series),
                                  algorithm_identity(model), result.label_infos, protected=[ct])
        result.notes[:0] = list(written.notes)
    else:
        write_label_map(result.labels, volume.geometry, output, result.label_infos, protected=[ct])
    result.notes[:0] = list(volume.notes) + [f"warning: {w}" for w in geometry_warnings(volume.geometry)]
    result.volume = volume
    return result
