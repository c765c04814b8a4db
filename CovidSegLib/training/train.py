"""Train or fine-tune the slice U-Net: Dice + BCE per output, AdamW, one-cycle schedule, early stopping on
validation Dice, a checkpoint every epoch (resumed automatically), seeded, export to safetensors + card;
k-fold cross-validation by patient; one process or many under ``torchrun`` (DistributedDataParallel).

Checkpoints are our own files, loaded with ``torch.load(weights_only=True)``, which refuses arbitrary pickles.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..engine.inference import _logit
from ..engine.model import ModelCard, build_network, load_model, save_model
from ..engine.representation import AIR_TO_METAL, RADIOPAEDIA_CLIP, Preprocessing
from ..slices.dataset import MASK_OUTPUTS
from ..io.writing import write_text
from .augment import AugmentConfig, augment
from .data import SliceSet
from .slices import resize_slices
from .sources import training_sets

if TYPE_CHECKING:
    from .canvas_volumes import HuRenderings

OUTPUTS = MASK_OUTPUTS  # the network's outputs are the masks' channels, in this order (augment relies on it)


def healthy_folders(entries) -> list[tuple[str, str | None]]:
    """``(folder, label_map)`` of each ``healthy_volumes`` entry: a folder, or ``{"path", "label_map"}``."""
    return [(entry, None) if isinstance(entry, str) else (entry["path"], entry.get("label_map"))
            for entry in entries]


@dataclass
class TrainConfig:
    out_dir: str  # checkpoints and the exported model
    corpus: str | None = None  # the dstaroff corpus' data/img folder: its split.json train groups are used
    medseg: str | None = None  # MedSeg medseg_train folder (infection only)
    npz_slices: str | None = None  # folder of COVID-19-CT-Seg .npz slices (lungs only)
    volumes: str | None = None  # COVID-19-CT-Seg NIfTI layout or images/ + labels/ pairs (training/volumes.py)
    label_map: str | None = None  # what the pairs' label values mean (a covidseg evaluate mapping spec)
    #: CTs without COVID-19 (infection labelled empty everywhere): folders, each a path or
    #: {"path": ..., "label_map": ...} when its image + label pairs need a mapping (a covidseg evaluate spec)
    healthy_volumes: tuple = ()
    folds: int = 0  # k-fold cross-validation by patient: 0 off, else the number of folds
    fold: int = 0  # the fold that validates in this run
    #: deals patients into folds; apart from ``seed`` so that the stages of a k-fold run (each with its own
    #: training seed) validate each fold on the same patients
    fold_seed: int = 0
    #: under folds, MedSeg's slices (no patient ids) are cut into ``folds`` blocks of consecutive numbers and block
    #: k validates in fold k, so that MedSeg is cross-validated too; False: MedSeg always trains
    medseg_in_folds: bool = False
    #: without folds: the validation patients train too (a recipe's final model, once k-fold has chosen the recipe
    #: and nothing is selected on them any more); they are still scored each epoch, as a fit
    validation_trains: bool = False
    device: str = "auto"  # auto: this process' GPU when there is one, else CPU
    #: fine-tune: start from this model card (e.g. the bundled model). Under cross-validation "{fold}" in it
    #: names each fold's own model, so a second stage of a k-fold run starts from the same fold's first stage
    #: (one model for all folds would have seen every fold's validation patients)
    init_model: str | None = None
    freeze_encoder: bool = False
    name: str = "covidseg-unet"
    encoder: str = "resnet18"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)
    input_size: int = 256
    window: tuple[float, float] = (-1250.0, 250.0)  # the HU window 8-bit sources (MedSeg, radiopaedia) span
    clip_hu: tuple[float, float] | None = AIR_TO_METAL  # the representation's HU clip (None: unclipped)
    render_hu_variants: bool = True  # also render HU sources as the corpus' radiopaedia half was (augmentation)
    #: also render each CT without COVID-19 as slices this thick (mm; 0: no), HU averaged over the slab as a thick
    #: reconstruction does: coarse CT's partial-volumed normal lung is what models without it call infection
    healthy_thick_slices_mm: float = 0.0
    select_best: bool = True  # export the epoch of best validation Dice; False: the last epoch
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    #: what a missed infection voxel costs in the infection output's overlap loss, against 1 minus this for an
    #: invented one (Tversky's beta): 0.5 is soft Dice; more asks for sensitivity, at the price of false infection
    infection_miss_weight: float = 0.5
    patience: int = 8
    seed: int = 0
    threads: int = 0  # 0: torch's default
    #: train in bfloat16 autocast on CPU too (always on a GPU): 2x faster steps on a CPU with native bf16
    #: (avx512_bf16/AMX; measured on this project's 2-core EPYC); validation and export stay float32
    cpu_bf16: bool = False
    #: channels-last convolutions: 1.5x faster steps on CPU; float32 still, but other kernels, so not bit-identical
    #: to a run without it
    channels_last: bool = True
    max_steps_per_epoch: int = 0  # 0: the whole training set each epoch (tests use a few steps)
    augment: dict = field(default_factory=dict)
    #: the network's representation: "clahe" (whole slices as the corpus made them) or "anatomy" (a canvas of fixed
    #: physical scale with a structure and a density channel; CovidSegLib.engine.anatomy)
    representation: str = "clahe"
    canvas_pixel_mm: float = 1.6  # anatomy: mm per canvas pixel (the canvas is input_size pixels wide)
    hu_window: tuple[float, float] = (-1024.0, 300.0)  # anatomy: the density channel's HU window
    #: anatomy: each HU volume also once per count in a random other acquisition (noise, resolution, field of view)
    acquisitions: int = 0
    #: anatomy: each CT without COVID-19 also once per count with a random synthetic lesion (training/lesions.py)
    synthetic_lesions: int = 0
    #: anatomy: the synthetic ground glass' target density range, HU (the faint end decides how faint a density rise
    #: the model learns to call infection)
    lesion_ggo_hu: tuple[float, float] = (-750.0, -300.0)
    #: anatomy: each CT without COVID-19 also once per count with a dependent density gradient and no infection
    #: (hard negatives: training/lesions.py, draw_dependent_density)
    dependent_negatives: int = 0
    #: the corpus' training slices this many times in each epoch (augmented apart): its real lesions keep their
    #: share of the steps when synthetic renderings are added
    corpus_copies: int = 1
    #: train from the sources rendered beforehand by ``python -m CovidSegLib.training.prepared`` (an .npz) instead
    #: of rendering them: render on the machine with the data, train on the one with the GPU; one file serves the
    #: final model and every fold. It must come from the same data fields as this configuration.
    prepared: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.infection_miss_weight < 1:
            raise ValueError(f"infection_miss_weight must lie between 0 and 1, not {self.infection_miss_weight}")
        if self.corpus_copies < 1:
            raise ValueError(f"corpus_copies must be 1 or more, not {self.corpus_copies}")
        if self.representation not in ("clahe", "anatomy"):
            raise ValueError(f"representation must be clahe or anatomy, not {self.representation!r}")
        if self.representation != "anatomy" and (self.acquisitions or self.synthetic_lesions or
                                                 self.dependent_negatives):
            raise ValueError("acquisitions, synthetic_lesions and dependent_negatives render HU on the anatomy "
                             "canvas: set representation to anatomy")
        if not -1000.0 < self.lesion_ggo_hu[0] < self.lesion_ggo_hu[1] <= -100.0:
            raise ValueError(f"lesion_ggo_hu must be a rising range of ground-glass HU, not {self.lesion_ggo_hu}")
        if self.healthy_thick_slices_mm < 0:
            raise ValueError(f"healthy_thick_slices_mm must be 0 (off) or a thickness in mm, not "
                             f"{self.healthy_thick_slices_mm}")

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        for key in ("decoder_channels", "window", "clip_hu", "healthy_volumes", "hu_window", "lesion_ggo_hu"):
            if document.get(key) is not None:
                document[key] = tuple(document[key])
        return cls(**document)

    def healthy_folders(self) -> list[tuple[str, str | None]]:
        """``(folder, label_map)`` of every entry of ``healthy_volumes``."""
        return healthy_folders(self.healthy_volumes)

    def preprocessing(self) -> Preprocessing:
        """The representation the model is trained in (written into its card)."""
        clip = tuple(self.clip_hu) if self.clip_hu is not None else None
        if self.representation == "anatomy":
            return Preprocessing(mode="anatomy", window=tuple(self.window), crop="none", clip_hu=clip,
                                 canvas_size=self.input_size, canvas_pixel_mm=self.canvas_pixel_mm,
                                 hu_window=tuple(self.hu_window))
        return Preprocessing(mode="clahe", window=tuple(self.window), crop="none", clip_hu=clip)

    def hu_renderings(self) -> "HuRenderings":
        """The extra renderings of HU volumes (anatomy representation)."""
        from .canvas_volumes import HuRenderings

        return HuRenderings(self.acquisitions, self.synthetic_lesions, self.seed, self.dependent_negatives,
                            tuple(self.lesion_ggo_hu))

    def hu_variants(self) -> tuple[Preprocessing, ...]:
        """Other renderings of HU sources, as augmentation: the radiopaedia half's clip (the corpus mixes both)."""
        from dataclasses import replace

        if not self.render_hu_variants or self.clip_hu == RADIOPAEDIA_CLIP or self.representation == "anatomy":
            return ()
        return (replace(self.preprocessing(), clip_hu=RADIOPAEDIA_CLIP),)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def masked_loss(logits, targets, labelled, miss_weights: tuple[float, ...] | None = None):
    """BCE + an overlap loss per output channel, over the samples where that output is labelled.

    The overlap loss is soft Dice, or with a channel's ``miss_weights`` other than 0.5 the Tversky loss, where
    a missed voxel costs that weight and an invented one 1 minus it (lesion missed on unseen patients is where the
    cross-validated infection Dice is lost)."""
    import torch
    import torch.nn.functional as F

    total = logits.new_zeros(())
    for channel in range(logits.shape[1]):
        keep = labelled[:, channel]
        if not keep.any():
            continue
        x, y = logits[keep, channel], targets[keep, channel]
        probability = torch.sigmoid(x)
        miss = 0.5 if miss_weights is None else miss_weights[channel]
        if miss == 0.5:  # soft Dice, computed as it always was, so that runs resume bit for bit
            overlap = 1 - (2 * (probability * y).sum() + 1) / (probability.sum() + y.sum() + 1)
        else:  # the same fraction with missed and invented voxels weighted (at 0.5 each it is the line above)
            found = (probability * y).sum()
            invented, missed = probability.sum() - found, y.sum() - found
            overlap = 1 - (2 * found + 1) / (2 * found + 2 * (1 - miss) * invented + 2 * miss * missed + 1)
        total = total + F.binary_cross_entropy_with_logits(x, y) + overlap
    return total


