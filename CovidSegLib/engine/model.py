"""Model format: a U-Net's weights as ``.safetensors`` plus a JSON model card that says how to use them.

The card is the single source of truth for inference and training alike: architecture, input size,
intensity preprocessing, output channels and what they mean, training data, measured scores, licence, and the
sha256 of the weights. Weights are only ever loaded from safetensors (no pickle), and a card that does not
match its weights is refused with a message that says what differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .density import InfectionFloor, InfectionSplit
from ..errors import ModelError
from .representation import Preprocessing

if TYPE_CHECKING:  # torch is imported only when a network is built
    import torch

CARD_FORMAT = "covidseg-model-card/1"
BUNDLED_NAME = "covidseg-unet.json"
#: The bundled default model: inside the package in an installed Slicer extension (CovidSegLib/CMakeLists.txt
#: copies it there), else in the repository's Resources/model.
BUNDLED_CANDIDATES = (
    Path(__file__).resolve().parents[1] / "Resources" / "model" / BUNDLED_NAME,
    Path(__file__).resolve().parents[2] / "Resources" / "model" / BUNDLED_NAME,
)
BUNDLED_CARD = next((p for p in BUNDLED_CANDIDATES if p.is_file()), BUNDLED_CANDIDATES[-1])


@dataclass(frozen=True)
class ModelCard:
    name: str
    architecture: str  # "Unet" from segmentation-models-pytorch
    encoder: str
    encoder_depth: int
    decoder_channels: tuple[int, ...]
    in_channels: int  # 1: one axial slice
    input_size: int  # square side in pixels
    outputs: tuple[str, ...]  # sigmoid channels, in order, e.g. ("lungs", "infection")
    preprocessing: Preprocessing
    weights_file: str
    weights_sha256: str
    threshold: float = 0.5
    weights_dtype: str = "float16"  # storage only: halves the file; the network computes in float32
    training_data: str = ""
    scores: dict[str, Any] = field(default_factory=dict)
    licence: str = ""
    description: str = ""
    limitations: tuple[str, ...] = ()  # what the measurements showed it gets wrong
    training_config: dict[str, Any] = field(default_factory=dict)
    #: how the engine splits infection into ground-glass opacity and consolidation (CovidSegLib.engine.density);
    #: empty: the model's infection stays one label
    infection_split: dict[str, Any] = field(default_factory=dict)
    #: infection less dense than this is given back to the lung (CovidSegLib.engine.density); empty: no floor
    infection_floor: dict[str, Any] = field(default_factory=dict)
    #: activation ranges that let the engine run the convolutions in int8 on an x86 CPU
    #: (CovidSegLib.engine.int8_inference); empty: the network runs in float32 everywhere
    int8_calibration: dict[str, Any] = field(default_factory=dict)
    format: str = CARD_FORMAT

    def to_json(self) -> str:
        document = asdict(self)
        document["preprocessing"] = self.preprocessing.recorded()
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> "ModelCard":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelError(f"{source}: not a model card (invalid JSON: {error})") from None
        if not isinstance(document, dict) or document.get("format") != CARD_FORMAT:
            raise ModelError(f"{source}: not a CovidSeg model card (expected format {CARD_FORMAT!r})")
        try:
            document["preprocessing"] = Preprocessing(**{
                k: tuple(v) if isinstance(v, list) else v for k, v in document.get("preprocessing", {}).items()
            })
            problem = document["preprocessing"].problem()
            if problem:
                raise ModelError(f"{source}: this CovidSeg cannot run the model: {problem}")
            document["decoder_channels"] = tuple(document["decoder_channels"])
            document["outputs"] = tuple(document["outputs"])
            document["limitations"] = tuple(document.get("limitations", ()))
            card = cls(**document)
            card.split_rule()  # a rule the engine cannot read is refused now, not in the middle of a CT
            card.floor_rule()
            return card
        except (TypeError, KeyError, ValueError) as error:
            raise ModelError(f"{source}: model card fields are wrong ({error})") from None

    def split_rule(self) -> "InfectionSplit | None":
        """The card's ground-glass opacity / consolidation rule, or None when it keeps infection whole."""
        return InfectionSplit.from_card(self.infection_split)

    def floor_rule(self) -> "InfectionFloor | None":
        """The card's infection density floor, or None when every voxel the network calls infection stays so."""
        return InfectionFloor.from_card(self.infection_floor)

    def output_index(self, name: str) -> int:
        if name not in self.outputs:
            raise ModelError(f"model {self.name} has no {name!r} output (outputs: {', '.join(self.outputs)})")
        return self.outputs.index(name)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_network(card: ModelCard) -> "torch.nn.Module":
    """The untrained network the card describes; nothing is downloaded (``encoder_weights=None``)."""
    import segmentation_models_pytorch as smp

    if card.architecture != "Unet":
        raise ModelError(f"model {card.name}: unsupported architecture {card.architecture!r} (supported: Unet)")
    return smp.Unet(
        encoder_name=card.encoder,
        encoder_depth=card.encoder_depth,
        encoder_weights=None,
        decoder_channels=list(card.decoder_channels),
        in_channels=card.in_channels,
        classes=len(card.outputs),
    )


