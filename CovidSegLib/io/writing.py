"""Write label maps atomically, in NIfTI, NRRD, MHA or Slicer ``.seg.nrrd`` with named segments.

An output file either appears complete or not at all: everything is written to a hidden temporary file in the
target folder and moved into place with one ``os.replace``. No writer here may replace one of the inputs it
was derived from or a reference segmentation; callers pass those paths as ``protected``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OutputError
from .integrity import check_file_integrity
from ..labels import LabelInfo, segments_for, slicer_terminology
from .reading import image_from_array
from .volume import Geometry

LABEL_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
SEG_NRRD_GZIP_LEVEL = 1


def output_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in LABEL_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise OutputError(f"{path}: unknown output format; use one of {', '.join(LABEL_SUFFIXES)}")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_not_protected(output: Path, protected: Iterable[str | Path]) -> None:
    """Refuse an output path that is (or lies inside) an input or reference the command was given."""
    for item in protected:
        item = Path(item)
        if _same_file(output, item) or (item.is_dir() and item.resolve() in output.resolve().parents):
            raise OutputError(f"{output}: refusing to write here, it would overwrite the input or reference {item}")


def check_output_folder(path: Path) -> None:
    """Refuse, before any work, an output whose folder cannot be created or written (its nearest existing
    ancestor is a file, or is not writable), rather than failing after minutes of segmentation."""
    folder = path.parent.resolve()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{path}: cannot write here, {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write here, the folder {folder} is not writable")


@contextlib.contextmanager
def atomic_output(path: str | Path, protected: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    A failed write (full disk, no permission, a folder that is a file) becomes an :class:`OutputError` naming
    ``path``, and the temporary file is removed: nothing partial is left behind."""
    path = Path(path)
    check_not_protected(path, protected)
    suffix = next((s for s in LABEL_SUFFIXES + (".csv", ".json") if path.name.lower().endswith(s)), path.suffix)
    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(handle)
        temporary = Path(temporary_name)
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes files private; outputs are ordinary files
        os.replace(temporary, path)
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({error.strerror or error})") from None
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, protected: Iterable[str | Path] = ()) -> Path:
    with atomic_output(path, protected) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def _extent_ijk(mask: np.ndarray) -> list[int]:
    """Slicer's segment extent (i0, i1, j0, j1, k0, k1) of a ``[k, j, i]`` mask, from its projections (a full
    ``np.nonzero`` of a 512x512x600 CT costs seconds)."""
    extent = []
    for axes in ((0, 1), (0, 2), (1, 2)):  # i, j, k
        present = np.flatnonzero(mask.any(axis=axes))
        if not present.size:
            return [0, -1, 0, -1, 0, -1]
        extent += [int(present[0]), int(present[-1])]
    return extent


def _seg_nrrd_dict(labels: np.ndarray, geometry: Geometry, label_infos: Sequence[LabelInfo]) -> dict:
    """The dictionary slicerio writes: voxels in (i, j, k) order, one segment per label, all in layer 0."""
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = geometry.direction_matrix @ np.diag(geometry.spacing)
    ijk_to_lps[:3, 3] = geometry.origin
    segments = []
    for info in label_infos:
        segments.append(
            {
                "id": info.key,
                "name": info.name,
                "color": list(info.color),
                "labelValue": info.value,
                "layer": 0,
                "extent": _extent_ijk(labels == info.value),
                "terminology": slicer_terminology(info),
            }
        )
    return {
        "voxels": labels,  # [k, j, i], written with index_order "C": the same bytes as (i, j, k) Fortran order
        "ijkToLPS": ijk_to_lps,
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
    }


def write_label_map(
    labels: np.ndarray,
    geometry: Geometry,
    path: str | Path,
    label_infos: Sequence[LabelInfo] | None = None,
    protected: Iterable[str | Path] = (),
) -> Path:
    """Write ``labels`` ([k, j, i] integer values of ``label_infos``) on ``geometry`` to ``path``.

    Without ``label_infos``, the segments are those the labels need (:func:`CovidSegLib.labels.segments_for`).

    The format follows the suffix. ``.seg.nrrd`` gets one named, coloured segment per label with its
    terminology, so Slicer opens it as a segmentation; the other formats hold the plain label values.
    """
    path = Path(path)
    suffix = output_suffix(path)
    if labels.shape != geometry.array_shape:
        raise ValueError(f"labels shape {labels.shape} does not match the grid {geometry.array_shape}")
    if labels.dtype != np.uint8 and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("labels hold values outside the label scheme (0..255)")
    labels = labels.astype(np.uint8, copy=False)
    label_infos = segments_for(labels, label_infos)
    with atomic_output(path, protected) as temporary:
        if suffix == ".seg.nrrd":
            import slicerio

            # gzip level 1: label maps compress almost as well as at level 9 (pynrrd's default), several times faster
            slicerio.write_segmentation(str(temporary), _seg_nrrd_dict(labels, geometry, label_infos),
                                        compression_level=SEG_NRRD_GZIP_LEVEL, index_order="C")
        else:
            _write_with_itk(labels, geometry, temporary, path)
    return path


def _write_with_itk(labels: np.ndarray, geometry: Geometry, temporary: Path, path: Path) -> None:
    """Write with SimpleITK, then read the file back against its header: ITK's NIfTI writer reports a short
    write (full disk) only on the console and returns as if it had succeeded."""
    try:
        sitk.WriteImage(image_from_array(labels, geometry), str(temporary), useCompression=True)
        check_file_integrity(temporary)
    except RuntimeError as error:  # how ITK reports the failures it does notice
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown writer error"
        raise OutputError(f"{path}: cannot write ({reason})") from None
    except InputError as error:
        raise OutputError(f"{path}: cannot write (the written file is incomplete: {error.problem})") from None
