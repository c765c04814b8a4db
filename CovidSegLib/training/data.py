"""Labelled slice datasets and the patient-level split.

Every sample is an 8-bit image already in the model's representation (:mod:`CovidSegLib.engine.representation`: the
corpus' CLAHE transform at 256x256), a lung mask and an infection mask on the same 256x256 grid, with a flag per
target saying whether it is labelled (MedSeg has infection masks but no lung masks: its lung loss is switched
off, not trained towards "no lung"). The corpus images are that representation as they are; every other source
is turned into it from HU (or from an 8-bit windowed export mapped back to HU-equivalents) by the code the
engine runs at inference.

The dstaroff/COVID19-CT-Segmentation corpus stores 1614 slices of 20 patients without patient ids. Patients
are recovered from slice-to-slice continuity (:func:`continuity_groups`), cutting only at strong jumps: a cut
inside one patient would leak that patient across the split, merging two patients is harmless. The split by
groups is fixed in ``Resources/model/split.json`` and never changes once test results are reported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.representation import CLAHE_SIZE, Preprocessing, represent
from ..slices.evaluation import read_mask_image
from ..slices.dataset import eight_bit_to_hu
from .slices import resize_masks

SPLIT_FILE = Path(__file__).resolve().parents[2] / "Resources" / "model" / "split.json"
#: Group of slices whose patient is unknown (MedSeg): never used to validate a fold, always trained on.
NO_PATIENT = ""
#: Patient group prefix of the slice corpus' groups (runs of consecutive slices, see ``Resources/model/split.json``).
CORPUS_GROUP = "corpus/"


@dataclass
class SliceSet:
    """Slices ``[n, h, w]`` uint8 with masks ``[n, h, w]`` bool, all at one size, and what is labelled."""

    images: np.ndarray
    lungs: np.ndarray
    infection: np.ndarray
    has_lungs: np.ndarray  # [n] bool
    has_infection: np.ndarray  # [n] bool
    names: list[str]
    #: patient group per slice, for splits by patient; NO_PATIENT where the source has no patient ids
    groups: list[str]
    #: anatomy representation: which slices have HU (their density channel), ``[n]`` bool; images are then
    #: ``[n, 2, h, w]`` (structure, density). None for the single-image representations.
    has_density: np.ndarray | None = None

    def subset(self, indices: np.ndarray) -> "SliceSet":
        return SliceSet(self.images[indices], self.lungs[indices], self.infection[indices],
                        self.has_lungs[indices], self.has_infection[indices], [self.names[i] for i in indices],
                        [self.groups[i] for i in indices],
                        None if self.has_density is None else self.has_density[indices])

    @staticmethod
    def concatenate(sets: list["SliceSet"]) -> "SliceSet":
        density = [s.has_density for s in sets]
        if any(d is None for d in density) and not all(d is None for d in density):
            raise ValueError("slices of the anatomy representation cannot be mixed with single-image slices")
        return SliceSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in
                          ("images", "lungs", "infection", "has_lungs", "has_infection")),
                        [n for s in sets for n in s.names], [g for s in sets for g in s.groups],
                        None if density[0] is None else np.concatenate(density))


def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def square_masks(masks: np.ndarray, size: int = CLAHE_SIZE) -> np.ndarray:
    """Masks ``[n, rows, cols]`` on the representation's grid: padded at the bottom and right to a square, as
    :func:`CovidSegLib.engine.representation.clahe_image` pads the image, then resized to ``size``."""
    rows, cols = masks.shape[-2:]
    side = max(rows, cols)
    square = np.zeros(masks.shape[:-2] + (side, side), bool)
    square[..., :rows, :cols] = masks
    return square if side == size else resize_masks(square[:, None], size)[:, 0]


def represent_hu(slices: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """HU slices ``[n, rows, cols]`` in the model's representation (uint8 ``[n, 256, 256]``)."""
    if preprocessing.mode != "clahe":
        raise ValueError("training makes clahe models only: the corpus exists only as CLAHE images")
    return represent(slices, preprocessing)


def load_slice_corpus(root: Path, size: int = CLAHE_SIZE) -> SliceSet:
    """The dstaroff corpus: ``ct/NNNN.png``, ``lungs/NNNN.png``, ``covid/NNNN.png`` (0/255), in case order.

    Its images are the representation itself (256x256 CLAHE), used as they are."""
    root = Path(root)
    names = sorted(p.name for p in (root / "ct").glob("*.png"))
    if not names:
        raise FileNotFoundError(f"{root}: no ct/*.png slices (is this the dstaroff corpus' data/img folder?)")
    images = np.stack([_read_gray(root / "ct" / n) for n in names])
    if images.shape[1:] != (size, size):
        raise ValueError(f"{root}: corpus slices are {images.shape[1:]}, not the representation's {size}x{size}")
    lungs = np.stack([read_mask_image(root / "lungs" / n) for n in names])
    infection = np.stack([read_mask_image(root / "covid" / n) for n in names])
    ones = np.ones(len(names), bool)
    groups = [NO_PATIENT] * len(names)
    for part in read_split()["groups"].values():
        for start, stop in part:
            groups[start:stop] = [f"{CORPUS_GROUP}{start}-{stop}"] * (stop - start)
    return SliceSet(images, lungs, infection, ones, ones.copy(), [f"corpus/{n}" for n in names], groups)


