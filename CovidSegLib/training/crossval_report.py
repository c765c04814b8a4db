"""Cross-validated figures of k-fold runs, and the probability threshold chosen on them.

    python -m CovidSegLib.training.crossval_report CONFIG.json [CONFIG.json ...] [--thresholds 0.3,0.5,0.7]
        [--hu-slices DIR [--hu-slices-group corpus/0-159]] [--held-out-ct NAME=CT ...] [--floors=-850,-800,-750]
        [--clip-hu=-1250,250] [--json OUT.json]

Each fold's model is scored on that fold's validation patients only (it never trained on them), and the folds
are pooled, so every patient group counts once (each slice in its first rendering, the model's own). At each
probability threshold (a card has one, for lungs and infection alike):

- COVID-19 patient groups of the slice corpus: lung and infection Dice, the corpus images fed as they are (the
  representation itself, as in the report's held-out figures; not HU through ``covidseg segment``);
- MedSeg's blocks, when the run deals them into folds (``medseg_in_folds``): infection Dice, its 8-bit crops
  through the representation (the window they were exported with is a guess);
- all validation slices with infection labelled, the CTs without COVID-19 included (rendered from HU): the
  infection Dice training validates with, where infection found on a healthy CT counts against the model;
- each COVID-19 patient group on its own: infection Dice, sensitivity and precision, so that one sees where a
  model loses Dice (lesion missed or lesion invented) and on which patients;
- each CT without COVID-19 that validates in a fold: false infection in mL and slices through ``covidseg
  segment``'s path (read, checks, engine, post-processing, written and read back), and whether it found lung;
- each CT without COVID-19 that no fold trained on (``--held-out-ct``, e.g. Slicer's CTChest; named "NAME
  (held out)"), the same way by every fold model: one CT in a fold's validation is too few to see how recipes
  differ in false infection. These are for looking, not choosing: a recipe chosen on a CT makes that CT's
  figure a tuned one, so a study decided on one must say so and keep another CT out;
- the HU slices with expert infection (``--hu-slices``), through ``covidseg segment``'s path as the report runs
  them, by the one fold model that never saw their patient (``--hu-slices-group``): the only product-path
  infection figure on COVID-19 CT that is not a fit.

With ``--floors``, the last three (the figures in HU through the product path) are measured again under each
infection density floor (:class:`CovidSegLib.engine.density.InfectionFloor`, at ``--floor-smoothing`` mm and the
cards' own threshold): a floor is chosen on what it takes from the validation positives and negatives, never
on the CTs kept out of training (``--held-out-ct`` among them). Every threshold and floor runs the product
path anew, but the network's output for each CT is computed once and re-thresholded (:mod:`.memo`).

``--clip-hu`` studies the representation's HU clip: the figures in HU through the product path (the HU slices
and the CTs without COVID-19) are measured with the fold cards' ``clip_hu`` replaced (for example by the clip the
corpus' radiopaedia half had). The corpus and validation-slice figures do not move: their images are made once.

The threshold it names (``chosen_threshold``) is the one of best pooled infection Dice over all validation
slices: it weighs infection found against infection invented, on patients no fold model trained on, and it looks
neither at the corpus' test groups nor at the CTs kept out of training (CTChest, lungmask, CIP TestInput). It
counts invented infection only on validation slices, not in mL on whole CTs, so read it beside the false
infection columns before shipping it (the bundled card kept 0.5 over the 0.3 it named: docs/studies.md,
"The threshold"). The lungs move with it (the corpus lung Dice column shows how much). Each fold model's card
must record the configuration's data and folds, so no model is scored on patients it trained on. Figures only:
no model or card is changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks.intensity import hu_range
from ..engine.density import InfectionFloor
from ..engine.inference import SliceSegmenter, select_device
from ..engine.model import LoadedModel, load_model
from ..io.writing import write_text
from .data import CORPUS_GROUP, SliceSet
from .memo import memoised
from .report import healthy_volume_scores, hu_slice_scores, named_entry, without_nan
from .sources import MEDSEG_BLOCK, fold_pool, fold_sets
from .train import DiceCounts, TrainConfig, add_counts
from .volumes import find_healthy_cases

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class GroupFigures:
    """One patient group's infection at every threshold: the pooled Dice sums and the experts' voxel count, from
    which sensitivity (share of the experts' lesion found) and precision (share of the found lesion that is
    the experts') follow."""

    slices: int
    dice: DiceCounts
    expert_voxels: float = 0.0

    def add(self, logits: np.ndarray, truth: np.ndarray, thresholds: tuple[float, ...]) -> None:
        add_counts(self.dice, logits, truth, thresholds)
        self.expert_voxels += float(truth.sum())

    def figures(self) -> dict:
        both = self.dice.overlap / 2
        found = self.dice.total - self.expert_voxels
        expert = np.full_like(found, self.expert_voxels)

        def share(part: np.ndarray, whole: np.ndarray) -> list[float]:
            return [float(p / w) if w else math.nan for p, w in zip(part, whole)]

        return {"slices": self.slices, "dice": self.dice.dice(), "sensitivity": share(both, expert),
                "precision": share(both, found), "found_over_expert": share(found, expert)}


@dataclass
class FoldFigures:
    """One fold model on its validation patients."""

    fold: int
    card: str
    corpus_slices: int
    medseg_slices: int
    healthy_slices: int
    corpus_lungs: DiceCounts
    corpus_infection: DiceCounts
    medseg_infection: DiceCounts
    all_infection: DiceCounts
    healthy_volumes: dict[str, list[dict]] = field(default_factory=dict)  # name -> one entry per threshold
    hu_slices_infection: list[float] | None = None  # pooled Dice per threshold, when this fold holds their patient
    #: the same two at the card's threshold, one entry per infection density floor (``--floors``)
    healthy_volumes_floored: dict[str, list[dict]] = field(default_factory=dict)
    hu_slices_floored: list[float] | None = None
    #: COVID-19 patient group -> its infection figures (the CTs without COVID-19 have theirs in mL above)
    groups: dict[str, GroupFigures] = field(default_factory=dict)


HEALTHY_FIGURES = ("false_infection_ml", "slices_with_false_infection", "slices_with_lung", "no_lung")
#: marks a ``--held-out-ct`` CT among a fold's CTs without COVID-19 (the others validate in that fold)
HELD_OUT = " (held out)"


def score_fold(fold: int, model: LoadedModel, validation: SliceSet, healthy_cts: dict[str, Path],
               thresholds: tuple[float, ...], work: Path, batch: int = 32,
               floors: tuple[InfectionFloor | None, ...] = (),
               held_out_cts: dict[str, Path] | None = None) -> FoldFigures:
    """``model`` (trained without ``fold``) on ``validation`` (that fold's patients) at every threshold, and the
    CTs without COVID-19 among them and in ``held_out_cts`` (no fold trained on those) under every floor."""
    from .slices import resize_masks

    healthy = np.isin(validation.groups, list(healthy_cts))
    medseg = np.array([g.startswith(MEDSEG_BLOCK) for g in validation.groups], bool)
    corpus = np.array([g.startswith(CORPUS_GROUP) for g in validation.groups], bool)
    group_of = np.array(validation.groups)
    lesion_slices = validation.has_infection & ~healthy
    figures = FoldFigures(fold=fold, card=model.card.name, corpus_slices=int(corpus.sum()),
                          medseg_slices=int(medseg.sum()), healthy_slices=int(healthy.sum()),
                          **{name: DiceCounts.zeros(len(thresholds)) for name in (
                              "corpus_lungs", "corpus_infection", "medseg_infection", "all_infection")},
                          groups={group: GroupFigures(int(np.sum(lesion_slices & (group_of == group))),
                                                      DiceCounts.zeros(len(thresholds)))
                                  for group in sorted(set(group_of[lesion_slices]))})
    segmenter = SliceSegmenter(model, select_device("cpu"))
    for start in range(0, len(validation.names), batch):
        part = slice(start, start + batch)
        if validation.has_density is not None:  # anatomy: the validation slices are canvases already
            from ..engine.anatomy import anatomy_network_input

            batch_input = anatomy_network_input(validation.images[part], validation.has_density[part])
        else:
            batch_input = segmenter.prepare_images(validation.images[part])
        logits = segmenter.logits(batch_input).numpy()
        masks = resize_masks(np.stack([validation.lungs[part], validation.infection[part]], axis=1),
                             model.card.input_size)
        for counts, keep, channel in (
                (figures.corpus_lungs, corpus[part] & validation.has_lungs[part], 0),
                (figures.corpus_infection, corpus[part] & validation.has_infection[part], 1),
                (figures.medseg_infection, medseg[part], 1),
                (figures.all_infection, validation.has_infection[part], 1)):
            add_counts(counts, logits[keep, channel], masks[keep, channel], thresholds)
        for group in set(group_of[part][lesion_slices[part]]):
            keep = lesion_slices[part] & (group_of[part] == group)
            figures.groups[group].add(logits[keep, 1], masks[keep, 1], thresholds)
    unseen_cts = {name: ct for name, ct in healthy_cts.items() if name in validation.groups} | {
        name + HELD_OUT: ct for name, ct in (held_out_cts or {}).items()}
    for name, ct in unseen_cts.items():
        once = memoised(model)  # every threshold and floor runs segment's path; the network runs once per CT
        figures.healthy_volumes[name] = [healthy_figures(once.with_threshold(t), ct, work) for t in thresholds]
        if floors:
            figures.healthy_volumes_floored[name] = [healthy_figures(once.with_floor(f), ct, work) for f in floors]
    return figures


def healthy_figures(variant: LoadedModel, ct: Path, work: Path) -> dict:
    """The false-infection figures of one CT without COVID-19 through ``covidseg segment``'s path."""
    return {k: v for k, v in healthy_volume_scores(variant, ct, work).items() if k in HEALTHY_FIGURES}


#: The fields of a training configuration that decide which patients validate in which fold.
SPLIT_FIELDS = ("corpus", "medseg", "npz_slices", "volumes", "healthy_volumes", "folds", "fold_seed",
                "medseg_in_folds")


def check_fold_model(config: TrainConfig, fold: int, model: LoadedModel, card: Path) -> None:
    """Refuse a fold model whose card records other data or folds than ``config``: it could have trained on the
    patients it would be scored on."""
    recorded = model.card.training_config
    expected = json.loads(json.dumps(dataclasses.asdict(config)))
    defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig(out_dir=""))))
    if recorded.get("fold", defaults["fold"]) != fold:
        raise ValueError(f"{card}: trained as fold {recorded.get('fold')}, found in fold {fold}'s folder")
    for name in SPLIT_FIELDS:
        if recorded.get(name, defaults[name]) != expected[name]:
            raise ValueError(f"{card}: trained with {name} = {recorded.get(name, defaults[name])!r}, the "
                             f"configuration says {expected[name]!r}; its folds may not be this run's")


