"""Aeration (measure/aeration.py: HU bands on the lung output) on opacified lungs, against the true lungs.

    python Testing/benchmarks/aeration_opacified.py [--model CARD.json ...]

The bands are thresholds on the lung output, so they are only as right as it is: a model whose lung output drops
opacified lung reports a well-aerated lung where little is left. Each model segments, through ``covidseg
segment``'s path, Slicer's CTChest (no COVID-19) with a synthetic diffuse lesion drawn into its experts' lungs
(ground glass, seed 3; consolidation, seed 4; the lesions of Testing/benchmarks/invariance_probes.py); the script
prints each band's mL in the experts' lungs (the truth: the lesion is lung) and in the model's lung output. Not a
test: no asserts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from invariance_probes import DATA, lesion_case  # noqa: E402


def main() -> None:
    import SimpleITK as sitk

    from CovidSegLib.engine.model import BUNDLED_CARD, load_model
    from CovidSegLib.engine.pipeline import SegmentOptions
    from CovidSegLib.measure.aeration import BAND_KEYS, aeration
    from CovidSegLib.measure.invariance import LUNG_VALUES, segment_variant

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None)
    args = parser.parse_args()
    spec = f"{DATA / 'ctchest4.nrrd'}={DATA / 'ctchest4.seg.nrrd'}:5,6"
    experts = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "ctchest4.seg.nrrd"))), (5, 6))
    print("band (mL)".ljust(36) + "".join(f"{key:>17}" for key in BAND_KEYS))
    for seed, consolidation in ((3, False), (4, True)):
        ct, lesion, recipe = lesion_case(spec, seed, consolidation)
        truth = aeration(ct.array, experts | lesion, ct.geometry.voxel_volume_ml)
        kind = "consolidation" if consolidation else "ground glass"
        print(f"\nCTChest + diffuse {kind} at {recipe.target_hu:.0f} HU")
        print("  experts' lungs".ljust(36) + "".join(f"{truth.ml(key):17.0f}" for key in BAND_KEYS))
        for card in args.model or [str(BUNDLED_CARD)]:
            model = load_model(card)
            with tempfile.TemporaryDirectory() as work:
                labels = segment_variant(ct, model, Path(work), "lesion", SegmentOptions())
            found = aeration(ct.array, np.isin(labels, LUNG_VALUES), ct.geometry.voxel_volume_ml)
            print(f"  {model.card.name} ({model.card.preprocessing.mode})".ljust(36)
                  + "".join(f"{found.ml(key):17.0f}" for key in BAND_KEYS))


if __name__ == "__main__":
    main()
