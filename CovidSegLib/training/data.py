"""Labelled slice datasets and the patient-level split.

Every sample is an 8-bit lung-window slice (0..255), a lung mask and an infection mask, with a flag per target
saying whether it is labelled (MedSeg has infection masks but no lung masks: its lung loss is switched off,
not trained towards "no lung").

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

SPLIT_FILE = Path(__file__).resolve().parents[2] / "Resources" / "model" / "split.json"
#: Group of slices whose patient is unknown (MedSeg): never used to validate a fold, always trained on.
NO_PATIENT = ""


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

    def subset(self, indices: np.ndarray) -> "SliceSet":
        return SliceSet(self.images[indices], self.lungs[indices], self.infection[indices],
                        self.has_lungs[indices], self.has_infection[indices], [self.names[i] for i in indices],
                        [self.groups[i] for i in indices])

    @staticmethod
    def concatenate(sets: list["SliceSet"]) -> "SliceSet":
        return SliceSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in
                          ("images", "lungs", "infection", "has_lungs", "has_infection")),
                        [n for s in sets for n in s.names], [g for s in sets for g in s.groups])


def _read_gray(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    image = Image.open(path).convert("L")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image)


def _read_mask(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    from ..slice_evaluation import read_mask_image

    array = read_mask_image(path)
    if array.shape != (size, size):
        array = np.asarray(Image.fromarray(array.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127
    return array


def load_slice_corpus(root: Path, size: int = 256) -> SliceSet:
    """The dstaroff corpus: ``ct/NNNN.png``, ``lungs/NNNN.png``, ``covid/NNNN.png`` (0/255), in case order."""
    root = Path(root)
    names = sorted(p.name for p in (root / "ct").glob("*.png"))
    if not names:
        raise FileNotFoundError(f"{root}: no ct/*.png slices (is this the dstaroff corpus' data/img folder?)")
    images = np.stack([_read_gray(root / "ct" / n, size) for n in names])
    lungs = np.stack([_read_mask(root / "lungs" / n, size) for n in names])
    infection = np.stack([_read_mask(root / "covid" / n, size) for n in names])
    ones = np.ones(len(names), bool)
    groups = [NO_PATIENT] * len(names)
    for part in read_split()["groups"].values():
        for start, stop in part:
            groups[start:stop] = [f"corpus/{start}-{stop}"] * (stop - start)
    return SliceSet(images, lungs, infection, ones, ones.copy(), [f"corpus/{n}" for n in names], groups)


def load_medseg(root: Path, size: int = 256) -> SliceSet:
    """MedSeg training slices: ``images/N.jpg`` with ``infection_masks/N.png``; no lung masks."""
    root = Path(root)
    names = sorted((p.stem for p in (root / "images").glob("*.jpg")), key=int)
    images = np.stack([_read_gray(root / "images" / f"{n}.jpg", size) for n in names])
    infection = np.stack([_read_mask(root / "infection_masks" / f"{n}.png", size) for n in names])
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
    return json.loads(Path(path).read_text())


def split_indices(split: dict, part: str) -> np.ndarray:
    """Slice indices of the corpus groups assigned to ``part`` (train, validation or test)."""
    return np.concatenate([np.arange(a, b) for a, b in split["groups"][part]])


def load_npz_slices(folder: Path, size: int = 256, window: tuple[float, float] = (-1250.0, 250.0)) -> SliceSet:
    """COVID-19-CT-Seg slices saved as ``.npz`` (``image`` in HU or 8-bit windowed, ``lung_mask`` 1 left 2 right).

    HU images are windowed to 8-bit over ``window`` (what the corpus' exporter did); 8-bit images are taken as
    already windowed. Lungs are labelled, infection is not.
    """
    from PIL import Image

    images, lungs, names = [], [], []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path) as data:
            image, mask = data["image"], data["lung_mask"] > 0
        if image.dtype != np.uint8:
            low, high = window
            image = np.round(np.clip((image.astype(np.float32) - low) / (high - low), 0, 1) * 255).astype(np.uint8)
        images.append(np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)))
        lungs.append(np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127)
        names.append(f"npz/{path.stem}")
    if not names:
        raise FileNotFoundError(f"{folder}: no .npz slices")
    n = len(names)
    groups = [re.sub(r"_slice\d+$", "", name) for name in names]  # ma2020_coronacases_001_slice098: one case
    return SliceSet(np.stack(images), np.stack(lungs), np.zeros((n, size, size), bool), np.ones(n, bool),
                    np.zeros(n, bool), names, groups)
