"""A short real training on real slices from ../shared/data: the loss falls, the model exports and loads,
an interrupted run resumes to the same result, and fine-tuning starts from an exported model."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CovidSegLib.engine.inference import segment_volume  # noqa: E402
from CovidSegLib.checks.intensity import prepare_ct  # noqa: E402
from CovidSegLib.engine.model import load_model  # noqa: E402
from CovidSegLib.io.reading import read_volume  # noqa: E402
from CovidSegLib.training.data import continuity_groups, load_medseg, load_npz_slices, read_split  # noqa: E402
from CovidSegLib.training.export import export_checkpoint  # noqa: E402
from CovidSegLib.training.train import TrainConfig, cpu_has_native_bf16, masked_loss, train  # noqa: E402

PREPROCESSING = TrainConfig(out_dir="").preprocessing()


def _config(slices: Path, out: Path, **changes) -> TrainConfig:
    config = TrainConfig(out_dir=str(out), medseg=str(slices / "medseg_train"), npz_slices=str(slices),
                         name="tiny", input_size=64, epochs=4, batch_size=8, max_steps_per_epoch=6,
                         learning_rate=3e-3, patience=10, seed=1, threads=2)
    return replace(config, **changes)


def test_real_slice_sources_load(slices: Path) -> None:
    medseg = load_medseg(slices / "medseg_train", PREPROCESSING)
    assert len(medseg.names) == 50 and medseg.infection.any() and not medseg.has_lungs.any()
    assert medseg.images.shape[1:] == medseg.infection.shape[1:] == (256, 256)
    npz = load_npz_slices(slices, PREPROCESSING)
    assert len(npz.names) == 5 and npz.lungs.any() and not npz.has_infection.any()
    assert npz.images.dtype == np.uint8 and npz.images.max() > 200
    with_variants = load_npz_slices(slices, PREPROCESSING, variants=TrainConfig(out_dir="").hu_variants())
    assert len(with_variants.names) == 10 and not np.array_equal(with_variants.images[0], with_variants.images[1])


def test_short_training_lowers_loss_and_exports_a_loadable_model(slices: Path, volumes: Path, tmp_path: Path
                                                                 ) -> None:
    card_path = train(_config(slices, tmp_path / "run"), log=lambda *_: None)
    history = json.loads((tmp_path / "run" / "history.json").read_text(encoding="utf-8"))
    assert history[-1]["loss"] < history[0]["loss"], [h["loss"] for h in history]
    model = load_model(card_path)
    assert model.card.input_size == 64 and model.card.outputs == ("lungs", "infection")
    assert "MedSeg" in model.card.training_data and model.card.scores["best_epoch"] >= 1
    result = segment_volume(prepare_ct(read_volume(volumes / "ctchest4.nrrd")), model)
    assert result.labels.shape == (34, 128, 128)


@pytest.mark.parametrize("cpu_bf16", [False, True], ids=["float32", "bfloat16"])
def test_interrupted_training_resumes_to_the_same_result(slices: Path, tmp_path: Path, cpu_bf16: bool) -> None:
    if cpu_bf16 and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bfloat16")
    config = _config(slices, tmp_path / "full", epochs=3, max_steps_per_epoch=3, cpu_bf16=cpu_bf16)
    train(config, log=lambda *_: None)
    uninterrupted = json.loads((tmp_path / "full" / "history.json").read_text(encoding="utf-8"))

    class Interrupt(Exception):
        pass

    def stop_after_first_epoch(message: str) -> None:
        if message.startswith("epoch 1:"):
            raise Interrupt

    resumed_config = replace(config, out_dir=str(tmp_path / "resumed"))
    with pytest.raises(Interrupt):
        train(resumed_config, log=stop_after_first_epoch)
    # the interrupted run can be measured as it stands: its checkpoint exports as a loadable model
    snapshot = load_model(export_checkpoint(resumed_config, tmp_path / "snapshot" / "tiny.json"))
    assert snapshot.card.scores["epochs_trained"] == 1 and "run not ended" in \
        snapshot.card.scores["exported_epoch_chosen_by"]
    messages: list[str] = []
    train(resumed_config, log=messages.append)
    assert "resumed after epoch 1" in messages
    resumed = json.loads((tmp_path / "resumed" / "history.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    assert np.allclose([h["loss"] for h in resumed], [h["loss"] for h in uninterrupted], rtol=1e-4)


def test_bfloat16_is_refused_on_a_cpu_that_would_emulate_it(slices: Path, tmp_path: Path, monkeypatch) -> None:
    import CovidSegLib.training.train as training

    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="no native bfloat16"):
        train(_config(slices, tmp_path, epochs=1, max_steps_per_epoch=1, cpu_bf16=True), log=lambda *_: None)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_without_selection_the_last_epoch_is_exported_from_the_checkpoint(slices: Path, tmp_path: Path) -> None:
    """``select_best: false`` (the bundled model's recipe): no best.pt beside the checkpoint, and the exported
    model holds the checkpoint's last-epoch weights."""
    card_path = train(_config(slices, tmp_path / "run", epochs=2, max_steps_per_epoch=2, select_best=False),
                      log=lambda *_: None)
    assert not (tmp_path / "run" / "best.pt").exists()
    model = load_model(card_path)
    assert model.card.scores["best_epoch"] == model.card.scores["epochs_trained"] == 2
    last = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    exported = model.network.state_dict()
    assert all(torch.allclose(exported[k].float(), v.float(), atol=1e-2, rtol=1e-2) for k, v in last.items())


def test_fine_tuning_starts_from_a_model_with_frozen_encoder(slices: Path, tmp_path: Path) -> None:
    base = train(_config(slices, tmp_path / "base", epochs=1, max_steps_per_epoch=2), log=lambda *_: None)
    base_encoder = {k: v.clone() for k, v in load_model(base).network.encoder.state_dict().items()}
    tuned = train(_config(slices, tmp_path / "tuned", init_model=str(base), freeze_encoder=True, epochs=1,
                          max_steps_per_epoch=2, medseg=None), log=lambda *_: None)
    tuned_network = load_model(tuned).network
    for key, value in tuned_network.encoder.state_dict().items():
        if "running" not in key and "num_batches" not in key:  # batch-norm statistics still adapt
            assert torch.equal(value, base_encoder[key]), key
    decoder_changed = any(not torch.equal(a, b) for a, b in zip(
        tuned_network.decoder.state_dict().values(), load_model(base).network.decoder.state_dict().values()))
    assert decoder_changed


def test_infection_miss_weight_shifts_the_cost_from_invented_to_missed_lesion(slices: Path) -> None:
    """Tversky's weighting of the infection overlap loss, on a real expert infection mask: at 0.5 it is soft Dice
    (both branches agree); above it, missing part of the lesion costs more against inventing as much lesion
    elsewhere than it does under Dice, and below it less."""
    import torch

    with np.load(sorted((slices / "hu_infection").glob("*.npz"))[0]) as data:
        truth = torch.from_numpy(data["infection_mask"] > 0).float()
    rows = torch.nonzero(truth.any(dim=1)).flatten()
    missed = truth.clone()
    missed[rows[len(rows) // 2]:] = 0  # the lower half of the lesion is missed
    invented = torch.maximum(truth, torch.roll(truth - missed, shifts=truth.shape[1] // 2, dims=1))
    assert (truth - missed).sum() == (invented - truth).sum() > 0
    labelled = torch.ones(1, 2, dtype=torch.bool)

    def loss(prediction: torch.Tensor, miss_weight: float) -> float:
        logits = (torch.stack([truth, prediction])[None] * 2 - 1) * 6  # confident, as a trained network is
        return float(masked_loss(logits, torch.stack([truth, truth])[None], labelled, (0.5, miss_weight)))

    assert loss(missed, 0.5) == pytest.approx(loss(missed, 0.5 + 1e-9)) and \
        loss(invented, 0.5) == pytest.approx(loss(invented, 0.5 - 1e-9))

    def missed_over_invented(miss_weight: float) -> float:
        return loss(missed, miss_weight) / loss(invented, miss_weight)

    assert missed_over_invented(0.3) < missed_over_invented(0.5) / 1.1 < missed_over_invented(0.7) / 1.2
    with pytest.raises(ValueError, match="infection_miss_weight"):
        TrainConfig(out_dir="x", infection_miss_weight=1.0)


def test_recorded_split_keeps_patient_groups_apart() -> None:
    split = read_split()
    groups = [tuple(g) for part in split["groups"].values() for g in part]
    assert sorted(groups)[0][0] == 0 and sorted(groups)[-1][1] == 1614
    assert all(a[1] == b[0] for a, b in zip(sorted(groups), sorted(groups)[1:])), "groups tile the corpus"
    assert len(split["groups"]["test"]) == 4 and not set(map(tuple, split["groups"]["test"])) & set(
        map(tuple, split["groups"]["train"]))


def test_continuity_groups_cut_at_patient_changes(slices: Path) -> None:
    """Two real patients' slices in a row: one cut, exactly where the patient changes."""
    medseg = load_medseg(slices / "medseg_train", PREPROCESSING)
    npz = load_npz_slices(slices, PREPROCESSING)
    first = np.repeat(npz.images[:1], 6, axis=0)  # one patient, a run of similar slices
    second = np.repeat(medseg.images[:1], 6, axis=0)
    images = np.concatenate([first, second]) + np.random.default_rng(0).integers(0, 3, (12, 256, 256)).astype(np.uint8)
    lungs = np.concatenate([np.repeat(npz.lungs[:1], 6, axis=0), np.repeat(npz.lungs[1:2] * 0 + 1, 6, axis=0)])
    assert continuity_groups(images, lungs.astype(bool), min_score=5.0) == [(0, 6), (6, 12)]


def test_recorded_training_configurations_are_valid() -> None:
    """Resources/training/ holds the bundled model's recipe (the one k-fold chose, trained on every patient
    group); studies/ beside it the k-fold recipes, the encoder and schedule studies and the leave-one-source-out
    siblings'. A second stage starts from its first stage's export and trains on the same data at a lower
    learning rate."""
    folder = Path(__file__).resolve().parents[1] / "Resources" / "training"
    configs = {p.stem: TrainConfig.from_file(p) for p in [*folder.glob("*.json"), *folder.glob("studies/*.json")]}
    assert [p.name for p in folder.glob("*.json")] == ["bundled.json"]
    assert set(configs) == {"bundled", "corpus-only", "corpus-only-continued", "medseg-only",
                            "kfold-with-medseg", "kfold-with-medseg-continued", "kfold-corpus-only",
                            "kfold-corpus-only-continued", "kfold-corpus-only-r34", "kfold-corpus-only-48",
                            "kfold-corpus-only-mobilenet", "kfold-corpus-only-fp32",
                            "kfold-corpus-only-tversky", "kfold-corpus-only-tversky-06", "kfold-corpus-only-thick",
                            "kfold-corpus-only-seed1", "kfold-corpus-only-copypaste", "anatomy-split",
                            "anatomy-split-v2", "anatomy-v2-final", "kfold-anatomy-v2", "anatomy-v2-short",
                            "anatomy-v3-short"}
    for stage_1, stage_2 in ((configs["corpus-only"], configs["corpus-only-continued"]),
                             (configs["kfold-with-medseg"], configs["kfold-with-medseg-continued"]),
                             (configs["kfold-corpus-only"], configs["kfold-corpus-only-continued"])):
        fold = "fold-{fold}" if stage_1.folds else ""  # a k-fold second stage starts from its own fold's first
        assert stage_2.init_model == str(Path(stage_1.out_dir) / fold / f"{stage_1.name}.json")
        assert (stage_2.folds, stage_2.fold_seed) == (stage_1.folds, stage_1.fold_seed)
        assert stage_2.out_dir != stage_1.out_dir and stage_2.learning_rate < stage_1.learning_rate
        assert (stage_2.corpus, stage_2.medseg, stage_2.healthy_volumes) == \
            (stage_1.corpus, stage_1.medseg, stage_1.healthy_volumes)
    assert configs["corpus-only"].corpus and not configs["corpus-only"].medseg
    assert configs["medseg-only"].medseg and not configs["medseg-only"].corpus
    # the k-fold pair differs in MedSeg only, and neither starts from a model that saw every fold
    with_medseg, corpus_only = configs["kfold-with-medseg"], configs["kfold-corpus-only"]
    assert with_medseg.medseg and not corpus_only.medseg and with_medseg.folds == corpus_only.folds >= 3
    assert not with_medseg.init_model and not corpus_only.init_model
    assert (with_medseg.epochs, with_medseg.learning_rate, with_medseg.healthy_volumes) == \
        (corpus_only.epochs, corpus_only.learning_rate, corpus_only.healthy_volumes)
    # each study of the chosen recipe changes one thing: the encoder, the length of the schedule, the loss, the
    # thick-slice rendering of CTs without COVID-19, the precision, the seed (the recipe again, to measure
    # how far figures move from one training run to the next), or lesion pasting; the MobileNetV2 and 48-epoch
    # studies also run in float32 (their machine had no native bfloat16), which docs/studies.md states, and the
    # float32 study is their control
    for study, changed in (("kfold-corpus-only-r34", {"encoder": "resnet34"}),
                           ("kfold-corpus-only-fp32", {"cpu_bf16": False}),
                           ("kfold-corpus-only-48", {"epochs": 48, "cpu_bf16": False}),
                           ("kfold-corpus-only-mobilenet", {"encoder": "mobilenet_v2", "cpu_bf16": False}),
                           ("kfold-corpus-only-tversky", {"infection_miss_weight": 0.7}),
                           ("kfold-corpus-only-tversky-06", {"infection_miss_weight": 0.6}),
                           ("kfold-corpus-only-thick", {"healthy_thick_slices_mm": 10.0}),
                           ("kfold-corpus-only-seed1", {"seed": 1}),
                           ("kfold-corpus-only-copypaste", {"augment": {"copy_paste_probability": 0.3}})):
        fields = asdict(configs[study])
        assert {name: fields[name] for name in changed} == changed != \
            {name: getattr(corpus_only, name) for name in changed}
        assert fields["out_dir"] != corpus_only.out_dir
        unchanged = {"name", "out_dir", *changed}
        assert {k: v for k, v in fields.items() if k not in unchanged} == \
            {k: v for k, v in asdict(corpus_only).items() if k not in unchanged}
    # the anatomy v2 recipe's final model (its validation groups train too), the same at half the schedule (a
    # candidate 2 CPU cores train in one session) and its cross-validation render the same sources (one prepared
    # file serves all three) and change nothing else
    from CovidSegLib.training.prepared import data_description

    split_v2 = asdict(configs["anatomy-split-v2"])
    for study, changed in (("anatomy-v2-final", {"validation_trains": True}), ("kfold-anatomy-v2", {"folds": 3}),
                           ("anatomy-v2-short", {"validation_trains": True, "epochs": 12})):
        assert data_description(configs[study]) == data_description(configs["anatomy-split-v2"])
        fields = asdict(configs[study])
        assert {name: fields[name] for name in changed} == changed
        assert {k: v for k, v in fields.items() if k not in {"name", "out_dir", *changed}} == \
            {k: v for k, v in split_v2.items() if k not in {"name", "out_dir", *changed}}
        assert fields["out_dir"] != split_v2["out_dir"] and fields["name"] != split_v2["name"]
    # v3 is v2-short with fainter ground glass left out of the synthetic lesions and dependent hard negatives
    v2_short, v3_short = asdict(configs["anatomy-v2-short"]), asdict(configs["anatomy-v3-short"])
    changed = {"lesion_ggo_hu": (-650, -300), "dependent_negatives": 2}
    assert {name: v3_short[name] for name in changed} == changed
    assert {k: v for k, v in v3_short.items() if k not in {"name", "out_dir", *changed}} == \
        {k: v for k, v in v2_short.items() if k not in {"name", "out_dir", *changed}}
    # the bundled model is the chosen recipe (corpus only, stage 1) on every group but the corpus' test groups
    bundled = configs["bundled"]
    assert bundled.validation_trains and not bundled.folds and not bundled.init_model
    recipe = ("corpus", "medseg", "healthy_volumes", "epochs", "learning_rate", "batch_size", "input_size", "seed",
              "cpu_bf16", "clip_hu")
    assert all(getattr(bundled, name) == getattr(corpus_only, name) for name in recipe)
    assert bundled.preprocessing().mode == "clahe"
    bundled_card = json.loads((folder.parent / "model" / "covidseg-unet.json").read_text(encoding="utf-8"))
    # options added after the card was made count only where they leave their default (the card predates them)
    defaults = json.loads(json.dumps(asdict(TrainConfig(out_dir=""))))
    recorded = {k: v for k, v in json.loads(json.dumps(asdict(bundled))).items()
                if k != "out_dir" and (k in bundled_card["training_config"] or v != defaults[k])}
    assert bundled_card["training_config"] == recorded, "the card is this recipe's model"
    assert bundled_card["preprocessing"] == json.loads(json.dumps(configs["bundled"].preprocessing().recorded()))


def test_a_second_cross_validation_stage_starts_from_each_folds_own_first_stage(slices: Path, tmp_path: Path
                                                                                ) -> None:
    """Two-stage k-fold: stage 2's fold K starts from stage 1's fold K (the bundled recipe has two stages, and one
    model for all folds would have seen every fold's validation patients, so it is refused)."""
    from CovidSegLib.training.train import cross_validate

    def stage(name: str, **changes) -> Path:
        return cross_validate(_config(slices, tmp_path / name, medseg=None, folds=2, epochs=1,
                                      max_steps_per_epoch=2, select_best=False, **changes), log=lambda *_: None)

    stage("stage1")
    with pytest.raises(ValueError, match=r"name each fold's own with \{fold\}"):
        stage("wrong", init_model=str(tmp_path / "stage1" / "fold-0" / "tiny.json"))
    summary = json.loads(stage("stage2", init_model=str(tmp_path / "stage1" / "fold-{fold}" / "tiny.json"),
                               learning_rate=0.0, seed=7).read_text(encoding="utf-8"))
    assert summary["folds"] == 2
    from CovidSegLib.training.sources import training_sets

    for fold in (0, 1):  # another training seed, the same patients validate each fold
        first, second = (training_sets(_config(slices, tmp_path, medseg=None, folds=2, fold=fold, seed=seed))[1]
                         for seed in (1, 7))
        assert first.names == second.names and first.names
    for fold in (0, 1):  # at learning rate 0 the second stage keeps its own fold's first-stage weights
        first = load_model(tmp_path / "stage1" / f"fold-{fold}" / "tiny.json").network.state_dict()
        second = load_model(tmp_path / "stage2" / f"fold-{fold}" / "tiny.json").network.state_dict()
        assert all(torch.equal(first[k], v) for k, v in second.items() if "running" not in k and "num_batches" not in k)
    # one fold per run (as torchrun or "fold": k runs it) finds its own fold's first stage too
    single = train(_config(slices, tmp_path / "single", medseg=None, folds=2, fold=1, epochs=1, max_steps_per_epoch=2,
                           select_best=False, learning_rate=0.0,
                           init_model=str(tmp_path / "stage1" / "fold-{fold}" / "tiny.json")), log=lambda *_: None)
    first = load_model(tmp_path / "stage1" / "fold-1" / "tiny.json").network.state_dict()
    assert all(torch.equal(first[k], v) for k, v in load_model(single).network.state_dict().items()
               if "running" not in k and "num_batches" not in k)
    other = load_model(tmp_path / "stage1" / "fold-1" / "tiny.json").network.state_dict()
    second = load_model(tmp_path / "stage2" / "fold-0" / "tiny.json").network.state_dict()
    assert not all(torch.equal(other[k], v) for k, v in second.items())
