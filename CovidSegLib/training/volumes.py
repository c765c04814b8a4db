"""Training slices from full CT volumes: the COVID-19-CT-Seg NIfTI layout and generic image + label pairs.

Researchers with whole volumes fine-tune on them. Each volume is read like ``covidseg segment`` reads a CT
(canonical orientation, HU checked), and its axial slices, whole and about 2.5 mm apart from the first slice to
the last (neck, abdomen and pelvis too: the engine meets them in every CT), are turned into the model's
representation by the code the engine runs, so training sees exactly what the engine will feed the network.
One volume is one patient (its slices share a group for k-fold splits).

Volumes of patients without COVID-19 (``healthy_volumes``) teach the model what is not infection: their
infection target is labelled empty on every slice, and their lungs are labelled where lung masks come with them.

Layouts (found automatically):

- COVID-19-CT-Seg as Kaggle ships it: ``ct_scans/coronacases_org_001.nii``, ``lung_mask/coronacases_001.nii``
  (1 left, 2 right), ``infection_mask/coronacases_001.nii`` (1 infection); zenodo's spelling
  (``COVID-19-CT-Seg_20cases/``, ``Lung_Mask/``, ``Infection_Mask/``) too. Its radiopaedia half was released
  lung-windowed to 0..255 over -1250..250 HU; such volumes are mapped back to HU-equivalents.
- image + label pairs: ``images/NAME.nii.gz`` with ``labels/NAME.nii.gz`` (nnU-Net's ``imagesTr/NAME_0000``
  with ``labelsTr/NAME`` too). Labels in CovidSeg values (1 left lung, 2 right lung, 3 infection, 4 GGO,
  5 consolidation), or any codes with ``label_map`` (a ``covidseg evaluate`` mapping spec or preset).
- healthy volumes: image + label pairs as above, or a folder of bare CT files and DICOM series (no masks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..measure.evaluation import LabelMapping, align_to_grid, default_mapping, mapped_masks, parse_mapping
from ..checks.intensity import DEFAULT_WINDOW, prepare_ct
from ..labels import INFECTION_VALUES, LEFT_LUNG, RIGHT_LUNG
from ..io.orientation import to_canonical
from ..io.reading import read_segmentation, read_volume
from ..engine.representation import Preprocessing
from .data import SliceSet, represent_hu, square_masks

if TYPE_CHECKING:
    from .canvas_volumes import HuRenderings

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: Folder names of the COVID-19-CT-Seg layout, lower case; the first that exists is used.
CT_FOLDERS = ("ct_scans", "covid-19-ct-seg_20cases")
LUNG_FOLDERS = ("lung_mask", "lung_masks")
INFECTION_FOLDERS = ("infection_mask", "infection_masks")
PAIR_FOLDERS = (("images", "labels"), ("imagesTr", "labelsTr"))
#: Axial slices closer than this are near copies; taking every slice of a 0.6 mm CT adds time, not information.
MIN_SLICE_GAP_MM = 2.5


@dataclass(frozen=True)
class VolumeCase:
    case: str
    image: Path
    lungs: Path | None  # label file holding the lungs (or everything, for pairs)
    infection: Path | None  # separate infection file (COVID-19-CT-Seg), None when ``lungs`` holds it
    mapping: LabelMapping | None  # how to read ``lungs``; None: the file's own names or CovidSeg values


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def covid19_ct_seg_key(name: str) -> str:
    """One key for a CT and its masks: ``coronacases_org_001`` and ``coronacases_001`` give ``coronacases_001``;
    ``radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm`` and ``radiopaedia_10_85902_1`` agree too."""
    key = _strip_suffix(name).lower()
    key = key.replace("_org_covid-19-pneumonia-", "_").replace("_org_", "_")
    return re.sub(r"-dcm$", "", key)


def _volume_files(folder: Path) -> dict[str, Path]:
    return {_strip_suffix(p.name): p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)}


def _subfolder(root: Path, names: tuple[str, ...]) -> Path | None:
    by_lower = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    return next((by_lower[n] for n in names if n in by_lower), None)


def find_volume_cases(root: str | Path, label_map: str | None = None) -> list[VolumeCase]:
    """The cases of a COVID-19-CT-Seg or image + label pairs folder, each CT with its masks."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(root, "not a folder of training volumes")
    ct_folder = _subfolder(root, CT_FOLDERS)
    if ct_folder is not None:
        return _covid19_ct_seg_cases(root, ct_folder)
    for images, labels in PAIR_FOLDERS:
        if (root / images).is_dir() and (root / labels).is_dir():
            return _pair_cases(root / images, root / labels, parse_mapping(label_map) if label_map else None)
    raise InputError(root, "is neither the COVID-19-CT-Seg layout (ct_scans/, lung_mask/, infection_mask/) nor "
                           "image + label pairs (images/ and labels/, or imagesTr/ and labelsTr/)")


