"""Train or fine-tune the slice U-Net: Dice + BCE per output, AdamW, cosine schedule, early stopping on
validation Dice, a checkpoint every epoch (resumed automatically), seeded, and export to safetensors + card.

Checkpoints are our own files, loaded with ``torch.load(weights_only=True)``, which refuses arbitrary pickles.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..model import ModelCard, Preprocessing, build_network, load_model, save_model
from .augment import AugmentConfig, augment
from .data import SliceSet, load_medseg, load_npz_slices, load_slice_corpus, read_split, split_indices
from .slices import resize_slices

OUTPUTS = ("lungs", "infection")


@dataclass
class TrainConfig:
    out_dir: str  # checkpoints and the exported model
    corpus: str | None = None  # the dstaroff corpus' data/img folder: its split.json train groups are used
    medseg: str | None = None  # MedSeg medseg_train folder (infection only)
    npz_slices: str | None = None  # folder of COVID-19-CT-Seg .npz slices (lungs only)
    init_model: str | None = None  # fine-tune: start from this model card (e.g. the bundled model)
    freeze_encoder: bool = False
    name: str = "covidseg-unet"
    encoder: str = "resnet18"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)
    input_size: int = 128
    window: tuple[float, float] = (-1250.0, 250.0)
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 8
    seed: int = 0
    threads: int = 0  # 0: torch's default
    max_steps_per_epoch: int = 0  # 0: the whole training set each epoch (tests use a few steps)
    augment: dict = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        document = json.loads(Path(path).read_text())
        for key in ("decoder_channels", "window"):
            if key in document:
                document[key] = tuple(document[key])
        return cls(**document)


def seed_everything(seed: int) -> "torch.Generator":  # noqa: F821
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def masked_loss(logits, targets, labelled):
    """BCE + soft Dice per output channel, over the samples where that output is labelled."""
    import torch
    import torch.nn.functional as F

    total = logits.new_zeros(())
    for channel in range(logits.shape[1]):
        keep = labelled[:, channel]
        if not keep.any():
            continue
        x, y = logits[keep, channel], targets[keep, channel]
        probability = torch.sigmoid(x)
        dice = 1 - (2 * (probability * y).sum() + 1) / (probability.sum() + y.sum() + 1)
        total = total + F.binary_cross_entropy_with_logits(x, y) + dice
    return total


def prepare_arrays(slices: SliceSet, config: TrainConfig):
    masks = np.stack([slices.lungs, slices.infection], axis=1)
    images, masks = resize_slices(slices.images, masks, config.window, config.input_size)
    labelled = np.stack([slices.has_lungs, slices.has_infection], axis=1)
    return images, masks, labelled


def pooled_dice(network, images, masks, labelled, batch_size: int = 64) -> dict[str, float]:
    """Pooled Dice per output at network resolution (validation; the reported test scores use the engine)."""
    import torch

    network.eval()
    overlap = np.zeros(len(OUTPUTS))
    total = np.zeros(len(OUTPUTS))
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size])
            predicted = (network(x) > 0).numpy()
            truth = masks[start:start + batch_size] > 0.5
            keep = labelled[start:start + batch_size]
            for c in range(len(OUTPUTS)):
                overlap[c] += 2 * np.sum(predicted[keep[:, c], c] & truth[keep[:, c], c])
                total[c] += np.sum(predicted[keep[:, c], c]) + np.sum(truth[keep[:, c], c])
    return {name: float(overlap[c] / total[c]) if total[c] else math.nan for c, name in enumerate(OUTPUTS)}


def make_card(config: TrainConfig, scores: dict | None = None, training_data: str = "") -> ModelCard:
    return ModelCard(
        name=config.name, architecture="Unet", encoder=config.encoder, encoder_depth=config.encoder_depth,
        decoder_channels=tuple(config.decoder_channels), in_channels=1, input_size=config.input_size,
        outputs=OUTPUTS, preprocessing=Preprocessing(window=tuple(config.window), crop="body"),
        weights_file="", weights_sha256="", training_data=training_data, scores=scores or {},
        licence="Weights: CC BY-NC-SA 4.0 (trained on COVID-19-CT-Seg data, non-commercial research use)",
        description="2D U-Net on axial slices; sigmoid outputs: lungs (both, merged) and infection "
                    "(ground-glass opacity + consolidation). Left/right lungs are assigned afterwards from "
                    "patient coordinates.",
    )


def training_sets(config: TrainConfig) -> tuple[SliceSet, SliceSet]:
    """Training and validation slices from every configured source.

    The corpus contributes its ``train`` groups and is the validation set (its ``validation`` groups); without
    the corpus (fine-tuning on a handful of cases) the training slices double as validation.
    """
    parts, validation = [], None
    if config.corpus:
        corpus = load_slice_corpus(Path(config.corpus).expanduser())
        split = read_split()
        parts.append(corpus.subset(split_indices(split, "train")))
        validation = corpus.subset(split_indices(split, "validation"))
    if config.medseg:
        parts.append(load_medseg(Path(config.medseg).expanduser()))
    if config.npz_slices:
        parts.append(load_npz_slices(Path(config.npz_slices).expanduser(), window=tuple(config.window)))
    if not parts:
        raise ValueError("no training data: set corpus, medseg and/or npz_slices in the configuration")
    train_set = SliceSet.concatenate(parts)
    return train_set, validation if validation is not None else train_set


def train(config: TrainConfig, log=print) -> Path:
    """Run (or resume) training; returns the exported model card path."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    generator = seed_everything(config.seed)
    out_dir = Path(config.out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    train_set, validation = training_sets(config)
    train_arrays = prepare_arrays(train_set, config)
    validation_arrays = prepare_arrays(validation, config)
    log(f"training on {len(train_set.names)} slices, validating on {len(validation.names)}")

    if config.init_model:
        network = load_model(config.init_model).network
    else:
        network = build_network(make_card(config))
    if config.freeze_encoder:
        for parameter in network.encoder.parameters():
            parameter.requires_grad = False
    parameters = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_set.names) / config.batch_size)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate,
                                                    total_steps=config.epochs * steps_per_epoch, pct_start=0.1)
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "history": []}
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)
        network.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        state = json.loads(saved["state"])
        log(f"resumed after epoch {state['epoch']}")
    augment_config = AugmentConfig(**config.augment)
    images, masks, labelled = (torch.from_numpy(a) for a in train_arrays)

    while state["epoch"] < config.epochs and state["epoch"] - state["best_epoch"] <= config.patience:
        network.train()
        started = time.time()
        order = torch.randperm(len(images), generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            index = order[step * config.batch_size:(step + 1) * config.batch_size]
            x, y = augment(images[index], masks[index], augment_config, generator)
            loss = masked_loss(network(x), y, labelled[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        scores = pooled_dice(network, *validation_arrays)
        state["epoch"] += 1
        score = float(np.nanmean(list(scores.values())))
        state["history"].append({"epoch": state["epoch"], "loss": float(np.mean(losses)), "validation": scores,
                                 "seconds": time.time() - started})
        if score > state["best_score"]:
            state["best_score"], state["best_epoch"] = score, state["epoch"]
            torch.save(network.state_dict(), out_dir / "best.pt")
        torch.save({"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                    "state": json.dumps(state)}, out_dir / "checkpoint.tmp")
        (out_dir / "checkpoint.tmp").replace(checkpoint)
        log(f"epoch {state['epoch']}: loss {np.mean(losses):.4f}, validation Dice lungs {scores['lungs']:.4f} "
            f"infection {scores['infection']:.4f} ({time.time() - started:.0f} s)")

    network.load_state_dict(torch.load(out_dir / "best.pt", weights_only=True))
    sources = [name for name, used in (("dstaroff/COVID19-CT-Segmentation slices, train groups of "
                                        "Resources/model/split.json", config.corpus),
                                       ("MedSeg medseg_train", config.medseg),
                                       ("COVID-19-CT-Seg npz slices", config.npz_slices)) if used]
    data = f"{' + '.join(sources)} ({len(train_set.names)} slices)"
    card = make_card(config, {"validation_pooled_dice": state["history"][state["best_epoch"] - 1]["validation"],
                              "best_epoch": state["best_epoch"]}, data)
    card_path = out_dir / f"{config.name}.json"
    save_model(network, card, card_path)
    (out_dir / "history.json").write_text(json.dumps(state["history"], indent=2))
    log(f"exported {card_path} (best epoch {state['best_epoch']})")
    return card_path
