"""Slice datasets at inference: read single axial slices, run the engine on them, write their masks.

Public COVID-19 slice sets (the COVID-19-CT-Seg slice corpus, MedSeg) ship axial slices as 8-bit images of a
lung window, sometimes as HU arrays in ``.npz``. An 8-bit slice is mapped back to HU-equivalents over a window
(the model's own unless the caller knows the export's window), so it goes through exactly the representation,
resizing and thresholding of :class:`CovidSegLib.engine.inference.SliceSegmenter` that volumes get. Slices that are
already in the model's representation (the corpus' CLAHE images) are fed as they are (``represented``): a second
CLAHE would change them. Slices are used whole, without the body crop: a body box cannot be found reliably on
slices whose contrast was enhanced (CLAHE turns the air around the patient into noise as bright as tissue), and
crops around the lungs have no body outline at all. An anatomy model places each slice on its canvas by its own
body (:func:`CovidSegLib.engine.canvas.slice_placement`): by the pixel size the caller gives, else by the estimate
from the body's width, so a crop around the lungs is brought to the scale of a whole slice.

Predicted masks are written as 0/255 PNGs in ``OUT/lungs/`` and ``OUT/infection/`` under each slice's name, the
layout :mod:`CovidSegLib.slices.evaluation` reads back.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import Cancelled, InputError
from ..engine.inference import whole_slice_box
from ..engine.postprocess import postprocess_slice
from ..io.writing import atomic_output

SLICE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npz")
#: Subfolders that hold the images of a slice dataset (MedSeg: images/, the dstaroff corpus: ct/).
IMAGE_SUBFOLDERS = ("images", "ct", "image", "imgs")
#: Output subfolder per predicted target.
MASK_OUTPUTS = ("lungs", "infection")


@dataclass
class SliceImage:
    name: str  # file stem: the key that pairs a slice with its masks
    hu: np.ndarray  # [rows, cols] int16 HU or HU-equivalents
    source: Path
    eight_bit: np.ndarray | None = None  # the image as stored, when it is an 8-bit image


def eight_bit_to_hu(images: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Undo an 8-bit export of a HU window: 0 maps to the window's low end, 255 to its high end."""
    low, high = window
    return (images.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)).astype(np.int16)


def image_folder(folder: Path) -> Path:
    """The folder that holds the slice images: ``folder`` itself or its ``images/`` (or ``ct/``) subfolder."""
    for name in IMAGE_SUBFOLDERS:
        if (folder / name).is_dir():
            return folder / name
    return folder


def slice_files(folder: str | Path) -> list[Path]:
    """Slice image files in a folder (or its image subfolder), in natural order (2 before 10)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder of slice images")
    files = [p for p in image_folder(folder).iterdir()
             if p.is_file() and p.suffix.lower() in SLICE_SUFFIXES and not p.name.startswith(".")]
    if not files:
        raise InputError(folder, f"holds no slice images ({', '.join(SLICE_SUFFIXES)})")
    return sorted(files, key=lambda p: (int(p.stem) if p.stem.isdigit() else float("inf"), p.stem))


def npz_keys(path: Path) -> set[str]:
    """The array names in an ``.npz`` file, read from its index without loading any array."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return set(data.files)
    except (OSError, ValueError) as error:
        raise InputError(path, f"cannot be read as .npz ({error})") from None


def read_npz_array(path: Path, keys: Sequence[str]) -> np.ndarray | None:
    """The first of ``keys`` in an ``.npz`` file (None if it has none of them); refuses pickled objects."""
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in keys:
                if key in data:
                    return np.asarray(data[key])
    except (OSError, ValueError) as error:
        raise InputError(path, f"cannot be read as .npz ({error})") from None
    return None


def read_slice(path: Path, window: tuple[float, float]) -> SliceImage:
    """One slice as HU-equivalents: 8-bit images are taken as exports of ``window``; ``.npz`` may hold HU."""
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() == ".npz":
        array = read_npz_array(path, ("image", "ct", "arr_0"))
        if array is None:
            raise InputError(path, "has no 'image' array")
    else:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("L"))
        except (OSError, UnidentifiedImageError) as error:
            raise InputError(path, f"cannot be read as an image ({error})") from None
    array = np.squeeze(array)
    if array.ndim != 2 or min(array.shape) < 16:
        raise InputError(path, f"is not a 2D slice (shape {array.shape})")
    if not np.isfinite(array).all():
        raise InputError(path, "contains NaN or infinite values")
    if array.dtype == np.uint8:
        return SliceImage(path.stem, eight_bit_to_hu(array, window), path, array)
    if array.min() >= 0 and array.max() <= 255:
        raise InputError(path, "values 0..255 stored as numbers: save 8-bit slices as uint8, or HU as HU")
    return SliceImage(path.stem, np.clip(array, -32768, 32767).astype(np.int16), path)


def read_slices(folder: str | Path, window: tuple[float, float]) -> list[SliceImage]:
    return [read_slice(path, window) for path in slice_files(folder)]


