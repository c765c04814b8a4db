"""Choose a card's ground-glass opacity / consolidation rule on MedSeg, and measure it by cross-validation.

    python -m CovidSegLib.training.infection_split CARD --medseg DIR [--write]

MedSeg's training slices are the only ones with experts' GGO and consolidation masks we have. They are 8-bit
crops without HU or spacing: they are read as ``covidseg predict-slices`` reads them (the 8-bit value mapped back
to the card's window, the mapping training uses too) and their pixels are taken as ``MEDSEG_PIXEL_MM``.

The rule (:class:`CovidSegLib.engine.density.InfectionSplit`) is chosen from a grid by nested cross-validation: the
slices, in their numbered order, make ``FOLDS`` blocks of consecutive slices (MedSeg keeps no patient ids;
neighbouring numbers are often one patient, so blocks keep most patients on one side); the rule chosen on the
other blocks is scored on each block, and the scores are pooled. That is the figure published. The rule written
into the card is then chosen on all slices, so it is scored only by the cross-validation of how it was chosen.

Two figures per class: inside the experts' infection (the rule alone), and inside the infection the model finds
through predict-slices' path (the whole chain; the bundled model trained on MedSeg's infection masks, so its
infection there is a fit, and so is that part of this figure).
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..engine.density import InfectionSplit, smoothed_density
from ..engine.model import load_model, update_card
from ..slices.evaluation import read_mask_image
from ..slices.dataset import read_slices

#: MedSeg's crops keep no spacing; its CTs are 512x512 chest scans, whose pixels are about this size.
MEDSEG_PIXEL_MM = 0.7
FOLDS = 5
THRESHOLDS_HU = tuple(float(t) for t in range(-700, -99, 10))
SMOOTHING_MM = (0.0, 0.7, 1.4, 2.1, 2.8)
GGO_VALUE, CONSOLIDATION_VALUE = 1, 2  # in MedSeg's multiclass masks


def read_multiclass(root: Path, names: list[str]) -> list[np.ndarray]:
    """MedSeg's ``multiclass_masks/NAME.png`` palette images (0 background, 1 GGO, 2 consolidation)."""
    from PIL import Image

    masks = []
    for name in names:
        with Image.open(root / "multiclass_masks" / f"{name}.png") as image:
            masks.append(np.asarray(image))
    return masks


def confusion(hu: np.ndarray, infection: np.ndarray, multiclass: np.ndarray, rule: InfectionSplit) -> np.ndarray:
    """``[tp, fp, fn]`` of consolidation then of GGO, for ``infection`` split by ``rule`` against the experts."""
    return rule_confusions(hu, infection, multiclass, [rule])[0]


def rule_confusions(hu: np.ndarray, infection: np.ndarray, multiclass: np.ndarray,
                    rules: list[InfectionSplit]) -> np.ndarray:
    """:func:`confusion` of every rule, ``[rule, 6]``; the slice is smoothed once per smoothing, not per rule."""
    densities = {smoothing: smoothed_density(hu, (MEDSEG_PIXEL_MM, MEDSEG_PIXEL_MM), smoothing)
                 for smoothing in {rule.smoothing_mm for rule in rules}}
    consolidation, ggo = multiclass == CONSOLIDATION_VALUE, multiclass == GGO_VALUE
    counts = []
    for rule in rules:
        dense = densities[rule.smoothing_mm] >= rule.consolidation_min_hu
        row = []
        for found, truth in ((infection & dense, consolidation), (infection & ~dense, ggo)):
            row += [np.count_nonzero(found & truth), np.count_nonzero(found & ~truth),
                    np.count_nonzero(truth & ~found)]
        counts.append(row)
    return np.asarray(counts, dtype=np.int64)


def dice(tp: int, fp: int, fn: int) -> float:
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else float("nan")


def class_dice(counts: np.ndarray) -> dict[str, float]:
    return {"consolidation": dice(*counts[:3]), "ggo": dice(*counts[3:])}


def best_rule(rules: list[InfectionSplit], counts: np.ndarray) -> int:
    """Index of the rule with the highest mean of the two classes' pooled Dice (``counts``: ``[rule, 6]``)."""
    return int(np.argmax([np.mean(list(class_dice(c).values())) for c in counts]))


