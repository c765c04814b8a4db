"""Which slices a run trains and validates on: every configured source, split by patient, never by slice.

- Without folds, the corpus' recorded split decides (its ``train`` groups train, its ``validation`` groups
  validate); without the corpus, a fifth of the patients of the other sources (at least one) validates when
  there are three or more, and a handful of cases doubles as its own validation set.
- With ``folds = K``, every patient group of the pool (the corpus' train and validation groups, each volume,
  each npz case) is dealt into K folds by a shuffle seeded with ``fold_seed``; fold ``fold`` validates. Slices
  without a patient id (MedSeg) always train, unless ``medseg_in_folds``: then MedSeg's slices, in their numbered
  order, are cut into K blocks of consecutive numbers (neighbouring numbers are often one patient, so a block
  keeps most patients whole) and block k validates in fold k. The blocks are dealt apart from the shuffle, so
  the other groups' folds are the same with or without MedSeg. The corpus' ``test`` groups are never in any fold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import NO_PATIENT, SliceSet, load_medseg, load_npz_slices, load_slice_corpus, read_split, split_indices
from .volumes import load_volume_slices

#: What :func:`load_sources` renders: the training pool per source, and the corpus' validation groups (or None).
Sources = tuple[list[SliceSet], SliceSet | None]


def load_sources(config) -> "Sources":
    """The training pool per source, and the corpus' validation groups (None without the corpus).

    HU sources are rendered with the model's preprocessing and with each of ``config.hu_variants()`` (the
    corpus itself mixes both: its HU half was normalised unclipped, its radiopaedia half clipped); CTs without
    COVID-19 also as thick slices with ``config.healthy_thick_slices_mm``."""
    parts, corpus_validation = [], None
    preprocessing, variants, window = config.preprocessing(), config.hu_variants(), tuple(config.window)
    if config.corpus:
        corpus = load_slice_corpus(Path(config.corpus).expanduser())
        if preprocessing.mode == "anatomy":
            from .canvas_slices import corpus_on_canvas

            corpus = corpus_on_canvas(corpus, preprocessing)
        split = read_split()
        parts.extend([corpus.subset(split_indices(split, "train"))] * config.corpus_copies)
        corpus_validation = corpus.subset(split_indices(split, "validation"))
    if config.medseg:
        medseg = load_medseg(Path(config.medseg).expanduser(), preprocessing, window)
        parts.append(medseg_blocks(medseg, config.folds) if medseg_validates(config) else medseg)
    if config.npz_slices:
        parts.append(load_npz_slices(Path(config.npz_slices).expanduser(), preprocessing, window, variants))
    renderings = config.hu_renderings() if preprocessing.mode == "anatomy" else None
    if config.volumes:
        parts.append(load_volume_slices(config.volumes, preprocessing, config.label_map, variants,
                                        renderings=renderings))
    for folder, label_map in config.healthy_folders():
        parts.append(load_volume_slices(folder, preprocessing, label_map, variants, healthy=True,
                                        thick_mm=config.healthy_thick_slices_mm, renderings=renderings))
    if not parts:
        raise ValueError("no training data: set corpus, medseg, npz_slices, volumes and/or healthy_volumes in the "
                         "configuration")
    return parts, corpus_validation


def assign_folds(groups: list[str], folds: int, seed: int) -> dict[str, int]:
    """Patient group -> fold, dealt round-robin after a seeded shuffle (fold sizes differ by at most one group)."""
    patients = sorted({g for g in groups if g != NO_PATIENT})
    if folds > len(patients):
        raise ValueError(f"{folds} folds need at least {folds} patient groups; the data has {len(patients)}")
    order = np.random.default_rng(seed).permutation(len(patients))
    return {patients[index]: position % folds for position, index in enumerate(order)}


def first_renderings(slices: SliceSet) -> SliceSet:
    """Each slice once, in its first rendering (the model's own; the others are augmentation): validation scores
    what the product will see, and a CT rendered twice does not weigh twice."""
    _, first = np.unique(slices.names, return_index=True)
    return slices.subset(np.sort(first))


def split_by_groups(pool: SliceSet, validation_groups: set[str]) -> tuple[SliceSet, SliceSet]:
    held = np.array([g in validation_groups for g in pool.groups])
    return pool.subset(np.flatnonzero(~held)), pool.subset(np.flatnonzero(held))


#: Patient group of the k-th MedSeg block when MedSeg is dealt into folds.
MEDSEG_BLOCK = "medseg/block-"


def medseg_validates(config) -> bool:
    """Whether MedSeg is dealt into the folds (see the module docstring)."""
    if config.medseg_in_folds and not config.folds:
        raise ValueError("medseg_in_folds deals MedSeg into folds: the configuration has no folds")
    return bool(config.medseg and config.medseg_in_folds)


def medseg_blocks(medseg: SliceSet, folds: int) -> SliceSet:
    """MedSeg's slices (loaded in numbered order) grouped into ``folds`` blocks of consecutive numbers."""
    groups = [f"{MEDSEG_BLOCK}{block}" for block, indices in enumerate(np.array_split(np.arange(len(medseg.names)),
                                                                                        folds)) for _ in indices]
    return SliceSet(medseg.images, medseg.lungs, medseg.infection, medseg.has_lungs, medseg.has_infection,
                    medseg.names, groups, medseg.has_density)


def fold_pool(config, sources: Sources | None = None) -> tuple[SliceSet, dict[str, int]]:
    """Every source's slices in one pool (the corpus' validation groups too) and the fold of each patient group:
    loaded once, it serves every fold (a k-fold report scores all folds from it)."""
    parts, corpus_validation = load_sources(config) if sources is None else sources
    parts = list(parts)
    if corpus_validation is not None:
        parts.append(corpus_validation)  # folds deal the corpus' validation groups too
    pool = SliceSet.concatenate(parts)
    fold_of = assign_folds([g for g in pool.groups if not g.startswith(MEDSEG_BLOCK)], config.folds, config.fold_seed)
    if medseg_validates(config):  # dealt apart: the other groups' folds stay what they are without MedSeg
        fold_of.update({f"{MEDSEG_BLOCK}{block}": block for block in range(config.folds)})
    return pool, fold_of


def fold_sets(pool: SliceSet, fold_of: dict[str, int], fold: int) -> tuple[SliceSet, SliceSet, str]:
    """Training set, validation set (the patient groups of ``fold``) and one line saying so."""
    folds = max(fold_of.values()) + 1
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is not in 0..{folds - 1}")
    held = {g for g, f in fold_of.items() if f == fold}
    train_set, validation = split_by_groups(pool, held)
    return train_set, first_renderings(validation), f"fold {fold} of {folds}: {len(held)} patient groups validate"


def training_sets(config, sources: Sources | None = None) -> tuple[SliceSet, SliceSet, str]:
    """Training set, validation set, and one line saying how they were split. ``sources``: the rendered sources
    (a prepared file's, :mod:`.prepared`); rendered from ``config`` where None."""
    if sources is None:
        sources = load_sources(config)
    if config.folds:
        if config.validation_trains:
            raise ValueError("validation_trains trains a recipe's final model on every patient group: a "
                             "configuration with folds validates on some of them")
        pool, fold_of = fold_pool(config, sources)
        return fold_sets(pool, fold_of, config.fold)
    train_set, validation, how = held_out_split(config, sources)
    if validation is None:
        return train_set, first_renderings(train_set), how
    if config.validation_trains:
        return (SliceSet.concatenate([train_set, validation]), first_renderings(validation),
                f"{how}; they train too (validation_trains: their Dice is a fit)")
    return train_set, first_renderings(validation), how


def held_out_split(config, sources: Sources) -> tuple[SliceSet, SliceSet | None, str]:
    """Without folds: the training slices, the validation slices (None where the training slices double as
    them), and how they were chosen."""
    parts, corpus_validation = sources
    pool = SliceSet.concatenate(parts)
    if corpus_validation is not None:
        return pool, corpus_validation, "validation: the corpus' recorded validation groups"
    patients = sorted({g for g in pool.groups if g != NO_PATIENT})
    if len(patients) >= 3:
        count = max(1, len(patients) // 5)
        held = set(np.random.default_rng(config.seed).permutation(patients)[:count].tolist())
        train_set, validation = split_by_groups(pool, held)
        return train_set, validation, f"validation: {count} of {len(patients)} patients held out ({sorted(held)})"
    return pool, None, "validation: the training slices themselves (fewer than 3 patients)"