def healthy_cts(config: TrainConfig) -> dict[str, Path]:
    """Patient group -> CT file of every configured CT without COVID-19."""
    return {case.case: case.image for folder, label_map in config.healthy_folders()
            for case in find_healthy_cases(Path(folder).expanduser(), label_map)}


def check_held_out(config_path: Path, trained: dict[str, Path], held_out: dict[str, Path]) -> None:
    """Refuse a CT given as held out that is among the configuration's CTs without COVID-19 (``healthy_volumes``,
    under its name or its file), or one that does not exist: its false infection would be a fit, or missing, in
    a table that says held out. COVID-19 sources (``volumes``, ``npz_slices``) are not checked: they label
    infection, so a CT from them is no negative to hold out."""
    trained_files = {ct.expanduser().resolve() for ct in trained.values()}
    for name, ct in held_out.items():
        if name in trained or ct.expanduser().resolve() in trained_files:
            raise ValueError(f"--held-out-ct {name}={ct}: {config_path.name} trains on this CT (healthy_volumes)")
        if not ct.expanduser().exists():
            raise FileNotFoundError(f"--held-out-ct {name}={ct}: no such file")


def fold_card(config: TrainConfig, fold: int) -> Path:
    return Path(config.out_dir).expanduser() / f"fold-{fold}" / f"{config.name}.json"


