"""The quantification of a DICOM SEG as a DICOM Structured Report: a TID 1500 Measurement Report.

What :func:`CovidSegLib.measure.quantification.quantify` measures goes back to the PACS beside the segmentation,
in a form a reporting system can read without CovidSeg:

- one volumetric ROI group (TID 1411) per segment of the SEG, referencing it (SEG instance and segment number),
  with that segment's volume;
- one group (TID 1501) per lung and one for both lungs: lung volume including its infection, infection volume and
  percentage of the lung involved (ground-glass opacity and consolidation volumes when the labels tell them
  apart), and for both lungs the MosMedData CT-0..CT-4 estimate as a qualitative evaluation. A case in which no
  lung was found has no category (its severity is "not assessed"): the evaluation is left out rather than coded
  as CT-0, which a reporting system would read as "no disease".

Volumes use SNOMED CT's Volume with the lung and its laterality as finding site. DICOM has no codes for "infection
volume", "percentage of lung involved" or the MosMedData categories, so those are in CovidSeg's private coding
scheme (:data:`SCHEME`, a ``99`` designator as DICOM reserves for local codes). The report is marked complete and
UNVERIFIED: an automatic estimate that nobody has reviewed (:data:`CovidSegLib.measure.quantification.SEVERITY_NOTE`).

highdicom and pydicom are imported inside the functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from ..errors import OutputError
from ..io.dicom_seg import SEG_SOP_CLASS_UID, AlgorithmIdentity, coded, label_info_of_segment
from ..io.volume import Geometry
from ..io.writing import atomic_output, check_not_protected
from ..labels import LEFT, LUNG, RIGHT, LabelInfo
from .quantification import LungFigures, Quantification
from .severity import NOT_ASSESSED

if TYPE_CHECKING:
    import highdicom

    from ..engine.inference import SegmentationResult
    from .severity import FalseInfectionFloor

SR_SUFFIX = ".sr.dcm"
#: CovidSeg's local coding scheme, for the concepts DICOM and SNOMED CT do not have.
SCHEME = "99COVIDSEG"
INFECTION_VOLUME = ("INFVOL", "Infection volume")
INVOLVEMENT = ("INVOLVED", "Percentage of lung involved")
GGO_VOLUME = ("GGOVOL", "Ground-glass opacity volume")
CONSOLIDATION_VOLUME = ("CONSVOL", "Consolidation volume")
SEVERITY = ("SEVERITY", "CT severity category (MosMedData CT-0 to CT-4)")
SEVERITY_MEANINGS = {"CT-0": "CT-0 none beyond the model's false infection", "CT-1": "CT-1 under 25% involved",
                     "CT-2": "CT-2 25% to under 50% involved", "CT-3": "CT-3 50% to 75% involved",
                     "CT-4": "CT-4 over 75% involved"}
CT_CHEST = ("24627-2", "LN", "CT Chest")
SR_SERIES_NUMBER_OFFSET = 1001
#: Tracking identifiers of the per-lung groups (TID 1501); the per-segment groups are named after their segment.
LUNG_GROUPS = ("Left lung involvement", "Right lung involvement", "Both lungs involvement")
SERIES_DESCRIPTION = "CovidSeg lung involvement (automatic)"


@dataclass(frozen=True)
class WrittenSr:
    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    quantification: Quantification


def sr_path_for(seg_path: Path) -> Path:
    """``case.dcm`` or ``case.seg.dcm`` -> ``case.sr.dcm``, beside the SEG."""
    name = seg_path.name
    stem = name[: -len(".dcm")] if name.lower().endswith(".dcm") else name
    stem = stem[: -len(".seg")] if stem.lower().endswith(".seg") else stem
    return seg_path.with_name(f"{stem}{SR_SUFFIX}")


def local_code(concept: tuple[str, str]) -> "highdicom.sr.CodedConcept":
    from highdicom.sr import CodedConcept

    return CodedConcept(value=concept[0], scheme_designator=SCHEME, meaning=concept[1])


def units(kind: str) -> "highdicom.sr.CodedConcept":
    from highdicom.sr import CodedConcept

    return CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter") if kind == "ml" else \
        CodedConcept(value="%", scheme_designator="UCUM", meaning="Percent")


def algorithm_id(identity: AlgorithmIdentity) -> "highdicom.sr.AlgorithmIdentification":
    from highdicom.sr import AlgorithmIdentification

    return AlgorithmIdentification(name=identity.name, version=identity.version,
                                   parameters=[f"{k}={v}" for k, v in identity.parameters().items()])


def lung_site(laterality=None) -> "highdicom.sr.FindingSite":
    from highdicom.sr import FindingSite

    return FindingSite(anatomic_location=coded(LUNG), laterality=coded(laterality) if laterality else None)


def volume_ml(value: float, identity: AlgorithmIdentity, site=None, name=None) -> "highdicom.sr.Measurement":
    from highdicom.sr import Measurement
    from pydicom.sr.codedict import codes

    return Measurement(name=name or codes.SCT.Volume, value=round(float(value), 3), unit=units("ml"),
                       finding_sites=[site] if site is not None else None, algorithm_id=algorithm_id(identity))


def segment_groups(seg, labels: np.ndarray, voxel_ml: float, identity: AlgorithmIdentity) -> list:
    """TID 1411 per segment of ``seg``: the segment referenced, its volume."""
    from highdicom.sr import (ReferencedSegment, SourceSeriesForSegmentation, TrackingIdentifier,
                              VolumetricROIMeasurementsAndQualitativeEvaluations)
    from highdicom import UID

    source_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    groups = []
    for description in seg.SegmentSequence:
        number = int(description.SegmentNumber)
        info: LabelInfo | None = label_info_of_segment(description)
        if info is None:
            raise ValueError(f"segment {number} of the SEG is not one of CovidSeg's labels")
        groups.append(VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=UID(), identifier=info.name),
            referenced_segment=ReferencedSegment(
                sop_class_uid=SEG_SOP_CLASS_UID, sop_instance_uid=str(seg.SOPInstanceUID), segment_number=number,
                source_series=SourceSeriesForSegmentation(source_series)),
            finding_type=coded(info.type),
            finding_sites=[lung_site(info.type_modifier)] if info.type == LUNG else None,
            algorithm_id=algorithm_id(identity),
            measurements=[volume_ml(np.count_nonzero(labels == info.value) * voxel_ml, identity)],
        ))
    return groups


def involvement_group(name: str, figures: LungFigures, laterality, identity: AlgorithmIdentity,
                      severity: str | None = None):
    """TID 1501 for one lung (``laterality``) or both (None): its volume, infection, involvement (severity)."""
    from highdicom.sr import MeasurementsAndQualitativeEvaluations, QualitativeEvaluation, TrackingIdentifier
    from highdicom.sr import Measurement
    from highdicom import UID

    site = lung_site(laterality)
    measurements = [volume_ml(figures.volume_ml, identity, site),
                    volume_ml(figures.infection_ml, identity, site, local_code(INFECTION_VOLUME))]
    if not math.isnan(figures.involvement_percent):  # no lung: no percentage of it
        measurements.append(Measurement(name=local_code(INVOLVEMENT), value=round(figures.involvement_percent, 3),
                                        unit=units("%"), finding_sites=[site], algorithm_id=algorithm_id(identity)))
    for concept, value in ((GGO_VOLUME, figures.ggo_ml), (CONSOLIDATION_VOLUME, figures.consolidation_ml)):
        if value is not None:
            measurements.append(volume_ml(value, identity, site, local_code(concept)))
    evaluations = None
    if severity is not None:
        evaluations = [QualitativeEvaluation(local_code(SEVERITY),
                                             local_code((severity, SEVERITY_MEANINGS[severity])))]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=UID(), identifier=name), finding_sites=[site],
        algorithm_id=algorithm_id(identity), measurements=measurements, qualitative_evaluations=evaluations)


def coded_severity(quantification: Quantification) -> str | None:
    """The category the SR codes: None (no qualitative evaluation) where it was not assessed (no lung found)."""
    return None if quantification.severity == NOT_ASSESSED else quantification.severity


def build_quantification_sr(seg, labels: np.ndarray, geometry: Geometry, quantification: Quantification,
                            identity: AlgorithmIdentity) -> "highdicom.sr.Comprehensive3DSR":
    """The SR of ``quantification`` for the SEG dataset ``seg`` made from ``labels`` on ``geometry``."""
    import highdicom
    from highdicom.sr import (CodedConcept, Comprehensive3DSR, DeviceObserverIdentifyingAttributes,
                              MeasurementReport, ObservationContext, ObserverContext)
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    device = DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[identity.name, identity.version, identity.weights_sha256]),
        name=identity.name, manufacturer_name=identity.name, model_name=identity.model_name[:64])
    context = ObservationContext(observer_device_context=ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    groups = segment_groups(seg, labels, geometry.voxel_volume_ml, identity) + [
        involvement_group(LUNG_GROUPS[0], quantification.left, LEFT, identity),
        involvement_group(LUNG_GROUPS[1], quantification.right, RIGHT, identity),
        involvement_group(LUNG_GROUPS[2], quantification.total, None, identity, coded_severity(quantification)),
    ]
    report = MeasurementReport(observation_context=context,
                               procedure_reported=CodedConcept(CT_CHEST[0], CT_CHEST[1], CT_CHEST[2]),
                               imaging_measurements=groups)
    try:
        series_number = int(seg.get("SeriesNumber") or 0) - 1000 + SR_SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        series_number = SR_SERIES_NUMBER_OFFSET
    return Comprehensive3DSR(
        evidence=[seg], content=report, series_instance_uid=highdicom.UID(), series_number=max(series_number, 1),
        sop_instance_uid=highdicom.UID(), instance_number=1, manufacturer=identity.name, is_complete=True,
        is_final=False, is_verified=False, series_description=SERIES_DESCRIPTION)


def write_quantification_sr(quantification: Quantification, labels: np.ndarray, geometry: Geometry,
                            seg_path: str | Path, path: str | Path, identity: AlgorithmIdentity,
                            protected: Iterable[str | Path] = ()) -> WrittenSr:
    """Write ``quantification`` (of ``labels`` on ``geometry``, :func:`CovidSegLib.measure.quantification.quantify`)
    as the SR of the SEG at ``seg_path`` (the SEG of these labels), atomically: it appears only once it reads back
    right. The caller quantifies, so the SR holds the very figures (and severity rule) its report shows."""
    import pydicom

    path, seg_path = Path(path), Path(seg_path)
    protected = list(protected) + [seg_path]
    check_not_protected(path, protected)
    seg = pydicom.dcmread(seg_path)
    sr = build_quantification_sr(seg, labels, geometry, quantification, identity)
    with atomic_output(path, protected) as temporary:
        sr.save_as(temporary, enforce_file_format=True)
        verify_quantification_sr(temporary, seg, quantification, shown_as=path)
    return WrittenSr(path, str(sr.SOPInstanceUID), str(sr.SeriesInstanceUID), quantification)


def read_measurements(sr) -> dict[tuple[str, str], float]:
    """The SR's numeric measurements of its lung groups: (group name, concept meaning) -> value."""
    import highdicom

    if not isinstance(sr, highdicom.sr.Comprehensive3DSR):
        sr = highdicom.sr.Comprehensive3DSR.from_dataset(sr, copy=False)
    report = sr.content
    found: dict[tuple[str, str], float] = {}
    for group in report.get_image_measurement_groups():
        for measurement in group.get_measurements():
            found[(group.tracking_identifier, measurement.name.meaning)] = float(measurement.value)
    return found


