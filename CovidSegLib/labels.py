"""The label scheme used everywhere: values, names, colours and terminology of each output segment.

One definition serves the label maps we write, the Slicer segments we create and the metrics we report, so
a label can never mean one thing in a file and another in a table. Left and right are patient left and right,
decided from patient coordinates (see :func:`CovidSegLib.engine.lateral.split_left_right`), never from array index.

Terminology follows DICOM / Slicer: a (coding scheme, code value, code meaning) triplet for category, type and
anatomic modifier, SNOMED CT (``SCT``) where it has the concept and DICOM (``DCM``) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

BACKGROUND = 0
LEFT_LUNG = 1
RIGHT_LUNG = 2
INFECTION = 3
GGO = 4
CONSOLIDATION = 5


@dataclass(frozen=True)
class Code:
    """A coded concept as DICOM writes it: scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def as_list(self) -> list[str]:
        return [self.scheme, self.value, self.meaning]


@dataclass(frozen=True)
class LabelInfo:
    """One segment of the scheme."""

    value: int
    key: str  # stable machine name, used in CSV / JSON columns and CLI options
    name: str  # human name, used as the segment name in Slicer
    color: tuple[float, float, float]  # RGB in 0..1
    category: Code
    type: Code
    type_modifier: Code | None = None
    anatomic_region: Code | None = None
    anatomic_region_modifier: Code | None = None


ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = Code("SCT", "49755003", "Morphologically Altered Structure")
LUNG = Code("SCT", "39607008", "Lung")
LEFT = Code("SCT", "7771000", "Left")
RIGHT = Code("SCT", "24028007", "Right")

#: The lungs (1-2), infection as one label (3), and its two classes (4-5) that the engine writes when the model
#: card has a density rule for them (CovidSegLib.engine.density).
LABELS: tuple[LabelInfo, ...] = (
    LabelInfo(LEFT_LUNG, "left_lung", "Left lung", (0.33, 0.60, 0.86), ANATOMICAL_STRUCTURE, LUNG, LEFT),
    LabelInfo(RIGHT_LUNG, "right_lung", "Right lung", (0.30, 0.74, 0.46), ANATOMICAL_STRUCTURE, LUNG, RIGHT),
    LabelInfo(
        INFECTION, "infection", "Infection", (0.90, 0.20, 0.18), MORPHOLOGICALLY_ALTERED,
        Code("SCT", "52988006", "Lesion"), anatomic_region=LUNG,
    ),
    LabelInfo(
        GGO, "ggo", "Ground-glass opacity", (0.98, 0.80, 0.20), MORPHOLOGICALLY_ALTERED,
        Code("DCM", "112120", "Ground glass opacity"), anatomic_region=LUNG,
    ),
    LabelInfo(
        CONSOLIDATION, "consolidation", "Consolidation", (0.72, 0.12, 0.55), MORPHOLOGICALLY_ALTERED,
        Code("SCT", "95436008", "Lung consolidation"), anatomic_region=LUNG,
    ),
)

LABELS_BY_VALUE: Mapping[int, LabelInfo] = {label.value: label for label in LABELS}
LABELS_BY_KEY: Mapping[str, LabelInfo] = {label.key: label for label in LABELS}

#: The labels of a CovidSeg output with infection as one label (a model without a GGO / consolidation rule, or
#: ``--merge-infection``).
OUTPUT_LABELS: tuple[LabelInfo, ...] = tuple(LABELS_BY_VALUE[v] for v in (LEFT_LUNG, RIGHT_LUNG, INFECTION))
#: The labels of a CovidSeg output whose infection is split into ground-glass opacity and consolidation.
SPLIT_OUTPUT_LABELS: tuple[LabelInfo, ...] = tuple(
    LABELS_BY_VALUE[v] for v in (LEFT_LUNG, RIGHT_LUNG, GGO, CONSOLIDATION))


def present_values(labels) -> set[int]:
    """The values a label map (numpy array) holds. Counted a block of slices at a time: ``np.bincount`` widens
    uint8 to int64 (a 600-slice CT would need 1.3 GB at once) and ``np.unique`` sorts every voxel. Only the
    labelled voxels are counted (most of a CT is background): 4x faster on the 300-slice benchmark CT."""
    import numpy as np

    if labels.dtype != np.uint8:
        return set(np.unique(labels).tolist())
    blocks = labels.reshape(-1, *labels.shape[-2:]) if labels.ndim > 2 else labels[None]
    counts = np.zeros(256, np.int64)
    for start in range(0, len(blocks), 16):
        block = blocks[start:start + 16]
        labelled = block[block != 0]
        counts += np.bincount(labelled, minlength=256)
        counts[0] += block.size - labelled.size
    return set(np.flatnonzero(counts).tolist())


