"""Measure a model the way it will be used, and write the figures into its card.

    python -m CovidSegLib.training.report CARD --corpus DIR [--medseg DIR] [--volumes DIR] [--hu-slices DIR]
        [--healthy PATH ...] [--healthy-trained PATH ...] [--without-source CARD]

Every figure comes through the engine's own representation of the image (:mod:`CovidSegLib.engine.representation`):

- held-out patients of the slice corpus (the ``test`` groups of ``Resources/model/split.json``): the corpus
  images are the representation itself (made from HU by the transform the engine runs, bit for bit), fed as they
  are; Dice for lungs and infection, pooled and as the mean of per-slice Dice, per group too;
- the HU slices with expert infection (``--hu-slices``) through ``covidseg segment``'s own path: each slice
  stacked into a 5-slice volume (0.75 mm pixels, 1 mm slices), segmented, written and read back;
- MedSeg slices (8-bit windowed crops, through the representation): infection Dice, labelled a fit when MedSeg
  was in the training data;
- leave-one-source-out: sibling models trained without MedSeg, or without the corpus, tested on the source they
  never saw (``--without-source``);
- CTs without COVID-19: lung Dice where a reference exists (CTChest, the TotalSegmentator lobes) and the
  infection the model finds there (false positives, mL and slices), on every volume, each marked held out or
  trained on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..measure.evaluation import LabelMapping, evaluate_case, parse_mapping
from ..engine.inference import SliceSegmenter, select_device
from ..labels import INFECTION
from ..engine.model import LoadedModel, ModelCard, load_model, update_card
from ..engine.pipeline import SegmentOptions, segment_file
from ..checks.plausibility import geometry_warnings
from ..slices.evaluation import dice_figures
from ..slices.dataset import predict_slices
from .data import SliceSet, load_medseg, load_slice_corpus, read_split, split_indices

#: How the HU slices are stacked into a volume for ``covidseg segment`` (their true spacing is not stored).
HU_SLICE_PIXEL_MM = 0.75
HU_SLICE_COPIES = 5


def predict_represented(segmenter: SliceSegmenter, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lung and infection masks ``[n, h, w]`` for 8-bit slices already in the model's representation."""
    lungs, infection = predict_slices(segmenter, list(images), represented=True)
    return np.stack(lungs), np.stack(infection)


def held_out_slices(corpus_root: Path) -> SliceSet:
    """The corpus' test groups (read once, scored for every model)."""
    return load_slice_corpus(corpus_root).subset(split_indices(read_split(), "test"))


def corpus_scores(segmenter: SliceSegmenter, test: SliceSet) -> dict:
    groups = read_split()["groups"]["test"]
    lungs, infection = predict_represented(segmenter, test.images)
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
    """MedSeg's 8-bit crops as ``covidseg predict-slices`` reads them: HU-equivalents of the model's window,
    through its representation; scored on the representation's 256x256 grid (a clahe model), or on each crop's
    own pixels (an anatomy model, which places each crop on its canvas by its body, as predict-slices does)."""
    if segmenter.on_canvas:
        from ..slices.dataset import read_slices
        from ..slices.evaluation import pool_ragged, read_mask_image

        crops = read_slices(root / "images", segmenter.card.preprocessing.window)
        _, infection = predict_slices(segmenter, [crop.hu for crop in crops])
        truth = [read_mask_image(root / "infection_masks" / f"{crop.name}.png") for crop in crops]
        return {"infection": pool_ragged(infection, truth)}
    medseg = load_medseg(root, segmenter.card.preprocessing, segmenter.card.preprocessing.window)
    _, infection = predict_represented(segmenter, medseg.images)
    return {"infection": dice_figures(infection, medseg.infection)}


def medseg_score_key(card: ModelCard) -> str:
    """Where MedSeg's figure goes: cross-source only when the card's training configuration shows the model
    never saw MedSeg; otherwise, or without a recorded configuration, it is a fit to training data. Decided
    from the configuration, not the prose: the bundled card's text says "No MedSeg"."""
    never_saw_medseg = bool(card.training_config) and not card.training_config.get("medseg")
    return "medseg_cross_source" if never_saw_medseg else "medseg_in_training_data"