def read_severity(sr) -> str | None:
    """The MosMedData category the SR holds (in its both-lungs group); None where it holds none (not assessed)."""
    import highdicom

    if not isinstance(sr, highdicom.sr.Comprehensive3DSR):
        sr = highdicom.sr.Comprehensive3DSR.from_dataset(sr, copy=False)
    for group in sr.content.get_image_measurement_groups():
        for evaluation in group.get_qualitative_evaluations():
            if evaluation.name.value == SEVERITY[0]:
                return str(evaluation.value.value)
    return None


def verify_quantification_sr(path: Path, seg, quantification: Quantification, shown_as: Path | None = None) -> None:
    """Read the SR back and refuse it (OutputError naming ``shown_as``) unless it is in the SEG's study,
    references the SEG and holds the quantification's lung figures and severity."""
    import highdicom

    shown_as = shown_as or path
    sr = highdicom.sr.srread(path)
    problems = []
    if str(sr.StudyInstanceUID) != str(seg.StudyInstanceUID):
        problems.append("it is not in the SEG's study")
    evidence = {str(item.ReferencedSOPInstanceUID) for series in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
                for s in series.ReferencedSeriesSequence for item in s.ReferencedSOPSequence}
    if str(seg.SOPInstanceUID) not in evidence:
        problems.append("it does not reference the SEG")
    measured = read_measurements(sr)
    for name, figures in zip(LUNG_GROUPS, (quantification.left, quantification.right, quantification.total)):
        if not math.isclose(measured.get((name, "Volume"), math.nan), figures.volume_ml, abs_tol=1e-3):
            problems.append(f"its {name.lower()} volume is not the quantification's")
    if read_severity(sr) != coded_severity(quantification):
        problems.append("its severity is not the quantification's")
    if problems:
        raise OutputError(f"{shown_as}: the DICOM SR written does not read back right: {'; '.join(problems)}")


def write_sr_beside_seg(result: "SegmentationResult", seg_path: str | Path, identity: AlgorithmIdentity,
                        floor: "FalseInfectionFloor | None" = None, protected: Iterable[str | Path] = ()) -> WrittenSr:
    """The SR of a segmentation just written as the DICOM SEG ``seg_path``: quantified from the result's labels
    and CT (:func:`CovidSegLib.measure.quantification.quantify`, with the model's false-infection ``floor`` as the
    report uses it, so both give the same category), written as :func:`sr_path_for` names it."""
    from .quantification import quantify

    geometry = result.volume.geometry
    quantification = quantify(result.labels, geometry, result.volume.array, floor)
    return write_quantification_sr(quantification, result.labels, geometry, seg_path, sr_path_for(Path(seg_path)),
                                   identity, protected)
