"""Train or fine-tune from a JSON configuration (resumes from the checkpoint in its out_dir).

    python -m CovidSegLib.training CONFIG.json                    # one run (or fold `fold` when folds > 0)
    python -m CovidSegLib.training CONFIG.json --cross-validate   # every fold, then cross_validation.json
    python -m CovidSegLib.training CONFIG.json --prepared FILE.npz  # from sources rendered beforehand (.prepared)
    torchrun --nproc_per_node 4 -m CovidSegLib.training CONFIG.json   # DistributedDataParallel
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import replace
from typing import Sequence


def main(argv: Sequence[str] | None = None, prog: str = "python -m CovidSegLib.training") -> int:
    from .train import TrainConfig, cross_validate, train

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="training configuration (JSON; fields of CovidSegLib.training.train."
                                       "TrainConfig)")
    parser.add_argument("--cross-validate", action="store_true",
                        help="train all `folds` folds by patient and summarise their validation Dice")
    parser.add_argument("--prepared", metavar="FILE.npz",
                        help="train from the sources python -m CovidSegLib.training.prepared rendered into this file "
                             "from the same data settings (overrides the configuration's 'prepared')")
    args = parser.parse_args(argv)
    config = TrainConfig.from_file(args.config)
    if args.prepared:
        config = replace(config, prepared=args.prepared)
    log = functools.partial(print, flush=True)  # a run logged to a file (nohup) shows each epoch as it ends
    cross_validate(config, log=log) if args.cross_validate else train(config, log=log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
