"""Prepared slice files: render a configuration's sources once (CT without COVID-19 from ../shared/data, with a
synthetic lesion), read them back identical, split them into every fold as rendering would, store repeated slices
once, train from them with the documented command, and refuse a file rendered from other data settings."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CovidSegLib.training.prepared import main as prepared_main, read_prepared  # noqa: E402
from CovidSegLib.training.sources import training_sets  # noqa: E402
from CovidSegLib.training.train import TrainConfig  # noqa: E402


@pytest.fixture(scope="module")
def config(pairs: Path, slices: Path, tmp_path_factory) -> TrainConfig:
    root = tmp_path_factory.mktemp("prepared")
    return TrainConfig(out_dir=str(root / "run"), name="tiny-prepared", representation="anatomy",
                       npz_slices=str(slices / "hu_infection"),
                       healthy_volumes=({"path": str(pairs), "label_map": "totalseg-lobes"},), synthetic_lesions=1,
                       clip_hu=(-1250.0, 250.0), epochs=1, batch_size=4, max_steps_per_epoch=2, threads=2, seed=3,
                       select_best=False)


@pytest.fixture(scope="module")
def prepared_file(config: TrainConfig, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("file") / "slices.npz"
    config_path = path.parent / "config.json"
    config_path.write_text(config_json(config), encoding="utf-8")
    assert prepared_main([str(config_path), str(path)]) == 0
    return path


def config_json(config: TrainConfig) -> str:
    return json.dumps(asdict(config))


def test_a_prepared_file_reads_back_the_slices_the_sources_render(config: TrainConfig, prepared_file: Path) -> None:
    rendered_train, rendered_validation, how = training_sets(config)
    train_set, validation, read_how = read_prepared(replace(config, prepared=str(prepared_file)))
    assert read_how == how
    for rendered, read in ((rendered_train, train_set), (rendered_validation, validation)):
        assert read.names == rendered.names and read.groups == rendered.groups
        for field in ("images", "lungs", "infection", "has_lungs", "has_infection", "has_density"):
            assert np.array_equal(getattr(read, field), getattr(rendered, field)), field
    assert any("/lesion-" in name for name in train_set.names)


def test_one_file_serves_every_fold_of_the_recipe(config: TrainConfig, prepared_file: Path) -> None:
    """The file holds the rendered sources, not a split: a cross-validation of the same data reads its folds
    from it, each split as rendering would split it."""
    for fold in (0, 1):
        folded = replace(config, folds=2, fold=fold)
        rendered_train, rendered_validation, how = training_sets(folded)
        train_set, validation, read_how = read_prepared(replace(folded, prepared=str(prepared_file)))
        assert read_how == how and train_set.names == rendered_train.names
        assert validation.names == rendered_validation.names
        assert np.array_equal(train_set.images, rendered_train.images)


def test_repeated_slices_are_stored_once(config: TrainConfig, tmp_path: Path) -> None:
    """A set that holds every slice twice (as corpus_copies repeats the corpus) stores each once, and reads back
    twice."""
    from CovidSegLib.training.data import SliceSet
    from CovidSegLib.training.prepared import _read_set, _set_arrays

    train_set, _, _ = training_sets(config)
    doubled = SliceSet.concatenate([train_set, train_set])
    arrays = _set_arrays("train", doubled)
    assert len(arrays["train/images"]) == len(_set_arrays("train", train_set)["train/images"])
    assert len(arrays["train/position"]) == 2 * len(train_set.names)
    np.savez_compressed(tmp_path / "doubled.npz", **arrays)
    with np.load(tmp_path / "doubled.npz", allow_pickle=False) as stored:
        read = _read_set("train", stored)
    assert read.names == doubled.names and np.array_equal(read.images, doubled.images)
    assert np.array_equal(read.infection, doubled.infection) and np.array_equal(read.lungs, doubled.lungs)


def test_training_from_a_prepared_file_exports_a_model_whose_card_keeps_no_machine_path(
        config: TrainConfig, prepared_file: Path, tmp_path: Path) -> None:
    """The documented command: ``python -m CovidSegLib.training CONFIG --prepared FILE``."""
    from CovidSegLib.engine.model import load_model
    from CovidSegLib.training.__main__ import main as training_main

    config_path = tmp_path / "config.json"
    config_path.write_text(config_json(replace(config, out_dir=str(tmp_path / "run"))), encoding="utf-8")
    assert training_main([str(config_path), "--prepared", str(prepared_file)]) == 0
    model = load_model(tmp_path / "run" / "tiny-prepared.json")
    assert model.card.in_channels == 3 and "prepared" not in model.card.training_config
    assert model.card.training_config["synthetic_lesions"] == 1  # the data fields say what the file held


def test_a_file_from_other_data_settings_is_refused_by_name(config: TrainConfig, prepared_file: Path) -> None:
    other = replace(config, prepared=str(prepared_file), synthetic_lesions=4, canvas_pixel_mm=1.2)
    with pytest.raises(ValueError, match=r"canvas_pixel_mm: file 1\.6, configuration 1\.2.*synthetic_lesions"):
        read_prepared(other)


def test_a_file_that_is_not_prepared_slices_is_refused(config: TrainConfig, tmp_path: Path) -> None:
    wrong = tmp_path / "other.npz"
    np.savez(wrong, images=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz: not a prepared slice file"):
        read_prepared(replace(config, prepared=str(wrong)))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.npz: not a prepared slice file"):
        read_prepared(replace(config, prepared=str(broken)))


def test_a_batch_is_converted_bit_for_bit_as_the_whole_set(config: TrainConfig) -> None:
    """Training keeps slices uint8 and converts each batch: the network sees what converting everything up front
    gave (5x the memory), in any order the shuffle draws."""
    from CovidSegLib.engine.anatomy import anatomy_network_input
    from CovidSegLib.training.train import prepare_arrays

    train_set, _, _ = training_sets(config)
    arrays = prepare_arrays(train_set, config)
    assert arrays.images.dtype == np.uint8 and arrays.masks.dtype == bool
    index = np.random.default_rng(0).permutation(len(arrays))[:7]
    inputs, masks, labelled = arrays.batch(index)
    whole = anatomy_network_input(train_set.images, train_set.has_density)
    assert torch.equal(inputs, whole[torch.from_numpy(index)])
    assert torch.equal(masks[:, 1], torch.from_numpy(train_set.infection[index].astype(np.float32)))
    assert labelled.tolist() == np.stack([train_set.has_lungs, train_set.has_infection], 1)[index].tolist()


def test_a_file_that_predates_a_data_field_was_rendered_at_its_default(config: TrainConfig, tmp_path: Path) -> None:
    """A file written before dependent_negatives existed reads with the default (0) and is refused with any
    other count."""
    import CovidSegLib.training.prepared as prepared

    path = tmp_path / "older.npz"
    prepared.write_prepared(config, path, log=lambda *_: None)
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    header = json.loads(str(arrays["header"]))
    del header["data"]["dependent_negatives"]
    arrays["header"] = np.asarray(json.dumps(header))
    np.savez(path, **arrays)
    assert read_prepared(replace(config, prepared=str(path)))[0].names
    with pytest.raises(ValueError, match="dependent_negatives: file 0, configuration 2"):
        read_prepared(replace(config, prepared=str(path), dependent_negatives=2))


def test_dependent_negatives_train_denser_lung_as_no_infection(config: TrainConfig) -> None:
    """The hard negatives of a CT without COVID-19: its lung slices again, denser in the density channel, with
    infection labelled and empty, and the lesions drawn before them unchanged."""
    plain, _, _ = training_sets(config)
    train_set, _, _ = training_sets(replace(config, dependent_negatives=1))
    negative = np.array(["/dependent-0/" in name for name in train_set.names])
    assert negative.any() and train_set.has_infection[negative].all() and not train_set.infection[negative].any()
    kept = ~negative
    assert train_set.names[:kept.sum()] == plain.names and np.array_equal(train_set.images[kept], plain.images)
    scan = {name: index for index, name in enumerate(plain.names) if "/lesion-" not in name}
    for index in np.flatnonzero(negative)[:5]:
        case, _, slice_number = train_set.names[index].split("/")[-3:]
        original = plain.images[scan[f"{case}/{slice_number}"], 1].astype(int)
        assert (train_set.images[index, 1].astype(int) - original).min() >= -1  # density only rises
        assert train_set.images[index, 1].sum() > original.sum()
