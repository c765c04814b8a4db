"""Measure the activation ranges that let the engine run a model's convolutions in int8, and write them to its card.

    python -m CovidSegLib.training.int8_calibration CARD.json [--corpus-every 4]

The ranges are taken on the model's own training data, read from the card's ``training_config``: the corpus'
training groups (every ``--corpus-every``-th slice) and every healthy training volume whole (neck to pelvis, so
slices above and below the lungs are covered), each in the model's representation; for an anatomy model each healthy
volume also once with a synthetic lesion, as it trained, so that the density channel's dense lung (ground glass,
consolidation: what the product meets in COVID-19 CT) is inside the measured ranges and not clipped by them.
Held-out patients and the CTs kept out of training (Slicer's CTChest) are never used. The network is the one the
engine runs: eval mode, BatchNorms folded. See :mod:`CovidSegLib.engine.int8_inference` for how the ranges are used.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator


from ..engine.inference import inference_network, select_device
from ..engine.int8_inference import ACTIVATION_LEVELS, layers_worth_int8, record_ranges
from ..engine.model import LoadedModel, load_model, update_card
from ..engine.representation import network_input
from .data import SliceSet, load_slice_corpus, read_split, split_indices
from .train import healthy_folders
from .volumes import load_volume_slices

BATCH = 16


def calibration_images(model: LoadedModel, corpus_every: int) -> tuple[SliceSet, str]:
    """Slices in the model's representation from its training data, and a sentence saying which (an anatomy
    model's corpus slices on its canvas, its healthy volumes as scanned and with one synthetic lesion each)."""
    config = model.card.training_config
    if not config.get("corpus"):
        raise ValueError(f"{model.card_path}: the card's training_config names no corpus to calibrate on")
    corpus = load_slice_corpus(Path(config["corpus"]).expanduser())
    train = corpus.subset(split_indices(read_split(), "train")[::corpus_every])
    if model.card.preprocessing.mode == "anatomy":
        from .canvas_slices import corpus_on_canvas

        train = corpus_on_canvas(train, model.card.preprocessing)
    parts, sources = [train], [f"{len(train.names)} corpus slices (every {corpus_every}th of the training groups)"]
    renderings, rendered = None, ""
    if model.card.preprocessing.mode == "anatomy":
        from .canvas_volumes import HuRenderings

        renderings = HuRenderings(lesions=1, seed=int(config.get("seed", 0)))
        rendered = ", as scanned and with a synthetic lesion"
    for path, label_map in healthy_folders(config.get("healthy_volumes", ())):
        slices = load_volume_slices(Path(path).expanduser(), model.card.preprocessing, label_map, healthy=True,
                                    renderings=renderings)
        parts.append(slices)
        sources.append(f"{len(slices.names)} slices of the healthy training volumes in {Path(path).name}{rendered}")
    return SliceSet.concatenate(parts), "; ".join(sources)


def batches(slices: SliceSet, input_size: int) -> Iterator:
    for start in range(0, len(slices.names), BATCH):
        if slices.has_density is not None:
            from ..engine.anatomy import anatomy_network_input

            yield anatomy_network_input(slices.images[start:start + BATCH], slices.has_density[start:start + BATCH])
        else:
            yield network_input(slices.images[start:start + BATCH], input_size)


def calibrate(card_path: Path, corpus_every: int) -> dict:
    """The ``int8_calibration`` entry for the card at ``card_path`` (not written)."""
    model = load_model(card_path)
    images, described = calibration_images(model, corpus_every)
    network, _ = inference_network(model, select_device("cpu"), int8=False)
    ranges = record_ranges(network, batches(images, model.card.input_size))
    chosen = {name: [round(value, 6) for value in ranges[name][:4]]
              for name in layers_worth_int8(network, ranges, model.card.input_size)}
    return {"activation_levels": ACTIVATION_LEVELS, "calibrated_on": described,
            "layers": f"{len(chosen)} of {len(ranges)} convolutions: the 3x3 ones on maps of at most 1/8 of the "
                      "input's side, where int8 is faster (CovidSegLib.engine.int8_inference.worth_int8)",
            "ranges": chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("card", type=Path, help="model card (.json) to calibrate; its int8_calibration is replaced")
    parser.add_argument("--corpus-every", type=int, default=4, help="take every N-th corpus training slice")
    args = parser.parse_args()
    calibration = calibrate(args.card, args.corpus_every)
    update_card(args.card, {"int8_calibration": calibration})
    print(f"{args.card}: int8 ranges of {calibration['layers']}, from {calibration['calibrated_on']}")


if __name__ == "__main__":
    main()
