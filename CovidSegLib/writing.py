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

from .errors import OutputError
from .labels import OUTPUT_LABELS, LabelInfo, slicer_terminology
from .reading import image_from_array
from .volume import Geometry

LABEL_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


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


@contextlib.contextmanager
def atomic_output(path: str | Path, protected: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    check_not_protected(path, protected)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = next((s for s in LABEL_SUFFIXES + (".csv", ".json") if path.name.lower().endswith(s)), path.suffix)
    handle, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes files private; outputs are ordinary files
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, protected: Iterable[str | Path] = ()) -> Path:
    with atomic_output(path, protected) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def _seg_nrrd_dict(labels: np.ndarray, geometry: Geometry, label_infos: Sequence[LabelInfo]) -> dict:
    """The dictionary slicerio writes: voxels in (i, j, k) order, one segment per label, all in layer 0."""
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = geometry.direction_matrix @ np.diag(geometry.spacing)
    ijk_to_lps[:3, 3] = geometry.origin
    segments = []
    for info in label_infos:
        present = np.nonzero(labels == info.value)
        extent = [int(v) for axis in reversed(present) for v in (axis.min(), axis.max())] if present[0].size else [
            0, -1, 0, -1, 0, -1]
        segments.append(
            {
                "id": info.key,
                "name": info.name,
                "color": list(info.color),
                "labelValue": info.value,
                "layer": 0,
                "extent": extent,
                "terminology": slicer_terminology(info),
            }
        )
    return {
        "voxels": np.ascontiguousarray(labels.transpose(2, 1, 0)),
        "ijkToLPS": ijk_to_lps,
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
    }


def write_label_map(
    labels: np.ndarray,
    geometry: Geometry,
    path: str | Path,
    label_infos: Sequence[LabelInfo] = OUTPUT_LABELS,
    protected: Iterable[str | Path] = (),
) -> Path:
    """Write ``labels`` ([k, j, i] integer values of ``label_infos``) on ``geometry`` to ``path``.

    The format follows the suffix. ``.seg.nrrd`` gets one named, coloured segment per label with its
    terminology, so Slicer opens it as a segmentation; the other formats hold the plain label values.
    """
    path = Path(path)
    suffix = output_suffix(path)
    if labels.shape != geometry.array_shape:
        raise ValueError(f"labels shape {labels.shape} does not match the grid {geometry.array_shape}")
    known = {info.value for info in label_infos} | {0}
    unexpected = set(np.unique(labels).tolist()) - known
    if unexpected:
        raise ValueError(f"labels hold values {sorted(unexpected)} outside the label scheme {sorted(known)}")
    labels = labels.astype(np.uint8, copy=False)
    with atomic_output(path, protected) as temporary:
        if suffix == ".seg.nrrd":
            import slicerio

            slicerio.write_segmentation(str(temporary), _seg_nrrd_dict(labels, geometry, label_infos))
        else:
            sitk.WriteImage(image_from_array(labels, geometry), str(temporary), useCompression=True)
    return path
