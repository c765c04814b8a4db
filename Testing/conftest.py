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


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``covidseg`` console script (falls back to ``python -m CovidSegLib``)."""
    script = shutil.which("covidseg", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "CovidSegLib"]
    return subprocess.run(command + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)


def stack_slice(image: np.ndarray, copies: int = 3) -> np.ndarray:
    """A real 2D slice repeated into a thin 3D volume ``[k, j, i]``."""
    return np.repeat(image[np.newaxis], copies, axis=0)