def hu_slice_scores(model: LoadedModel, folder: Path, work: Path) -> dict:
    """Infection (and lung) Dice of the HU slices through ``covidseg segment``: each slice (display orientation)
    stacked into a volume in LPS, written as NRRD, segmented and written by the product path, read back."""
    infection_pred, infection_ref, lungs_pred, lungs_ref, per_slice = [], [], [], [], {}
    for path in sorted(folder.glob("*.npz")):
        hu, lungs, infection = read_hu_slice(path)
        found_lungs, found_infection = segment_hu_slice(model, hu, work, path.stem)
        infection_pred.append(found_infection)
        infection_ref.append(infection)
        lungs_pred.append(found_lungs | found_infection)
        lungs_ref.append(lungs)
        per_slice[path.stem] = dice_figures(infection_pred[-1][None], infection_ref[-1][None])["pooled_dice"]
    return {"infection": dice_figures(np.stack(infection_pred), np.stack(infection_ref)),
            "lungs": dice_figures(np.stack(lungs_pred), np.stack(lungs_ref)),
            "infection_dice_per_slice": per_slice,
            "how": f"each slice stacked {HU_SLICE_COPIES}x into a volume ({HU_SLICE_PIXEL_MM} mm pixels, 1 mm "
                   "slices) and run through covidseg segment; scored on its middle slice"}


