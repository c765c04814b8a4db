"""Where a model finds infection on CT without COVID-19: how dense that lung is, and how it lies in 3D.

    python Testing/benchmarks/false_infection_density.py MODEL.json CT [CT ...] [--floor -800] [--smoothing-mm 2.1]

Each CT runs through ``covidseg segment``'s path, under the card's density floor or the one ``--floor`` names
(fold models' cards carry none; ``crossval_report --floors`` measures them under the shipped -800 HU). All
infection found is false. For each CT it prints the false infection in mL and slices, the density of the
lung called infection and of the lung left alone (median and quartiles of HU after the in-plane Gaussian the
density floor uses), and how much of the false infection lies in 3D components that touch only one slice:
the share a rule "a lesion must appear on neighbouring slices" could remove at most. False infection denser
than the rest of the lung but within the band of faint ground glass (``missed_infection_density.py``) is what
no density floor can take away. Not a test: no asserts.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage


def quartiles(values: np.ndarray) -> str:
    if values.size == 0:
        return "none"
    low, median, high = np.percentile(values, [25, 50, 75])
    return f"{median:.0f} HU ({low:.0f} to {high:.0f})"


def single_slice_share(infection: np.ndarray) -> float:
    """Fraction of ``infection`` voxels (``[k, rows, cols]``) in 3D components that span one slice only."""
    components, count = ndimage.label(infection)
    if count == 0:
        return 0.0
    slices_spanned = np.array([box[0].stop - box[0].start for box in ndimage.find_objects(components)])
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    return float(sizes[slices_spanned == 1].sum() / sizes.sum())


def main() -> None:
    from CovidSegLib.engine.density import InfectionFloor, smoothed_density
    from CovidSegLib.labels import INFECTION
    from CovidSegLib.engine.model import load_model
    from CovidSegLib.engine.pipeline import SegmentOptions, segment_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model card")
    parser.add_argument("cts", type=Path, nargs="+", help="CTs without COVID-19 (any format covidseg reads)")
    parser.add_argument("--smoothing-mm", type=float, default=2.1, help="in-plane Gaussian (the floor's: 2.1)")
    parser.add_argument("--floor", type=float, help="infection density floor in HU instead of the card's, at "
                        "--smoothing-mm (the bundled card's: -800)")
    args = parser.parse_args()
    model = load_model(args.model)
    if args.floor is not None:
        model = model.with_floor(InfectionFloor(args.floor, args.smoothing_mm))
    print("CT | false infection | slices with some / with lung | false infection: median HU (quartiles) | "
          "rest of lung: median HU (quartiles) | share in one-slice components")
    with tempfile.TemporaryDirectory() as work:
        for ct in args.cts:
            output = Path(work) / f"{ct.name.split('.')[0]}.seg.nrrd"
            segmented = segment_file(ct, output, model, SegmentOptions(device="cpu", allow_empty=True))
            labels, geometry = segmented.labels, segmented.volume.geometry
            infection, lung = labels >= INFECTION, (labels > 0) & (labels < INFECTION)
            density = smoothed_density(segmented.volume.array, (geometry.spacing[1], geometry.spacing[0]),
                                       args.smoothing_mm)
            print(f"{ct.name} | {infection.sum() * geometry.voxel_volume_ml:.1f} mL | "
                  f"{infection.any(axis=(1, 2)).sum()} / {(labels > 0).any(axis=(1, 2)).sum()} | "
                  f"{quartiles(density[infection])} | {quartiles(density[lung])} | "
                  f"{single_slice_share(infection):.0%}", flush=True)


if __name__ == "__main__":
    main()
