"""Reading CT from every supported container, DICOM series selection, and unreadable input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CovidSegLib.errors import InputError
from CovidSegLib.io.reading import read_segmentation, read_volume


@pytest.mark.parametrize(
    "name, size, dtype",
    [
        ("ctchest4.nrrd", (128, 128, 34), np.int32),
        ("totalseg_example_ct_sm.nii.gz", (122, 101, 30), np.int16),
        ("lungmask_dicom", (512, 512, 2), np.int16),
    ],
)
def test_reads_real_volumes_with_geometry(volumes: Path, name: str, size: tuple, dtype: type) -> None:
    volume = read_volume(volumes / name)
    assert volume.geometry.size == size
    assert volume.array.shape == size[::-1]
    assert volume.array.dtype == dtype
    assert all(s > 0 for s in volume.geometry.spacing)


def test_reads_mha_written_from_real_volume(volumes: Path, tmp_path: Path) -> None:
    image = sitk.ReadImage(str(volumes / "ctchest4.nrrd"))
    sitk.WriteImage(image, str(tmp_path / "ct.mha"))
    volume = read_volume(tmp_path / "ct.mha")
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(image))
    assert volume.geometry.origin == image.GetOrigin()


def test_dicom_folder_picks_the_largest_series_and_says_which(volumes: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for item in (volumes / "lungmask_dicom").iterdir():
        shutil.copy(item, folder / item.name)
    shutil.copy(volumes / "highdicom_ct_image.dcm", folder / "other.dcm")
    volume = read_volume(folder)
    assert volume.geometry.size == (512, 512, 2)
    (note,) = volume.notes
    assert "2 files" in note and "largest of 2 series" in note and "(1 files)" in note

    other_uid = sitk.ImageFileReader()
    other_uid.SetFileName(str(folder / "other.dcm"))
    other_uid.ReadImageInformation()
    uid = other_uid.GetMetaData("0020|000e").strip()
    assert read_volume(folder, series_uid=uid).geometry.size == (128, 128, 1)
    with pytest.raises(InputError, match="no DICOM series 1.2.3"):
        read_volume(folder, series_uid="1.2.3")


def test_missing_and_unreadable_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.nii.gz: no such file"):
        read_volume(tmp_path / "missing.nii.gz")
    fake = tmp_path / "notes.nii.gz"
    fake.write_text("this is not an image")
    with pytest.raises(InputError, match="notes.nii.gz: cannot be read as a medical image"):
        read_volume(fake)
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    with pytest.raises(InputError, match="empty: folder holds no DICOM series"):
        read_volume(empty_folder)


def test_2d_image_is_rejected_by_the_reader(slices: Path, tmp_path: Path) -> None:
    image = np.load(slices / "ma2020_coronacases_001_slice098.npz")["image"]
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    with pytest.raises(InputError, match=r"slice.nii.gz: 2D image \(512x512\)"):
        read_volume(path)


def test_seg_nrrd_segments_are_read_by_name(volumes: Path) -> None:
    segmentation = read_segmentation(volumes / "ctchest4.seg.nrrd")
    names = {s.name: s.value for s in segmentation.segments}
    assert names["right lung"] == 5 and names["left lung"] == 6
    right = segmentation.mask(segmentation.find("Right Lung")[0])
    assert right.sum() == np.count_nonzero(segmentation.layers[0] == 5) > 0
    with pytest.raises(InputError, match="no segment 'liver'; segments in this file: 1=ribs"):
        segmentation.find("liver")


def test_label_map_with_negative_or_fractional_values_is_not_a_label_map(volumes: Path, tmp_path: Path) -> None:
    ct = sitk.ReadImage(str(volumes / "totalseg_example_ct_sm.nii.gz"))
    sitk.WriteImage(ct, str(tmp_path / "ct_as_labels.nii.gz"))
    with pytest.raises(InputError, match="ct_as_labels.nii.gz: label map holds negative values"):
        read_segmentation(tmp_path / "ct_as_labels.nii.gz")
    fractional = sitk.Cast(ct, sitk.sitkFloat32) * 0.001 + 2.0
    sitk.WriteImage(fractional, str(tmp_path / "float.nii.gz"))
    with pytest.raises(InputError, match="float.nii.gz: label map holds non-integer values"):
        read_segmentation(tmp_path / "float.nii.gz")
