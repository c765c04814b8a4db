"""The image the network sees, computed from HU the same way for training and for every inference path.

Why a contrast-enhanced image: the bulk of the training data, the COVID-19-CT-Seg slice corpus (dstaroff), was
released only as contrast-enhanced 8-bit images. Each was made from one HU slice in the radiological display
orientation (our canonical orientation): resize to 256x256 with OpenCV ``INTER_CUBIC`` on float64, min-max
normalise that slice to 0..1, ``np.uint8(x * 255)``, then OpenCV CLAHE (clip limit 7, 8x8 tiles). The HU half of
the corpus was normalised over the slice's own range; its radiopaedia half came from volumes clipped to
-1250..250 HU first. :func:`clahe_slices` computes exactly that (tested bit for bit against corpus images made
from HU slices), so the network meets at inference the image it was trained on. OpenCV is used because the
corpus was made with it: scikit-image's ``equalize_adapthist`` is a different algorithm.

``clip_hu`` clips HU before the min-max. Without it the image depends on what a scanner writes outside its
field of view (-3024, -2048 or -1024 HU are all common) and on metal. :data:`AIR_TO_METAL` (-1024..3071, the
range of a 12-bit CT) is the product's choice: it leaves a slice whose values lie inside it (all the corpus'
HU slices we can check) exactly as the corpus made it, and brings padding to air so that it cannot stretch the
range (measured on the three HU slices: padding the corners with -3024 moves the unclipped image by 36 grey
levels on average, the clipped one by 5, what the corners' new content moves it by itself).
:data:`RADIOPAEDIA_CLIP` is how the corpus' radiopaedia half was made; training renders HU sources both ways.

Three modes, named in the model card's ``preprocessing.mode``:

- ``anatomy``: every slice on a canvas of fixed physical scale centred on the body
  (:mod:`CovidSegLib.engine.canvas`), seen as two images: the corpus' CLAHE transform made on the canvas, and a
  fixed HU window, so that absolute density reaches the network; a third channel says whether the HU window is
  there (the corpus' 8-bit images have none). :mod:`CovidSegLib.engine.anatomy` renders it.

- ``clahe``: the corpus transform on whole slices (no body crop; CLAHE's tiles must see the slice as the corpus
  did), always 256x256; the network input is then resized to the card's input size.
- ``window``: HU mapped linearly onto 0..255 over a window (the first bundled model; kept so older cards run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from .preprocessing import window_to_unit

if TYPE_CHECKING:
    import torch

#: The corpus' image side: CLAHE runs at this size, whatever the network's input size.
CLAHE_SIZE = 256
CLAHE_CLIP_LIMIT = 7.0
CLAHE_TILES = 8
MODES = ("anatomy", "clahe", "window")
#: Settings of the anatomy mode only (:meth:`Preprocessing.recorded`).
ANATOMY_FIELDS = ("canvas_size", "canvas_pixel_mm", "hu_window")
#: The product's HU clip: air to the top of a 12-bit CT's range.
AIR_TO_METAL: tuple[float, float] = (-1024.0, 3071.0)
#: The clip the corpus' radiopaedia half went through before its min-max.
RADIOPAEDIA_CLIP: tuple[float, float] = (-1250.0, 250.0)


@dataclass(frozen=True)
class Preprocessing:
    """How HU slices become the network's input image; stored in the model card."""

    mode: str = "window"  # "clahe" or "window" (cards without a mode predate clahe: window)
    window: tuple[float, float] = (-1250.0, 250.0)  # window mode: HU mapped linearly onto 0..255
    crop: str = "body"  # window mode: "body" (square around the body) or "none"; clahe: always "none"
    clip_hu: Optional[tuple[float, float]] = None  # clahe mode: HU clipped to this range before the min-max
    clahe_size: int = CLAHE_SIZE
    clahe_clip_limit: float = CLAHE_CLIP_LIMIT
    clahe_tiles: int = CLAHE_TILES
    #: anatomy mode: the canvas' side in pixels and its pixel size (mm), and the HU window of the density channel
    canvas_size: int = 256
    canvas_pixel_mm: float = 1.6
    hu_window: tuple[float, float] = (-1024.0, 300.0)

    def recorded(self) -> dict:
        """The settings as the card stores them: the canvas and density fields only for the anatomy mode, so that
        the cards of the other modes read as they did before those fields existed."""
        from dataclasses import asdict

        fields = asdict(self)
        if self.mode != "anatomy":
            for name in ANATOMY_FIELDS:
                fields.pop(name)
        return fields

    def problem(self) -> str | None:
        """What in these settings this version cannot honour (None when all is well)."""
        if self.mode not in MODES:
            return f"unknown preprocessing mode {self.mode!r} (this CovidSeg knows {', '.join(MODES)})"
        if self.mode in ("clahe", "anatomy") and self.crop != "none":
            return f"{self.mode} preprocessing runs on whole slices: its crop must be 'none'"
        if self.mode == "anatomy" and not (self.canvas_size >= 32 and self.canvas_pixel_mm > 0
                                           and self.hu_window[0] < self.hu_window[1]):
            return (f"anatomy preprocessing needs a canvas of at least 32 pixels, a positive pixel size and a HU "
                    f"window LOW < HIGH, got {self.canvas_size}, {self.canvas_pixel_mm}, {self.hu_window}")
        if self.crop not in ("body", "none"):
            return f"unknown crop {self.crop!r} (body or none)"
        if self.clip_hu is not None and not self.clip_hu[0] < self.clip_hu[1]:
            return f"clip_hu must be LOW,HIGH with LOW < HIGH, got {self.clip_hu}"
        return None