def _covid19_ct_seg_cases(root: Path, ct_folder: Path) -> list[VolumeCase]:
    lung_folder, infection_folder = _subfolder(root, LUNG_FOLDERS), _subfolder(root, INFECTION_FOLDERS)
    if lung_folder is None and infection_folder is None:
        raise InputError(root, "has ct_scans/ but neither lung_mask/ nor infection_mask/")
    lungs = {covid19_ct_seg_key(k): p for k, p in _volume_files(lung_folder).items()} if lung_folder else {}
    infection = {covid19_ct_seg_key(k): p for k, p in _volume_files(infection_folder).items()} \
        if infection_folder else {}
    cases = []
    for name, image in _volume_files(ct_folder).items():
        key = covid19_ct_seg_key(name)
        if key in lungs or key in infection:
            cases.append(VolumeCase(key, image, lungs.get(key), infection.get(key),
                                    parse_mapping("covid19-ct-seg-lungs")))
    if not cases:
        raise InputError(ct_folder, "no CT pairs up with a mask by case name")
    return cases


def _pair_cases(images: Path, labels: Path, mapping: LabelMapping | None) -> list[VolumeCase]:
    label_files = _volume_files(labels)
    cases = []
    for name, image in _volume_files(images).items():
        case = re.sub(r"_0000$", "", name)  # nnU-Net names channel 0 NAME_0000
        if case in label_files:
            cases.append(VolumeCase(case, image, label_files[case], None, mapping))
    if not cases:
        raise InputError(images, f"no image pairs up with a label file in {labels} by name")
    return cases


def _read_ct(path: Path):
    """A CT in HU; an 8-bit volume (COVID-19-CT-Seg's radiopaedia half) is taken as windowed -1250..250 HU."""
    volume = read_volume(path)
    if volume.array.min() >= 0 and volume.array.max() <= 255:
        return prepare_ct(volume, "windowed", DEFAULT_WINDOW)
    return prepare_ct(volume)


def _masks_on_ct(path: Path, mapping: LabelMapping | None, ct) -> dict[int, np.ndarray]:
    segmentation = read_segmentation(path)
    masks = mapped_masks(segmentation, mapping or default_mapping(segmentation))
    if not segmentation.geometry.matches(ct.geometry):
        masks = {v: align_to_grid(m, segmentation.geometry, ct.geometry, segmentation.source) for v, m in masks.items()}
    return masks


def case_slices(case: VolumeCase, preprocessing: Preprocessing, variants: tuple[Preprocessing, ...] = (),
                healthy: bool = False, thick_mm: float = 0.0, renderings: "HuRenderings | None" = None) -> SliceSet:
    """Whole axial slices about 2.5 mm apart through the whole volume, in the model's representation (once per
    preprocessing of ``(preprocessing, *variants)``), with the masks on the representation's grid.

    ``healthy``: the patient has no COVID-19, so infection is labelled (empty) on every slice.
    ``thick_mm``: each slice also once more as a thick reconstruction of about that thickness would show it
    (:func:`thick_slabs`), in ``preprocessing``, under the same name (another rendering of the same slice, so
    validation scores only the thin one). Skipped where a slab would be one slice (:func:`slab_half_width`).
    An anatomy ``preprocessing`` renders the slices on its canvas, with ``renderings`` (other acquisitions and,
    for a healthy CT, synthetic lesions; :mod:`CovidSegLib.training.canvas_volumes`) instead of ``variants``.
    """
    ct = _read_ct(case.image)
    masks: dict[int, np.ndarray] = {}
    if case.lungs is not None:
        masks.update(_masks_on_ct(case.lungs, case.mapping, ct))
    if case.infection is not None:
        masks.update(_masks_on_ct(case.infection, parse_mapping("covid19-ct-seg-infection"), ct))
    has_lungs = LEFT_LUNG in masks or RIGHT_LUNG in masks
    has_infection = healthy or any(v in masks for v in INFECTION_VALUES)
    if not (has_lungs or has_infection):
        raise InputError(case.lungs or case.image, "no lung or infection labels: nothing to train on")
    empty = np.zeros(ct.array.shape, bool)
    lungs = masks.get(LEFT_LUNG, empty) | masks.get(RIGHT_LUNG, empty)
    infection = np.logical_or.reduce([masks.get(v, empty) for v in INFECTION_VALUES])
    if healthy and infection.any():
        raise InputError(case.lungs, "labels infection in a volume given as healthy")
    canonical, plan = to_canonical(ct)
    lungs, infection = plan.to_canonical(lungs), plan.to_canonical(infection)
    if has_infection:
        lungs |= infection  # infection lies in the lung; some masks leave it out of the lung label
    step = max(1, int(round(MIN_SLICE_GAP_MM / float(canonical.geometry.spacing[2]))))
    chosen = np.arange(0, canonical.array.shape[0], step)
    if preprocessing.mode == "anatomy":
        return _anatomy_case_slices(case.case, canonical, lungs, infection, has_lungs, has_infection, chosen,
                                    preprocessing, renderings, healthy, thick_mm)
    images = [represent_hu(canonical.array[chosen], p) for p in (preprocessing, *variants)]
    lung_masks = [square_masks(lungs[chosen])] * len(images)
    infection_masks = [square_masks(infection[chosen])] * len(images)
    half = slab_half_width(thick_mm, float(canonical.geometry.spacing[2]))
    if half:
        images.append(represent_hu(thick_slabs(canonical.array, chosen, half), preprocessing))
        lung_masks.append(square_masks(thick_slabs(lungs, chosen, half) >= 0.5))
        infection_masks.append(square_masks(thick_slabs(infection, chosen, half) >= 0.5))
    copies = len(images)
    images = np.concatenate(images)
    n = len(images)
    return SliceSet(images, np.concatenate(lung_masks), np.concatenate(infection_masks), np.full(n, has_lungs),
                    np.full(n, has_infection), [f"{case.case}/{k}" for k in chosen] * copies, [case.case] * n)


