"""The DICOM series a CT was read from, as a derived DICOM object (a SEG, an SR) must reference it.

A DICOM Segmentation copies the patient, study and frame of reference of its source and names every source
instance it was made from, frame by frame. This module finds those instances, puts them in the CT grid's slice
order (by their positions, not by file name or by the order a caller happens to hold them in), checks that their
geometry is the grid's, and fills in on an in-memory copy what a derived object must copy but real series
sometimes lack (the lungmask test slices have no Patient ID, Modality or Frame of Reference UID). The files are
never changed.

pydicom is imported inside the functions: ``import CovidSegLib`` and ``covidseg --help`` stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import InputError
from .volume import Geometry

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: Patient and study attributes of type 2 (present, possibly empty) that a derived object copies from its source.
#: A source without one gets it empty, which is DICOM's "unknown": nothing is invented.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")
#: Modality implied by the SOP class, for a source that does not say it (the CT Image IOD requires "CT").
MODALITY_OF_SOP_CLASS = {"1.2.840.10008.5.1.4.1.1.2": "CT", "1.2.840.10008.5.1.4.1.1.2.1": "CT"}
#: A source slice may lie this fraction of the slice spacing off its grid position (DS rounding), no more.
SLICE_POSITION_TOLERANCE = 0.05
#: In-plane position, orientation and pixel spacing must agree with the grid to this (mm, cosines, mm).
IN_PLANE_TOLERANCE_MM = 0.01
ORIENTATION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SourceSeries:
    """The instances of one DICOM series, one per slice of a CT grid, in slice order (``datasets[k]`` is slice
    ``k`` of the ``[k, j, i]`` array), as headers without pixel data, completed for copying (see the module)."""

    datasets: tuple["Dataset", ...]
    files: tuple[Path, ...]  # the file of each dataset, same order
    notes: tuple[str, ...] = ()

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(str(d.SOPInstanceUID) for d in self.datasets)


def series_files(ct: Path, series_uid: str | None = None) -> tuple[Path, ...]:
    """The files of the series :func:`CovidSegLib.io.reading.read_volume` reads for ``ct`` (a DICOM folder),
    chosen by the same rule; anything else is refused, since a SEG must name the instances it came from."""
    from .reading import choose_dicom_series

    require_dicom_series(ct)
    return tuple(Path(name) for name in choose_dicom_series(ct, series_uid).file_names)


def require_dicom_series(ct: Path) -> None:
    """Refuse, before any work, a CT that is not a DICOM series folder: a DICOM SEG or SR references its source
    series and instances, and a NIfTI, NRRD or MHA file has none."""
    if not ct.is_dir():
        raise InputError(ct, "DICOM SEG output needs a DICOM series as input (a folder of DICOM slices), which a "
                             "DICOM SEG references instance by instance; this is a file. Write .seg.nrrd or .nii.gz "
                             "instead")


def read_source_series(files: Sequence[str | Path], geometry: Geometry) -> SourceSeries:
    """Read the headers of ``files``, order them by slice of ``geometry`` and complete them for copying.

    Refused (InputError naming the series' folder) when they are not one series, when a slice of the grid has no
    file or two, or when their orientation, pixel spacing or in-plane position is not the grid's: a SEG built
    on them would put the segments on the wrong slices."""
    import pydicom

    if not files:  # no folder to name: say what is missing instead
        raise InputError("the DICOM SEG's source series", "no DICOM files were given: a SEG references the series "
                                                          "it was made from, file by file")
    paths = [Path(f) for f in files]
    where = paths[0].parent
    try:
        datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise InputError(where, f"a source DICOM file cannot be read ({error})") from None
    series = {str(d.get("SeriesInstanceUID", "")) for d in datasets}
    if len(series) != 1 or "" in series:
        raise InputError(where, f"the source files are not one DICOM series (series UIDs: {sorted(series)})")
    order = slice_order(datasets, paths, geometry)
    datasets = [datasets[i] for i in order]
    paths = [paths[i] for i in order]
    notes = complete_for_copying(datasets, where)
    return SourceSeries(tuple(datasets), tuple(paths), tuple(notes))


def slice_order(datasets: Sequence["Dataset"], paths: Sequence[Path], geometry: Geometry) -> list[int]:
    """Index of the dataset that is slice ``k``, for each ``k`` of ``geometry``, found from the datasets'
    Image Position (Patient) along the grid's slice axis; their geometry checked against the grid's."""
    where = paths[0].parent
    direction = geometry.direction_matrix
    spacing = np.asarray(geometry.spacing, float)
    origin = np.asarray(geometry.origin, float)
    expected_orientation = np.concatenate([direction[:, 0], direction[:, 1]])
    slice_of: dict[int, int] = {}
    for index, (dataset, path) in enumerate(zip(datasets, paths)):
        try:
            position = np.asarray([float(v) for v in dataset.ImagePositionPatient], float)
            orientation = np.asarray([float(v) for v in dataset.ImageOrientationPatient], float)
            pixel_spacing = [float(v) for v in dataset.PixelSpacing]  # row spacing (j), column spacing (i)
            rows, columns = int(dataset.Rows), int(dataset.Columns)
        except (AttributeError, ValueError, TypeError):
            raise InputError(path, "DICOM file has no usable Image Position / Orientation (Patient), Pixel Spacing "
                                   "or size: it cannot be placed on the CT grid") from None
        if (columns, rows) != tuple(geometry.size[:2]):
            raise InputError(path, f"{columns}x{rows} pixels where the CT grid has "
                                   f"{geometry.size[0]}x{geometry.size[1]}")
        if not np.allclose(orientation, expected_orientation, atol=ORIENTATION_TOLERANCE):
            raise InputError(path, f"orientation {orientation.round(5).tolist()} is not the CT grid's "
                                   f"{expected_orientation.round(5).tolist()}")
        if not np.allclose(pixel_spacing, [spacing[1], spacing[0]], atol=IN_PLANE_TOLERANCE_MM):
            raise InputError(path, f"pixel spacing {pixel_spacing} is not the CT grid's {[spacing[1], spacing[0]]}")
        offset = direction.T @ (position - origin)  # along i, j, k in mm
        if np.abs(offset[:2]).max() > IN_PLANE_TOLERANCE_MM:
            raise InputError(path, f"its slice is shifted in plane by {offset[:2].round(3).tolist()} mm from the CT "
                                   "grid")
        k = offset[2] / spacing[2]
        nearest = int(round(k))
        if abs(k - nearest) > SLICE_POSITION_TOLERANCE or not 0 <= nearest < geometry.size[2]:
            raise InputError(path, f"its position lies on no slice of the CT grid (slice index {k:.3f} of "
                                   f"{geometry.size[2]})")
        if nearest in slice_of:
            raise InputError(where, f"{paths[slice_of[nearest]].name} and {path.name} are both slice {nearest}")
        slice_of[nearest] = index
    missing = [k for k in range(geometry.size[2]) if k not in slice_of]
    if missing:
        raise InputError(where, f"{len(missing)} slice(s) of the CT grid have no source DICOM file (first: "
                                f"slice {missing[0]})")
    return [slice_of[k] for k in range(geometry.size[2])]


def derived_frame_of_reference_uid(dataset: "Dataset") -> str:
    """A Frame of Reference UID for a series that has none, the same on every run for the same series, so that
    all objects CovidSeg derives from that series share one frame of reference."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["CovidSeg frame of reference", str(dataset.StudyInstanceUID),
                                      str(dataset.SeriesInstanceUID)])


