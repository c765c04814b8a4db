"""Write a label map as a DICOM Segmentation (SEG) of its source CT series, and read one back.

A PACS stores and shows DICOM: a SEG goes into the CT's study, references the CT series and every instance it
was made from, and describes each segment with the label scheme's SNOMED CT / DICOM codes
(:mod:`CovidSegLib.labels`), as AUTOMATIC, by an algorithm identification naming CovidSeg, its version and the
model (name and weights sha256). highdicom builds the dataset; it is never assembled by hand here.

Every segment of the output's scheme is described, also one with no voxel (consolidation in a CT with only
ground-glass opacity, all of them with ``--allow-empty``): the segments are the same for every case, so a reader
or a report can tell "looked for it, found none" (0 mL) from "not segmented". Frames without any segment are
left out (they carry nothing), unless every frame is empty, then all are kept: a SEG needs at least one frame.

A written SEG is read back and compared with the label map before it is moved into place
(:func:`verify_dicom_seg`): geometry per frame against the source slices and every voxel.
highdicom and pydicom are imported inside the functions (about 0.3 s), so ``import CovidSegLib`` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from ..errors import InputError, OutputError
from ..labels import LABELS, LabelInfo, segments_for
from .dicom_series import SourceSeries, read_source_series
from .volume import Geometry
from .writing import atomic_output, check_not_protected

if TYPE_CHECKING:
    import highdicom

#: ``covidseg segment --format dicom-seg``; an output path ending in ``.dcm`` asks for it too.
DICOM_SEG_FORMAT = "dicom-seg"
DICOM_SEG_SUFFIX = ".dcm"
SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
#: Added to the source's Series Number for the SEG's (a PACS lists derived series after their source).
SERIES_NUMBER_OFFSET = 1000
SERIES_DESCRIPTION = "CovidSeg lungs and COVID-19 infection"


@dataclass(frozen=True)
class AlgorithmIdentity:
    """What made a segmentation, as plain data (io knows no model): the software, its version, the model."""

    version: str  # CovidSegLib.__version__
    model_name: str
    weights_sha256: str
    name: str = "CovidSeg"

    def parameters(self) -> dict[str, str]:
        return {"model": self.model_name, "weights_sha256": self.weights_sha256}


@dataclass(frozen=True)
class WrittenSeg:
    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    segments: tuple[LabelInfo, ...]  # segment number n is segments[n - 1]
    source: SourceSeries

    @property
    def notes(self) -> tuple[str, ...]:
        return self.source.notes


def is_dicom_seg_path(path: Path) -> bool:
    return path.name.lower().endswith(DICOM_SEG_SUFFIX)


def coded(code) -> "highdicom.sr.CodedConcept":
    """A :class:`CovidSegLib.labels.Code` as highdicom's coded concept."""
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def algorithm_identification(identity: AlgorithmIdentity) -> "highdicom.AlgorithmIdentificationSequence":
    from highdicom import AlgorithmIdentificationSequence
    from pydicom.sr.codedict import codes

    return AlgorithmIdentificationSequence(name=identity.name, family=codes.cid7162.ArtificialIntelligence,
                                           version=identity.version, source=f"model {identity.model_name}",
                                           parameters=identity.parameters())


def segment_descriptions(label_infos: Sequence[LabelInfo], identity: AlgorithmIdentity
                         ) -> list["highdicom.seg.SegmentDescription"]:
    """One description per label: name, category, type (with its left / right modifier), the anatomic region of
    the infection classes (lung), the scheme's colour, AUTOMATIC by CovidSeg."""
    from highdicom.color import CIELabColor
    from highdicom.seg import SegmentAlgorithmTypeValues, SegmentDescription

    algorithm = algorithm_identification(identity)
    descriptions = []
    for number, info in enumerate(label_infos, start=1):
        description = SegmentDescription(
            segment_number=number,
            segment_label=info.name,
            segmented_property_category=coded(info.category),
            segmented_property_type=coded(info.type),
            algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[coded(info.anatomic_region)] if info.anatomic_region else None,
            display_color=CIELabColor.from_rgb(*(255 * c for c in info.color)),
        )
        if info.type_modifier is not None:  # highdicom has no argument for it; DICOM nests it in the type's item
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                coded(info.type_modifier)]
        descriptions.append(description)
    return descriptions