def _anatomy_case_slices(case: str, canonical, lungs: np.ndarray, infection: np.ndarray, has_lungs: bool,
                         has_infection: bool, chosen: np.ndarray, preprocessing: Preprocessing,
                         renderings: "HuRenderings | None", healthy: bool, thick_mm: float) -> SliceSet:
    """:func:`case_slices` on the anatomy canvas; a thick rendering, when asked, keeps the scan's placement."""
    from ..engine.canvas import volume_placement
    from .canvas_slices import hu_slices_on_canvas
    from .canvas_volumes import HuRenderings, canvas_case_slices

    spacing = canonical.geometry.spacing
    spacing_zyx = (float(spacing[2]), float(spacing[1]), float(spacing[0]))
    parts = [canvas_case_slices(case, canonical.array, spacing_zyx, lungs, infection, has_lungs, has_infection,
                                chosen, preprocessing, renderings or HuRenderings(), healthy)]
    half = slab_half_width(thick_mm, spacing_zyx[0])
    if half:
        placement = volume_placement(canonical.array, spacing_zyx[1:], preprocessing.canvas_size,
                                     preprocessing.canvas_pixel_mm)
        parts.append(hu_slices_on_canvas(
            thick_slabs(canonical.array, chosen, half), thick_slabs(lungs, chosen, half) >= 0.5,
            thick_slabs(infection, chosen, half) >= 0.5, placement, preprocessing, [f"{case}/{k}" for k in chosen],
            case, has_lungs, has_infection))
    return SliceSet.concatenate(parts)


def slab_half_width(thick_mm: float, slice_mm: float) -> int:
    """Slices on each side of a slab about ``thick_mm`` thick (``2 * half + 1`` slices, rounded to the nearest
    odd count); 0, no slab, when the volume's slices are half that thick or more (5 mm slices for 10 mm)."""
    if thick_mm <= 0:
        return 0
    return max(0, int(round((thick_mm / slice_mm - 1) / 2)))


def thick_slabs(array: np.ndarray, chosen: np.ndarray, half: int) -> np.ndarray:
    """The mean of ``array`` (z, y, x) over ``2 * half + 1`` slices centred on each chosen slice (fewer at the
    ends): HU as a thick reconstruction averages it, or a mask's share of each voxel's slab.

    Why: coarse CT (Slicer's CTChest: 10 mm slices) averages normal lung with its vessels into a faint, even
    density close to ground glass; models that never saw it call it infection (cross-validation found 59 mL on
    CTChest), and the in-plane resolution augmentation cannot make that partial volume.
    """
    slabs = np.empty((len(chosen), *array.shape[1:]), np.float32)
    for index, centre in enumerate(chosen):
        slabs[index] = array[max(0, centre - half):centre + half + 1].mean(axis=0, dtype=np.float32)
    return slabs


def find_healthy_cases(root: str | Path, label_map: str | None = None) -> list[VolumeCase]:
    """CTs of patients without COVID-19: image + label pairs (lungs labelled), else every CT file or DICOM
    series in the folder (no masks)."""
    from ..io.cases import find_cases

    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(root, "not a folder of healthy training volumes")
    for images, labels in PAIR_FOLDERS:
        if (root / images).is_dir() and (root / labels).is_dir():
            return _pair_cases(root / images, root / labels, parse_mapping(label_map) if label_map else None)
    cases = [VolumeCase(_strip_suffix(path.name), path, None, None, None) for path in find_cases(root)]
    if not cases:
        raise InputError(root, "holds no CT files or DICOM series")
    return cases


def load_volume_slices(root: str | Path, preprocessing: Preprocessing, label_map: str | None = None,
                       variants: tuple[Preprocessing, ...] = (), healthy: bool = False,
                       thick_mm: float = 0.0, renderings: "HuRenderings | None" = None) -> SliceSet:
    """Every case of a volume folder as training slices (see the module docstring for the layouts)."""
    cases = find_healthy_cases(root, label_map) if healthy else find_volume_cases(root, label_map)
    return SliceSet.concatenate([case_slices(case, preprocessing, variants, healthy, thick_mm, renderings)
                                 for case in cases])
