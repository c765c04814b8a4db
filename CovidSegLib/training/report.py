"""Measure a model the way it will be used, and write the figures into its card.

    python -m CovidSegLib.training.report CARD --corpus DIR [--medseg DIR] [--volumes DIR] [--without-source CARD]

- held-out patients of the slice corpus (the ``test`` groups of ``Resources/model/split.json``): Dice for lungs
  and infection, pooled over all slices and as the mean of per-slice Dice (slices where both masks are empty are
  left out), per group too, with the numbers of slices and groups;
- MedSeg slices (another hospital): infection Dice, reported as cross-source only when the card's training data
  does not include MedSeg;
- leave-one-source-out: sibling models trained without MedSeg, or without the corpus, tested on the source they
  never saw (``--without-source``);
- real volumes: lung Dice against ``ctchest4.seg.nrrd`` and the TotalSegmentator lobes, and the infection volume
  found in those CTs, which show no COVID-19 (false positives), with how many of their lung slices got some.
Every prediction goes through the engine's own preprocessing (:mod:`CovidSegLib.training.slices`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..evaluation import evaluate_case, parse_mapping
from ..inference import SliceSegmenter, select_device
from ..labels import INFECTION
from ..model import ModelCard, load_model
from ..pipeline import SegmentOptions, segment_file
from ..slice_evaluation import dice_figures
from ..slices import eight_bit_to_hu, predict_slices
from .data import SliceSet, load_medseg, load_slice_corpus, read_split, split_indices


def predict_eight_bit(segmenter: SliceSegmenter, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lung and infection masks ``[n, h, w]`` for 8-bit slices of the model's window."""
    lungs, infection = predict_slices(segmenter, eight_bit_to_hu(images, segmenter.card.preprocessing.window))
    return np.stack(lungs), np.stack(infection)


def held_out_slices(corpus_root: Path) -> SliceSet:
    """The corpus' test groups (read once, scored for every model)."""
    return load_slice_corpus(corpus_root).subset(split_indices(read_split(), "test"))


def corpus_scores(segmenter: SliceSegmenter, test: SliceSet) -> dict:
    groups = read_split()["groups"]["test"]
    lungs, infection = predict_eight_bit(segmenter, test.images)
    result = {"groups": len(groups), "lungs": dice_figures(lungs, test.lungs),
              "infection": dice_figures(infection, test.infection), "per_group": {}}
    start = 0
    for a, b in groups:
        part = slice(start, start + b - a)
        result["per_group"][f"{a}-{b}"] = {
            "lungs": dice_figures(lungs[part], test.lungs[part])["pooled_dice"],
            "infection": dice_figures(infection[part], test.infection[part])["pooled_dice"],
        }
        start += b - a
    return result


def medseg_scores(segmenter: SliceSegmenter, root: Path) -> dict:
    medseg = load_medseg(root)
    _, infection = predict_eight_bit(segmenter, medseg.images)
    return {"infection": dice_figures(infection, medseg.infection)}


def volume_scores(card_path: Path, volumes: Path, work: Path) -> dict:
    model = load_model(card_path)
    results = {}
    cases = {
        "ctchest4": (volumes / "ctchest4.nrrd", volumes / "ctchest4.seg.nrrd", None),
        "totalseg_example": (volumes / "totalseg_example_ct_sm.nii.gz", volumes / "totalseg_example_ct_sm_seg.nii.gz",
                             parse_mapping("totalseg-lobes")),
    }
    for name, (ct, reference, mapping) in cases.items():
        output = work / f"{name}.seg.nrrd"
        labels = segment_file(ct, output, model, SegmentOptions(device="cpu")).labels
        case = evaluate_case(output, reference, reference_mapping=mapping)
        lung_slices = (labels > 0).any(axis=(1, 2))
        infected_slices = (labels >= INFECTION).any(axis=(1, 2))
        results[name] = {
            "lungs_dice": case.metrics["lungs"].dice,
            "left_lung_dice": case.metrics["left_lung"].dice,
            "right_lung_dice": case.metrics["right_lung"].dice,
            "infection_ml_found_in_ct_without_covid": case.metrics["infection"].predicted_volume_ml,
            "slices_with_lung": int(lung_slices.sum()),
            "of_those_with_false_infection": int((infected_slices & lung_slices).sum()),
        }
    return results


def leave_one_source_out(cards: list[str], held_out: SliceSet, medseg: Path | None) -> dict:
    """Models trained like this one but without one source, each tested on the source it never saw."""
    results = {}
    for card_path in cards:
        model = load_model(card_path)
        segmenter = SliceSegmenter(model, select_device("auto"), batch_size=32)
        entry: dict = {"training_data": model.card.training_data}
        if "MedSeg" not in model.card.training_data and medseg is not None:
            entry["tested_on_medseg"] = medseg_scores(segmenter, medseg)
        if "dstaroff" not in model.card.training_data:
            scores = corpus_scores(segmenter, held_out)
            entry["tested_on_corpus_held_out_patients"] = {"infection": scores["infection"]}
        results[model.card.name] = entry
    return results


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("card")
    parser.add_argument("--corpus", required=True, help="the slice corpus' data/img folder")
    parser.add_argument("--medseg", help="medseg_train folder (cross-source test)")
    parser.add_argument("--volumes", help="../shared/data/volumes")
    parser.add_argument("--without-source", action="append", default=[], metavar="CARD",
                        help="a model trained without one source (repeatable): tested on the source it never saw, "
                        "recorded under leave_one_source_out")
    parser.add_argument("--write", action="store_true", help="write the scores into the card")
    args = parser.parse_args()
    card_path = Path(args.card)
    model = load_model(card_path)
    segmenter = SliceSegmenter(model, select_device("auto"), batch_size=32)
    scores = dict(model.card.scores)
    held_out = held_out_slices(Path(args.corpus))
    scores["held_out_patients"] = corpus_scores(segmenter, held_out)
    if args.medseg:
        # cross-source only when the model never saw MedSeg; otherwise it is a fit to training data
        trained_on_medseg = "MedSeg" in model.card.training_data
        key = "medseg_in_training_data" if trained_on_medseg else "medseg_cross_source"
        scores.pop("medseg_cross_source", None)
        scores[key] = medseg_scores(segmenter, Path(args.medseg))
    if args.without_source:
        scores["leave_one_source_out"] = leave_one_source_out(args.without_source, held_out,
                                                              Path(args.medseg) if args.medseg else None)
    if args.volumes:
        with tempfile.TemporaryDirectory() as work:
            scores["real_volumes"] = volume_scores(card_path, Path(args.volumes), Path(work))
    print(json.dumps(scores, indent=2))
    if args.write:
        document = json.loads(card_path.read_text())
        document["scores"] = scores
        ModelCard.from_json(json.dumps(document), str(card_path))  # still a valid card
        card_path.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
