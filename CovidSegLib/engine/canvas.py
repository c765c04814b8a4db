"""The anatomy canvas: every slice brought to one physical scale on a square of one physical size, centred on the
body, so that what the network sees depends on the patient and not on the acquisition.

Why: a model that resizes the whole slice to its input sees a patient at a scale set by the field of view, and a
non-square matrix or a band of padding changes the image it gets (Slicer's CTChest padded by 32 px of air: 84 mL of
false infection; a 256x128 matrix: lung 6288 -> 931 mL). On the canvas one pixel is always ``pixel_mm`` and the
canvas centre is the centre of the body's bounding box over the whole volume, so more air around the patient, a
cropped or non-square matrix and the padding value change nothing but the air at the canvas' edge.

A slice of known pixel size (any HU CT) is placed by its spacing. A slice of unknown pixel size (the corpus' 8-bit
images, MedSeg's crops, HU slices stored without spacing) is given one from its body's width
(:func:`estimated_pixel_mm`): the body of a chest spans about :data:`BODY_WIDTH_MM` left to right, or, where the
body fills the image from side to side (a crop around the lungs), the image is taken to span
:data:`CROP_WIDTH_MM`. That is an estimate: patients differ in width by about 20 %, which training covers by zoom.

Coordinates: arrays are ``[rows, cols]`` in the display orientation of :mod:`CovidSegLib.io.orientation`'s
canonical volume; ``pixel_mm`` is ``(row_mm, col_mm)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .preprocessing import body_from_dense, body_mask_2d

#: Canvas side in pixels and its pixel size: 256 x 1.6 mm = 410 mm, wider than any adult chest's lungs.
CANVAS_SIZE = 256
CANVAS_PIXEL_MM = 1.6
#: Left-right width of the body at the level of the lungs, for slices whose pixel size is unknown: the real HU
#: chest CTs with known spacing give CTChest 326 mm (median over its lung slices), lungmask's slices 320, the
#: TotalSegmentator example 330, CIP's TestInput 338, the RICORD CT 360, POPI 408 (arms beside the chest).
BODY_WIDTH_MM = 330.0
#: What a crop whose body fills it from side to side spans (MedSeg's crops around the lungs: about 300 mm).
CROP_WIDTH_MM = 300.0
#: A body narrower than this share of the image's width is not trusted for the estimate.
MIN_BODY_SHARE = 0.25
#: Estimated pixel sizes are kept within this range (mm): the pixel spacing chest CT usually has (checks.plausibility).
ESTIMATE_RANGE_MM = (0.25, 3.5)


@dataclass(frozen=True)
class Placement:
    """Where one slice's pixels land on the canvas: a scale per axis and a shift (no rotation).

    ``centre`` is the point of the slice, in pixel coordinates ``(row, col)``, that lands on the canvas centre.
    """

    centre: tuple[float, float]
    pixel_mm: tuple[float, float]
    canvas_size: int = CANVAS_SIZE
    canvas_pixel_mm: float = CANVAS_PIXEL_MM

    def matrix(self) -> np.ndarray:
        """The 2x3 affine from slice pixel ``(x=col, y=row)`` to canvas pixel, as OpenCV's warpAffine takes it.

        Pixel centres map to pixel centres: slice pixel ``centre`` lands on the canvas' middle point
        ``(size - 1) / 2``."""
        scale_row = self.pixel_mm[0] / self.canvas_pixel_mm
        scale_col = self.pixel_mm[1] / self.canvas_pixel_mm
        middle = (self.canvas_size - 1) / 2.0
        return np.array([[scale_col, 0.0, middle - self.centre[1] * scale_col],
                         [0.0, scale_row, middle - self.centre[0] * scale_row]], dtype=np.float64)

    def to_canvas(self, image: np.ndarray, fill: float) -> np.ndarray:
        """``image`` ``[rows, cols]`` (float) on the canvas ``[size, size]`` float32, ``fill`` outside the slice.

        Shrinking first blurs the slice by the Gaussian that keeps the canvas from aliasing (sigma
        ``sqrt(1/s^2 - 1) / 2`` source pixels for a scale ``s``), then samples it bilinearly through the exact
        affine: no image size is rounded, so padding the slice moves nothing on the canvas. Masks go through the
        same (as fractions), so they stay aligned with the image."""
        import cv2

        values = np.asarray(image, dtype=np.float32)
        matrix = self.matrix()
        sigmas = [np.sqrt(max(1.0 / scale ** 2 - 1.0, 0.0)) / 2.0 for scale in (matrix[0, 0], matrix[1, 1])]
        if max(sigmas) > 0.1:
            values = cv2.GaussianBlur(values, (0, 0), sigmaX=max(sigmas[0], 0.01), sigmaY=max(sigmas[1], 0.01),
                                      borderType=cv2.BORDER_REPLICATE)
        size = self.canvas_size
        return cv2.warpAffine(values, matrix, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=float(fill))

    def from_canvas(self, canvas: np.ndarray, shape: tuple[int, int], fill: float) -> np.ndarray:
        """A canvas ``[size, size]`` (logits, fractions) back on the slice grid ``shape`` (bilinear), ``fill`` where
        the slice reaches past the canvas."""
        import cv2

        return cv2.warpAffine(np.asarray(canvas, dtype=np.float32), self.matrix(), (shape[1], shape[0]),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=float(fill))


def body_centre(body: np.ndarray) -> tuple[float, float] | None:
    """Centre ``(row, col)`` of the bounding box of a body mask ``[rows, cols]`` (None when it is empty).

    The bounding box, not the centroid: the centroid moves with the arms, the table and a cropped chest wall's
    missing side; the box moves by half of what is cut."""
    rows = np.flatnonzero(body.any(axis=1))
    cols = np.flatnonzero(body.any(axis=0))
    if not len(rows):
        return None
    return (rows[0] + rows[-1]) / 2.0, (cols[0] + cols[-1]) / 2.0


def volume_body_projection(volume_hu: np.ndarray) -> np.ndarray:
    """The body seen on the maximum projection of a canonical volume ``[slices, rows, cols]``, at full resolution:
    a sampled projection would move the box by up to a sampling step when padding shifts the grid."""
    return body_mask_2d(volume_hu.max(axis=0))


def volume_placement(volume_hu: np.ndarray, pixel_mm: tuple[float, float], canvas_size: int = CANVAS_SIZE,
                     canvas_pixel_mm: float = CANVAS_PIXEL_MM) -> Placement:
    """One placement for every slice of a canonical volume: its spacing, centred on the body over all slices (so
    the patient does not move between slices); the slice's centre when no body is found."""
    centre = body_centre(volume_body_projection(volume_hu))
    rows, cols = volume_hu.shape[1:]
    if centre is None:
        centre = ((rows - 1) / 2.0, (cols - 1) / 2.0)
    return Placement(centre, (float(pixel_mm[0]), float(pixel_mm[1])), canvas_size, canvas_pixel_mm)


