"""Compare predicted segmentations with references: label mapping, grid alignment, per-case metrics, summaries.

References come with their own label codes (Slicer's CTChest uses 5 = right lung, 6 = left lung, TotalSegmentator
lobes are 10-14, COVID-19-CT-Seg lung masks use 1 = left, 2 = right). A :class:`LabelMapping` says which source
labels make up each CovidSeg label, so any of them can be scored without editing code.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..labels import (CONSOLIDATION, GGO, INFECTION, INFECTION_VALUES, LABELS, LABELS_BY_VALUE, LEFT_LUNG, RIGHT_LUNG,
                     label_by_name)
from .metrics import LESION_NSD_TOLERANCE_MM, LUNG_NSD_TOLERANCE_MM, StructureMetrics, structure_metrics
from ..io.cases import case_id
from ..io.reading import Segmentation, image_from_array, read_segmentation
from ..io.volume import Geometry

#: Named mappings for references that use other codes. Values are mapping specs (see :func:`parse_mapping`).
MAPPING_PRESETS: Mapping[str, str] = {
    "covidseg": "1=left_lung,2=right_lung,3=infection,4=ggo,5=consolidation",
    "covid19-ct-seg-lungs": "1=left_lung,2=right_lung",
    "covid19-ct-seg-infection": "1=infection",
    "slicer-ctchest": "right lung=right_lung,left lung=left_lung",
    "totalseg-lobes": "10+11=left_lung,12+13+14=right_lung",
}


@dataclass(frozen=True)
class LabelMapping:
    """For each CovidSeg label value, the source selectors (label values or segment names) that form it."""

    sources: Mapping[int, tuple[str, ...]]
    spec: str

    def describe(self) -> str:
        return self.spec


def parse_mapping(spec: str) -> LabelMapping:
    """Parse ``"5=right_lung,6=left_lung"`` or ``"10+11=left_lung,12+13+14=right_lung"`` or a preset name.

    Left of ``=``: source label values or segment names joined by ``+``; right: a CovidSeg label
    (value, key or name). Entries are separated by commas.
    """
    text = MAPPING_PRESETS.get(spec.strip(), spec)
    sources: dict[int, list[str]] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in entry:
            raise ValueError(f"mapping entry {entry!r} needs the form SOURCE[+SOURCE...]=LABEL")
        left, right = entry.rsplit("=", 1)
        target = label_by_name(right).value
        selectors = [s.strip() for s in left.split("+") if s.strip()]
        if not selectors:
            raise ValueError(f"mapping entry {entry!r} names no source label")
        sources.setdefault(target, []).extend(selectors)
    if not sources:
        raise ValueError(f"empty label mapping {spec!r}")
    return LabelMapping({k: tuple(v) for k, v in sources.items()}, text)


def label_named(segment_name: str) -> int | None:
    """The CovidSeg label a segment's name means ("Left lung", "left_lung", "infection"), or None.

    Names that are only numbers ("3") or ``label N`` (what readers call unnamed label-map values) say nothing
    about anatomy and are not matched."""
    if segment_name.startswith("label ") or segment_name.strip().isdigit():
        return None
    try:
        return label_by_name(segment_name).value
    except ValueError:
        return None


def default_mapping(segmentation: Segmentation) -> LabelMapping:
    """How to read a file when no mapping is given.

    Slicer ``.seg.nrrd`` segments are matched by name ("Left lung", "left lung", "left_lung"); other segments
    are ignored. Plain label maps must use CovidSeg's values, and any other value is an error: guessing what
    a foreign code means is how wrong numbers get published.
    """
    named: dict[int, list[str]] = {}
    for segment in segmentation.segments:
        value = label_named(segment.name)
        if value is not None:
            named.setdefault(value, []).append(segment.name)
    if named:
        spec = ",".join(f"{'+'.join(names)}={LABELS_BY_VALUE[v].key}" for v, names in named.items())
        return LabelMapping({k: tuple(v) for k, v in named.items()}, spec)
    values = sorted({s.value for s in segmentation.segments})
    unknown = [v for v in values if v not in LABELS_BY_VALUE]
    if unknown:
        scheme = ", ".join(f"{label.value} {label.name}" for label in LABELS)
        raise InputError(
            segmentation.source,
            f"label values {unknown} are not in the CovidSeg scheme ({scheme}); say what they mean with a label "
            f"mapping (--ref-map or --pred-map), e.g. '5=right_lung,6=left_lung', "
            f"or a preset ({', '.join(MAPPING_PRESETS)})",
        )
    return parse_mapping("covidseg")


#: The structures every evaluation reports, each the union of CovidSeg labels.
STRUCTURES: Mapping[str, tuple[int, ...]] = {
    "left_lung": (LEFT_LUNG,),
    "right_lung": (RIGHT_LUNG,),
    "lungs": (LEFT_LUNG, RIGHT_LUNG),
    "infection": (INFECTION,) + tuple(v for v in INFECTION_VALUES if v != INFECTION),
}
#: The infection's two classes, reported too when the reference holds some of either and the prediction tells
#: them apart (it holds some of either, or no single-label infection): a label map with infection as one label
#: (3) says nothing about them, and a split prediction that found no infection scores 0 on them.
CLASS_STRUCTURES: Mapping[str, tuple[int, ...]] = {"ggo": (GGO,), "consolidation": (CONSOLIDATION,)}


def default_tolerances() -> dict[str, float]:
    return {
        "left_lung": LUNG_NSD_TOLERANCE_MM,
        "right_lung": LUNG_NSD_TOLERANCE_MM,
        "lungs": LUNG_NSD_TOLERANCE_MM,
        "infection": LESION_NSD_TOLERANCE_MM,
        "ggo": LESION_NSD_TOLERANCE_MM,
        "consolidation": LESION_NSD_TOLERANCE_MM,
    }


def structures_of(results: Sequence["CaseResult"]) -> list[str]:
    """The structures some of ``results`` report, in the order of :data:`STRUCTURES` then the classes."""
    found = {name for result in results for name in result.metrics}
    return [name for name in (*STRUCTURES, *CLASS_STRUCTURES) if name in found]


def parse_tolerances(spec: str) -> dict[str, float]:
    """``"lungs=1,infection=3"``: ``lungs`` sets all three lung structures, ``infection`` its two classes too."""
    tolerances = default_tolerances()
    groups = {"lungs": ["left_lung", "right_lung", "lungs"], "infection": ["infection", *CLASS_STRUCTURES]}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = entry.partition("=")
        name = name.strip().lower()
        names = groups.get(name, [name])
        if not set(names) <= set(tolerances):
            raise ValueError(f"unknown structure {name!r} in tolerances; use lungs, left_lung, right_lung, infection, "
                             "ggo, consolidation")
        for item in names:
            tolerances[item] = float(value)
    return tolerances


def mapped_masks(segmentation: Segmentation, mapping: LabelMapping) -> dict[int, np.ndarray]:
    """A boolean mask per CovidSeg label value, the union of the mapped source segments."""
    masks: dict[int, np.ndarray] = {}
    for target, selectors in mapping.sources.items():
        mask = np.zeros(segmentation.layers.shape[1:], dtype=bool)
        for selector in selectors:
            for segment in segmentation.find(selector):
                mask |= segmentation.mask(segment)
        masks[target] = mask
    return masks


def compare_masks(
    predicted: Mapping[int, np.ndarray],
    referenced: Mapping[int, np.ndarray],
    geometry: Geometry,
    tolerances: Mapping[str, float] | None = None,
) -> dict[str, StructureMetrics]:
    """Metrics of every structure in :data:`STRUCTURES` from per-label masks on one grid, and of ground-glass
    opacity and consolidation (:data:`CLASS_STRUCTURES`) when the reference has them and the prediction splits.

    ``predicted`` and ``referenced`` map CovidSeg label values to boolean masks ``[k, j, i]`` on ``geometry``;
    absent labels are empty. Shared by ``covidseg evaluate`` and the Slicer module's Compare.
    """
    tolerances = dict(tolerances or default_tolerances())
    empty = np.zeros(geometry.array_shape, dtype=bool)
    spacing_kji = tuple(reversed(geometry.spacing))

    def union(masks: Mapping[int, np.ndarray], values: Sequence[int]) -> np.ndarray:
        result = empty.copy()
        for value in values:
            if value in masks:
                result |= masks[value]
        return result

    def holds(masks: Mapping[int, np.ndarray], values: Sequence[int]) -> bool:
        return any(masks[value].any() for value in values if value in masks)

    structures = dict(STRUCTURES)
    prediction_splits = holds(predicted, (GGO, CONSOLIDATION)) or not holds(predicted, (INFECTION,))
    if holds(referenced, (GGO, CONSOLIDATION)) and prediction_splits:
        structures.update(CLASS_STRUCTURES)
    return {
        name: structure_metrics(union(predicted, values), union(referenced, values), spacing_kji, tolerances[name])
        for name, values in structures.items()
    }


def _extent_box(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[i, j, k] for i in (0, geometry.size[0] - 1) for j in (0, geometry.size[1] - 1)
                        for k in (0, geometry.size[2] - 1)], dtype=float)
    points = geometry.index_to_lps(corners)
    return points.min(axis=0), points.max(axis=0)


def align_to_grid(mask: np.ndarray, geometry: Geometry, target: Geometry, source: str) -> np.ndarray:
    """Bring a mask onto ``target``'s grid by nearest-neighbour resampling (exact for shifted/cropped grids)."""
    low_a, high_a = _extent_box(geometry)
    low_b, high_b = _extent_box(target)
    slack = np.asarray(geometry.spacing).max() + np.asarray(target.spacing).max()
    if np.any(low_a > high_b + slack) or np.any(low_b > high_a + slack):
        raise InputError(source, "does not overlap the other segmentation in patient space: different scans?")
    image = image_from_array(mask.astype(np.uint8), geometry)
    reference = image_from_array(np.zeros(target.array_shape, dtype=np.uint8), target)
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled).astype(bool)


