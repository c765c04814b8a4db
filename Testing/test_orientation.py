"""Canonical orientation and the exact round trip back to every input grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CovidSegLib.io.orientation import from_canonical, to_canonical
from CovidSegLib.io.reading import geometry_of, image_from_array, read_segmentation, read_volume
from CovidSegLib.io.volume import Volume
from CovidSegLib.io.writing import write_label_map

from conftest import VOLUMES

EVERY_VOLUME = sorted(p.name for p in VOLUMES.iterdir())
WRITE_SUFFIX = {".gz": ".nii.gz", ".nrrd": ".nrrd"}


def _sitk_image(path: Path) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def test_every_shared_volume_is_covered() -> None:
    assert len(EVERY_VOLUME) == 6  # README of ../shared/data lists six entries


@pytest.mark.parametrize("name", EVERY_VOLUME)
def test_round_trip_reproduces_input_geometry_exactly(name: str, tmp_path: Path) -> None:
    path = VOLUMES / name
    volume = read_volume(path) if not name.endswith(".seg.nrrd") else None
    if volume is None:  # a Slicer segmentation: round-trip its label layer
        segmentation = read_segmentation(path)
        volume = Volume(segmentation.layers[0], segmentation.geometry, str(path))
    canonical, plan = to_canonical(volume)
    back = from_canonical(np.ascontiguousarray(canonical.array), plan)
    assert np.array_equal(back, volume.array)

    suffix = WRITE_SUFFIX.get(path.suffix, ".nrrd")  # DICOM goes to NRRD
    out = tmp_path / f"roundtrip{suffix}"
    sitk.WriteImage(image_from_array(back, volume.geometry), str(out))
    reread = read_volume(out)
    # Exact but for ITK's own last-bit noise: its NRRD reader normalises "space directions" into spacing and
    # direction, so -3.04687595367432 comes back as direction -0.9999999999999999 or -1.0.
    assert reread.geometry.size == volume.geometry.size
    assert np.allclose(reread.geometry.spacing, volume.geometry.spacing, rtol=0, atol=1e-12)
    assert np.allclose(reread.geometry.origin, volume.geometry.origin, rtol=0, atol=1e-9)
    assert np.allclose(reread.geometry.direction, volume.geometry.direction, rtol=0, atol=1e-12)
    assert np.allclose(reread.geometry.ijk_to_ras_matrix(), volume.geometry.ijk_to_ras_matrix(), rtol=0, atol=1e-9)
    assert np.array_equal(reread.array, volume.array)
    assert reread.array.dtype == volume.array.dtype


@pytest.mark.parametrize("name", [n for n in EVERY_VOLUME if not n.endswith(".seg.nrrd")])
def test_canonical_matches_simpleitk_dicomorient(name: str) -> None:
    """An independent implementation of the same idea: SimpleITK's DICOMOrient to LPS."""
    path = VOLUMES / name
    canonical, _ = to_canonical(read_volume(path))
    oriented = sitk.DICOMOrient(_sitk_image(path), "LPS")
    assert np.array_equal(canonical.array, sitk.GetArrayFromImage(oriented))
    assert np.allclose(canonical.geometry.origin, oriented.GetOrigin(), atol=1e-6)
    assert np.allclose(canonical.geometry.direction, oriented.GetDirection(), atol=1e-9)
    assert np.allclose(canonical.geometry.spacing, oriented.GetSpacing())


def test_same_patient_space_gives_same_canonical_array_whatever_the_storage_order(tmp_path: Path) -> None:
    """Permuting and flipping how a real CT is stored must not change what processing sees."""
    original = sitk.ReadImage(str(VOLUMES / "ctchest4.nrrd"))
    shuffled = sitk.Flip(sitk.PermuteAxes(original, [2, 0, 1]), [True, False, True])
    sitk.WriteImage(shuffled, str(tmp_path / "shuffled.nii.gz"))
    reference, _ = to_canonical(read_volume(VOLUMES / "ctchest4.nrrd"))
    shuffled_volume = read_volume(tmp_path / "shuffled.nii.gz")
    canonical, plan = to_canonical(shuffled_volume)
    assert not plan.is_identity
    assert np.array_equal(canonical.array, reference.array)
    assert np.allclose(canonical.geometry.origin, reference.geometry.origin, atol=1e-3)
    labels = (canonical.array > -400).astype(np.uint8)  # a result computed in canonical space...
    out = write_label_map(from_canonical(labels, plan), shuffled_volume.geometry, tmp_path / "labels.nii.gz")
    written = sitk.ReadImage(str(out))  # ...lands on the shuffled input's exact grid
    assert geometry_of(written) == shuffled_volume.geometry
    assert np.array_equal(sitk.GetArrayFromImage(written), (shuffled_volume.array > -400).astype(np.uint8))