def read_hu_slice(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, expert lungs and expert infection (booleans) of one hu_infection slice, in the display orientation."""
    with np.load(path) as data:
        hu, lungs, infection = (np.rot90(data[k]) for k in ("image", "lung_mask", "infection_mask"))
    return hu, lungs > 0, infection > 0


def segment_hu_slice(model: LoadedModel, hu: np.ndarray, work: Path, name: str = "slice"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Lungs (left or right) and infection that ``covidseg segment`` finds on one HU slice (display orientation):
    stacked into a volume in LPS, written as NRRD, segmented and written by the product path, read back; the
    middle slice's masks."""
    import SimpleITK as sitk

    from ..measure.evaluation import default_mapping, mapped_masks
    from ..labels import INFECTION_VALUES, LEFT_LUNG, RIGHT_LUNG
    from ..io.reading import read_segmentation

    image = sitk.GetImageFromArray(np.repeat(hu[None], HU_SLICE_COPIES, axis=0).astype(np.int16))
    image.SetSpacing((HU_SLICE_PIXEL_MM, HU_SLICE_PIXEL_MM, 1.0))  # identity direction: LPS, display rows
    ct, output = work / f"{name}.nrrd", work / f"{name}.seg.nrrd"
    sitk.WriteImage(image, str(ct))
    segment_file(ct, output, model, SegmentOptions(device="cpu", allow_empty=True))  # measured, not refused
    written = read_segmentation(output)
    middle = HU_SLICE_COPIES // 2
    masks = {value: mask[middle] for value, mask in mapped_masks(written, default_mapping(written)).items()}
    empty = np.zeros(hu.shape, bool)
    infection = np.logical_or.reduce([masks.get(v, empty) for v in INFECTION_VALUES])
    return masks.get(LEFT_LUNG, empty) | masks.get(RIGHT_LUNG, empty), infection


def healthy_volume_scores(model: LoadedModel, ct: Path, work: Path, reference: Path | None = None,
                          mapping: LabelMapping | None = None) -> dict:
    """Segment a CT without COVID-19 the product's way: the infection found is false; lung Dice if a reference.
    A model that finds (almost) no lung there is measured too, not refused: ``no_lung`` says so."""
    output = work / f"{ct.name.split('.')[0]}.seg.nrrd"
    segmented = segment_file(ct, output, model, SegmentOptions(device="cpu", allow_empty=True))
    labels = segmented.labels
    lung_slices = (labels > 0).any(axis=(1, 2))
    infected_slices = (labels >= INFECTION).any(axis=(1, 2))
    result = {
        "geometry_warnings": geometry_warnings(segmented.volume.geometry),
        "false_infection_ml": float((labels >= INFECTION).sum() * segmented.volume.geometry.voxel_volume_ml),
        "slices": int(len(labels)),
        "slices_with_lung": int(lung_slices.sum()),
        "slices_with_false_infection": int(infected_slices.sum()),
        "no_lung": bool(segmented.no_lung),
    }
    if reference is not None:
        case = evaluate_case(output, reference, reference_mapping=mapping)
        result.update({"lungs_dice": case.metrics["lungs"].dice, "left_lung_dice": case.metrics["left_lung"].dice,
                       "right_lung_dice": case.metrics["right_lung"].dice})
    return result


def named_entry(entry: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after its file) or a bare name."""
    if "=" in entry:
        name, path = entry.split("=", 1)
        return name, path
    return Path(entry).name.split(".")[0], entry


def healthy_scores(model: LoadedModel, volumes: Path | None, held_out: list[str], trained: list[str], work: Path
                   ) -> dict:
    """False infection on every CT without COVID-19, each marked held out or trained on. ``trained`` entries
    that name a case of ``volumes`` (``totalseg_example``) without a path mark that case as trained on."""
    trained_named = [named_entry(entry) for entry in trained]
    trained_names = {name for name, _ in trained_named}
    cases: list[tuple[str, Path, Path | None, object]] = []
    if volumes is not None:
        cases.append(("ctchest4", volumes / "ctchest4.nrrd", volumes / "ctchest4.seg.nrrd", None))
        cases.append(("totalseg_example", volumes / "totalseg_example_ct_sm.nii.gz",
                      volumes / "totalseg_example_ct_sm_seg.nii.gz", parse_mapping("totalseg-lobes")))
    known = {name for name, *_ in cases}
    cases += [(name, Path(path), None, None) for name, path in map(named_entry, held_out)]
    cases += [(name, Path(path), None, None) for name, path in trained_named if name not in known]
    results = {}
    for name, ct, reference, mapping in cases:
        results[name] = {"in_training_data": name in trained_names,
                         **healthy_volume_scores(model, ct.expanduser(), work, reference, mapping)}
    return results


def leave_one_source_out(cards: list[str], held_out: SliceSet, medseg: Path | None) -> dict:
    """Models trained like this one but without one source, each tested on the source it never saw; the corpus'
    held-out patients are scored for every sibling (marked whether the corpus trained it), so a sibling that
    kept the corpus shows what the left-out source added."""
    results = {}
    for card_path in cards:
        model = load_model(card_path)
        segmenter = SliceSegmenter(model, select_device("auto"), batch_size=32)
        corpus_trained = "dstaroff" in model.card.training_data
        entry: dict = {"training_data": model.card.training_data, "corpus_in_training_data": corpus_trained,
                       "epochs_trained": model.card.scores.get("epochs_trained")}
        if "MedSeg" not in model.card.training_data and medseg is not None:
            entry["tested_on_medseg"] = medseg_scores(segmenter, medseg)
        scores = corpus_scores(segmenter, held_out)
        entry["tested_on_corpus_held_out_patients"] = {"lungs": scores["lungs"], "infection": scores["infection"],
                                                       "per_group": scores["per_group"]}
        results[model.card.name] = entry
    return results


def without_nan(value):
    """``value`` with NaN (e.g. the precision of a model that found nothing) as null: cards stay strict JSON."""
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nan(item) for item in value]
    return None if isinstance(value, float) and value != value else value


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("card")
    parser.add_argument("--corpus", required=True, help="the slice corpus' data/img folder")
    parser.add_argument("--medseg", help="medseg_train folder (cross-source test)")
    parser.add_argument("--volumes", help="../shared/data/volumes (CTChest held out, the TotalSegmentator example)")
    parser.add_argument("--hu-slices", help="../shared/data/slices/hu_infection: HU slices through covidseg segment")
    parser.add_argument("--healthy", action="append", default=[], metavar="[NAME=]CT",
                        help="a CT without COVID-19 the model never saw (repeatable): false infection")
    parser.add_argument("--healthy-trained", action="append", default=[], metavar="[NAME=]CT",
                        help="a CT without COVID-19 in the training data (repeatable; a bare name marks a --volumes "
                             "case, e.g. totalseg_example): false infection, marked so")
    parser.add_argument("--without-source", action="append", default=[], metavar="CARD",
                        help="a model trained without one source (repeatable): tested on the source it never saw, "
                        "recorded under leave_one_source_out")
    parser.add_argument("--write", action="store_true", help="write the scores into the card")
    args = parser.parse_args()
    card_path = Path(args.card)
    model = load_model(card_path)
    # on the CPU, as the HU slices and CTs below go through segment_file: every figure of one card comes from one
    # arithmetic (int8 on an x86 CPU when the card is calibrated, else float32), the one a laptop runs
    segmenter = SliceSegmenter(model, select_device("cpu"), batch_size=16)
    scores = dict(model.card.scores)
    scores["measured_with"] = {"device": str(segmenter.device), "network_precision": segmenter.precision}
    held_out = held_out_slices(Path(args.corpus))
    scores["held_out_patients"] = corpus_scores(segmenter, held_out)
    if args.medseg:
        scores.pop("medseg_cross_source", None)
        scores.pop("medseg_in_training_data", None)
        scores[medseg_score_key(model.card)] = medseg_scores(segmenter, Path(args.medseg))
    if args.without_source:
        scores["leave_one_source_out"] = leave_one_source_out(args.without_source, held_out,
                                                              Path(args.medseg) if args.medseg else None)
    with tempfile.TemporaryDirectory() as work:
        if args.hu_slices:
            scores["hu_slices_through_segment"] = hu_slice_scores(model, Path(args.hu_slices), Path(work))
        if args.volumes or args.healthy or args.healthy_trained:
            scores.pop("real_volumes", None)  # the first model's name for these figures
            scores["ct_without_covid"] = healthy_scores(model, Path(args.volumes) if args.volumes else None,
                                                        args.healthy, args.healthy_trained, Path(work))
    print(json.dumps(scores, indent=2))
    if args.write:
        update_card(card_path, {"scores": without_nan(scores)})


if __name__ == "__main__":
    main()
