"""Speed and memory of ``covidseg segment`` against a plain baseline, on a 512x512x300 CT made from real data.

    python Testing/benchmarks/benchmark_segment.py [--model CARD] [--slices 300] [--device cpu]

The CT is Slicer's CTChest (``../shared/data/volumes/ctchest4.nrrd``) resampled to 512x512xN (linear), cached
outside the repository. Each mode runs in its own process, so its peak RSS is its own:
- ``covidseg``: the product path, read -> checks -> body crop, lung-slice skipping, the network on slices about
  2.5 mm apart (logits interpolated between them), batched channels-last inference with the next batch prepared
  on a worker thread -> post-processing -> ``.seg.nrrd`` written.
- ``baseline``: the same network, representation and post-processing, float32, one whole slice at a time, no
  crop, no skipping, no interpolation.
- ablations (``--modes covidseg,no-crop,no-skip,no-interpolation,no-prefetch,no-channels-last``): the product
  path with one idea switched off, to see what each idea pays.
Prints seconds end to end (read to labels written), slices/s, peak RSS, the speed-up, and how far each mode's
labels agree with the first ``covidseg`` run's (Dice of lungs and infection): what an idea costs in accuracy.
Not a test: no asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("COVIDSEG_DATA", ROOT.parent / "shared" / "data"))
CACHE = Path(os.environ.get("COVIDSEG_CACHE", Path.home() / ".cache" / "covidseg")) / "benchmark"


def make_ct(slices: int, size: int = 512) -> Path:
    """CTChest resampled to ``size`` x ``size`` x ``slices`` over the same field of view (cached)."""
    import SimpleITK as sitk

    path = CACHE / f"ctchest_{size}x{size}x{slices}.nii.gz"
    if path.exists():
        return path
    source = sitk.ReadImage(str(DATA / "volumes" / "ctchest4.nrrd"))
    extent = [n * s for n, s in zip(source.GetSize(), source.GetSpacing())]
    new_size = [size, size, slices]
    spacing = [e / n for e, n in zip(extent, new_size)]
    origin = source.TransformContinuousIndexToPhysicalPoint([(s / source.GetSpacing()[i] - 1) / 2
                                                             for i, s in enumerate(spacing)])
    resampled = sitk.Resample(source, new_size, sitk.Transform(), sitk.sitkLinear, origin, spacing,
                              source.GetDirection(), -1024, sitk.sitkInt16)
    CACHE.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(resampled, str(path))
    return path


def run_covidseg(ct: Path, out: Path, model_path: str | None, device: str) -> dict:
    from CovidSegLib.engine.model import load_model
    from CovidSegLib.engine.pipeline import SegmentOptions, segment_file

    model = load_model(model_path)
    started = time.perf_counter()
    result = segment_file(ct, out, model, SegmentOptions(device=device))
    return {"seconds": time.perf_counter() - started, "slices_inferred": result.slices_inferred,
            "device": result.device, "stages": result.seconds}


ABLATIONS = {
    "no-crop": {"crop_to_body": False},
    "no-skip": {"skip_slices_without_air": False},
    "no-interpolation": {"interpolate_thin_slices": False},
    "no-prefetch": {"prefetch_next_batch": False},
    "no-channels-last": {"channels_last": False},
    "no-int8": {"int8_on_cpu": False},
}


def run_ablation(ct: Path, out: Path, model_path: str | None, device: str, switches: dict) -> dict:
    """The product path with one idea switched off: what that idea pays is the difference to ``covidseg``."""
    from CovidSegLib.engine.inference import EngineSwitches, segment_volume
    from CovidSegLib.checks.intensity import prepare_ct
    from CovidSegLib.engine.model import load_model
    from CovidSegLib.io.reading import read_volume
    from CovidSegLib.io.writing import write_label_map

    model = load_model(model_path)
    started = time.perf_counter()
    volume = prepare_ct(read_volume(ct))
    result = segment_volume(volume, model, device, switches=EngineSwitches(**switches))
    write_label_map(result.labels, volume.geometry, out)
    return {"seconds": time.perf_counter() - started, "slices_inferred": result.slices_inferred,
            "device": result.device, "stages": result.seconds}


def run_baseline(ct: Path, out: Path, model_path: str | None, device: str) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from CovidSegLib.engine.inference import AIR_HU, select_device, whole_slice_box
    from CovidSegLib.checks.intensity import prepare_ct
    from CovidSegLib.engine.model import load_model
    from CovidSegLib.io.orientation import from_canonical, to_canonical
    from CovidSegLib.engine.postprocess import postprocess
    from CovidSegLib.io.reading import read_volume
    from CovidSegLib.engine.representation import network_input, represent
    from CovidSegLib.io.writing import write_label_map

    model = load_model(model_path)
    target = select_device(device)
    network = model.network.to(target).eval()
    card = model.card
    started = time.perf_counter()
    volume = prepare_ct(read_volume(ct))
    canonical, plan = to_canonical(volume)
    hu = canonical.array
    lungs = np.zeros(hu.shape, bool)
    infection = np.zeros(hu.shape, bool)
    whole = whole_slice_box(hu.shape[1:])
    with torch.inference_mode():
        for index in range(hu.shape[0]):
            square = hu[index:index + 1] if card.preprocessing.mode == "clahe" else whole.crop(hu[index:index + 1],
                                                                                              fill=AIR_HU)
            x = network_input(represent(square, card.preprocessing), card.input_size)
            logits = F.interpolate(network(x.to(target)).float(), size=(whole.side, whole.side), mode="bilinear",
                                   align_corners=False)
            masks = np.zeros((2,) + hu.shape[1:], bool)
            whole.paste((logits > 0).cpu().numpy()[0], masks)
            lungs[index] = masks[card.output_index("lungs")]
            infection[index] = masks[card.output_index("infection")]
    labels = from_canonical(postprocess(lungs, infection, canonical.geometry, hu), plan)
    write_label_map(labels, volume.geometry, out)
    return {"seconds": time.perf_counter() - started, "slices_inferred": hu.shape[0], "device": str(target)}


def child(mode: str, ct: Path, model: str | None, device: str, out: Path) -> None:
    if mode in ABLATIONS:
        result = run_ablation(ct, out, model, device, ABLATIONS[mode])
    else:
        result = (run_covidseg if mode == "covidseg" else run_baseline)(ct, out, model, device)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def agreement(labels: Path, reference: Path) -> str:
    """Dice of lungs and of infection between two label files (n/a: both empty)."""
    from CovidSegLib.labels import INFECTION_VALUES, LUNG_VALUES
    from CovidSegLib.io.reading import read_segmentation

    a, b = read_segmentation(labels).layers[0], read_segmentation(reference).layers[0]
    figures = []
    for values in (LUNG_VALUES, INFECTION_VALUES):
        x, y = sum((a == v for v in values)).astype(bool), sum((b == v for v in values)).astype(bool)
        total = int(x.sum()) + int(y.sum())
        figures.append(f"{2 * int((x & y).sum()) / total:.4f}" if total else "n/a")
    return "/".join(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model card; default: the bundled model")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="covidseg,baseline",
                        help="comma-separated: covidseg, baseline, and the ablations " + ", ".join(ABLATIONS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ct", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.ct), args.model, args.device, Path(args.out))
        return
    ct = make_ct(args.slices)
    import torch

    print(f"CT: {ct.name}; device {args.device}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    runs: list[tuple[str, dict]] = []  # a mode may be named more than once, to see run-to-run noise
    with tempfile.TemporaryDirectory() as folder:
        for number, mode in enumerate(args.modes.split(",")):
            out = Path(folder) / f"{number}-{mode}.seg.nrrd"
            command = [sys.executable, __file__, "--child", mode, "--ct", str(ct), "--device", args.device,
                       "--out", str(out)]
            if args.model:
                command += ["--model", args.model]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            runs.append((mode, json.loads(output.split("RESULT ", 1)[1]) | {"labels": out}))
        product = next((row["labels"] for mode, row in runs if mode == "covidseg"), runs[0][1]["labels"])
        for _, row in runs:
            row["agreement"] = agreement(row["labels"], product)
    print(f"{'mode':17s} {'seconds':>8s} {'slices/s':>9s} {'inferred':>9s} {'peak RSS MB':>12s} "
          f"{'Dice vs covidseg (lungs/infection)':>36s}")
    for mode, row in runs:
        print(f"{mode:17s} {row['seconds']:8.1f} {args.slices / row['seconds']:9.1f} "
              f"{row['slices_inferred']:>9d} {row['peak_rss_mb']:12.0f} {row['agreement']:>36s}")
    best = {}
    for mode, row in runs:
        best[mode] = min(best.get(mode, row["seconds"]), row["seconds"])
    if {"covidseg", "baseline"} <= best.keys():
        print(f"speed-up covidseg vs baseline (best runs): {best['baseline'] / best['covidseg']:.2f}x")
    for mode, row in runs:
        if mode == "covidseg":
            print("covidseg stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in row["stages"].items()))


if __name__ == "__main__":
    main()