def score_run(config_path: Path, thresholds: tuple[float, ...], hu_slices: tuple[Path, str] | None = None,
              floors: tuple[InfectionFloor | None, ...] = (), log=print,
              held_out_cts: dict[str, Path] | None = None,
              clip_hu: tuple[float, float] | None = None) -> list[FoldFigures]:
    """Every exported fold model of a k-fold configuration, on its own fold's validation patients; ``hu_slices``
    (folder, patient group) are scored by the fold model that validates on that group, ``held_out_cts`` by all;
    ``clip_hu`` replaces the cards' HU clip for what runs from HU."""
    config = TrainConfig.from_file(config_path)
    if config.folds < 2:
        raise ValueError(f"{config_path}: not a k-fold configuration (folds = {config.folds})")
    if config.prepared:  # the rendered sources the folds trained from, not a second rendering
        from .prepared import read_sources

        pool, fold_of = fold_pool(config, read_sources(config))
    else:
        pool, fold_of = fold_pool(config)
    cts = healthy_cts(config)
    check_held_out(config_path, cts, held_out_cts or {})
    results = []
    with tempfile.TemporaryDirectory() as work:
        for fold in range(config.folds):
            card = fold_card(config, fold)
            if not card.exists():
                log(f"{config_path.name}: fold {fold} has no exported model yet ({card.name}); skipped")
                continue
            _, validation, how = fold_sets(pool, fold_of, fold)
            model = load_model(card)
            check_fold_model(config, fold, model, card)
            if clip_hu is not None:
                model = model.with_clip_hu(clip_hu)
            figures = score_fold(fold, model, validation, cts, thresholds, Path(work), floors=floors,
                                 held_out_cts=held_out_cts)
            if hu_slices is not None and fold_of.get(hu_slices[1]) == fold:
                def hu_dice(variant: LoadedModel) -> float:
                    return hu_slice_scores(variant, hu_slices[0], Path(work))["infection"]["pooled_dice"]
                once = memoised(model)
                figures.hu_slices_infection = [hu_dice(once.with_threshold(t)) for t in thresholds]
                if floors:
                    figures.hu_slices_floored = [hu_dice(once.with_floor(f)) for f in floors]
            results.append(figures)
            log(f"{config_path.name}: {how}; {figures.corpus_slices} corpus slices, {figures.medseg_slices} MedSeg "
                f"slices, {figures.healthy_slices} slices of CTs without COVID-19 "
                f"({', '.join(n for n in figures.healthy_volumes if not n.endswith(HELD_OUT)) or 'none'})")
    return results


