"""Export the latest checkpoint of a run (running or interrupted) as a model, to measure it before it ends.

    python -m CovidSegLib.training.export CONFIG.json OUT_CARD.json

The weights are those after the last finished epoch; the card records that epoch and its validation Dice, and
says that the run had not ended. The run itself is not touched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..engine.model import build_network, save_model
from .train import TrainConfig, make_card


def export_checkpoint(config: TrainConfig, card_path: Path) -> Path:
    """Write the checkpoint's weights (safetensors) and a card beside ``card_path``."""
    import torch

    checkpoint = Path(config.out_dir).expanduser() / "checkpoint.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint yet (the run has not finished an epoch)")
    saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
    state = json.loads(saved["state"])
    card = make_card(config, {"validation_pooled_dice": state["history"][-1]["validation"],
                              "epochs_trained": state["epoch"],
                              "exported_epoch_chosen_by": f"checkpoint after epoch {state['epoch']} of "
                                                          f"{config.epochs} (run not ended)"})
    network = build_network(card)
    network.load_state_dict(saved["model"])
    save_model(network, card, card_path)
    return card_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("card", help="where to write the model card (.json; weights beside it)")
    args = parser.parse_args()
    print(export_checkpoint(TrainConfig.from_file(args.config), Path(args.card)))


if __name__ == "__main__":
    main()
