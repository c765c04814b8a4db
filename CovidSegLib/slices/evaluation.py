"""Score predicted slice masks against a slice dataset's masks (2D, per slice and pooled).

Slice datasets have no voxel spacing, so the figures are those the literature on them reports: Dice pooled over
all slices (the sum of overlaps over the sum of sizes, which weights big lesions as they weigh in a patient),
the mean of per-slice Dice (slices where both masks are empty are left out), sensitivity and precision, and for
infection how many slices without infection got some (false positives on healthy slices).

Mask layouts read, paired with predictions by file stem:
- CovidSeg's ``predict-slices`` output and the dstaroff corpus: ``lungs/NAME.png``, ``infection/`` or ``covid/``;
- MedSeg: ``infection_masks/NAME.png``;
- COVID-19-CT-Seg ``.npz`` slices: ``lung_mask`` (and ``infection_mask`` when present) inside each file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..errors import InputError
from .dataset import npz_keys, read_npz_array
from ..io.writing import write_text

#: Mask subfolder names per target, first found wins.
MASK_FOLDERS: Mapping[str, tuple[str, ...]] = {
    "lungs": ("lungs", "lung_masks", "lung_mask"),
    "infection": ("infection", "covid", "infection_masks", "infection_mask"),
}
NPZ_KEYS: Mapping[str, tuple[str, ...]] = {
    "lungs": ("lung_mask", "lungs"),
    "infection": ("infection_mask", "infection"),
}


def read_mask_image(path: Path) -> np.ndarray:
    """A binary mask from a PNG: palette images by index (> 0), grey images by value (> 127)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode == "P":
                return np.asarray(image) > 0
            return np.asarray(image.convert("L")) > 127
    except (OSError, UnidentifiedImageError) as error:
        raise InputError(path, f"cannot be read as a mask image ({error})") from None


def slice_masks(folder: Path) -> dict[str, dict[str, Path]]:
    """For each target, the mask files of a slice folder by stem (``.npz`` files count for every key they hold)."""
    found: dict[str, dict[str, Path]] = {}
    for target, names in MASK_FOLDERS.items():
        sub = next((folder / n for n in names if (folder / n).is_dir()), None)
        if sub is not None:
            found[target] = {p.stem: p for p in sorted(sub.glob("*.png"))}
    npz = {p: npz_keys(p) for p in sorted(folder.glob("*.npz"))}
    for target, keys in NPZ_KEYS.items():
        with_key = {p.stem: p for p, names in npz.items() if names & set(keys)}
        if with_key and target not in found:
            found[target] = with_key
    return {target: files for target, files in found.items() if files}


def is_slice_folder(folder: Path) -> bool:
    return folder.is_dir() and bool(slice_masks(folder))


def load_mask(path: Path, target: str) -> np.ndarray:
    if path.suffix.lower() == ".npz":
        array = read_npz_array(path, NPZ_KEYS[target])
        if array is None:
            raise InputError(path, f"has no {target} mask")
        return np.squeeze(array) > 0
    return read_mask_image(path)


def match_size(mask: np.ndarray, shape: tuple[int, ...], source: Path) -> np.ndarray:
    """A prediction at another size than its reference is resized (nearest neighbour) onto the reference."""
    if mask.shape == shape:
        return mask
    if mask.ndim != 2 or len(shape) != 2:
        raise InputError(source, f"mask shape {mask.shape} does not fit the reference's {shape}")
    from PIL import Image

    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)
    return np.asarray(resized) > 127


