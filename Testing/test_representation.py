"""The network's image representation: the corpus transform computed from HU, bit for bit, and the same image on
every path (volumes through the engine, single slices, training loaders)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from CovidSegLib.errors import ModelError
from CovidSegLib.engine.model import ModelCard
from CovidSegLib.engine.representation import (AIR_TO_METAL, RADIOPAEDIA_CLIP, Preprocessing, clahe_image,
                                                clahe_slices, represent)

HU_SLICES = ("coronacases_001_slice098", "coronacases_001_slice110", "coronacases_001_slice122")
UNCLIPPED = Preprocessing(mode="clahe", crop="none", clip_hu=None)
CLIPPED = Preprocessing(mode="clahe", crop="none", clip_hu=AIR_TO_METAL)  # the product's


def _hu_slice(slices: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(slices / "hu_infection" / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def _probe_model(preprocessing: Preprocessing):
    """An untrained small network behind a card with ``preprocessing``: what the engine feeds it is the test."""
    from CovidSegLib.engine.model import LoadedModel, build_network

    card = ModelCard(name="probe", architecture="Unet", encoder="resnet18", encoder_depth=5,
                     decoder_channels=(16, 16, 16, 16, 16), in_channels=1, input_size=256,
                     outputs=("lungs", "infection"), preprocessing=preprocessing, weights_file="", weights_sha256="")
    return LoadedModel(card, build_network(card), Path("probe.json"))


@pytest.mark.parametrize("name", HU_SLICES)
def test_clahe_of_a_hu_slice_is_the_corpus_image_bit_for_bit(slices: Path, name: str) -> None:
    data = _hu_slice(slices, name)
    display = np.rot90(data["image"])  # stored as nibabel returns it; rot90 is the radiological display
    assert np.array_equal(clahe_image(display), data["corpus_ct_256"])
    assert np.array_equal(represent(display[None], CLIPPED)[0], data["corpus_ct_256"])  # the product's clip too
    # the radiopaedia half's clip is another image: clipping there changes what the min-max sees
    assert not np.array_equal(clahe_image(display, clip_hu=RADIOPAEDIA_CLIP), data["corpus_ct_256"])


def test_the_product_clip_keeps_padding_from_stretching_the_range(slices: Path) -> None:
    display = np.rot90(_hu_slice(slices, HU_SLICES[0])["image"]).astype(np.int16)
    padded = display.copy()
    rows, cols = np.ogrid[:512, :512]
    outside_field_of_view = (rows - 256) ** 2 + (cols - 256) ** 2 > 250 ** 2
    padded[outside_field_of_view] = -3024  # what many scanners write outside the reconstruction circle
    clipped = represent(np.stack([display, padded]), CLIPPED).astype(int)
    unclipped = represent(np.stack([display, padded]), UNCLIPPED).astype(int)
    # what is left is the corners' new content itself (measured 5 grey levels against 36 unclipped)
    assert np.abs(clipped[0] - clipped[1]).mean() < np.abs(unclipped[0] - unclipped[1]).mean() / 4


def test_non_square_slices_are_padded_with_their_minimum_not_stretched() -> None:
    tall = np.full((300, 200), -1000, np.int16)
    tall[100:200, 50:150] = 40
    image = clahe_image(tall)
    assert image.shape == (256, 256)
    square = np.full((300, 300), -1000, np.int16)
    square[:, :200] = tall
    assert np.array_equal(image, clahe_image(square))


def test_the_engine_feeds_whole_slices_in_the_corpus_representation(slices: Path) -> None:
    """A volume of the three HU slices goes through the engine's own preparation: each slice becomes exactly its
    corpus image (whole slice, CLAHE at 256x256), before the resize to the network's input size."""
    torch = pytest.importorskip("torch")
    from CovidSegLib.engine.inference import SliceSegmenter, whole_slice_box

    segmenter = SliceSegmenter(_probe_model(UNCLIPPED), torch.device("cpu"))
    hu = np.stack([np.rot90(_hu_slice(slices, name)["image"]) for name in HU_SLICES])
    prepared = segmenter.prepare(hu, whole_slice_box(hu.shape[1:]))
    expected = np.stack([_hu_slice(slices, name)["corpus_ct_256"] for name in HU_SLICES])
    assert prepared.shape == (3, 1, 256, 256)
    assert torch.equal(prepared[:, 0], torch.from_numpy(expected).float() / 255)
    with pytest.raises(ValueError, match="whole slices"):
        segmenter.prepare(hu, whole_slice_box((400, 400)))


