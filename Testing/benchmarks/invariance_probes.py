"""The metamorphic probes of a model through ``covidseg segment``'s path, printed (CovidSegLib.measure.invariance).

    python Testing/benchmarks/invariance_probes.py [--model CARD.json] [--ct CT ...] [--density-ct CT ...]
        [--lesion-ct CT=SEGMENTATION:LUNG_VALUES ...] [--float32]

Acquisition probes (padding, padding value, non-square matrices, a cut chest wall, resampling, reversed slice
order) on each ``--ct`` (default Slicer's CTChest): lung and infection volume of each variant and its lung volume
against the unchanged CT's. Density probes on each ``--density-ct`` (default lungmask's slices and CTChest): the
parenchyma of the model's own lungs raised by +300 and +600 HU. Lesion probes on each ``--lesion-ct``
(default CTChest with its experts' lungs, segments 5 and 6): a synthetic diffuse ground-glass lesion (seed 3) and
a diffuse consolidation (seed 4). Testing/test_invariance.py asserts the targets on the bundled model; this prints
the figures for any model. Not a test: no asserts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "volumes"


def lesion_case(spec: str, seed: int, consolidation: bool):
    """A CT with a drawn diffuse lesion and its mask, both on the CT's own grid."""
    import SimpleITK as sitk

    from CovidSegLib.checks.intensity import prepare_ct
    from CovidSegLib.io.orientation import to_canonical
    from CovidSegLib.io.reading import read_volume
    from CovidSegLib.training.lesions import draw_lesion

    ct_path, rest = spec.split("=", 1)
    seg_path, values = rest.rsplit(":", 1)
    ct = prepare_ct(read_volume(ct_path))
    canonical, plan = to_canonical(ct)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(seg_path))
    lungs = plan.to_canonical(np.isin(labels, [int(v) for v in values.split(",")]))
    spacing = canonical.geometry.spacing
    hu, lesion, recipe = draw_lesion(canonical.array.astype(np.float32), lungs,
                                     (float(spacing[2]), float(spacing[1]), float(spacing[0])),
                                     np.random.default_rng(seed), extent="diffuse", consolidation=consolidation)
    return ct.with_array(np.round(plan.from_canonical(hu)).astype(ct.array.dtype)), plan.from_canonical(lesion), recipe


def main() -> None:
    from CovidSegLib.checks.intensity import prepare_ct
    from CovidSegLib.engine.model import BUNDLED_CARD, load_model
    from CovidSegLib.engine.pipeline import SegmentOptions
    from CovidSegLib.io.reading import read_volume
    from CovidSegLib.measure.invariance import acquisition_probes, density_probes, lesion_probe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(BUNDLED_CARD))
    parser.add_argument("--ct", action="append", default=None)
    parser.add_argument("--density-ct", action="append", default=None)
    parser.add_argument("--lesion-ct", action="append", default=None)
    parser.add_argument("--float32", action="store_true", help="no int8 convolutions on the CPU")
    args = parser.parse_args()
    model = load_model(args.model)
    options = SegmentOptions(int8=not args.float32)
    print(f"model {model.card.name} ({model.card.preprocessing.mode}), {args.model}")
    for ct_path in args.ct or [str(DATA / "ctchest4.nrrd")]:
        print(f"\nacquisition probes on {Path(ct_path).name}")
        for result in acquisition_probes(prepare_ct(read_volume(ct_path)), model, options):
            change = 100 * (result.lung_ratio - 1)
            print(f"  {result.variant:42s} lung {result.volumes.lung_ml:7.0f} mL ({change:+6.1f} %)"
                  f"  infection {result.volumes.infection_ml:7.1f} mL")
    for ct_path in args.density_ct or [str(DATA / "lungmask_dicom"), str(DATA / "ctchest4.nrrd")]:
        print(f"\ndensity probes on {Path(ct_path).name}")
        for result in density_probes(prepare_ct(read_volume(ct_path)), model, (300.0, 600.0), options):
            print(f"  parenchyma +{result.rise_hu:.0f} HU ({result.raised_ml:.0f} mL): "
                  f"{100 * result.called_infection:.1f} % called infection, {100 * result.inside_lung:.1f} % lung")
    for spec in args.lesion_ct or [f"{DATA / 'ctchest4.nrrd'}={DATA / 'ctchest4.seg.nrrd'}:5,6"]:
        for seed, consolidation in ((3, False), (4, True)):
            ct, lesion, recipe = lesion_case(spec, seed, consolidation)
            result = lesion_probe(ct, lesion, model, options)
            print(f"\nlesion probe on {Path(spec.split('=')[0]).name}: {recipe.extent} {recipe.texture} at "
                  f"{recipe.target_hu:.0f} HU, {result.lesion_ml:.0f} mL ({100 * recipe.lung_fraction:.0f} % of the "
                  f"lungs): Dice {result.dice:.3f}, sensitivity {result.sensitivity:.3f}, "
                  f"{100 * result.inside_lung:.1f} % inside the lung output, "
                  f"infection found {result.infection_ml:.0f} mL")


if __name__ == "__main__":
    main()