@dataclass
class NetworkArrays:
    """A slice set as the network trains or validates on it, kept compact: anatomy slices stay uint8 and masks
    stay boolean, and each batch becomes the network's float input when it is drawn. The conversion is per pixel
    (:func:`CovidSegLib.engine.anatomy.anatomy_network_input`), so a batch is bit for bit what converting the
    whole set would give; the v2 recipe's 4154 slices hold 1.1 GB this way, against 5.5 GB as float32."""

    images: np.ndarray  # anatomy: uint8 [n, 2, h, w] (structure, density); clahe: float32 [n, 1, h, w] in 0..1
    has_density: np.ndarray | None  # anatomy: [n] bool; None for clahe
    masks: np.ndarray  # bool [n, outputs, h, w]
    labelled: np.ndarray  # bool [n, outputs]: which masks are known

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:  # noqa: F821
        """Float inputs ``[b, channels, h, w]``, float masks and the labelled flags of the slices at ``index``."""
        import torch

        if self.has_density is not None:
            from ..engine.anatomy import anatomy_network_input

            inputs = anatomy_network_input(self.images[index], self.has_density[index])
        else:
            inputs = torch.from_numpy(self.images[index])
        return (inputs, torch.from_numpy(self.masks[index].astype(np.float32)),
                torch.from_numpy(self.labelled[index]))


