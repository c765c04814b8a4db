"""Training augmentation on real corpus slices: lesion pasting puts another slice's infection inside this slice's
lungs and nowhere else, only where the masks it needs are known, and leaves runs without it unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CovidSegLib.training.augment import INFECTION, LUNGS, AugmentConfig, augment, paste_lesions  # noqa: E402

HU_SLICES = ("coronacases_001_slice098", "coronacases_001_slice110", "coronacases_001_slice122")


def _corpus_batch(slices: Path) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The three corpus images (the representation itself) with the experts' lungs and infection, at 256²."""
    images, masks = [], []
    for name in HU_SLICES:
        with np.load(slices / "hu_infection" / f"{name}.npz") as data:
            images.append(data["corpus_ct_256"][None] / 255.0)
            masks.append(np.stack([data["corpus_lungs_256"], data["corpus_infection_256"]]))
    return torch.tensor(np.stack(images), dtype=torch.float32), torch.tensor(np.stack(masks), dtype=torch.float32)


def test_pasted_lesions_land_inside_the_lungs_and_join_the_infection_mask(slices: Path) -> None:
    images, masks = _corpus_batch(slices)
    masks[0, INFECTION] = 0  # the first slice stands for a CT without COVID-19: infection known to be empty
    labelled = torch.ones((3, 2), dtype=torch.bool)
    pasted_any = False
    for seed in range(8):
        new_images, new_masks = paste_lesions(images, masks, labelled, 1.0, torch.Generator().manual_seed(seed))
        lungs = masks[:, LUNGS].bool()
        assert torch.equal(new_masks[:, LUNGS], masks[:, LUNGS])
        assert bool((new_masks[:, INFECTION] >= masks[:, INFECTION]).all())  # nothing taken away
        added = new_masks[:, INFECTION].bool() & ~masks[:, INFECTION].bool()
        assert not bool((added & ~lungs).any())  # nothing added outside the lungs
        changed = (new_images != images)[:, 0]
        assert not bool((changed & ~lungs).any())  # the image is only blended inside the lungs
        if added.any():
            assert bool(changed[added].any())  # the pasted lesion's pixels came with it
        pasted_any |= bool(added[0].any())
    assert pasted_any, "the infection-free slice never received a lesion"


def test_nothing_is_pasted_where_the_needed_masks_are_unknown(slices: Path) -> None:
    images, masks = _corpus_batch(slices)
    without_lungs = torch.tensor([[False, True]] * 3)  # POPI: infection known to be empty, lungs not labelled
    same_images, same_masks = paste_lesions(images, masks, without_lungs, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(same_images, images) and torch.equal(same_masks, masks)


@pytest.mark.parametrize("labelled", [True, False])
def test_augment_without_pasting_draws_the_same_random_numbers(slices: Path, labelled: bool) -> None:
    """Runs recorded before lesion pasting existed resume bit for bit: off, it draws nothing from the stream."""
    images, masks = _corpus_batch(slices)
    known = torch.ones((3, 2), dtype=torch.bool) if labelled else None
    config = AugmentConfig()
    a = augment(images, masks, config, torch.Generator().manual_seed(3), known)
    b = augment(images, masks, config, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(torch.unique(a[1]).tolist()) <= {0.0, 1.0}
