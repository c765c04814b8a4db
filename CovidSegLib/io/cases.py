"""Which files and folders are cases: one CT each, named the same way by every command (segment, report,
evaluate) so that a CT, its labels and its report pair up by name."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from .reading import has_volume_suffix, is_segmentation_file


def case_id(path: Path) -> str:
    """File name without its image suffix, so ``a.seg.nrrd`` pairs with ``a.nii.gz``; a DICOM folder's name."""
    name = path.name
    if path.is_dir():
        return name
    for suffix in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_dicom_folder(path: Path) -> bool:
    """A folder that is one CT: it holds a DICOM series and no other volume files (else it is a batch)."""
    if not path.is_dir():
        return False
    other_volumes = any(
        p.is_file() and has_volume_suffix(p) and not p.name.lower().endswith(".dcm") for p in path.iterdir()
    )
    return not other_volumes and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def find_cases(folder: Path) -> list[Path]:
    """CT inputs in a batch folder: volume files (not segmentations) and subfolders holding a DICOM series."""
    cases = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and has_volume_suffix(entry) and not is_segmentation_file(entry):
            cases.append(entry)
        elif is_dicom_folder(entry):
            cases.append(entry)
    return cases