def prepare_arrays(slices: SliceSet, config: TrainConfig) -> NetworkArrays:
    masks = np.stack([slices.lungs, slices.infection], axis=1).astype(bool)
    labelled = np.stack([slices.has_lungs, slices.has_infection], axis=1)
    if slices.has_density is not None:  # anatomy: the canvas is the network's input, nothing is resized
        if slices.images.shape[-1] != config.input_size:
            raise ValueError(f"anatomy slices are {slices.images.shape[-1]} pixels, the network's input "
                             f"{config.input_size}")
        return NetworkArrays(slices.images, slices.has_density, masks, labelled)
    images, masks = resize_slices(slices.images, masks, config.input_size)
    return NetworkArrays(images, None, masks > 0.5, labelled)


@dataclass
class DiceCounts:
    """Pooled Dice kept as its two sums per threshold, so that folds add up before the division."""

    overlap: np.ndarray
    total: np.ndarray

    @classmethod
    def zeros(cls, count: int) -> "DiceCounts":
        return cls(np.zeros(count), np.zeros(count))

    def __add__(self, other: "DiceCounts") -> "DiceCounts":
        return DiceCounts(self.overlap + other.overlap, self.total + other.total)

    def dice(self) -> list[float]:
        return [float(o / t) if t else math.nan for o, t in zip(self.overlap, self.total)]


