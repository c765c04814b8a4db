"""From the PACS and back: segment a CT series held by a DICOMweb server and store the results in its study.

The series is downloaded into a temporary folder and segmented by the very code a local DICOM folder goes through
(:func:`CovidSegLib.engine.pipeline.segment_file`), so it meets the same checks (gaps, duplicated positions,
unreadable files, not a CT in HU, no lung) with the same errors and exit codes; only the errors name the server,
study and series instead of the temporary folder, which is removed afterwards in every case.

The series goes into a folder of a fixed name inside the temporary folder, never one named after a UID the server
sent; every UID used in a path or a URL is checked to be one (:mod:`.uids`). Storing is :mod:`.store`'s: the DICOM
SEG and the SR are written, read back and checked locally first (:mod:`CovidSegLib.io.dicom_seg`,
:mod:`CovidSegLib.measure.dicom_sr`), and only when both exist and verify is anything sent.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..engine.inference import ProgressCallback, SegmentationResult
from ..engine.model import LoadedModel
from ..engine.pipeline import SegmentOptions, algorithm_identity, output_path_for, segment_file
from ..errors import InputError, OutputError
from ..io.dicom_seg import is_dicom_seg_path
from ..io.reading import choose_dicom_series
from ..io.writing import LABEL_SUFFIXES, check_output_folder, output_suffix, write_label_map
from ..measure.dicom_sr import write_sr_beside_seg
from ..measure.severity import floor_of_card
from .dicomweb import DicomWebServer, SeriesSummary, image_series
from .store import store_results
from .uids import uid_problem

#: The download folder's name inside the temporary folder (fixed: a name from the server could escape it).
DOWNLOAD_FOLDER = "series"


@dataclass(frozen=True)
class DicomWebRequest:
    """Which series of which study on which server, and what to do with the result."""

    server: DicomWebServer
    study_uid: str
    series_uid: str | None = None  # None: the study's image series with the most instances (ties refused)
    store: bool = False  # STOW-RS the SEG (and SR) into the study
    with_sr: bool = False  # also the quantification as a DICOM SR

    def describe(self, series_uid: str | None = None) -> str:
        series = series_uid or self.series_uid
        return f"{self.server.display} (study {self.study_uid}{f', series {series}' if series else ''})"


@dataclass
class RoundTrip:
    result: SegmentationResult
    series_uid: str
    instances: int
    outputs: list[Path] = field(default_factory=list)  # written on this machine, as asked with -o
    stored: list[str] = field(default_factory=list)  # "DICOM SEG <SOP Instance UID>", stored on the server


def choose_series(request: DicomWebRequest) -> SeriesSummary | None:
    """The series to download, by the local rule (the one asked for, else the image series with the most
    instances, two of the same size refused); None when the server gives no counts and the rule must run on
    the files (all image series are then downloaded)."""
    series = request.server.series_of_study(request.study_uid)
    if request.series_uid is not None:
        chosen = next((s for s in series if s.uid == request.series_uid), None)
        if chosen is None:
            raise InputError(request.describe(), f"the study has no such series; present: "
                                                 f"{', '.join(s.describe() for s in series)}")
        return chosen
    candidates = image_series(series)
    if not candidates:
        raise InputError(request.describe(), "the study has no image series to segment (only "
                                             f"{', '.join(sorted({s.modality for s in series}))})")
    if any(s.instances is None for s in candidates):
        return None
    chosen = max(candidates, key=lambda s: (s.instances, s.uid))
    tied = sorted(s.uid for s in candidates if s is not chosen and s.instances == chosen.instances)
    if tied:
        raise InputError(request.describe(), f"{len(tied) + 1} image series of {chosen.instances} instances each "
                                             f"({', '.join([chosen.uid] + tied)}): say which one with --series UID")
    return chosen


def check_local_output(output: Path | None) -> None:
    """Refuse before any download an output file of unknown format or in a folder that cannot be written."""
    if output is not None and (is_dicom_seg_path(output) or any(output.name.lower().endswith(s)
                                                                for s in LABEL_SUFFIXES)):
        if not is_dicom_seg_path(output):
            output_suffix(output)
        check_output_folder(output)


def segment_from_dicomweb(request: DicomWebRequest, chosen: SeriesSummary | None, model: LoadedModel,
                          options: SegmentOptions, output: Path | None = None,
                          progress: ProgressCallback | None = None,
                          say: Callable[[str], None] = lambda line: None) -> RoundTrip:
    """Download the series ``chosen`` (what :func:`choose_series` said, which the caller asks first so that a wrong
    address, UID or password is refused before the model loads), segment it, write ``output`` (any format, or a
    folder), and with ``request.store`` store the SEG (and SR) in the study. ``say`` gets a line per step."""
    if not (request.store or output is not None):
        raise ValueError("nothing to do: neither an output nor storing on the server was asked for")
    check_local_output(output)
    with tempfile.TemporaryDirectory(prefix="covidseg-dicomweb-") as work:
        work_path = Path(work)
        folder = work_path / DOWNLOAD_FOLDER
        say(f"downloading {f'series {chosen.uid} ({chosen.instances} instances)' if chosen else 'the image series'} "
            f"of study {request.study_uid} from {request.server.display}")
        if chosen is not None:
            files = request.server.download_series(request.study_uid, chosen.uid, folder, chosen.instances)
        else:
            summaries = image_series(request.server.series_of_study(request.study_uid))
            files = [f for s in summaries for f in request.server.download_series(request.study_uid, s.uid, folder,
                                                                                   s.instances)]
        trip = _segment_downloaded(request, model, replace(options, series=chosen.uid if chosen else None),
                                   folder, work_path, output, progress)
        trip.instances = len(files)
        return trip


def downloaded_series_uid(folder: Path) -> str:
    """The series the local rule reads from the download (all image series of the study, when the server gave no
    counts); refused unless its UID is a UID, since it names the local output."""
    uid = choose_dicom_series(folder).series_uid
    problem = uid_problem(uid, "the downloaded series' UID")
    if problem:
        raise InputError(folder, problem)
    return uid


def local_output_path(output: Path, series_uid: str, output_format: str) -> Path:
    """``-o``: the file it names, or ``OUTPUT/<series UID><format>`` for a folder (the rule of a local DICOM folder,
    named after the series rather than the download folder)."""
    named = output_path_for(Path(DOWNLOAD_FOLDER), output, output_format, batch=False)
    return named if named == output else output / f"{series_uid}{named.name[len(DOWNLOAD_FOLDER):]}"


def _segment_downloaded(request: DicomWebRequest, model: LoadedModel, options: SegmentOptions, folder: Path,
                        work: Path, output: Path | None, progress: ProgressCallback | None) -> RoundTrip:
    try:
        series_uid = options.series or downloaded_series_uid(folder)
        local = local_output_path(output, series_uid, options.output_format) if output is not None else None
        seg_path = local if local is not None and is_dicom_seg_path(local) else (
            work / "segmentation.dcm" if request.store else None)
        first = seg_path or local
        result = segment_file(folder, first, model, options, progress)
        outputs = [local] if local is not None else []
        if local is not None and local != first:  # a label file here, the SEG for the server in the work folder
            write_label_map(result.labels, result.volume.geometry, local, result.label_infos, protected=[folder])
        sr_path = None
        if request.with_sr:
            sr_path = write_sr_beside_seg(result, seg_path, algorithm_identity(model), floor_of_card(model.card),
                                          [folder]).path
            if local is not None and seg_path == local:
                outputs.append(sr_path)
    except InputError as error:  # name the server's series, not the temporary folder
        raise InputError(error.source.replace(str(folder), request.describe(options.series)),
                         error.problem.replace(f"{folder}/", "").replace(str(folder), "the downloaded series")
                         ) from None
    except OutputError as error:
        raise OutputError(str(error).replace(str(work), "<temporary folder>")) from None
    trip = RoundTrip(result, series_uid, 0, outputs)
    if request.store:
        trip.stored = store_results(request, [("DICOM SEG", seg_path)] + ([("DICOM SR", sr_path)] if sr_path else []))
    return trip