def clahe_image(slice_values: np.ndarray, clip_hu: tuple[float, float] | None = None, size: int = CLAHE_SIZE,
                clip_limit: float = CLAHE_CLIP_LIMIT, tiles: int = CLAHE_TILES) -> np.ndarray:
    """The corpus transform of one slice (HU, or an 8-bit image) in display orientation: uint8 ``[size, size]``.

    A non-square slice is padded at the bottom and right with its own minimum, which leaves the min-max
    unchanged (the corpus slices were all square).
    """
    import cv2

    values = np.asarray(slice_values, dtype=np.float64)
    if clip_hu is not None:
        values = np.clip(values, clip_hu[0], clip_hu[1])
    rows, cols = values.shape
    if rows != cols:
        side = max(rows, cols)
        square = np.full((side, side), values.min())
        square[:rows, :cols] = values
        values = square
    resized = cv2.resize(values, (size, size), interpolation=cv2.INTER_CUBIC)
    low, high = resized.min(), resized.max()
    unit = (resized - low) / (high - low) if high > low else np.zeros_like(resized)
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    return clahe.apply(np.uint8(unit * 255))


def clahe_slices(slices: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """:func:`clahe_image` of every slice of ``[n, rows, cols]``: uint8 ``[n, size, size]``."""
    out = np.empty((len(slices), preprocessing.clahe_size, preprocessing.clahe_size), np.uint8)
    for index, values in enumerate(slices):
        out[index] = clahe_image(values, preprocessing.clip_hu, preprocessing.clahe_size,
                                 preprocessing.clahe_clip_limit, preprocessing.clahe_tiles)
    return out


def windowed_slices(slices: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU linearly onto 0..255 over ``window`` (clipped): uint8 at the slices' own size."""
    return np.round(window_to_unit(slices, window) * np.float32(255)).astype(np.uint8)


def represent(slices: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """The network's 8-bit image of each slice ``[n, rows, cols]`` (HU or HU-equivalents), per the card's mode.

    In window mode the caller crops first (the engine's body box); clahe mode always takes whole slices.
    """
    problem = preprocessing.problem()
    if problem:
        raise ValueError(problem)
    if preprocessing.mode == "anatomy":
        raise ValueError("an anatomy model places slices by their spacing: CovidSegLib.engine.anatomy renders them")
    if preprocessing.mode == "clahe":
        return clahe_slices(slices, preprocessing)
    return windowed_slices(slices, preprocessing.window)


def network_input(images: np.ndarray, size: int) -> "torch.Tensor":
    """8-bit images ``[n, h, w]`` (square) to the network's float input ``[n, 1, size, size]`` in 0..1.

    Training and inference both resize here (bilinear with antialiasing), so their inputs agree to the bit.
    """
    import torch
    import torch.nn.functional as F

    unit = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)[:, None]
    if unit.shape[-2:] == (size, size):
        return unit
    return F.interpolate(unit, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
