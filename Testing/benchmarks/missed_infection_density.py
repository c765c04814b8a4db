"""Which of the experts' infection a model misses on the HU slices, by density.

    python Testing/benchmarks/missed_infection_density.py MODEL.json [--hu-slices DIR] [--smoothing-mm 2.1]

Each HU slice with expert infection runs through ``covidseg segment``'s path as the report scores it (stacked
into a volume, segmented, written and read back). For the experts' infection voxels the model found and those it
missed, it prints their number and the quartiles of their HU after the in-plane Gaussian the density floor uses.
Missed lesion much less dense than found lesion is faint ground glass. Run it with a fold model that never saw
the slices' patient (``crossval_report`` names it) to see what an unseen patient loses; with the bundled model
the slices are a fit. Not a test: no asserts.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("COVIDSEG_DATA", ROOT.parent / "shared" / "data"))


def quartiles(values: np.ndarray) -> str:
    if values.size == 0:
        return "none"
    low, median, high = np.percentile(values, [25, 50, 75])
    return f"{median:.0f} HU ({low:.0f} to {high:.0f})"


def main() -> None:
    from CovidSegLib.engine.density import smoothed_density
    from CovidSegLib.engine.model import load_model
    from CovidSegLib.training.report import HU_SLICE_PIXEL_MM, read_hu_slice, segment_hu_slice

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model card")
    parser.add_argument("--hu-slices", type=Path, default=DATA / "slices" / "hu_infection")
    parser.add_argument("--smoothing-mm", type=float, default=2.1, help="in-plane Gaussian (the floor's: 2.1)")
    args = parser.parse_args()
    model = load_model(args.model)
    found_all, missed_all = [], []
    print("slice | expert voxels found / missed | found: median HU (quartiles) | missed: median HU (quartiles)")
    with tempfile.TemporaryDirectory() as work:
        for path in sorted(args.hu_slices.glob("*.npz")):
            hu, _, expert = read_hu_slice(path)
            _, infection = segment_hu_slice(model, hu, Path(work), path.stem)
            density = smoothed_density(hu, (HU_SLICE_PIXEL_MM, HU_SLICE_PIXEL_MM), args.smoothing_mm)
            found, missed = density[expert & infection], density[expert & ~infection]
            found_all.append(found)
            missed_all.append(missed)
            print(f"{path.stem} | {found.size} / {missed.size} | {quartiles(found)} | {quartiles(missed)}", flush=True)
    found, missed = np.concatenate(found_all), np.concatenate(missed_all)
    print(f"all | {found.size} / {missed.size} | {quartiles(found)} | {quartiles(missed)}")


if __name__ == "__main__":
    main()