def read_card(card_path: str | Path) -> ModelCard:
    card_path = Path(card_path)
    if not card_path.is_file():
        raise ModelError(f"{card_path}: model card not found")
    return ModelCard.from_json(card_path.read_text(encoding="utf-8"), str(card_path))


@dataclass
class LoadedModel:
    card: ModelCard
    network: "torch.nn.Module"
    card_path: Path

    def with_threshold(self, threshold: float) -> "LoadedModel":
        """The same network under another probability threshold (sweeps and reports; the card file is untouched)."""
        return replace(self, card=replace(self.card, threshold=threshold))

    def with_floor(self, floor: "InfectionFloor | None") -> "LoadedModel":
        """The same network under another infection density floor, or none (studies; the card file is untouched)."""
        return replace(self, card=replace(self.card, infection_floor=floor.card_entry() if floor else {}))

    def with_clip_hu(self, clip_hu: tuple[float, float]) -> "LoadedModel":
        """The same network fed HU clipped to ``clip_hu`` before the corpus transform's min-max (studies of the
        representation's HU clip; the card file is untouched). Only ``clahe`` cards have the clip. An int8
        calibration in the card stays, though it was measured on images of the card's own clip."""
        if self.card.preprocessing.mode != "clahe":
            raise ModelError(f"model {self.card.name}: its preprocessing mode {self.card.preprocessing.mode!r} "
                             "has no HU clip")
        preprocessing = replace(self.card.preprocessing, clip_hu=(float(clip_hu[0]), float(clip_hu[1])))
        problem = preprocessing.problem()
        if problem:
            raise ModelError(f"model {self.card.name}: {problem}")
        return replace(self, card=replace(self.card, preprocessing=preprocessing))


def load_model(card_path: str | Path | None = None) -> LoadedModel:
    """Read a card, check its weights' sha256, and load them (safetensors only) into the network it describes.

    ``card_path`` may name the card (``.json``) or the weights (``.safetensors``, card beside it with the same
    stem); ``None`` means the bundled default model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card_path = Path(card_path) if card_path is not None else BUNDLED_CARD
    if card_path.suffix == ".safetensors":
        card_path = card_path.with_suffix(".json")
    card = read_card(card_path)
    weights = card_path.parent / card.weights_file
    if not weights.is_file():
        raise ModelError(f"{weights}: weights file named by the model card {card_path.name} is missing")
    actual = file_sha256(weights)
    if actual != card.weights_sha256:
        raise ModelError(
            f"{weights}: sha256 {actual[:12]}... does not match the model card's {card.weights_sha256[:12]}... "
            "(corrupt download or the wrong weights for this card)"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"{weights}: not a readable safetensors file ({error})") from None
    network = build_network(card)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong_shape:
            key = sorted(wrong_shape)[0]
            details.append(f"{len(wrong_shape)} of the wrong shape (e.g. {key}: {tuple(state[key].shape)} "
                           f"vs {tuple(expected[key].shape)})")
        raise ModelError(f"{weights}: weights do not fit the network in {card_path.name}: {'; '.join(details)}")
    network.load_state_dict(state, strict=True)  # copies (and casts float16 storage) into float32 parameters
    network.float().eval()
    return LoadedModel(card, network, card_path)


def save_model(network: "torch.nn.Module", card: ModelCard, card_path: str | Path) -> ModelCard:
    """Write the weights (safetensors) and the card with the weights' sha256 filled in; both atomically."""
    from safetensors.torch import save_file

    from ..io.writing import atomic_output, write_text

    card_path = Path(card_path)
    weights = card_path.with_suffix(".safetensors")
    import torch

    storage = getattr(torch, card.weights_dtype)
    state = {k: (v.detach().cpu().to(storage) if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in network.state_dict().items()}
    with atomic_output(weights) as temporary:
        save_file(state, str(temporary), metadata={"format": "pt", "card": card_path.name})
        digest = file_sha256(temporary)
    final = ModelCard(**{**asdict(card), "preprocessing": card.preprocessing, "weights_file": weights.name,
                         "weights_sha256": digest})
    write_text(card_path, final.to_json())
    return final


def update_card(card_path: str | Path, changes: dict[str, Any]) -> None:
    """Replace top-level fields of a card file (its weights untouched), atomically; the rest stays as written.
    A result that is no longer a valid card is refused before anything is written."""
    from ..io.writing import write_text

    card_path = Path(card_path)
    document = {**json.loads(card_path.read_text(encoding="utf-8")), **changes}
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    ModelCard.from_json(text, str(card_path))
    write_text(card_path, text)