def canvas_masks(segmenter, stack: np.ndarray, represented: bool, pixel_mm: float | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Masks ``[n, rows, cols]`` of equal-shape slices by an anatomy model, each placed on the canvas by its own
    body: HU slices by their HU body, 8-bit images in the representation by their 8-bit body."""
    import torch

    from ..engine.canvas import body_mask_8bit, slice_placement
    from ..engine.preprocessing import body_mask_2d

    preprocessing = segmenter.card.preprocessing
    spacing = None if pixel_mm is None else (pixel_mm, pixel_mm)
    placements = [slice_placement(body_mask_8bit(s) if represented else body_mask_2d(s), spacing,
                                  preprocessing.canvas_size, preprocessing.canvas_pixel_mm) for s in stack]
    batch = torch.cat([segmenter.prepare_images(s[None], p) if represented else segmenter.prepare(s[None], p)
                       for s, p in zip(stack, placements)])
    logits = segmenter.logits_with_retry(batch)
    masks = [segmenter.masks_on_slices(logits[i:i + 1], p, stack.shape[1:]) for i, p in enumerate(placements)]
    return np.concatenate([m[0] for m in masks]), np.concatenate([m[1] for m in masks])


def predict_slices(segmenter, slices_hu: Iterable[np.ndarray], batch_size: int = 32,
                   progress: Callable[[float], bool] | None = None, postprocess: bool = True,
                   represented: bool = False, pixel_mm: float | None = None
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Lung and infection masks at each slice's own size; slices of equal shape share network calls.

    Non-square slices are padded to a square, as the representation pads them. With ``postprocess``,
    :func:`CovidSegLib.engine.postprocess.postprocess_slice` cleans slices that show a body outline. ``represented``:
    the slices are 8-bit square images already in the model's representation, fed as they are (no HU, so no
    post-processing). ``pixel_mm``: the slices' pixel size, where known (an anatomy model estimates it
    otherwise). ``progress(fraction)`` returning True cancels (raises :class:`Cancelled`).
    """
    slices_hu = list(slices_hu)
    lungs: list[np.ndarray] = [np.zeros(0, bool)] * len(slices_hu)
    infection: list[np.ndarray] = [np.zeros(0, bool)] * len(slices_hu)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, hu in enumerate(slices_hu):
        by_shape.setdefault(hu.shape, []).append(index)
    done = 0
    for shape, indices in by_shape.items():
        whole = whole_slice_box(shape)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            stack = np.stack([slices_hu[i] for i in chunk])
            if segmenter.on_canvas:
                chunk_lungs, chunk_infection = canvas_masks(segmenter, stack, represented, pixel_mm)
            else:
                if represented and shape[0] != shape[1]:
                    raise ValueError(f"slices in the model's representation are square, not {shape}")
                batch = segmenter.prepare_images(stack) if represented else segmenter.prepare(stack, whole)
                chunk_lungs, chunk_infection = segmenter.masks_on_slices(segmenter.logits_with_retry(batch), whole,
                                                                         shape)
            for position, index in enumerate(chunk):
                lungs[index], infection[index] = chunk_lungs[position], chunk_infection[position]
                if postprocess and not represented:
                    lungs[index], infection[index] = postprocess_slice(lungs[index], infection[index],
                                                                       slices_hu[index])
            done += len(chunk)
            if progress is not None and progress(done / len(slices_hu)):
                raise Cancelled("slice prediction cancelled")
    return lungs, infection


#: How ``.npz`` slices are stored, as quarter turns (``np.rot90``) that bring them to the display orientation the
#: representation expects (anterior up, patient right on the image's left): COVID-19-CT-Seg's slices are saved
#: as nibabel returns them, one quarter turn away; 8-bit images are exported for display already.
NPZ_ORIENTATIONS = {"nibabel": 1, "display": 0}


def predict_slice_images(segmenter, slices: Sequence[SliceImage], npz_orientation: str = "nibabel",
                         represented: bool = False, progress: Callable[[float], bool] | None = None
                         ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Masks for read slices, each in its file's own frame: ``.npz`` slices are turned to the display
    orientation for the network and the masks turned back. ``represented``: the 8-bit images are already the
    model's representation and are fed as they are."""
    turns = [NPZ_ORIENTATIONS[npz_orientation] if s.source.suffix.lower() == ".npz" else 0 for s in slices]
    if represented:
        not_eight_bit = next((s.source for s in slices if s.eight_bit is None), None)
        if not_eight_bit is not None:
            raise InputError(not_eight_bit, "--represented takes 8-bit images in the model's representation")
        images = [np.rot90(s.eight_bit, k) for s, k in zip(slices, turns)]
    else:
        images = [np.rot90(s.hu, k) for s, k in zip(slices, turns)]
    lungs, infection = predict_slices(segmenter, images, segmenter.batch_size, progress, represented=represented)
    return [np.rot90(m, -k) for m, k in zip(lungs, turns)], [np.rot90(m, -k) for m, k in zip(infection, turns)]


def png_bytes(mask: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


def write_slice_masks(out: Path, names: Sequence[str], lungs: Sequence[np.ndarray],
                      infection: Sequence[np.ndarray], protected: Iterable[str | Path] = ()) -> list[Path]:
    """``OUT/lungs/NAME.png`` and ``OUT/infection/NAME.png`` (0/255), each written atomically."""
    protected = list(protected)
    written = []
    for target, masks in zip(MASK_OUTPUTS, (lungs, infection)):
        for name, mask in zip(names, masks):
            path = Path(out) / target / f"{name}.png"
            with atomic_output(path, protected) as temporary:
                temporary.write_bytes(png_bytes(mask))
            written.append(path)
    return written