def dice_figures(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """Pooled and mean per-slice Dice, sensitivity, precision and slice counts for stacks ``[n, h, w]``."""
    overlap = (predicted & truth).sum(axis=(1, 2)).astype(np.int64)
    predicted_size = predicted.sum(axis=(1, 2)).astype(np.int64)
    truth_size = truth.sum(axis=(1, 2)).astype(np.int64)
    sizes = predicted_size + truth_size
    scored = sizes > 0
    healthy = truth_size == 0

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b else math.nan

    return {
        "pooled_dice": ratio(2 * overlap.sum(), sizes.sum()),
        "mean_slice_dice": float((2 * overlap[scored] / sizes[scored]).mean()) if scored.any() else math.nan,
        "sensitivity": ratio(overlap.sum(), truth_size.sum()),
        "precision": ratio(overlap.sum(), predicted_size.sum()),
        "slices": int(len(truth)),
        "slices_scored": int(scored.sum()),
        "slices_without_reference": int(healthy.sum()),
        "false_positive_slices": int((healthy & (predicted_size > 0)).sum()),
    }


@dataclass
class SliceEvaluation:
    summary: dict[str, dict[str, float | int]]
    rows: list[dict[str, object]]  # slice, target, dice, predicted_pixels, reference_pixels
    notes: list[str] = field(default_factory=list)


def evaluate_slice_folders(prediction: Path, reference: Path) -> SliceEvaluation:
    """Per-slice and pooled figures for every target both folders have masks of, paired by file stem."""
    predicted_files, reference_files = slice_masks(prediction), slice_masks(reference)
    if not predicted_files:
        raise InputError(prediction, "holds no slice masks (lungs/, infection/ PNG folders or .npz masks)")
    if not reference_files:
        raise InputError(reference, "holds no slice masks (lungs/, covid/, infection_masks/ or .npz masks)")
    targets = [t for t in MASK_FOLDERS if t in predicted_files and t in reference_files]
    if not targets:
        raise InputError(reference, f"has masks of {sorted(reference_files)}, the prediction of "
                                    f"{sorted(predicted_files)}: nothing in common to score")
    summary, rows, notes = {}, [], []
    for target in targets:
        names = sorted(predicted_files[target].keys() & reference_files[target].keys())
        missing = len(reference_files[target]) - len(names)
        if missing:
            notes.append(f"{target}: {missing} reference slices have no prediction and are not scored")
        if not names:
            raise InputError(prediction, f"no {target} mask pairs up by name with one in {reference}")
        truths, predictions = [], []
        for name in names:
            truth = load_mask(reference_files[target][name], target)
            predicted = match_size(load_mask(predicted_files[target][name], target), truth.shape,
                                   predicted_files[target][name])
            truths.append(truth)
            predictions.append(predicted)
            size = int(truth.sum() + predicted.sum())
            rows.append({"slice": name, "target": target,
                         "dice": 2 * int((truth & predicted).sum()) / size if size else math.nan,
                         "predicted_pixels": int(predicted.sum()), "reference_pixels": int(truth.sum())})
        if len({t.shape for t in truths}) == 1:
            summary[target] = dice_figures(np.stack(predictions), np.stack(truths))
        else:  # slices of several sizes: pool by concatenating flattened slices one per row
            summary[target] = pool_ragged(predictions, truths)
    return SliceEvaluation(summary, rows, notes)


def pool_ragged(predictions: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float | int]:
    """:func:`dice_figures` of slices of several sizes (each slice flattened into one padded row)."""
    width = max(t.size for t in truths)

    def pad(masks: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(masks), 1, width), bool)
        for i, mask in enumerate(masks):
            out[i, 0, :mask.size] = mask.ravel()
        return out

    return dice_figures(pad(predictions), pad(truths))


def format_slice_table(evaluation: SliceEvaluation) -> str:
    lines = [f"{'target':10} {'pooled Dice':>11} {'slice Dice':>10} {'sens':>6} {'prec':>6} {'slices':>6} "
             f"{'FP slices':>9}"]
    for target, figures in evaluation.summary.items():
        fp = f"{figures['false_positive_slices']}/{figures['slices_without_reference']}"
        lines.append(f"{target:10} {figures['pooled_dice']:11.4f} {figures['mean_slice_dice']:10.4f} "
                     f"{figures['sensitivity']:6.3f} {figures['precision']:6.3f} {figures['slices']:6d} {fp:>9}")
    return "\n".join(lines)


def write_slice_results(evaluation: SliceEvaluation, out_dir: Path, protected: Iterable[Path]) -> tuple[Path, Path]:
    """``slice_metrics.csv`` (one row per slice and target) and ``slice_summary.json`` (NaN as null)."""
    protected = list(protected)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["slice", "target", "dice", "predicted_pixels", "reference_pixels"])
    writer.writeheader()
    writer.writerows(evaluation.rows)
    csv_path = write_text(out_dir / "slice_metrics.csv", buffer.getvalue(), protected)
    clean = {t: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in f.items()}
             for t, f in evaluation.summary.items()}
    json_path = write_text(out_dir / "slice_summary.json",
                           json.dumps({"summary": clean, "notes": evaluation.notes}, indent=2) + "\n", protected)
    return csv_path, json_path