def summarise(folds: list[FoldFigures], thresholds: tuple[float, ...],
              floors: tuple[InfectionFloor | None, ...] = (), clip_hu: tuple[float, float] | None = None) -> dict:
    """Pooled over folds (each patient group once) and per fold, per threshold; and the chosen threshold."""
    def pooled(attribute: str) -> list[float]:
        return sum((getattr(f, attribute) for f in folds), DiceCounts.zeros(len(thresholds))).dice()

    all_infection = pooled("all_infection")
    best = int(np.nanargmax(all_infection)) if not np.all(np.isnan(all_infection)) else None
    return {
        "folds_scored": [f.fold for f in folds],
        "thresholds": list(thresholds),
        "pooled": {"corpus_lungs": pooled("corpus_lungs"), "corpus_infection": pooled("corpus_infection"),
                   "medseg_infection": pooled("medseg_infection"), "all_infection": all_infection},
        "per_fold": {str(f.fold): {"corpus_infection": f.corpus_infection.dice(),
                                   "medseg_infection": f.medseg_infection.dice(),
                                   "all_infection": f.all_infection.dice(), "corpus_slices": f.corpus_slices,
                                   "medseg_slices": f.medseg_slices, "healthy_slices": f.healthy_slices,
                                   "healthy_volumes": f.healthy_volumes}
                     for f in folds},
        "per_group": {group: {"fold": f.fold, **entry.figures()} for f in folds for group, entry in f.groups.items()},
        "hu_slices": next(({"fold": f.fold, "infection": f.hu_slices_infection} for f in folds
                           if f.hu_slices_infection is not None), None),
        "floors": [f.card_entry() if f else None for f in floors],
        "clip_hu": {"replaced_by": list(clip_hu) if clip_hu else None,
                    "applies_to": "the HU slices and the CTs without COVID-19 (through covidseg segment's path)"},
        "floored": {"healthy_volumes": {f"{name} (fold {f.fold})": entries for f in folds
                                        for name, entries in f.healthy_volumes_floored.items()},
                    "hu_slices": next((f.hu_slices_floored for f in folds if f.hu_slices_floored is not None),
                                      None)},
        "chosen_threshold": thresholds[best] if best is not None else None,
        "chosen_by": "best pooled infection Dice over all validation slices (the corpus' and MedSeg's COVID-19 "
                     "slices and the CTs without COVID-19), folds pooled",
    }


