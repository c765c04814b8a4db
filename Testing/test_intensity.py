"""Every kind of bad CT input gets a clear error naming the file, or an explicit opt-in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CovidSegLib.errors import InputError
from CovidSegLib.checks.intensity import prepare_ct
from CovidSegLib.io.reading import read_volume
from CovidSegLib.io.volume import Geometry, Volume

from conftest import run_cli, stack_slice


def _volume_from_slice(path: Path, source: str) -> Volume:
    image = stack_slice(np.load(path)["image"])
    geometry = Geometry(tuple(image.shape[::-1]), (0.7, 0.7, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return Volume(image, geometry, source)


@pytest.mark.parametrize("name", ["ctchest4.nrrd", "totalseg_example_ct_sm.nii.gz", "lungmask_dicom"])
def test_real_ct_volumes_pass(volumes: Path, name: str) -> None:
    volume = read_volume(volumes / name)
    assert prepare_ct(volume) is volume


def test_real_hu_slices_pass(slices: Path) -> None:
    for path in sorted(slices.glob("ma2020_coronacases_*.npz")):
        prepare_ct(_volume_from_slice(path, path.name))


def test_lung_windowed_radiopaedia_image_is_not_hu(slices: Path) -> None:
    path = slices / "ma2020_radiopaedia_14_85914_0_slice000.npz"
    volume = _volume_from_slice(path, path.name)
    expected = r"radiopaedia.*not in Hounsfield units \(values 16\.\.255\).*--intensity windowed"
    with pytest.raises(InputError, match=expected):
        prepare_ct(volume)
    hu = prepare_ct(volume, intensity="windowed", window=(-1250, 250))
    # 0..255 spans -1250..250 HU: 255 -> 250, 16 -> -1250 + 16 * 1500 / 255
    assert hu.array.max() == 250 and hu.array.min() == round(-1250 + 16 * 1500 / 255)
    lungs = np.load(path)["lung_mask"] > 0
    assert -1000 < np.median(hu.array[1][lungs]) < -500, "lung tissue must map to lung HU"


def test_windowed_opt_in_refuses_data_that_is_not_8_bit(volumes: Path) -> None:
    with pytest.raises(InputError, match=r"ctchest4.nrrd: --intensity windowed expects 8-bit values 0\.\.255"):
        prepare_ct(read_volume(volumes / "ctchest4.nrrd"), intensity="windowed")


def test_mr_like_or_unrescaled_values_are_rejected(volumes: Path) -> None:
    ct = read_volume(volumes / "ctchest4.nrrd")
    unrescaled = ct.with_array(ct.array + 3024)  # stored values without the rescale intercept
    expected = r"ctchest4.nrrd: not in Hounsfield units \(values 0\.\.6094, nothing negative\)"
    with pytest.raises(InputError, match=expected):
        prepare_ct(unrescaled)


def test_ct_without_air_is_rejected(volumes: Path) -> None:
    ct = read_volume(volumes / "ctchest4.nrrd")
    with pytest.raises(InputError, match=r"not a chest CT in Hounsfield units .* 0\.00% of voxels are air"):
        prepare_ct(ct.with_array(np.clip(ct.array, -200, None)))
    with pytest.raises(InputError, match="outside any CT's range"):
        prepare_ct(ct.with_array(ct.array * 20))


def test_constant_nan_empty_and_2d_volumes_are_rejected(volumes: Path) -> None:
    ct = read_volume(volumes / "totalseg_example_ct_sm.nii.gz")
    with pytest.raises(InputError, match="constant volume: every voxel is -1024"):
        prepare_ct(ct.with_array(np.full_like(ct.array, -1024)))
    with_nan = ct.array.astype(np.float32)
    with_nan[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="1 voxels are NaN or infinite"):
        prepare_ct(ct.with_array(with_nan))
    identity = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    empty = Volume(np.zeros((0, 0, 0), np.int16), Geometry((0, 0, 0), (1, 1, 1), (0, 0, 0), identity))
    with pytest.raises(InputError, match="empty volume"):
        prepare_ct(empty)
    single = read_volume(volumes / "highdicom_ct_image.dcm")
    with pytest.raises(InputError, match=r"highdicom_ct_image.dcm: 2D image \(size 128x128x1\)"):
        prepare_ct(single)


def test_zero_spacing_is_rejected(volumes: Path, tmp_path: Path) -> None:
    ct = read_volume(volumes / "ctchest4.nrrd")
    geometry = Geometry(ct.geometry.size, (3.0, 3.0, 0.0), ct.geometry.origin, ct.geometry.direction)
    with pytest.raises(InputError, match="no valid voxel spacing"):
        prepare_ct(Volume(ct.array, geometry, ct.source))


def test_cli_info_reports_bad_input_with_exit_code_3(volumes: Path, slices: Path, tmp_path: Path) -> None:
    result = run_cli("info", str(volumes / "highdicom_ct_image.dcm"))
    assert result.returncode == 3
    assert "highdicom_ct_image.dcm: 2D image" in result.stderr and "Traceback" not in result.stderr

    windowed = stack_slice(np.load(slices / "ma2020_radiopaedia_14_85914_0_slice000.npz")["image"])
    path = tmp_path / "radiopaedia.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(windowed), str(path))
    refused = run_cli("info", str(path))
    assert refused.returncode == 3 and "--intensity windowed" in refused.stderr
    accepted = run_cli("info", str(path), "--intensity", "windowed", "--window=-1250,250")
    assert accepted.returncode == 0, accepted.stderr
    assert "-1156 .. 250 HU" in accepted.stdout  # 16 -> -1250 + 16 * 1500 / 255

    good = run_cli("info", str(volumes / "lungmask_dicom"))
    assert good.returncode == 0 and "DICOM series" in good.stdout and "512 x 512 x 2" in good.stdout