def test_training_sees_the_tensor_inference_sees(slices: Path) -> None:
    pytest.importorskip("torch")
    from CovidSegLib.engine.representation import network_input
    from CovidSegLib.training.data import load_npz_slices
    from CovidSegLib.training.slices import resize_slices

    npz = load_npz_slices(slices / "hu_infection", CLIPPED)
    display = np.stack([np.rot90(_hu_slice(slices, name)["image"]) for name in HU_SLICES])
    assert np.array_equal(npz.images, clahe_slices(display, CLIPPED))
    masks = np.stack([npz.lungs, npz.infection], axis=1)
    images, _ = resize_slices(npz.images, masks, 160)
    assert np.array_equal(images, network_input(clahe_slices(display, CLIPPED), 160).numpy())


def test_a_card_the_engine_cannot_honour_is_refused() -> None:
    card = ModelCard(name="x", architecture="Unet", encoder="resnet18", encoder_depth=5,
                     decoder_channels=(8, 8, 8, 8, 8), in_channels=1, input_size=64, outputs=("lungs", "infection"),
                     preprocessing=Preprocessing(), weights_file="x.safetensors", weights_sha256="0")
    text = card.to_json()
    assert ModelCard.from_json(text, "x.json").preprocessing.mode == "window"
    for bad, message in (('"mode": "window"', "unknown preprocessing mode 'gamma'"),
                         ('"crop": "body"', "must be 'none'")):
        changed = text.replace(bad, '"mode": "gamma"') if "gamma" in message else \
            text.replace('"mode": "window"', '"mode": "clahe"')
        with pytest.raises(ModelError, match=message):
            ModelCard.from_json(changed, "x.json")


def test_a_study_can_feed_the_engine_another_hu_clip(slices: Path) -> None:
    """``with_clip_hu`` (crossval_report --clip-hu) changes only the clip the engine applies before the corpus
    transform: the radiopaedia clip gives the image that clip makes; window-mode cards and bad clips are refused."""
    torch = pytest.importorskip("torch")
    from CovidSegLib.engine.inference import SliceSegmenter, whole_slice_box

    model = _probe_model(CLIPPED)
    studied = model.with_clip_hu(RADIOPAEDIA_CLIP)
    assert studied.card.preprocessing == Preprocessing(mode="clahe", crop="none", clip_hu=RADIOPAEDIA_CLIP)
    assert model.card.preprocessing.clip_hu == AIR_TO_METAL and studied.network is model.network
    hu = np.stack([np.rot90(_hu_slice(slices, name)["image"]) for name in HU_SLICES])
    prepared = SliceSegmenter(studied, torch.device("cpu")).prepare(hu, whole_slice_box(hu.shape[1:]))
    expected = np.stack([clahe_image(slice_hu, clip_hu=RADIOPAEDIA_CLIP) for slice_hu in hu])
    assert torch.equal(prepared[:, 0], torch.from_numpy(expected).float() / 255)
    with pytest.raises(ModelError, match="LOW < HIGH"):
        model.with_clip_hu((250.0, -1250.0))
    window = replace(model, card=replace(model.card, preprocessing=Preprocessing()))
    with pytest.raises(ModelError, match="has no HU clip"):
        window.with_clip_hu(RADIOPAEDIA_CLIP)