def complete_for_copying(datasets: Sequence["Dataset"], where: Path) -> list[str]:
    """Fill in, on these in-memory headers, what a derived object copies and the series lacks; say what.

    Type 2 patient and study attributes are set empty (unknown); a missing Modality is the one the SOP class
    implies; a missing Frame of Reference UID is derived from the series (:func:`derived_frame_of_reference_uid`).
    A missing Study Instance UID cannot be made up: the SEG would belong to no study. ``where``: the series'
    folder, which the errors name."""
    first = datasets[0]
    if not str(first.get("StudyInstanceUID", "")):
        raise InputError(where, f"DICOM series {first.SeriesInstanceUID} has no Study Instance UID: a DICOM SEG "
                                "could not be filed with it")
    studies = {str(d.get("StudyInstanceUID", "")) for d in datasets}
    frames = {str(d.get("FrameOfReferenceUID", "")) for d in datasets}
    if len(studies) != 1 or len(frames) != 1:
        raise InputError(where, f"DICOM series {first.SeriesInstanceUID} mixes studies or frames of reference")
    emptied = sorted({name for d in datasets for name in TYPE2_COPIED if name not in d})
    notes = []
    if emptied:
        notes.append(f"the source series has no {', '.join(emptied)}: the DICOM SEG leaves them empty (unknown)")
    frame_of_reference = None if frames != {""} else derived_frame_of_reference_uid(first)
    if frame_of_reference:
        notes.append(f"the source series has no Frame of Reference UID: the DICOM SEG uses {frame_of_reference}, "
                     "derived from the series (the same on every run)")
    modality = MODALITY_OF_SOP_CLASS.get(str(first.SOPClassUID), "OT")
    for dataset in datasets:
        for name in TYPE2_COPIED:
            if name not in dataset:
                setattr(dataset, name, "")
        if not str(dataset.get("Modality", "")):
            dataset.Modality = modality
        if frame_of_reference:
            dataset.FrameOfReferenceUID = frame_of_reference
    return notes