def load_medseg(root: Path, preprocessing: Preprocessing, window: tuple[float, float] = (-1250.0, 250.0)
                ) -> SliceSet:
    """MedSeg training slices: ``images/N.jpg`` (8-bit crops around the lungs, taken as exports of ``window``)
    with ``infection_masks/N.png``; no lung masks."""
    root = Path(root)
    names = sorted((p.stem for p in (root / "images").glob("*.jpg")), key=int)
    if preprocessing.mode == "anatomy":
        from .canvas_slices import hu_slices_on_canvas

        parts = []
        for name in names:
            hu = eight_bit_to_hu(_read_gray(root / "images" / f"{name}.jpg")[None], window)
            mask = read_mask_image(root / "infection_masks" / f"{name}.png")[None]
            parts.append(hu_slices_on_canvas(hu, np.zeros_like(mask), mask, None, preprocessing, [f"medseg/{name}"],
                                             NO_PATIENT, has_lungs=False, has_infection=True))
        return SliceSet.concatenate(parts)
    images, infection = [], []
    for name in names:
        image = _read_gray(root / "images" / f"{name}.jpg")
        images.append(represent_hu(eight_bit_to_hu(image[None], window), preprocessing)[0])
        infection.append(square_masks(read_mask_image(root / "infection_masks" / f"{name}.png")[None])[0])
    images, infection = np.stack(images), np.stack(infection)
    return SliceSet(images, np.zeros_like(infection), infection, np.zeros(len(names), bool),
                    np.ones(len(names), bool), [f"medseg/{n}" for n in names], [NO_PATIENT] * len(names))


def continuity_groups(images: np.ndarray, lungs: np.ndarray, min_score: float = 13.0) -> list[tuple[int, int]]:
    """Runs ``[start, stop)`` of consecutive slices that belong together (one or more whole patients)."""
    small = images[:, ::4, ::4].astype(np.float32)
    lung_small = lungs[:, ::4, ::4]
    intensity_jump = np.abs(small[1:] - small[:-1]).mean(axis=(1, 2))
    overlap = (lung_small[1:] & lung_small[:-1]).sum(axis=(1, 2))
    total = lung_small[1:].sum(axis=(1, 2)) + lung_small[:-1].sum(axis=(1, 2))
    lung_jump = 1 - 2 * overlap / np.maximum(total, 1)
    score = intensity_jump / intensity_jump.std() + lung_jump / max(lung_jump.std(), 1e-9)
    cuts = np.flatnonzero(score > min_score) + 1
    bounds = [0, *cuts.tolist(), len(images)]
    return list(zip(bounds[:-1], bounds[1:]))


def read_split(path: Path = SPLIT_FILE) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def split_indices(split: dict, part: str) -> np.ndarray:
    """Slice indices of the corpus groups assigned to ``part`` (train, validation or test)."""
    return np.concatenate([np.arange(a, b) for a, b in split["groups"][part]])


def load_npz_slices(folder: Path, preprocessing: Preprocessing, window: tuple[float, float] = (-1250.0, 250.0),
                    variants: tuple[Preprocessing, ...] = ()) -> SliceSet:
    """COVID-19-CT-Seg slices saved as ``.npz`` (``image`` in HU or 8-bit windowed, ``lung_mask`` 1 left 2 right),
    as nibabel returns them: ``np.rot90`` brings them to the display orientation the representation expects.

    8-bit images are taken as exports of ``window``. Lungs are labelled, infection is not. Each slice is also
    rendered with every preprocessing of ``variants`` (augmentation: e.g. with and without the HU clip).
    """
    if preprocessing.mode == "anatomy":
        return _npz_on_canvas(Path(folder), preprocessing, window)
    images, lungs, names = [], [], []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path) as data:
            image, mask = np.rot90(data["image"]), np.rot90(data["lung_mask"] > 0)
        hu = eight_bit_to_hu(image, window) if image.dtype == np.uint8 else image
        for variant in (preprocessing, *variants):
            images.append(represent_hu(hu[None], variant)[0])
            lungs.append(square_masks(mask[None])[0])
            names.append(f"npz/{path.stem}")
    if not names:
        raise FileNotFoundError(f"{folder}: no .npz slices")
    n = len(names)
    groups = [re.sub(r"_slice\d+$", "", name) for name in names]  # ma2020_coronacases_001_slice098: one case
    empty = np.zeros((n, CLAHE_SIZE, CLAHE_SIZE), bool)
    return SliceSet(np.stack(images), np.stack(lungs), empty, np.ones(n, bool), np.zeros(n, bool), names, groups)


def _npz_on_canvas(folder: Path, preprocessing: Preprocessing, window: tuple[float, float]) -> SliceSet:
    """:func:`load_npz_slices` in the anatomy representation: each slice placed by its body (no spacing is stored);
    the experts' infection is labelled where the file has it (``infection_mask``), else only the lungs."""
    from .canvas_slices import hu_slices_on_canvas

    parts = []
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as data:
            image, mask = np.rot90(data["image"]), np.rot90(data["lung_mask"] > 0)
            infection = np.rot90(data["infection_mask"] > 0) if "infection_mask" in data.files else None
        hu = eight_bit_to_hu(image, window) if image.dtype == np.uint8 else image
        parts.append(hu_slices_on_canvas(
            hu[None], mask[None], (infection if infection is not None else np.zeros_like(mask))[None], None,
            preprocessing, [f"npz/{path.stem}"], re.sub(r"_slice\d+$", "", f"npz/{path.stem}"), has_lungs=True,
            has_infection=infection is not None))
    if not parts:
        raise FileNotFoundError(f"{folder}: no .npz slices")
    return SliceSet.concatenate(parts)