def cross_validate(rules: list[InfectionSplit], counts: np.ndarray, folds: int = FOLDS) -> dict:
    """Nested choice: ``counts`` is ``[slice, rule, 6]`` for one infection source."""
    blocks = np.array_split(np.arange(counts.shape[0]), folds)
    pooled, chosen = np.zeros(6, np.int64), []
    for block in blocks:
        others = np.setdiff1d(np.arange(counts.shape[0]), block)
        index = best_rule(rules, counts[others].sum(axis=0))
        chosen.append(asdict(rules[index]))
        pooled += counts[block, index].sum(axis=0)
    return {"pooled_dice": class_dice(pooled), "rules_chosen_per_fold": chosen}


def measure(card_path: Path, medseg: Path) -> tuple[InfectionSplit, dict]:
    """The rule chosen on all of MedSeg, and the card entry describing how it measures."""
    from ..engine.inference import SliceSegmenter, select_device
    from ..slices.dataset import predict_slices

    model = load_model(card_path)
    window = model.card.preprocessing.window
    slices = sorted(read_slices(medseg / "images", window), key=lambda s: int(s.source.stem))
    names = [s.source.stem for s in slices]
    multiclass = read_multiclass(medseg, names)
    experts = [read_mask_image(medseg / "infection_masks" / f"{n}.png") for n in names]
    segmenter = SliceSegmenter(model, select_device("cpu"))
    _, found = predict_slices(segmenter, [s.hu for s in slices])
    rules = [InfectionSplit(t, s) for s, t in itertools.product(SMOOTHING_MM, THRESHOLDS_HU)]
    results = {}
    for source, infection in (("inside_expert_infection", experts), ("inside_model_infection", found)):
        counts = np.stack([rule_confusions(s.hu, mask, m, rules) for s, mask, m in zip(slices, infection, multiclass)])
        results[source] = cross_validate(rules, counts)
        if source == "inside_expert_infection":
            chosen = rules[best_rule(rules, counts.sum(axis=0))]
            results[source]["all_slices_with_chosen_rule"] = class_dice(
                counts[:, rules.index(chosen)].sum(axis=0))
            # how much the threshold matters at the chosen smoothing (MedSeg's export window is a guess)
            results[source]["all_slices_by_threshold_hu"] = {
                f"{threshold:g}": class_dice(counts[:, rules.index(InfectionSplit(threshold, chosen.smoothing_mm))]
                                             .sum(axis=0))
                for threshold in THRESHOLDS_HU if threshold % 50 == 0 and -600 <= threshold <= -200}
    entry = {
        **chosen.card_entry(),
        "chosen_on": f"MedSeg medseg_train ({len(slices)} slices), 8-bit values mapped back to the window "
                     f"{list(window)} HU, pixels taken as {MEDSEG_PIXEL_MM} mm; the rule with the best mean of GGO "
                     f"and consolidation Dice among {len(THRESHOLDS_HU)} thresholds x {len(SMOOTHING_MM)} smoothings",
        "cross_validation": f"{FOLDS} blocks of consecutive slices (no patient ids); the rule chosen on the other "
                            f"{FOLDS - 1} blocks scored on each, pooled",
        "scores": results,
    }
    return chosen, entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m CovidSegLib.training.infection_split", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("card", type=Path, help="model card (.json) to measure, and to write the rule into")
    parser.add_argument("--medseg", type=Path, required=True, help="MedSeg medseg_train folder")
    parser.add_argument("--write", action="store_true", help="write the rule and its figures into the card")
    args = parser.parse_args(argv)
    rule, entry = measure(args.card, args.medseg)
    for source, figures in entry["scores"].items():
        cv = figures["pooled_dice"]
        chosen = [(r["consolidation_min_hu"], r["smoothing_mm"]) for r in figures["rules_chosen_per_fold"]]
        print(f"{source}: cross-validated Dice consolidation {cv['consolidation']:.3f}, GGO {cv['ggo']:.3f}; "
              f"(HU, mm) chosen per fold: {chosen}")
    print(f"rule chosen on all slices: consolidation from {rule.consolidation_min_hu:g} HU after "
          f"{rule.smoothing_mm:g} mm smoothing")
    if args.write:
        update_card(args.card, {"infection_split": entry})
        print(f"wrote the rule into {args.card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
