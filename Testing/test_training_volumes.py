"""Training from full volumes (COVID-19-CT-Seg layout, image + label pairs), k-fold splits by patient,
cross-validation, and DistributedDataParallel under torchrun with gloo on this CPU.

The volume folders are built in a scratch directory from the real CTs and expert masks in ../shared/data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")

from CovidSegLib.measure.evaluation import mapped_masks, parse_mapping  # noqa: E402
from CovidSegLib.engine.model import load_model  # noqa: E402
from CovidSegLib.io.reading import read_segmentation  # noqa: E402
from CovidSegLib.training import crossval_report  # noqa: E402
from CovidSegLib.training.data import NO_PATIENT  # noqa: E402
from CovidSegLib.training.sources import assign_folds, first_renderings, training_sets  # noqa: E402
from CovidSegLib.training.train import TrainConfig, cross_validate, train  # noqa: E402
from CovidSegLib.training.volumes import covid19_ct_seg_key, find_volume_cases, load_volume_slices  # noqa: E402

from conftest import PROJECT_ROOT, run_cli  # noqa: E402

PREPROCESSING = TrainConfig(out_dir="").preprocessing()


@pytest.fixture(scope="module")
def covid19_ct_seg(volumes: Path, tmp_path_factory) -> Path:
    """CTChest in the Kaggle COVID-19-CT-Seg layout: ct_scans/coronacases_org_001.nii.gz, lung_mask/ (1 left,
    2 right) from the Slicer expert segmentation, and an infection mask with one real-lung region marked."""
    root = tmp_path_factory.mktemp("covid19") / "COVID-19-CT-Seg"
    for folder in ("ct_scans", "lung_mask", "infection_mask"):
        (root / folder).mkdir(parents=True)
    ct = sitk.ReadImage(str(volumes / "ctchest4.nrrd"))
    sitk.WriteImage(ct, str(root / "ct_scans" / "coronacases_org_001.nii.gz"))
    masks = mapped_masks(read_segmentation(volumes / "ctchest4.seg.nrrd"), parse_mapping("slicer-ctchest"))
    lungs = np.zeros(masks[1].shape, np.uint8)
    lungs[masks[1]], lungs[masks[2]] = 1, 2
    infection = np.zeros_like(lungs)
    infection[15:18] = masks[2][15:18]  # stands in for a lesion: a slab of the real right lung
    for folder, array in (("lung_mask", lungs), ("infection_mask", infection)):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(ct)
        sitk.WriteImage(image, str(root / folder / "coronacases_001.nii.gz"))
    return root


def test_ct_without_covid_also_trains_as_thick_slices(pairs: Path, volumes: Path) -> None:
    """With a thickness, each slice of a CT without COVID-19 comes once more as a thick reconstruction shows it:
    HU averaged over the slab (3 slices of 3 mm for 9 mm), lungs where the slab is mostly lung; validation keeps
    the thin slice only. A volume whose slices are already that thick gets no copy."""
    from CovidSegLib.io.orientation import to_canonical
    from CovidSegLib.training.data import represent_hu
    from CovidSegLib.training.volumes import _read_ct

    thin = load_volume_slices(pairs, PREPROCESSING, "totalseg-lobes", healthy=True)
    both = load_volume_slices(pairs, PREPROCESSING, "totalseg-lobes", healthy=True, thick_mm=9.0)
    n = len(thin.names)
    assert len(both.names) == 2 * n and both.names[n:] == thin.names and not both.infection.any()
    assert np.array_equal(both.images[:n], thin.images) and np.array_equal(first_renderings(both).images, thin.images)
    canonical, _ = to_canonical(_read_ct(volumes / "totalseg_example_ct_sm.nii.gz"))
    assert canonical.geometry.spacing[2] == pytest.approx(3.0)  # every slice is chosen at 3 mm
    middle = n // 2
    slab = canonical.array[middle - 1:middle + 2].astype(np.float32).mean(axis=0)
    assert np.array_equal(both.images[n + middle], represent_hu(slab[None], PREPROCESSING)[0])
    assert not np.array_equal(both.images[n + middle], thin.images[middle])
    lung_share = both.lungs[n:].mean()
    assert 0.5 * thin.lungs.mean() < lung_share < 1.5 * thin.lungs.mean()  # the same lungs, edges partial-volumed
    assert len(load_volume_slices(pairs, PREPROCESSING, "totalseg-lobes", healthy=True, thick_mm=4.0).names) == n
    with pytest.raises(ValueError, match="healthy_thick_slices_mm"):
        TrainConfig(out_dir="x", healthy_thick_slices_mm=-1.0)


def test_covid19_ct_seg_names_pair_up() -> None:
    assert covid19_ct_seg_key("coronacases_org_001.nii") == covid19_ct_seg_key("coronacases_001.nii.gz")
    assert covid19_ct_seg_key("radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm.nii") == \
        covid19_ct_seg_key("radiopaedia_10_85902_1.nii") == "radiopaedia_10_85902_1"


def test_covid19_ct_seg_layout_gives_canonical_slices_with_masks(covid19_ct_seg: Path) -> None:
    cases = find_volume_cases(covid19_ct_seg)
    assert [c.case for c in cases] == ["coronacases_001"]
    slices = load_volume_slices(covid19_ct_seg, PREPROCESSING)
    # CTChest: 34 slices of 10 mm, the lungs in 28 of them; every one is kept (10 mm > the 2.5 mm gap), those
    # above and below the lungs too (the engine meets them in every CT)
    assert slices.images.shape == (34, 256, 256) and slices.images.dtype == np.uint8
    assert (~slices.lungs.any(axis=(1, 2))).sum() == 6
    assert slices.has_lungs.all() and slices.has_infection.all()
    assert set(slices.groups) == {"coronacases_001"}
    assert slices.infection.any() and not (slices.infection & ~slices.lungs).any()
    # canonical orientation: the spine (bright, dense) is in the lower half, the patient's back
    middle = slices.images[len(slices.images) // 2].astype(float)
    assert middle[160:, 100:156].mean() > middle[:96, 100:156].mean()


def test_pairs_need_a_label_map_for_foreign_codes(pairs: Path) -> None:
    with pytest.raises(Exception, match="not in the CovidSeg scheme"):
        load_volume_slices(pairs, PREPROCESSING)
    slices = load_volume_slices(pairs, PREPROCESSING, label_map="totalseg-lobes")
    assert slices.has_lungs.all() and not slices.has_infection.any()
    assert slices.lungs.any() and slices.groups[0] == "totalseg"


def test_healthy_volumes_teach_no_infection_on_every_slice(pairs: Path, volumes: Path, tmp_path: Path) -> None:
    """CTs without COVID-19: infection is labelled (empty) on every slice, neck and abdomen included; lungs are
    labelled where masks come with them, and bare CTs (no masks) train the infection output only."""
    labelled = load_volume_slices(pairs, PREPROCESSING, label_map="totalseg-lobes", healthy=True)
    assert labelled.has_infection.all() and not labelled.infection.any() and labelled.has_lungs.all()
    assert (~labelled.lungs.any(axis=(1, 2))).any()  # abdominal slices below the lungs: "no lung" is taught
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "ctchest.nrrd").symlink_to(volumes / "ctchest4.nrrd")
    (bare / "notes.txt").write_text("not a CT")
    unlabelled = load_volume_slices(bare, PREPROCESSING, healthy=True)
    assert len(unlabelled.names) == 34 and unlabelled.has_infection.all() and not unlabelled.has_lungs.any()
    with pytest.raises(Exception, match="labels infection in a volume given as healthy"):
        infected = tmp_path / "infected"
        (infected / "images").mkdir(parents=True)
        (infected / "labels").mkdir()
        (infected / "images" / "case.nrrd").symlink_to(volumes / "ctchest4.nrrd")
        (infected / "labels" / "case.nrrd").symlink_to(volumes / "ctchest4.seg.nrrd")
        load_volume_slices(infected, PREPROCESSING, label_map="5=infection,6=left_lung", healthy=True)


def test_folds_split_by_patient(covid19_ct_seg: Path, slices: Path, tmp_path: Path) -> None:
    config = TrainConfig(out_dir=str(tmp_path), medseg=str(slices / "medseg_train"), npz_slices=str(slices),
                         volumes=str(covid19_ct_seg), folds=2)
    held_out = []
    for fold in (0, 1):
        train_set, validation, _ = training_sets(replace(config, fold=fold))
        assert not set(train_set.groups) & set(validation.groups)
        assert NO_PATIENT not in validation.groups  # MedSeg (no patient ids) always trains
        assert sum(name.startswith("medseg/") for name in train_set.names) == 50
        held_out.append(set(validation.groups))
    # npz cases coronacases_001, coronacases_008, the radiopaedia case, and the volume: each validates once
    assert held_out[0] | held_out[1] == {"npz/ma2020_coronacases_001", "npz/ma2020_coronacases_008",
                                         "npz/ma2020_radiopaedia_14_85914_0", "coronacases_001"}
    assert not held_out[0] & held_out[1]

    # MedSeg dealt into the folds: block k of consecutive slice numbers validates in fold k, and every other group
    # keeps the fold it has without MedSeg (a paired comparison of recipes with and without it)
    with_medseg = replace(config, medseg_in_folds=True)
    medseg_held = []
    for fold in (0, 1):
        train_set, validation, _ = training_sets(replace(with_medseg, fold=fold))
        _, without_medseg, _ = training_sets(replace(config, medseg=None, fold=fold))
        assert {g for g in validation.groups if not g.startswith("medseg/")} == held_out[fold] == \
            set(without_medseg.groups)
        names = [int(n.split("/")[1]) for n in validation.names if n.startswith("medseg/")]
        assert set(validation.groups) - held_out[fold] == {f"medseg/block-{fold}"} and len(names) == 25
        assert not set(names) & {int(n.split("/")[1]) for n in train_set.names if n.startswith("medseg/")}
        medseg_held.append(names)
    assert max(medseg_held[0]) < min(medseg_held[1])
    with pytest.raises(ValueError, match="no folds"):
        training_sets(replace(with_medseg, folds=0))

    # a recipe's final model: the patients that validated train too, and are still scored (a fit)
    held_train, held_validation, _ = training_sets(replace(config, folds=0))
    every_train, every_validation, how = training_sets(replace(config, folds=0, validation_trains=True))
    assert every_validation.names == held_validation.names and "their Dice is a fit" in how
    assert set(held_validation.names) <= set(every_train.names)
    assert len(every_train.names) == len(held_train.names) + 2 * len(held_validation.names)  # both renderings
    with pytest.raises(ValueError, match="validation_trains"):
        training_sets(replace(config, validation_trains=True))
    assert assign_folds(["a", "b", "c"], 2, seed=3) == assign_folds(["c", "a", "b"], 2, seed=3)
    with pytest.raises(ValueError, match="need at least 5 patient groups"):
        assign_folds(["a", "b", "c", "d"], 5, seed=0)


def test_cross_validation_trains_every_fold_and_the_report_scores_each_on_its_own_patients(
        covid19_ct_seg: Path, slices: Path, volumes: Path, pairs: Path, tmp_path: Path, monkeypatch) -> None:
    config = TrainConfig(out_dir=str(tmp_path / "cv"), npz_slices=str(slices), volumes=str(covid19_ct_seg),
                         medseg=str(slices / "medseg_train"), medseg_in_folds=True,
                         healthy_volumes=({"path": str(pairs), "label_map": "totalseg-lobes"},),
                         folds=2, name="tiny", input_size=64, epochs=1, batch_size=4, max_steps_per_epoch=2,
                         threads=2)
    summary = json.loads(cross_validate(config, log=lambda *_: None).read_text(encoding="utf-8"))
    assert summary["folds"] == 2 and len(summary["per_fold_validation_pooled_dice"]) == 2
    assert all((tmp_path / "cv" / f"fold-{k}" / "tiny.safetensors").is_file() for k in (0, 1))
    assert 0 <= summary["lungs"]["mean"] <= 1

    def write_config(name: str, changed: TrainConfig) -> str:
        (tmp_path / name).write_text(json.dumps({**asdict(changed), "healthy_volumes": list(changed.healthy_volumes)}))
        return str(tmp_path / name)

    # the HU slices stand in here for a patient group of the run (the volume): its own fold's model scores them.
    # CTChest stands in for a CT no fold trained on (the run's COVID-19 volume is a copy of it, but with infection
    # labelled, so it is no negative: only the CTs without COVID-19 are checked against --held-out-ct)
    crossval_report.main([write_config("cv.json", config), "--thresholds", "0.5,0.9", "--json",
                          str(tmp_path / "r.json"), "--hu-slices", str(slices / "hu_infection"),
                          "--hu-slices-group", "coronacases_001", "--floors=none,-800",
                          "--held-out-ct", f"ctchest4={volumes / 'ctchest4.nrrd'}"])
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["cv.json"]
    assert report["folds_scored"] == [0, 1] and report["chosen_threshold"] in (0.5, 0.9)
    volume_fold = next(fold for fold in (0, 1)
                       if "coronacases_001" in training_sets(replace(config, fold=fold))[1].groups)
    assert report["hu_slices"]["fold"] == volume_fold and len(report["hu_slices"]["infection"]) == 2
    assert all(0 <= dice <= 1 for dice in report["hu_slices"]["infection"])
    assert [report["per_fold"][k]["medseg_slices"] for k in "01"] == [25, 25]
    # each COVID-19 patient group once, by its own fold's model: Dice is the harmonic mean of sensitivity and
    # precision, and the MedSeg blocks count as groups of their own
    groups = report["per_group"]
    assert groups["coronacases_001"]["fold"] == volume_fold and "totalseg" not in groups
    assert any(name.startswith("medseg") for name in groups) and all(entry["slices"] > 0 for entry in groups.values())
    for entry in groups.values():
        for dice, sensitivity, precision in zip(entry["dice"], entry["sensitivity"], entry["precision"]):
            measured = [x for x in (dice, sensitivity, precision) if x is not None]  # JSON null: no voxels
            assert all(0 <= x <= 1 for x in measured)
            if len(measured) == 3 and sensitivity + precision > 0:
                assert dice == pytest.approx(2 * sensitivity * precision / (sensitivity + precision))
    # the CT without COVID-19 counts once, in its own rendering (training also renders it a second way)
    totalseg_slices = len(load_volume_slices(pairs, PREPROCESSING, "totalseg-lobes", healthy=True).names)
    assert sorted(report["per_fold"][k]["healthy_slices"] for k in "01") == [0, totalseg_slices]
    # at the training threshold each fold's figure over all its validation slices is the Dice training validated
    # with (exported float16 weights against training's float32: a few boundary pixels may differ)
    for fold, trained in enumerate(summary["per_fold_validation_pooled_dice"]):
        reported = report["per_fold"][str(fold)]["all_infection"][0]
        assert reported == pytest.approx(trained["infection"], abs=0.02) or np.isnan(trained["infection"])
    # the CT without COVID-19 validates in exactly one fold, where covidseg segment's path measured it; the CT no
    # fold trained on (CTChest) is measured by both
    assert all("ctchest4 (held out)" in report["per_fold"][k]["healthy_volumes"] for k in "01")
    measured = [{name: figures for name, figures in entry["healthy_volumes"].items() if "held out" not in name}
                for entry in report["per_fold"].values()]
    measured = [entry for entry in measured if entry]
    assert len(measured) == 1 and list(measured[0]) == ["totalseg"]
    for figures in measured[0]["totalseg"]:
        assert figures["false_infection_ml"] >= 0 and isinstance(figures["no_lung"], bool)
        assert 0 <= figures["slices_with_false_infection"] <= figures["slices_with_lung"] or figures["no_lung"]
    # under each floor: the same CT and slices at the card's threshold; a floor only ever takes infection away
    assert report["floors"] == [None, {"min_hu": -800.0, "smoothing_mm": 2.1}]
    floored_volumes = report["floored"]["healthy_volumes"]
    assert {"ctchest4 (held out) (fold 0)", "ctchest4 (held out) (fold 1)"} <= set(floored_volumes) and \
        len(floored_volumes) == 3
    [(name, (unfloored, floored))] = [(n, v) for n, v in floored_volumes.items() if not n.startswith("ctchest4")]
    assert name.startswith("totalseg (fold ")
    assert unfloored == measured[0]["totalseg"][0], "no floor at the card's threshold is the 0.5 column"
    assert floored["false_infection_ml"] <= unfloored["false_infection_ml"]
    assert len(report["floored"]["hu_slices"]) == 2 and report["floored"]["hu_slices"][0] == \
        report["hu_slices"]["infection"][0]
    # another HU clip (a study of the representation) moves only what runs from HU, and the report says which clip
    clips_seen = []

    def hu_slice_scores(model, folder, work):
        clips_seen.append(model.card.preprocessing.clip_hu)
        return {"infection": {"pooled_dice": 0.5}}

    monkeypatch.setattr(crossval_report, "hu_slice_scores", hu_slice_scores)
    crossval_report.main([write_config("cv.json", config), "--thresholds", "0.5", "--json", str(tmp_path / "c.json"),
                          "--hu-slices", str(slices / "hu_infection"), "--hu-slices-group", "coronacases_001",
                          "--clip-hu=-1250,250"])
    clipped = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))["cv.json"]
    assert clipped["clip_hu"]["replaced_by"] == [-1250, 250] and report["clip_hu"]["replaced_by"] is None
    for figure in ("corpus_lungs", "corpus_infection", "all_infection"):
        assert clipped["pooled"][figure] == report["pooled"][figure][:1]
    assert len(clipped["hu_slices"]["infection"]) == 1 and clips_seen == [(-1250.0, 250.0)]
    # a CT the configuration trains on is refused as held out, under its own name or another
    for entry in (f"totalseg={volumes / 'ctchest4.nrrd'}", f"renamed={volumes / 'totalseg_example_ct_sm.nii.gz'}"):
        with pytest.raises(ValueError, match="trains on this CT"):
            crossval_report.main([write_config("cv.json", config), "--held-out-ct", entry])
    # fold models trained on other folds than a configuration deals are refused, not scored on their own patients
    with pytest.raises(ValueError, match="medseg_in_folds"):
        crossval_report.main([write_config("other.json", replace(config, medseg_in_folds=False))])


def test_fine_tune_on_a_nifti_folder_with_the_documented_command(covid19_ct_seg: Path, slices: Path,
                                                                  tmp_path: Path) -> None:
    """`covidseg train CONFIG` fine-tunes a model on a COVID-19-CT-Seg folder, frozen encoder, and exports it."""
    base = train(TrainConfig(out_dir=str(tmp_path / "base"), npz_slices=str(slices), name="base", input_size=64,
                             epochs=1, batch_size=4, max_steps_per_epoch=2, threads=2), log=lambda *_: None)
    config = {"out_dir": str(tmp_path / "tuned"), "volumes": str(covid19_ct_seg), "init_model": str(base),
              "freeze_encoder": True, "name": "tuned", "input_size": 64, "epochs": 2, "batch_size": 4,
              "max_steps_per_epoch": 3, "threads": 2}
    (tmp_path / "tune.json").write_text(json.dumps(config))
    result = run_cli("train", str(tmp_path / "tune.json"))
    assert result.returncode == 0, result.stderr
    # 34 slices, each rendered with the product's HU clip and with the radiopaedia half's
    assert "training on 68 slices" in result.stdout and "fewer than 3 patients" in result.stdout
    card = load_model(tmp_path / "tuned" / "tuned.json").card
    assert "volumes from COVID-19-CT-Seg" in card.training_data
    assert len(json.loads((tmp_path / "tuned" / "history.json").read_text(encoding="utf-8"))) == 2


def test_torchrun_trains_with_distributed_data_parallel_on_gloo(slices: Path, tmp_path: Path) -> None:
    """Two processes on this CPU (gloo): both train their share of every batch, process 0 exports."""
    config = {"out_dir": str(tmp_path / "ddp"), "npz_slices": str(slices), "medseg": str(slices / "medseg_train"),
              "name": "ddp", "input_size": 64, "epochs": 2, "batch_size": 4, "max_steps_per_epoch": 3,
              "threads": 1, "device": "cpu"}
    (tmp_path / "ddp.json").write_text(json.dumps(config))
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(PROJECT_ROOT))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "CovidSegLib.training", str(tmp_path / "ddp.json")],
                            capture_output=True, text=True, encoding="utf-8", timeout=600, env=environment,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes (gloo)" in result.stdout
    assert result.stdout.count("epoch 1:") == 1  # only process 0 reports
    history = json.loads((tmp_path / "ddp" / "history.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in history] == [1, 2]
    assert load_model(tmp_path / "ddp" / "ddp.json").card.input_size == 64


def test_a_whole_lung_mask_is_split_into_left_and_right_like_the_expert(volumes: Path, tmp_path: Path) -> None:
    """COPDGene's training lungs come as one mask; CTChest's expert lungs, merged and split again by the
    engine's rule, land on the expert's sides."""
    from CovidSegLib.training.healthy import split_lung_mask

    reference = mapped_masks(read_segmentation(volumes / "ctchest4.seg.nrrd"), parse_mapping("slicer-ctchest"))
    merged = sitk.GetImageFromArray((reference[1] | reference[2]).astype(np.uint8))
    merged.CopyInformation(sitk.ReadImage(str(volumes / "ctchest4.nrrd")))
    sitk.WriteImage(merged, str(tmp_path / "whole.nrrd"))
    split_lung_mask(tmp_path / "whole.nrrd", tmp_path / "labels" / "sides.nrrd")  # a folder not made yet
    sides = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels" / "sides.nrrd")))
    for value in (1, 2):
        overlap = (sides == value) & reference[value]
        assert 2 * overlap.sum() / ((sides == value).sum() + reference[value].sum()) > 0.97


def test_anatomy_training_renders_every_source_on_the_canvas_and_exports_a_model_the_engine_runs(
        pairs: Path, volumes: Path, slices: Path, tmp_path: Path) -> None:
    """The anatomy representation end to end: MedSeg's 8-bit crops and the npz slices placed by their bodies, a
    CT without COVID-19 as scanned, in another acquisition and with synthetic lesions, two epochs of a few steps,
    an export whose card says anatomy and 3 input channels, and ``covidseg segment`` running it on CTChest."""
    from CovidSegLib.engine.pipeline import SegmentOptions, segment_file

    config = TrainConfig(out_dir=str(tmp_path / "run"), name="tiny-anatomy", representation="anatomy",
                         medseg=str(slices / "medseg_train"), npz_slices=str(slices / "hu_infection"),
                         healthy_volumes=({"path": str(pairs), "label_map": "totalseg-lobes"},),
                         acquisitions=1, synthetic_lesions=2, clip_hu=(-1250.0, 250.0), epochs=2, batch_size=4,
                         max_steps_per_epoch=2, threads=2, seed=1, select_best=False)
    train_set, validation, _ = training_sets(config)
    assert train_set.images.shape[1:] == (2, 256, 256) and train_set.has_density is not None
    names = train_set.names
    medseg = np.array([n.startswith("medseg/") for n in names])
    lesions = np.array(["/lesion-" in n for n in names])
    assert medseg.sum() == 50 and not train_set.has_lungs[medseg].any() and train_set.has_density[medseg].all()
    hu_slices = np.array([n.startswith("npz/") for n in names])  # the experts' infection in HU, labelled
    assert hu_slices.sum() == 3 and train_set.has_infection[hu_slices].all() and train_set.infection[hu_slices].any()
    assert lesions.any() and train_set.infection[lesions].any(axis=(1, 2)).all()  # every lesion slice holds one
    assert (train_set.infection[lesions] <= train_set.lungs[lesions]).all()  # lesions are lung: lung is lung
    healthy = np.array([n.startswith("totalseg") and "/lesion-" not in n for n in names])
    assert healthy.sum() == 2 * 30 and not train_set.infection[healthy].any()  # as scanned + one acquisition
    card_path = train(config, log=lambda *_: None)
    model = load_model(card_path)
    assert model.card.preprocessing.mode == "anatomy" and model.card.in_channels == 3
    result = segment_file(volumes / "ctchest4.nrrd", tmp_path / "ctchest.nii.gz", model,
                          SegmentOptions(allow_empty=True))
    assert result.labels.shape == (34, 128, 128)


def test_an_anatomy_model_trains_on_exactly_the_input_the_product_gives_it(pairs: Path, volumes: Path,
                                                                           tmp_path: Path) -> None:
    """A CT's training slices, as scanned, are bit for bit the network input ``covidseg segment``'s engine makes of
    the same slices: the same reading and HU checks, the same canvas placement, the same channels."""
    from CovidSegLib.checks.intensity import prepare_ct
    from CovidSegLib.engine.anatomy import anatomy_network_input
    from CovidSegLib.engine.inference import SliceSegmenter
    from CovidSegLib.engine.model import build_network, save_model
    from CovidSegLib.io.orientation import to_canonical
    from CovidSegLib.io.reading import read_volume
    from CovidSegLib.training.train import make_card

    config = TrainConfig(out_dir="", representation="anatomy")
    card = make_card(config)
    save_model(build_network(card), card, tmp_path / "untrained.json")
    segmenter = SliceSegmenter(load_model(tmp_path / "untrained.json"), torch.device("cpu"))

    trained = load_volume_slices(pairs, config.preprocessing(), "totalseg-lobes", healthy=True)
    canonical, _ = to_canonical(prepare_ct(read_volume(volumes / "totalseg_example_ct_sm.nii.gz")))
    spacing = canonical.geometry.spacing
    frame = segmenter.frame_for_volume(canonical.array, (float(spacing[1]), float(spacing[0])))
    indices = np.array([int(name.rsplit("/", 1)[1]) for name in trained.names])
    product = segmenter.prepare(canonical.array[indices], frame)
    assert torch.equal(anatomy_network_input(trained.images, trained.has_density), product)
