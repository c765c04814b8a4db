"""The anatomy representation (card ``preprocessing.mode: anatomy``): what the network sees of a slice placed on the
canvas of :mod:`CovidSegLib.engine.canvas`, for training and every inference path alike.

Three input channels, stored as two 8-bit images and a flag:

- **structure**: the corpus' transform (HU clipped to ``clip_hu``, min-max normalised, OpenCV CLAHE with the
  corpus' clip limit and tiles), made on the canvas, so its tiles always cover the same 51 mm of patient whatever
  the field of view. The training corpus exists only in this transform (made on its whole slices), so this channel
  carries what the corpus teaches: the shape and texture of lungs and lesions.
- **density**: HU over the fixed window ``hu_window``, linearly. CLAHE equalises each tile, so a uniformly denser
  lung looks normal in the structure channel (lungmask's slices with their lung raised by +300 HU: 0.0 % called
  infection by the clahe model); here -850 HU lung and -450 HU ground glass differ by 30 % of the range.
- **density present**: 1 where the density channel holds HU, 0 where the source has none (the corpus' CLAHE
  images; the density channel is then 0). Every CT the product reads has HU, so ``covidseg segment`` always sets
  it; 8-bit exports of a HU window (MedSeg's crops, 8-bit ``.npz``, PNG/JPEG through ``predict-slices``) are
  taken as HU over the assumed window and set it too, so their density is only as right as that window;
  ``predict-slices --represented`` (CLAHE images) leaves it 0.

HU below -1024 (padding outside a scanner's field of view: -2048, -3024) is air here, and the canvas outside the
slice is air too: the padding value cannot change what the network sees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .canvas import Placement
from .representation import Preprocessing

if TYPE_CHECKING:
    import torch

AIR_HU = -1024.0
#: Channels of the network's input, in order.
CHANNELS = ("structure", "density", "density_present")


def hu_on_canvas(slices_hu: np.ndarray, placement: Placement) -> np.ndarray:
    """HU slices ``[n, rows, cols]`` on the canvas ``[n, size, size]`` float32, air (-1024) outside and below."""
    size = placement.canvas_size
    out = np.empty((len(slices_hu), size, size), np.float32)
    for index, values in enumerate(slices_hu):
        out[index] = placement.to_canvas(np.maximum(values.astype(np.float32), AIR_HU), fill=AIR_HU)
    return out


def structure_image(canvas_hu: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """The corpus transform of one canvas ``[size, size]`` in HU: uint8 CLAHE image on the canvas itself."""
    import cv2

    values = canvas_hu.astype(np.float64)
    if preprocessing.clip_hu is not None:
        values = np.clip(values, *preprocessing.clip_hu)
    low, high = values.min(), values.max()
    unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
    clahe = cv2.createCLAHE(clipLimit=preprocessing.clahe_clip_limit,
                            tileGridSize=(preprocessing.clahe_tiles, preprocessing.clahe_tiles))
    return clahe.apply(np.uint8(unit * 255))


def density_image(canvas_hu: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """HU linearly onto 0..255 over ``hu_window`` (clipped), rounded: uint8."""
    low, high = preprocessing.hu_window
    unit = np.clip((canvas_hu.astype(np.float32) - low) / np.float32(high - low), 0.0, 1.0)
    return np.round(unit * 255).astype(np.uint8)


def render_canvas_hu(canvas_hu: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Canvases in HU ``[n, size, size]`` as the two stored channels: uint8 ``[n, 2, size, size]``."""
    out = np.empty((len(canvas_hu), 2) + canvas_hu.shape[1:], np.uint8)
    for index, canvas in enumerate(canvas_hu):
        out[index, 0] = structure_image(canvas, preprocessing)
        out[index, 1] = density_image(canvas, preprocessing)
    return out


def render_hu(slices_hu: np.ndarray, placement: Placement, preprocessing: Preprocessing) -> np.ndarray:
    """HU slices ``[n, rows, cols]`` in the anatomy representation: uint8 ``[n, 2, size, size]``."""
    return render_canvas_hu(hu_on_canvas(slices_hu, placement), preprocessing)


def render_structure_only(images: np.ndarray, placement: Placement) -> np.ndarray:
    """8-bit images already in the corpus transform ``[n, rows, cols]`` (the corpus itself) placed on the canvas,
    with an empty density channel: uint8 ``[n, 2, size, size]``. Outside the image is black, as the corpus' air."""
    size = placement.canvas_size
    out = np.zeros((len(images), 2, size, size), np.uint8)
    for index, image in enumerate(images):
        out[index, 0] = np.clip(np.round(placement.to_canvas(image, fill=0.0)), 0, 255).astype(np.uint8)
    return out


def masks_on_canvas(masks: np.ndarray, placement: Placement) -> np.ndarray:
    """Boolean masks ``[n, rows, cols]`` on the canvas: the share of each canvas pixel they cover, >= 0.5."""
    size = placement.canvas_size
    out = np.zeros((len(masks), size, size), bool)
    for index, mask in enumerate(masks):
        if mask.any():
            out[index] = placement.to_canvas(mask.astype(np.float32), fill=0.0) >= 0.5
    return out


def anatomy_network_input(images: np.ndarray, has_density: np.ndarray) -> "torch.Tensor":
    """Stored channels uint8 ``[n, 2, size, size]`` and which slices have HU ``[n]`` to the network's float input
    ``[n, 3, size, size]``: structure and density in 0..1, the density zeroed where absent, and the flag."""
    import torch

    stored = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    present = torch.from_numpy(np.asarray(has_density, dtype=np.float32)).view(-1, 1, 1, 1)
    flag = present.expand(-1, 1, *stored.shape[-2:])
    return torch.cat([stored[:, :1], stored[:, 1:2] * present, flag], dim=1).contiguous()
