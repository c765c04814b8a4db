"""What the card's probability threshold trades: infection Dice on COVID-19 slices against false infection on CT
without COVID-19.

    python Testing/benchmarks/threshold_sweep.py --corpus CORPUS/data/img [--model CARD]
        [--thresholds 0.3,0.5,0.7,0.9] [--healthy [NAME=]CT ...]

For each threshold the model runs with its card's ``threshold`` set to it, nothing else changed:
- the corpus' validation groups (``Resources/model/split.json``), the set a threshold may be chosen on, and its
  held-out test groups, printed for information only (choosing on them would make their figure a fit);
  lung and infection Dice pooled, the corpus images fed as they are (the report's held-out path);
- false infection in mL on Slicer's CTChest and on every ``--healthy`` CT, through ``covidseg segment``'s path
  (read, checks, engine, post-processing, written and read back).
Answers "would a stricter threshold buy specificity cheaply?". Not a test: no asserts.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("COVIDSEG_DATA", ROOT.parent / "shared" / "data"))


def main() -> None:
    from CovidSegLib.engine.inference import SliceSegmenter, select_device
    from CovidSegLib.engine.model import load_model
    from CovidSegLib.slices.evaluation import dice_figures
    from CovidSegLib.training.data import load_slice_corpus, read_split, split_indices
    from CovidSegLib.training.memo import memoised
    from CovidSegLib.training.report import healthy_volume_scores, named_entry, predict_represented

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, type=Path, help="the slice corpus' data/img folder")
    parser.add_argument("--model", help="model card (default: the bundled model)")
    parser.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    parser.add_argument("--healthy", action="append", default=[], metavar="[NAME=]CT",
                        help="another CT without COVID-19 (repeatable); CTChest is always measured")
    args = parser.parse_args()

    model = memoised(load_model(args.model))  # the network runs once; each threshold re-thresholds its output
    corpus = load_slice_corpus(args.corpus)
    parts = {part: corpus.subset(split_indices(read_split(), part)) for part in ("validation", "test")}
    healthy = {"ctchest4": DATA / "volumes" / "ctchest4.nrrd"}
    healthy.update((name, Path(path).expanduser()) for name, path in map(named_entry, args.healthy))

    print(f"model {model.card.name} (card threshold {model.card.threshold})")
    header = ["threshold"] + [f"{part} {what}" for part in parts for what in ("lungs", "infection")]
    header += [f"{name} mL" for name in healthy]
    print(" | ".join(header))
    with tempfile.TemporaryDirectory() as work:
        for threshold in (float(t) for t in args.thresholds.split(",")):
            variant = model.with_threshold(threshold)
            segmenter = SliceSegmenter(variant, select_device("cpu"))
            row = [f"{threshold:.2f}"]
            for part in parts.values():
                lungs, infection = predict_represented(segmenter, part.images)
                row += [f"{dice_figures(lungs, part.lungs)['pooled_dice']:.3f}",
                        f"{dice_figures(infection, part.infection)['pooled_dice']:.3f}"]
            for ct in healthy.values():
                row.append(f"{healthy_volume_scores(variant, ct, Path(work))['false_infection_ml']:.1f}")
            print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