def labels_of(labels) -> tuple[LabelInfo, ...]:
    """The segments a label map (numpy array of scheme values) needs: both lungs always, then the infection
    classes it holds, or the one infection label when it holds none (so an empty result still has the segment)."""
    return segments_for(labels)


def segments_for(labels, label_infos: Sequence[LabelInfo] | None = None) -> tuple[LabelInfo, ...]:
    """The segments that hold ``labels``: ``label_infos``, or those the labels need (see :func:`labels_of`).

    Values are counted once; a value outside the scheme, or one no segment of ``label_infos`` takes, is an error
    (written or imported, it would be lost without a word)."""
    present = present_values(labels) - {BACKGROUND}
    unknown = sorted(present - set(LABELS_BY_VALUE))
    if unknown:
        raise ValueError(f"labels hold values {unknown} outside the label scheme {[BACKGROUND, *LABELS_BY_VALUE]}")
    if label_infos is None:
        infection = [value for value in INFECTION_VALUES if value in present] or [INFECTION]
        return tuple(LABELS_BY_VALUE[value] for value in (LEFT_LUNG, RIGHT_LUNG, *infection))
    left_out = sorted(present - {info.value for info in label_infos})
    if left_out:
        raise ValueError(f"labels hold values {left_out} that no segment of {[info.name for info in label_infos]} "
                         "takes")
    return tuple(label_infos)


def output_labels(split_infection: bool) -> tuple[LabelInfo, ...]:
    """The segments an output holds: :data:`SPLIT_OUTPUT_LABELS` or :data:`OUTPUT_LABELS`."""
    return SPLIT_OUTPUT_LABELS if split_infection else OUTPUT_LABELS

#: Label values that count as lung tissue when a metric or a volume is asked for "both lungs".
LUNG_VALUES: tuple[int, ...] = (LEFT_LUNG, RIGHT_LUNG)
#: Label values that count as infection: the merged label and its two finer classes.
INFECTION_VALUES: tuple[int, ...] = (INFECTION, GGO, CONSOLIDATION)


def label_by_name(text: str) -> LabelInfo:
    """Find a label by value (``"1"``), key (``"left_lung"``) or name (``"Left lung"``), case-insensitively."""
    cleaned = text.strip().lower().replace("-", "_").replace(" ", "_")
    if cleaned.isdigit() and int(cleaned) in LABELS_BY_VALUE:
        return LABELS_BY_VALUE[int(cleaned)]
    for label in LABELS:
        if cleaned in (label.key, label.name.lower().replace(" ", "_").replace("-", "_")):
            return label
    known = ", ".join(f"{label.value}={label.key}" for label in LABELS)
    raise ValueError(f"unknown label {text!r}; known labels: {known}")


def slicer_terminology(label: LabelInfo) -> dict:
    """Terminology of ``label`` in the dictionary form slicerio writes into a ``.seg.nrrd``."""
    terminology: dict = {
        "contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
        "category": label.category.as_list(),
        "type": label.type.as_list(),
    }
    if label.type_modifier is not None:
        terminology["typeModifier"] = label.type_modifier.as_list()
    terminology["anatomicContextName"] = "Anatomic codes - DICOM master list"
    if label.anatomic_region is not None:
        terminology["anatomicRegion"] = label.anatomic_region.as_list()
    if label.anatomic_region_modifier is not None:
        terminology["anatomicRegionModifier"] = label.anatomic_region_modifier.as_list()
    return terminology


def slicer_terminology_string(label: LabelInfo) -> str:
    """Terminology as Slicer's one-line ``TerminologyEntry`` string (what ``vtkSegment`` tags hold)."""

    def triplet(code: Code | None) -> str:
        return "^".join(code.as_list()) if code else "^^"

    return "~".join(
        [
            "Segmentation category and type - 3D Slicer General Anatomy list",
            triplet(label.category),
            triplet(label.type),
            triplet(label.type_modifier),
            "Anatomic codes - DICOM master list",
            triplet(label.anatomic_region),
            triplet(label.anatomic_region_modifier),
        ]
    )
