"""Train or fine-tune from a JSON configuration (resumes from the checkpoint in its out_dir).

    python -m CovidSegLib.training CONFIG.json                    # one run (or fold `fold` when folds > 0)
    python -m CovidSegLib.training CONFIG.json --cross-validate   # every fold, then cross_validation.json
    torchrun --nproc_per_node 4 -m CovidSegLib.training CONFIG.json   # DistributedDataParallel
"""

from __future__ import annotations

import argparse
import functools
from typing import Sequence


def main(argv: Sequence[str] | None = None, prog: str = "python -m CovidSegLib.training") -> int:
    from .train import TrainConfig, cross_validate, train

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="training configuration (JSON; fields of CovidSegLib.training.train."
                                       "TrainConfig)")
    parser.add_argument("--cross-validate", action="store_true",
                        help="train all `folds` folds by patient and summarise their validation Dice")
    args = parser.parse_args(argv)
    config = TrainConfig.from_file(args.config)
    log = functools.partial(print, flush=True)  # a run logged to a file (nohup) shows each epoch as it ends
    cross_validate(config, log=log) if args.cross_validate else train(config, log=log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