def add_counts(counts: DiceCounts, logits: np.ndarray, truth: np.ndarray, thresholds: tuple[float, ...]) -> None:
    """Add the overlap and size sums of ``logits > logit(t)`` against ``truth`` for every threshold (float32 logits
    against the threshold's logit, as the engine compares)."""
    truth_size = float(truth.sum())
    for index, threshold in enumerate(thresholds):
        predicted = logits > _logit(threshold)
        counts.overlap[index] += 2.0 * np.sum(predicted & truth)
        counts.total[index] += float(predicted.sum()) + truth_size


def pooled_dice(network, arrays: NetworkArrays, batch_size: int = 64, device=None) -> dict[str, float]:
    """Pooled Dice per output at network resolution (validation; the reported test scores use the engine)."""
    import torch

    network.eval()
    counts = [DiceCounts.zeros(1) for _ in OUTPUTS]
    with torch.inference_mode():
        for start in range(0, len(arrays), batch_size):
            x, masks, labelled = arrays.batch(np.arange(start, min(start + batch_size, len(arrays))))
            logits = network(x.to(device or "cpu")).float().cpu().numpy()
            truth, keep = masks.numpy() > 0.5, labelled.numpy()
            for c, output_counts in enumerate(counts):
                add_counts(output_counts, logits[keep[:, c], c], truth[keep[:, c], c], (0.5,))
    return {name: counts[c].dice()[0] for c, name in enumerate(OUTPUTS)}


def make_card(config: TrainConfig, scores: dict | None = None, training_data: str = "") -> ModelCard:
    """The card of a model trained with ``config``; it records the configuration (the run folder and the prepared
    file left out: they are places on one machine, and the data fields say what the file held), so the model can
    be trained again."""
    from dataclasses import asdict

    recorded = {key: value for key, value in asdict(config).items() if key not in ("out_dir", "prepared")}
    return ModelCard(
        name=config.name, architecture="Unet", encoder=config.encoder, encoder_depth=config.encoder_depth,
        decoder_channels=tuple(config.decoder_channels),
        in_channels=3 if config.representation == "anatomy" else 1, input_size=config.input_size,
        outputs=OUTPUTS, preprocessing=config.preprocessing(),
        weights_file="", weights_sha256="", training_data=training_data, scores=scores or {},
        licence="Weights: CC BY-NC-SA 4.0 (trained on COVID-19-CT-Seg data, non-commercial research use)",
        description="2D U-Net on axial slices; sigmoid outputs: lungs (both, merged) and infection "
                    "(ground-glass opacity + consolidation). Left/right lungs are assigned afterwards from "
                    "patient coordinates.",
        training_config=json.loads(json.dumps(recorded)),
    )


def epoch_generators(seed: int, epoch: int, rank: int) -> tuple["torch.Generator", "torch.Generator"]:  # noqa: F821
    """Generators for one epoch: the slice order (the same on every process) and this process' augmentation.

    Seeding from (seed, epoch, rank) rather than carrying generator state makes a resumed run, and a run on
    any number of processes, draw exactly what an uninterrupted run draws.
    """
    import torch

    order = torch.Generator().manual_seed(seed * 100_003 + epoch)
    augmentation = torch.Generator().manual_seed(seed * 100_003 + epoch * 1_009 + 7919 * (rank + 1))
    return order, augmentation


def step_indices(order: "torch.Tensor", step: int, batch_size: int, rank: int,  # noqa: F821
                 world: int) -> "torch.Tensor":  # noqa: F821
    """This process' share of one global batch; the order wraps around so every process gets a full batch
    (DistributedDataParallel needs every process in every step)."""
    import torch

    positions = torch.arange(step * batch_size * world, (step + 1) * batch_size * world) % len(order)
    return order[positions[rank::world]]