def print_summary(name: str, summary: dict) -> None:
    thresholds = summary["thresholds"]
    volumes = [(fold, volume) for fold, entry in summary["per_fold"].items() for volume in entry["healthy_volumes"]]
    print(f"\n{name}: folds {summary['folds_scored']}, threshold chosen {summary['chosen_threshold']}")
    if summary["clip_hu"]["replaced_by"]:
        low, high = summary["clip_hu"]["replaced_by"]
        print(f"HU clipped to {low:g},{high:g} instead of the cards' clip, for {summary['clip_hu']['applies_to']}")
    header = ["threshold", "lungs", "infection", "MedSeg infection", "infection, all slices", "infection per fold"]
    header += [f"{volume} (fold {fold}) mL/slices" for fold, volume in volumes]
    hu_slices = summary["hu_slices"]
    if hu_slices is not None:
        header.append(f"HU slices (fold {hu_slices['fold']})")
    print("(mL/slices of false infection; 'no lung' where the model found none there)")
    print(" | ".join(header))
    for index, threshold in enumerate(thresholds):
        per_fold = [entry["corpus_infection"][index] for entry in summary["per_fold"].values()]
        row = [f"{threshold:.2f}", f"{summary['pooled']['corpus_lungs'][index]:.3f}",
               f"{summary['pooled']['corpus_infection'][index]:.3f}",
               f"{summary['pooled']['medseg_infection'][index]:.3f}",
               f"{summary['pooled']['all_infection'][index]:.3f}",
               " ".join(f"{d:.3f}" for d in per_fold) + (
                   f" (mean {np.mean(per_fold):.3f} sd {np.std(per_fold, ddof=1):.3f})" if len(per_fold) > 1 else "")]
        for fold, volume in volumes:
            row.append(healthy_cell(summary["per_fold"][fold]["healthy_volumes"][volume][index]))
        if hu_slices is not None:
            row.append(f"{hu_slices['infection'][index]:.3f}")
        print(" | ".join(row), flush=True)
    print_groups(summary)
    if summary["floors"]:
        print_floors(summary)


