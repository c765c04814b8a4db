"""The sweeps' memoised network: the product path's figures unchanged, the network run once per batch."""

from __future__ import annotations

from pathlib import Path

import torch

from CovidSegLib.engine.density import InfectionFloor
from CovidSegLib.engine.model import load_model
from CovidSegLib.training.memo import batch_key, memoised
from CovidSegLib.training.report import healthy_volume_scores


def test_thresholds_and_floors_rerun_segment_without_rerunning_the_network(volumes: Path, tmp_path: Path) -> None:
    """CTChest through ``covidseg segment``'s path under three variants: each gives the figures an unmemoised
    model gives, and only the first pays for the network."""
    ct = volumes / "ctchest4.nrrd"
    model = load_model()
    once = memoised(model)
    variants = [lambda m: m.with_threshold(0.3), lambda m: m.with_threshold(0.7),
                lambda m: m.with_floor(InfectionFloor.from_card({"min_hu": -700.0, "smoothing_mm": 2.1}))]
    figures = []
    for variant in variants:
        figures.append(healthy_volume_scores(variant(once), ct, tmp_path / "memo"))
        if len(figures) == 1:
            first_run_passes = once.network.passes
    assert first_run_passes > 0 and once.network.passes == first_run_passes
    assert figures == [healthy_volume_scores(variant(model), ct, tmp_path / "plain") for variant in variants]
    assert figures[0]["false_infection_ml"] > figures[1]["false_infection_ml"], "the thresholds were applied"


def test_batch_key_is_content_not_layout() -> None:
    batch = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    assert batch_key(batch) == batch_key(batch.contiguous(memory_format=torch.channels_last))
    changed = batch.clone()
    changed[1, 0, 3, 3] += 1
    assert batch_key(changed) != batch_key(batch)
    assert batch_key(batch.reshape(1, 2, 4, 4)) != batch_key(batch), "the shape is part of the key"