def train(config: TrainConfig, log=print) -> Path:
    """Run (or resume) training; returns the exported model card path.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this is one process of a DistributedDataParallel run: each process
    trains on its share of every batch (``batch_size`` slices each), process 0 validates, checkpoints and
    exports. Checkpoints must be on a folder all processes can read (one machine, or a shared file system).
    """
    import torch

    from .distributed import Distributed

    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    dist = Distributed.start(select_training_device(config.device))
    device, lead = dist.device, dist.rank == 0
    bf16 = uses_bf16(config, device)  # refused before any data is loaded
    log = log if lead else (lambda *_: None)
    out_dir = Path(config.out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.prepared:
        from .prepared import read_prepared

        train_set, validation, how = read_prepared(config)
    else:
        train_set, validation, how = training_sets(config)
    train_arrays = prepare_arrays(train_set, config)
    validation_arrays = prepare_arrays(validation, config)
    log(f"training on {len(train_set.names)} slices, validating on {len(validation.names)} ({how}); "
        f"{dist.describe()}")

    network = load_model(Path(fold_init_model(config)).expanduser()).network if config.init_model else \
        build_network(make_card(config))
    if config.freeze_encoder:
        for parameter in network.encoder.parameters():
            parameter.requires_grad = False
    network.to(device)
    if config.channels_last:
        network.to(memory_format=torch.channels_last)
    parameters = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_set.names) / (config.batch_size * dist.world))
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate,
                                                    total_steps=config.epochs * steps_per_epoch, pct_start=0.1)
    state = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "history": []}
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True, map_location=device)
        network.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = json.loads(saved["state"])
        log(f"resumed after epoch {state['epoch']}")
    model = dist.wrap(network)
    augment_config = AugmentConfig(**config.augment)
    miss_weights = tuple(config.infection_miss_weight if name == "infection" else 0.5 for name in OUTPUTS)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    while state["epoch"] < config.epochs and (
            not config.select_best or state["epoch"] - state["best_epoch"] <= config.patience):
        model.train()
        started = time.time()
        order_generator, augment_generator = epoch_generators(config.seed, state["epoch"], dist.rank)
        order = torch.randperm(len(train_arrays), generator=order_generator)
        losses = []
        for step in range(steps_per_epoch):
            index = step_indices(order, step, config.batch_size, dist.rank, dist.world)
            x, y, labelled = train_arrays.batch(index.numpy())
            x, y = augment(x, y, augment_config, augment_generator, labelled)
            with autocast:
                logits = model(x.to(device, non_blocking=True).contiguous(memory_format=memory_format))
            loss = masked_loss(logits.float(), y.to(device), labelled.to(device), miss_weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        if lead:
            scores = pooled_dice(network, validation_arrays, device=device)
            state = record_epoch(state, scores, float(np.mean(losses)), time.time() - started, network, out_dir,
                                 config.select_best)
            torch.save({"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "state": json.dumps(state)}, out_dir / "checkpoint.tmp")
            (out_dir / "checkpoint.tmp").replace(checkpoint)
            log(f"epoch {state['epoch']}: loss {np.mean(losses):.4f}, validation Dice lungs {scores['lungs']:.4f} "
                f"infection {scores['infection']:.4f} ({time.time() - started:.0f} s)")
        state = dist.share(state)  # every process takes the same early-stopping decision

    card_path = out_dir / f"{config.name}.json"
    if lead:
        if config.select_best:  # else the network holds the last epoch already (trained or resumed)
            network.load_state_dict(torch.load(out_dir / "best.pt", weights_only=True, map_location=device))
        selection = "best validation Dice" if config.select_best else "last epoch (no selection)"
        card = make_card(config, {"validation_pooled_dice": state["history"][state["best_epoch"] - 1]["validation"],
                                  "best_epoch": state["best_epoch"], "epochs_trained": state["epoch"],
                                  "exported_epoch_chosen_by": selection}, describe_data(config, train_set, how))
        save_model(network.cpu(), card, card_path)
        (out_dir / "history.json").write_text(json.dumps(state["history"], indent=2), encoding="utf-8")
        log(f"exported {card_path} (best epoch {state['best_epoch']})")
    dist.stop()
    return card_path


def select_training_device(requested: str) -> "torch.device":  # noqa: F821
    """``auto``: this process' GPU when there is one (``LOCAL_RANK`` under torchrun), else the CPU."""
    import os

    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: bfloat16 matrix instructions, not bfloat16 emulated on float32 units."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def uses_bf16(config: TrainConfig, device: "torch.device") -> bool:  # noqa: F821
    """bfloat16 autocast: always on a GPU; on a CPU when ``cpu_bf16`` asks, refused where the CPU would only
    emulate it (several times slower than float32: AVX-512 without avx512_bf16, e.g. Skylake or Cascade Lake)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu" or not config.cpu_bf16:
        return False
    if not cpu_has_native_bf16():
        raise ValueError("cpu_bf16 is set, but this CPU has no native bfloat16 (avx512_bf16 or AMX): "
                         "set it to false in the configuration")
    return True


def record_epoch(state: dict, scores: dict, loss: float, seconds: float, network, out_dir: Path,
                 select_best: bool = True) -> dict:
    """Add an epoch to the history; keep the weights in ``best.pt`` when the mean validation Dice is the best so
    far. With ``select_best`` off the last epoch is exported: it is always the "best", and its weights are the
    checkpoint's, so no second copy is written."""
    import torch

    state["epoch"] += 1
    score = float(np.nanmean(list(scores.values())))
    state["history"].append({"epoch": state["epoch"], "loss": loss, "validation": scores, "seconds": seconds})
    if score > state["best_score"] or not select_best:
        state["best_score"], state["best_epoch"] = score, state["epoch"]
        if select_best:
            torch.save(network.state_dict(), out_dir / "best.pt")
    return state


def describe_data(config: TrainConfig, train_set: SliceSet, how: str) -> str:
    sources = [name for name, used in (
        ("dstaroff/COVID19-CT-Segmentation slices, train groups of Resources/model/split.json", config.corpus),
        ("MedSeg medseg_train", config.medseg),
        ("COVID-19-CT-Seg npz slices", config.npz_slices),
        (f"volumes from {Path(str(config.volumes)).name}", config.volumes),
        (f"healthy volumes (no COVID-19) from {', '.join(Path(f).name for f, _ in config.healthy_folders())}"
         + (f", also as {config.healthy_thick_slices_mm:g} mm slices" if config.healthy_thick_slices_mm else ""),
         config.healthy_volumes),
    ) if used]
    return f"{' + '.join(sources)} ({len(train_set.names)} slices); {how}"


def fold_init_model(config: TrainConfig) -> str | None:
    """``init_model`` with ``{fold}`` naming this run's fold (a k-fold second stage, one fold per run or all of
    them under :func:`cross_validate`)."""
    if config.init_model and "{fold}" in config.init_model:
        if not config.folds:
            raise ValueError(f"init_model {config.init_model} names a fold, but the configuration has no folds")
        return config.init_model.replace("{fold}", str(config.fold))
    return config.init_model


def cross_validate(config: TrainConfig, log=print) -> Path:
    """Train every fold into ``out_dir/fold-K`` (each resumable) and write ``cross_validation.json``:
    per-fold validation Dice at the best epoch, and mean and sd over folds."""
    from dataclasses import replace

    if config.folds < 2:
        raise ValueError("cross-validation needs folds >= 2 in the configuration")
    if config.init_model and "{fold}" not in config.init_model:
        raise ValueError(f"init_model {config.init_model} is one model for every fold: it has seen the other folds' "
                         "validation patients; name each fold's own with {fold} (e.g. .../fold-{fold}/NAME.json)")
    out_dir = Path(config.out_dir).expanduser()
    per_fold = []
    for fold in range(config.folds):
        fold_config = replace(config, fold=fold, out_dir=str(out_dir / f"fold-{fold}"))
        card_path = train(fold_config, log=lambda message, fold=fold: log(f"[fold {fold}] {message}"))
        per_fold.append(json.loads(card_path.read_text(encoding="utf-8"))["scores"]["validation_pooled_dice"])
    summary = {"folds": config.folds, "fold_seed": config.fold_seed, "seed": config.seed,
               "per_fold_validation_pooled_dice": per_fold}
    for output in OUTPUTS:
        values = [f[output] for f in per_fold if f.get(output) is not None and not math.isnan(f[output])]
        summary[output] = {"mean": float(np.mean(values)) if values else math.nan,
                           "sd": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan}
    path = out_dir / "cross_validation.json"
    write_text(path, json.dumps(summary, indent=2) + "\n")
    log(f"cross-validation: lungs {summary['lungs']['mean']:.4f} ± {summary['lungs']['sd']:.4f}, infection "
        f"{summary['infection']['mean']:.4f} ± {summary['infection']['sd']:.4f} ({path})")
    return path