@dataclass
class CaseResult:
    case: str
    prediction: str
    reference: str
    metrics: dict[str, StructureMetrics]
    notes: list[str] = field(default_factory=list)


def evaluate_case(
    prediction_path: str | Path,
    reference_path: str | Path,
    prediction_mapping: LabelMapping | None = None,
    reference_mapping: LabelMapping | None = None,
    tolerances: Mapping[str, float] | None = None,
    case: str | None = None,
) -> CaseResult:
    """Metrics of every structure in :data:`STRUCTURES` for one prediction against one reference."""
    prediction = read_segmentation(prediction_path)
    reference = read_segmentation(reference_path)
    prediction_mapping = prediction_mapping or default_mapping(prediction)
    reference_mapping = reference_mapping or default_mapping(reference)
    notes = [f"prediction labels: {prediction_mapping.describe()}", f"reference labels: {reference_mapping.describe()}"]
    predicted = mapped_masks(prediction, prediction_mapping)
    referenced = mapped_masks(reference, reference_mapping)
    if not reference.geometry.matches(prediction.geometry):
        notes.append("reference resampled (nearest neighbour) onto the prediction's grid")
        referenced = {
            value: align_to_grid(mask, reference.geometry, prediction.geometry, reference.source)
            for value, mask in referenced.items()
        }
    metrics = compare_masks(predicted, referenced, prediction.geometry, tolerances)
    return CaseResult(case or case_id(Path(prediction_path)), str(prediction_path), str(reference_path), metrics, notes)




