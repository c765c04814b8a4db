"""``python -m CovidSegLib.training CONFIG.json``: train or fine-tune (resumes from the checkpoint in out_dir)."""

import argparse

from .train import TrainConfig, train

parser = argparse.ArgumentParser(prog="python -m CovidSegLib.training", description=__doc__)
parser.add_argument("config", help="training configuration (JSON; fields of CovidSegLib.training.train.TrainConfig)")
args = parser.parse_args()
train(TrainConfig.from_file(args.config))