def print_groups(summary: dict) -> None:
    """One row per COVID-19 patient group: Dice, sensitivity and precision of its infection at each threshold."""
    print("patient group (fold, slices) | " + " | ".join(
        f"Dice/sensitivity/precision at {t:.2f}" for t in summary["thresholds"]))
    for group, entry in summary["per_group"].items():
        cells = [f"{d:.3f}/{s:.2f}/{p:.2f}" for d, s, p in zip(entry["dice"], entry["sensitivity"], entry["precision"])]
        print(f"{group} ({entry['fold']}, {entry['slices']}) | " + " | ".join(cells), flush=True)


def healthy_cell(entry: dict) -> str:
    if entry["no_lung"]:
        return "no lung"
    return f"{entry['false_infection_ml']:.1f}/{entry['slices_with_false_infection']}"


def print_floors(summary: dict) -> None:
    """One row per infection density floor: false infection (mL/slices) and the HU slices' pooled Dice."""
    volumes = summary["floored"]["healthy_volumes"]
    hu_slices = summary["floored"]["hu_slices"]
    print("infection density floor (at each card's threshold) | " + " | ".join(f"{v} mL/slices" for v in volumes)
          + (" | HU slices" if hu_slices is not None else ""))
    for index, floor in enumerate(summary["floors"]):
        row = ["none" if floor is None else f"{floor['min_hu']:g} HU after {floor['smoothing_mm']:g} mm"]
        row += [healthy_cell(entries[index]) for entries in volumes.values()]
        if hu_slices is not None:
            row.append(f"{hu_slices[index]:.3f}")
        print(" | ".join(row), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", type=Path, help="k-fold training configurations (JSON)")
    parser.add_argument("--thresholds", default=",".join(str(t) for t in DEFAULT_THRESHOLDS))
    parser.add_argument("--hu-slices", type=Path, help="HU slices with expert infection (hu_infection folder)")
    parser.add_argument("--hu-slices-group", default="corpus/0-159",
                        help="their patient group (the shared data README: the corpus' first patient, 0-158)")
    parser.add_argument("--held-out-ct", action="append", default=[], metavar="NAME=CT",
                        help="a CT without COVID-19 that no fold trained on, scored by every fold model (repeatable; "
                        "e.g. ctchest4=../shared/data/volumes/ctchest4.nrrd)")
    parser.add_argument("--floors", help="infection density floors in HU to measure, 'none' for no floor "
                        "(e.g. --floors=none,-850,-800,-750)")
    parser.add_argument("--floor-smoothing", type=float, default=2.1,
                        help="in-plane Gaussian (mm) before the floor (default 2.1)")
    parser.add_argument("--clip-hu", type=hu_range, metavar="LOW,HIGH",
                        help="replace the fold cards' HU clip for the figures measured from HU "
                        "(e.g. --clip-hu=-1250,250, the corpus' radiopaedia clip)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    thresholds = tuple(float(t) for t in args.thresholds.split(","))
    if not all(0 < t < 1 for t in thresholds):
        parser.error(f"thresholds must lie between 0 and 1: {args.thresholds}")
    try:
        floors = tuple(None if f.strip() == "none" else InfectionFloor.from_card(
            {"min_hu": float(f), "smoothing_mm": args.floor_smoothing}) for f in args.floors.split(",")
        ) if args.floors else ()
    except ValueError as error:
        parser.error(f"--floors {args.floors}: {error}")
    held_out_cts = {name: Path(path) for name, path in map(named_entry, args.held_out_ct)}
    summaries = {}
    for config_path in args.configs:
        hu_slices = (args.hu_slices, args.hu_slices_group) if args.hu_slices else None
        summaries[config_path.name] = summarise(
            score_run(config_path, thresholds, hu_slices, floors, held_out_cts=held_out_cts, clip_hu=args.clip_hu),
            thresholds, floors, args.clip_hu)
        print_summary(config_path.name, summaries[config_path.name])
    if args.json:
        write_text(args.json, json.dumps(without_nan(summaries), indent=1))


if __name__ == "__main__":
    main()
