"""Shared fixtures: the real CT data beside the project root, and small helpers to derive test inputs from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("COVIDSEG_DATA", PROJECT_ROOT.parent / "shared" / "data"))
VOLUMES = DATA / "volumes"
SLICES = DATA / "slices"

if not VOLUMES.is_dir():
    raise RuntimeError(f"test data not found at {DATA}: the tests need ../shared/data beside the project root")


@pytest.fixture(scope="session")
def volumes() -> Path:
    return VOLUMES


@pytest.fixture(scope="session")
def slices() -> Path:
    return SLICES


@pytest.fixture(scope="session")
def pairs(volumes: Path, tmp_path_factory) -> Path:
    """image + label pairs in nnU-Net spelling: the TotalSegmentator example and its lobe labels."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "totalseg_0000.nii.gz").symlink_to(volumes / "totalseg_example_ct_sm.nii.gz")
    (root / "labelsTr" / "totalseg.nii.gz").symlink_to(volumes / "totalseg_example_ct_sm_seg.nii.gz")
    return root


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``covidseg`` console script (falls back to ``python -m CovidSegLib``)."""
    script = shutil.which("covidseg", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "CovidSegLib"]
    return subprocess.run(command + list(args), capture_output=True, text=True, encoding="utf-8", cwd=cwd,
                          timeout=600)


def stack_slice(image: np.ndarray, copies: int = 3) -> np.ndarray:
    """A real 2D slice repeated into a thin 3D volume ``[k, j, i]``."""
    return np.repeat(image[np.newaxis], copies, axis=0)


def colour_mask(pixels: np.ndarray, rgb: tuple[float, float, float], min_chroma: float = 20,
                min_cosine: float = 0.97) -> np.ndarray:
    """Pixels of an ``(rows, columns, 3)`` picture drawn in colour ``rgb`` (0..1) blended with any grey: a segment's
    fill over the CT, or a shaded surface. Blending with grey adds the same amount to R, G and B, so what is left
    after subtracting each pixel's smallest channel points the same way as the colour's own."""
    chroma = pixels.astype(float) - pixels.min(axis=-1, keepdims=True)
    target = np.asarray(rgb, float) - min(rgb)
    norm = np.linalg.norm(chroma, axis=-1)
    cosine = (chroma @ target) / np.maximum(norm * np.linalg.norm(target), 1e-9)
    return (norm >= min_chroma) & (cosine >= min_cosine)