def build_dicom_seg(labels: np.ndarray, label_infos: Sequence[LabelInfo], source: SourceSeries,
                    identity: AlgorithmIdentity) -> "highdicom.seg.Segmentation":
    """The SEG of ``labels`` (``[k, j, i]`` scheme values on the grid of ``source``'s slices): one binary segment
    per entry of ``label_infos``, segment number = position + 1."""
    import highdicom

    numbers = np.zeros(256, np.uint8)
    for number, info in enumerate(label_infos, start=1):
        numbers[info.value] = number
    segment_numbers = numbers[labels]  # a label map of segment numbers, the form highdicom takes
    first = source.datasets[0]
    try:
        series_number = int(first.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        series_number = SERIES_NUMBER_OFFSET
    return highdicom.seg.Segmentation(
        source_images=list(source.datasets),
        pixel_array=segment_numbers,
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(label_infos, identity),
        series_instance_uid=highdicom.UID(),
        series_number=series_number,
        sop_instance_uid=highdicom.UID(),
        instance_number=1,
        manufacturer=identity.name,
        manufacturer_model_name=f"{identity.name} {identity.model_name}"[:64],
        software_versions=f"{identity.name} {identity.version}",
        device_serial_number=identity.weights_sha256[:64],
        content_label="COVIDSEG",
        content_description="Lungs and COVID-19 infection, automatic"[:64],
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=bool(segment_numbers.any()),
    )


def write_dicom_seg(labels: np.ndarray, geometry: Geometry, path: str | Path, source_files: Sequence[str | Path],
                    identity: AlgorithmIdentity, label_infos: Sequence[LabelInfo] | None = None,
                    protected: Iterable[str | Path] = ()) -> WrittenSeg:
    """Write ``labels`` on ``geometry`` as a DICOM SEG of the series in ``source_files``, atomically.

    The source files may come in any order (they are placed on the grid by position) and are never changed.
    The file appears only once it has been read back and matched the label map voxel for voxel."""
    path = Path(path)
    protected = list(protected) + [Path(f) for f in source_files]
    check_not_protected(path, protected)
    if labels.shape != geometry.array_shape:
        raise ValueError(f"labels shape {labels.shape} does not match the grid {geometry.array_shape}")
    labels = labels.astype(np.uint8, copy=False)
    label_infos = segments_for(labels, label_infos)
    source = read_source_series(source_files, geometry)
    seg = build_dicom_seg(labels, label_infos, source, identity)
    with atomic_output(path, protected) as temporary:
        seg.save_as(temporary, enforce_file_format=True)
        verify_dicom_seg(temporary, labels, label_infos, source, shown_as=path)
    return WrittenSeg(path, str(seg.SOPInstanceUID), str(seg.SeriesInstanceUID), tuple(label_infos), source)


def label_info_of_segment(description) -> LabelInfo | None:
    """The scheme's label a SEG segment is, by its coded type and modifier (the label's name as a fallback)."""
    def code_of(sequence) -> tuple[str, str] | None:
        return (str(sequence[0].CodingSchemeDesignator), str(sequence[0].CodeValue)) if sequence else None

    kind = code_of(description.get("SegmentedPropertyTypeCodeSequence"))
    item = description.SegmentedPropertyTypeCodeSequence[0] if kind else None
    modifier = code_of(item.get("SegmentedPropertyTypeModifierCodeSequence")) if item is not None else None
    for info in LABELS:
        if kind == (info.type.scheme, info.type.value) and modifier == (
                (info.type_modifier.scheme, info.type_modifier.value) if info.type_modifier else None):
            return info
    name = str(description.get("SegmentLabel", "")).lower()
    return next((info for info in LABELS if info.name.lower() == name), None)


def labels_from_dicom_seg(seg, source_sop_instance_uids: Sequence[str]) -> np.ndarray:
    """A SEG as a ``[k, j, i]`` label map of scheme values, slice ``k`` being source instance ``k`` (source
    instances the SEG has no frame for, because they hold no segment, are empty)."""
    import highdicom

    if not isinstance(seg, highdicom.seg.Segmentation):
        seg = highdicom.seg.Segmentation.from_dataset(seg, copy=False)
    values = np.zeros(256, np.uint8)
    for number in seg.segment_numbers:
        info = label_info_of_segment(seg.get_segment_description(number))
        if info is None:
            raise ValueError(f"segment {number} of the SEG is not one of CovidSeg's labels")
        values[number] = info.value
    numbers = seg.get_pixels_by_source_instance(list(source_sop_instance_uids), combine_segments=True,
                                                assert_missing_frames_are_empty=True, dtype=np.uint8)
    return values[numbers]


def read_dicom_seg_labels(path: str | Path, source_files: Sequence[str | Path], geometry: Geometry) -> np.ndarray:
    """The label map a CovidSeg DICOM SEG at ``path`` holds, on ``geometry`` (the grid of the series in
    ``source_files`` it was made from): what a report or an SR of an existing SEG output is measured on.

    A label-file reader cannot read a SEG (its frames are per segment and per source instance), so this is the
    way back. Refused (InputError naming the file) unless it reads as a SEG of that series with CovidSeg's
    segments."""
    import highdicom

    path = Path(path)
    source = read_source_series(source_files, geometry)
    try:
        seg = highdicom.seg.segread(path)
    except Exception as error:  # pydicom's and highdicom's errors for a file that is no (readable) SEG
        raise InputError(path, f"cannot be read as a DICOM SEG ({type(error).__name__}: {error})") from None
    referenced = seg.get("ReferencedSeriesSequence")
    if not referenced or str(referenced[0].SeriesInstanceUID) != source.series_uid:
        raise InputError(path, f"is not a DICOM SEG of series {source.series_uid}")
    try:
        return labels_from_dicom_seg(seg, source.sop_instance_uids)
    except (ValueError, KeyError, AttributeError) as error:
        raise InputError(path, f"does not hold CovidSeg's segments of its series ({error})") from None


def verify_dicom_seg(path: Path, labels: np.ndarray, label_infos: Sequence[LabelInfo], source: SourceSeries,
                     shown_as: Path | None = None) -> None:
    """Read the SEG at ``path`` back and refuse it (OutputError naming ``shown_as``) unless it references the
    source series and all its instances, holds one segment per label in order, places each frame where its
    source slice lies, and decodes to ``labels`` exactly."""
    import highdicom

    shown_as = shown_as or path
    seg = highdicom.seg.segread(path)
    problems = []
    referenced = seg.ReferencedSeriesSequence[0] if "ReferencedSeriesSequence" in seg else None
    if referenced is None or str(referenced.SeriesInstanceUID) != source.series_uid:
        problems.append("it does not reference the source series")
    elif {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} != set(
            source.sop_instance_uids):
        problems.append("it does not reference every source instance")
    if str(seg.StudyInstanceUID) != source.study_uid:
        problems.append("it is not in the source's study")
    described = [label_info_of_segment(seg.get_segment_description(n)) for n in seg.segment_numbers]
    if described != list(label_infos):
        problems.append(f"its segments are {[d.name if d else None for d in described]}")
    problems += frame_geometry_problems(seg, source)
    if not problems and not np.array_equal(labels_from_dicom_seg(seg, source.sop_instance_uids), labels):
        problems.append("its voxels differ from the label map")
    if problems:
        raise OutputError(f"{shown_as}: the DICOM SEG written does not read back right: {'; '.join(problems)}")


def frame_geometry_problems(seg, source: SourceSeries) -> list[str]:
    """Each frame's position, and the shared orientation and pixel spacing, against its source slice's."""
    by_uid = {uid: dataset for uid, dataset in zip(source.sop_instance_uids, source.datasets)}
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    first = source.datasets[0]
    problems = []
    if not np.allclose(orientation, [float(v) for v in first.ImageOrientationPatient], atol=1e-6):
        problems.append("its orientation is not the source's")
    if not np.allclose(spacing, [float(v) for v in first.PixelSpacing], atol=1e-6):
        problems.append("its pixel spacing is not the source's")
    for number, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        if uid not in by_uid:
            problems.append(f"frame {number} is derived from an instance outside the source series")
        elif not np.allclose(position, [float(v) for v in by_uid[uid].ImagePositionPatient], atol=1e-4):
            problems.append(f"frame {number} does not lie on its source slice")
        if len(problems) > 3:
            break
    return problems