def pair_folders(predictions: Path, references: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pairs (case, prediction, reference) by case id, and a note for every file left unpaired."""

    def index(folder: Path) -> dict[str, Path]:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        return {case_id(p): p for p in files if case_id(p) != p.name}

    predicted, referenced = index(predictions), index(references)
    pairs = [(case, predicted[case], referenced[case]) for case in sorted(predicted.keys() & referenced.keys())]
    unpaired = [f"no reference for prediction {predicted[c].name}"
                for c in sorted(predicted.keys() - referenced.keys())]
    unpaired += [f"no prediction for reference {referenced[c].name}"
                 for c in sorted(referenced.keys() - predicted.keys())]
    if not pairs:
        raise InputError(predictions, f"no file pairs up by name with a file in {references}")
    return pairs, unpaired


def summarise(results: Sequence[CaseResult]) -> dict[str, dict[str, dict[str, float | int]]]:
    """Mean, sd and count per structure and metric, leaving out NaN (both empty); infinity propagates."""
    summary: dict[str, dict[str, dict[str, float | int]]] = {}
    for structure in structures_of(results):
        summary[structure] = {}
        for metric in StructureMetrics.__dataclass_fields__:
            values = [getattr(r.metrics[structure], metric) for r in results if structure in r.metrics]
            values = [v for v in values if not math.isnan(v)]
            mean = statistics.fmean(values) if values else math.nan
            sd = statistics.stdev(values) if len(values) > 1 and all(map(math.isfinite, values)) else math.nan
            summary[structure][metric] = {"mean": mean, "sd": sd, "n": len(values)}
    return summary

