"""Density rules on real HU slices with the expert's infection: ground-glass opacity and consolidation told apart
(and the rule's choice by cross-validation on MedSeg's expert GGO / consolidation masks), and the floor under which
infection is normal lung, in the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from CovidSegLib.engine.density import (InfectionFloor, InfectionSplit, apply_infection_floor, smoothed_density,
                                 split_infection)
from CovidSegLib.errors import ModelError
from CovidSegLib.labels import CONSOLIDATION, GGO, INFECTION, LEFT_LUNG
from CovidSegLib.engine.model import BUNDLED_CARD, ModelCard


@pytest.fixture(scope="module")
def infected_slice(slices: Path) -> tuple[np.ndarray, np.ndarray]:
    """HU and a label map (lung 1, the expert's infection 3) of a real COVID-19 slice."""
    with np.load(slices / "hu_infection" / "coronacases_001_slice110.npz") as data:
        hu, lungs, infection = data["image"], data["lung_mask"] > 0, data["infection_mask"] > 0
    labels = np.where(lungs, LEFT_LUNG, 0).astype(np.uint8)
    labels[infection] = INFECTION
    return hu, labels


def test_split_keeps_the_infection_and_puts_dense_lesion_in_consolidation(infected_slice) -> None:
    hu, labels = infected_slice
    rule = InfectionSplit(consolidation_min_hu=-460.0, smoothing_mm=2.1)
    split = split_infection(labels, hu, (0.75, 0.75), rule)
    infection = labels == INFECTION
    assert np.array_equal(np.isin(split, (GGO, CONSOLIDATION)), infection), "the union is the infection"
    assert np.array_equal(split[~infection], labels[~infection]), "nothing else changes"
    assert (split == GGO).any() and (split == CONSOLIDATION).any()
    density = smoothed_density(hu, (0.75, 0.75), rule.smoothing_mm)
    assert density[split == CONSOLIDATION].min() >= rule.consolidation_min_hu
    assert density[split == GGO].max() < rule.consolidation_min_hu
    assert hu[split == CONSOLIDATION].mean() > hu[split == GGO].mean() + 200


def test_smoothing_is_in_millimetres_and_in_plane_only(infected_slice) -> None:
    hu, _ = infected_slice
    volume = np.stack([hu, np.full_like(hu, -1000)])
    fine = smoothed_density(volume, (0.5, 0.5), 2.0)
    coarse = smoothed_density(volume, (2.0, 2.0), 2.0)
    assert np.allclose(fine[1], -1000), "slices are smoothed one by one"
    assert np.allclose(fine[0], ndimage.gaussian_filter(hu.astype(np.float32), 4.0, mode="nearest"))
    assert np.allclose(coarse[0], ndimage.gaussian_filter(hu.astype(np.float32), 1.0, mode="nearest"))


def test_extreme_thresholds_make_one_class(infected_slice) -> None:
    hu, labels = infected_slice
    infection = labels == INFECTION
    assert (split_infection(labels, hu, (1.0, 1.0), InfectionSplit(-5000.0))[infection] == CONSOLIDATION).all()
    assert (split_infection(labels, hu, (1.0, 1.0), InfectionSplit(5000.0))[infection] == GGO).all()
    no_infection = np.where(labels == INFECTION, LEFT_LUNG, labels).astype(np.uint8)
    assert np.array_equal(split_infection(no_infection, hu, (1.0, 1.0), InfectionSplit(-460.0)), no_infection)
    with pytest.raises(ValueError, match="not on one grid"):
        split_infection(labels[:-1], hu, (1.0, 1.0), InfectionSplit(-460.0))


def test_a_card_with_an_unreadable_rule_is_refused() -> None:
    document = json.loads(BUNDLED_CARD.read_text(encoding="utf-8"))
    document["infection_split"] = {"smoothing_mm": 1.0}  # no threshold
    with pytest.raises(ModelError, match="consolidation_min_hu"):
        ModelCard.from_json(json.dumps(document), "broken.json")
    document["infection_split"] = {}
    assert ModelCard.from_json(json.dumps(document), "whole.json").split_rule() is None


def test_rule_chosen_by_cross_validation_separates_medseg_classes(slices: Path) -> None:
    """The calibration's own steps on 20 real MedSeg slices inside the experts' infection: the nested choice
    scores both classes above what calling all of it GGO gives (consolidation 0, GGO below the split's)."""
    from CovidSegLib.slices.evaluation import read_mask_image
    from CovidSegLib.slices.dataset import read_slices
    from CovidSegLib.training.infection_split import (class_dice, confusion, cross_validate,
                                                     read_multiclass)

    root = slices / "medseg_train"
    medseg = sorted(read_slices(root / "images", (-1250.0, 250.0)), key=lambda s: int(s.source.stem))[:20]
    names = [s.source.stem for s in medseg]
    multiclass = read_multiclass(root, names)
    experts = [read_mask_image(root / "infection_masks" / f"{n}.png") for n in names]
    rules = [InfectionSplit(t, 1.4) for t in (-900.0, -600.0, -460.0, -300.0, 0.0)]
    counts = np.stack([np.stack([confusion(s.hu, e, m, r) for r in rules])
                       for s, e, m in zip(medseg, experts, multiclass)])
    result = cross_validate(rules, counts, folds=4)
    all_ggo = class_dice(np.stack([confusion(s.hu, e, m, InfectionSplit(5000.0))
                                   for s, e, m in zip(medseg, experts, multiclass)]).sum(axis=0))
    assert all_ggo["consolidation"] == 0
    assert result["pooled_dice"]["consolidation"] > 0.5  # measured 0.63
    assert result["pooled_dice"]["ggo"] > all_ggo["ggo"]  # measured 0.72 against 0.69
    assert all(r["consolidation_min_hu"] in (-600.0, -460.0, -300.0) for r in result["rules_chosen_per_fold"])


def test_floor_gives_faint_infection_back_and_keeps_the_rest(infected_slice) -> None:
    hu, labels = infected_slice
    infection = (labels == INFECTION)[None]
    floor = InfectionFloor(min_hu=-700.0, smoothing_mm=2.1)
    kept = apply_infection_floor(infection, hu[None], (0.75, 0.75), floor)
    density = smoothed_density(hu, (0.75, 0.75), floor.smoothing_mm)
    assert not (kept & ~infection).any(), "a floor only takes infection away"
    assert kept.any() and (infection & ~kept).any(), "this slice's lesion has faint and dense parts"
    assert np.array_equal(kept[0], infection[0] & (density >= floor.min_hu)), "the box smooths as the whole slice"
    assert np.array_equal(apply_infection_floor(infection, hu[None], (0.75, 0.75), InfectionFloor(-1024.0)),
                          infection)
    with pytest.raises(ValueError, match="not on one grid"):
        apply_infection_floor(infection[:, :-1], hu[None], (0.75, 0.75), floor)


def test_a_card_floor_is_read_checked_and_run_by_the_engine(infected_slice, tmp_path: Path) -> None:
    """Through ``covidseg segment``'s path on a real COVID-19 slice (stacked into a 5-slice volume): the floor
    the card names takes the faint infection away, and those voxels stay lung."""
    import SimpleITK as sitk

    from CovidSegLib.engine.model import load_model
    from CovidSegLib.engine.pipeline import SegmentOptions, segment_file

    document = json.loads(BUNDLED_CARD.read_text(encoding="utf-8"))
    for wrong in ({"smoothing_mm": 2.0}, {"min_hu": 200.0}, {"min_hu": -800.0, "smoothing_mm": -1.0}):
        document["infection_floor"] = wrong
        with pytest.raises(ModelError, match="min_hu|density floor"):
            ModelCard.from_json(json.dumps(document), "broken.json")
    assert ModelCard.from_json(json.dumps({**document, "infection_floor": {}}), "c.json").floor_rule() is None

    hu, _ = infected_slice
    image = sitk.GetImageFromArray(np.repeat(np.rot90(hu)[None], 5, axis=0).astype(np.int16))
    image.SetSpacing((0.75, 0.75, 1.0))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    model = load_model()
    options = SegmentOptions(device="cpu", separate_infection=False)
    plain = segment_file(tmp_path / "ct.nrrd", tmp_path / "plain.seg.nrrd", model, options).labels
    floor = InfectionFloor(min_hu=-700.0, smoothing_mm=2.1)
    floored = segment_file(tmp_path / "ct.nrrd", tmp_path / "floored.seg.nrrd", model.with_floor(floor),
                           options).labels
    taken = (plain == INFECTION) & (floored != INFECTION)
    assert taken.any() and not ((floored == INFECTION) & (plain != INFECTION)).any()
    assert np.array_equal(plain > 0, floored > 0), "what the floor takes stays lung, the lungs do not move"
    density = smoothed_density(sitk.GetArrayFromImage(image), (0.75, 0.75), floor.smoothing_mm)
    assert np.median(density[taken]) < floor.min_hu