def estimated_pixel_mm(body: np.ndarray) -> float:
    """Pixel size of a slice of unknown spacing from its body mask ``[rows, cols]``: the body's left-right width is
    taken as :data:`BODY_WIDTH_MM`; a body that touches both sides of the image (a crop) makes the image's width
    :data:`CROP_WIDTH_MM`, and so does a body under a quarter of the image's width (a speck or a text label is no
    body). Clamped to :data:`ESTIMATE_RANGE_MM`, the pixels chest CT has."""
    cols = np.flatnonzero(body.any(axis=0))
    width = body.shape[1]
    if len(cols) < MIN_BODY_SHARE * width or (cols[0] == 0 and cols[-1] == width - 1):
        estimate = CROP_WIDTH_MM / width  # a crop, or no body worth the name (a speck, a label)
    else:
        estimate = BODY_WIDTH_MM / (cols[-1] - cols[0] + 1)
    return float(np.clip(estimate, *ESTIMATE_RANGE_MM))


def body_mask_8bit(image: np.ndarray) -> np.ndarray:
    """The body of an 8-bit slice (a CLAHE image or a window export): brighter than Otsu's threshold, then the
    HU body mask's rule (opened, largest region, holes filled)."""
    import cv2

    from .morphology import open_in_plane

    values = np.asarray(image, dtype=np.uint8)
    threshold, _ = cv2.threshold(values, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return body_from_dense(open_in_plane(values > threshold))


def slice_placement(body: np.ndarray, pixel_mm: tuple[float, float] | None, canvas_size: int = CANVAS_SIZE,
                    canvas_pixel_mm: float = CANVAS_PIXEL_MM) -> Placement:
    """Placement of a single slice from its body mask: its own spacing when known, else the estimate."""
    if pixel_mm is None:
        estimate = estimated_pixel_mm(body)
        pixel_mm = (estimate, estimate)
    centre = body_centre(body)
    if centre is None:
        centre = ((body.shape[0] - 1) / 2.0, (body.shape[1] - 1) / 2.0)
    return Placement(centre, (float(pixel_mm[0]), float(pixel_mm[1])), canvas_size, canvas_pixel_mm)
