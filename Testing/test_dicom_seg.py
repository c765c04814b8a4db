"""DICOM SEG and SR output of ``covidseg segment``, read back with highdicom / pydicom.

Real series: the two lungmask DICOM slices (a minimal series: no Patient ID, Modality or Frame of Reference UID)
and Slicer's CTChest written as a proper 34-slice CT series (Testing/dicom_helpers.py). The bundled model segments
each series twice, into a DICOM SEG and into NIfTI; the SEG must sit on the source slices and hold the very labels
the NIfTI holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
hd = pytest.importorskip("highdicom")

import pydicom  # noqa: E402

import CovidSegLib  # noqa: E402
from CovidSegLib.cli import EXIT_INPUT, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, main  # noqa: E402
from CovidSegLib.engine.model import BUNDLED_CARD, read_card  # noqa: E402
from CovidSegLib.errors import InputError, OutputError  # noqa: E402
from CovidSegLib.io.dicom_seg import AlgorithmIdentity, verify_dicom_seg, write_dicom_seg  # noqa: E402
from CovidSegLib.io.dicom_series import read_source_series, series_files  # noqa: E402
from CovidSegLib.io.reading import read_volume  # noqa: E402
from CovidSegLib.labels import LABELS_BY_VALUE, OUTPUT_LABELS, SPLIT_OUTPUT_LABELS  # noqa: E402
from CovidSegLib.measure.dicom_sr import read_measurements, read_severity  # noqa: E402
from CovidSegLib.measure.quantification import quantify  # noqa: E402
from CovidSegLib.measure.severity import floor_of_card  # noqa: E402

from dicom_helpers import seg_label_map, source_datasets, write_ct_series  # noqa: E402

CARD = json.loads(BUNDLED_CARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def series(volumes: Path, tmp_path_factory) -> dict[str, Path]:
    """The two DICOM series of the tests, each in a folder of its own."""
    root = tmp_path_factory.mktemp("series")
    lungmask = shutil.copytree(volumes / "lungmask_dicom", root / "lungmask")
    return {"lungmask": lungmask, "ctchest": write_ct_series(volumes / "ctchest4.nrrd", root / "ctchest")}


@pytest.fixture(scope="module")
def outputs(series: dict[str, Path], tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Each series segmented by the bundled model into a DICOM SEG with its SR, and into NIfTI."""
    out = tmp_path_factory.mktemp("out")
    written: dict[str, dict[str, Path]] = {}
    for name, folder in series.items():
        seg, nifti = out / f"{name}.dcm", out / f"{name}.nii.gz"
        assert main(["segment", str(folder), "-o", str(seg), "--sr", "--quiet"]) == EXIT_OK
        assert main(["segment", str(folder), "-o", str(nifti), "--quiet"]) == EXIT_OK
        written[name] = {"seg": seg, "sr": out / f"{name}.sr.dcm", "nifti": nifti}
    return written


@pytest.mark.parametrize("name", ["lungmask", "ctchest"])
def test_seg_sits_on_the_source_slices_and_holds_the_labels_the_nifti_holds(
        name: str, series: dict[str, Path], outputs: dict[str, dict[str, Path]]) -> None:
    seg = hd.seg.segread(outputs[name]["seg"])
    sources = source_datasets(series[name])
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    first = next(iter(sources.values()))
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == set(sources)
    if "FrameOfReferenceUID" in first:
        assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID

    shared = seg.SharedFunctionalGroupsSequence[0]
    for dataset in sources.values():
        assert np.allclose([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
                           [float(v) for v in dataset.ImageOrientationPatient])
        assert np.allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
                           [float(v) for v in dataset.PixelSpacing])
    assert seg.NumberOfFrames == len(seg.PerFrameFunctionalGroupsSequence) > 0
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in sources[source_uid].ImagePositionPatient], atol=1e-4)

    nifti = read_volume(outputs[name]["nifti"])
    assert nifti.geometry.matches(read_volume(series[name]).geometry)
    expected = nifti.array.astype(np.uint8)
    assert expected.any()
    assert np.array_equal(seg_label_map(seg, sources), expected)


def test_segments_carry_the_scheme_codes_and_name_covidseg_and_its_model(outputs) -> None:
    seg = hd.seg.segread(outputs["ctchest"]["seg"])
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers] == [
        info.name for info in SPLIT_OUTPUT_LABELS]  # the bundled card splits ground-glass opacity / consolidation
    for number, info in zip(seg.segment_numbers, SPLIT_OUTPUT_LABELS):
        description = seg.get_segment_description(number)
        category = description.SegmentedPropertyCategoryCodeSequence[0]
        kind = description.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == (info.category.scheme, info.category.value)
        assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == tuple(info.type.as_list())
        modifier = kind.get("SegmentedPropertyTypeModifierCodeSequence")
        assert ((modifier[0].CodingSchemeDesignator, modifier[0].CodeValue) if modifier else None) == (
            (info.type_modifier.scheme, info.type_modifier.value) if info.type_modifier else None)
        if info.anatomic_region is not None:
            assert description.AnatomicRegionSequence[0].CodeValue == info.anatomic_region.value
        assert description.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "CovidSeg" and algorithm.AlgorithmVersion == CovidSegLib.__version__
        assert f"model={CARD['name']}" in algorithm.AlgorithmParameters
        assert f"weights_sha256={CARD['weights_sha256']}" in algorithm.AlgorithmParameters
    assert seg.SoftwareVersions == f"CovidSeg {CovidSegLib.__version__}"


def test_merge_infection_gives_one_infection_segment(series, tmp_path: Path) -> None:
    out = tmp_path / "merged.dcm"
    assert main(["segment", str(series["lungmask"]), "-o", str(out), "--merge-infection", "--quiet"]) == EXIT_OK
    seg = hd.seg.segread(out)
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers] == [
        info.name for info in OUTPUT_LABELS]


def test_sr_holds_the_quantification_of_the_seg(series, outputs) -> None:
    for name in series:
        sr = hd.sr.srread(outputs[name]["sr"])
        seg = pydicom.dcmread(outputs[name]["seg"])
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        assert sr.StudyInstanceUID == seg.StudyInstanceUID and sr.VerificationFlag == "UNVERIFIED"
        evidence = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                    for s in study.ReferencedSeriesSequence for item in s.ReferencedSOPSequence}
        assert evidence == {seg.SOPInstanceUID}
        nifti = read_volume(outputs[name]["nifti"])
        ct = read_volume(series[name])
        expected = quantify(nifti.array.astype(np.uint8), nifti.geometry, ct.array,
                            floor_of_card(read_card(BUNDLED_CARD)))  # graded as the report grades it
        measured = read_measurements(sr)
        for group, figures in (("Left lung involvement", expected.left), ("Right lung involvement", expected.right),
                               ("Both lungs involvement", expected.total)):
            assert measured[(group, "Volume")] == pytest.approx(figures.volume_ml, abs=1e-3)
            assert measured[(group, "Infection volume")] == pytest.approx(figures.infection_ml, abs=1e-3)
            if not np.isnan(figures.involvement_percent):
                assert measured[(group, "Percentage of lung involved")] == pytest.approx(
                    figures.involvement_percent, abs=1e-3)
        assert read_severity(sr) == expected.severity
        # each segment's own volume, in a group that references the segment in the SEG
        groups = sr.content.get_volumetric_roi_measurement_groups()
        assert [g.referenced_segment.referenced_sop_instance_uid for g in groups] == [seg.SOPInstanceUID] * len(
            seg.SegmentSequence)
        voxel_ml = nifti.geometry.voxel_volume_ml
        for group, description in zip(groups, seg.SegmentSequence):
            info = next(i for i in LABELS_BY_VALUE.values() if i.name == description.SegmentLabel)
            volume = group.get_measurements()[0]
            assert float(volume.value) == pytest.approx(np.count_nonzero(nifti.array == info.value) * voxel_ml,
                                                        abs=1e-3)


def test_a_non_dicom_input_is_refused_before_any_work(volumes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "labels.dcm"
    code = main(["segment", str(volumes / "ctchest4.nrrd"), "-o", str(out), "--model", str(tmp_path / "none.json")])
    assert code == EXIT_INPUT  # the model (which does not exist) was never loaded: exit 5 otherwise
    error = capsys.readouterr().err
    assert str(volumes / "ctchest4.nrrd") in error and "DICOM SEG output needs a DICOM series" in error
    assert not out.parent.exists()


def test_batch_with_format_dicom_seg_writes_the_dicom_cases_and_refuses_the_others(
        series, volumes: Path, tmp_path: Path, capsys) -> None:
    cases = tmp_path / "cases"
    shutil.copytree(series["lungmask"], cases / "lungmask_dicom")
    shutil.copy(volumes / "ctchest4.nrrd", cases / "ctchest.nrrd")
    out = tmp_path / "out"
    assert main(["segment", str(cases), "-o", str(out), "--format", "dicom-seg", "--sr", "--quiet"]) == EXIT_INPUT
    assert sorted(p.name for p in out.glob("*.dcm")) == ["lungmask_dicom.dcm", "lungmask_dicom.sr.dcm"]
    captured = capsys.readouterr()
    assert "ctchest.nrrd: DICOM SEG output needs a DICOM series" in captured.err
    assert "segmented 1 of 2 cases" in captured.out
    # a rerun (a cohort run resumes) keeps the verified SEG and refuses the NRRD again
    assert main(["segment", str(cases), "-o", str(out), "--format", "dicom-seg", "--sr", "--quiet"]) == EXIT_INPUT
    assert "(1 already done, 1 failed)" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["-o", "x.nii.gz", "--format", "dicom-seg"], "--format dicom-seg writes a DICOM SEG"),
    (["-o", "x.nii.gz", "--sr"], "--sr writes the quantification beside a DICOM SEG"),
    (["--study", "1.2.3", "-o", "x.dcm"], "--study, --store and --dicomweb-credentials go with --dicomweb"),
    ([], "-o/--output is required"),
])
def test_usage_errors(series, tmp_path: Path, capsys, arguments: list[str], message: str) -> None:
    arguments = [str(tmp_path / a) if a.startswith("x.") else a for a in arguments]
    assert main(["segment", str(series["lungmask"]), *arguments]) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_seg_is_never_written_into_its_source_series(series, tmp_path: Path) -> None:
    folder = shutil.copytree(series["lungmask"], tmp_path / "dicom")
    before = sorted(p.name for p in folder.iterdir())
    assert main(["segment", str(folder), "-o", str(folder / "seg.dcm"), "--quiet"]) == EXIT_OUTPUT
    assert sorted(p.name for p in folder.iterdir()) == before


IDENTITY = AlgorithmIdentity("9.9.9", "test-model", "0" * 64)


def test_empty_segments_are_described_and_an_all_empty_seg_keeps_its_frames(series, tmp_path: Path) -> None:
    """Every segment of the scheme is described even with no voxel (0 mL is a finding, "not segmented" is not);
    its frames are left out, and when every segment is empty all frames are kept (a SEG needs one)."""
    ct = read_volume(series["ctchest"])
    files = series_files(series["ctchest"])
    labels = np.zeros(ct.geometry.array_shape, np.uint8)
    labels[10:12, 40:60, 40:60] = 1
    one = write_dicom_seg(labels, ct.geometry, tmp_path / "one.dcm", files, IDENTITY, SPLIT_OUTPUT_LABELS)
    seg = hd.seg.segread(one.path)
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers] == [
        i.name for i in SPLIT_OUTPUT_LABELS]
    assert seg.NumberOfFrames == 2  # only the two slices that hold the left lung
    empty = write_dicom_seg(np.zeros_like(labels), ct.geometry, tmp_path / "empty.dcm", files, IDENTITY,
                            SPLIT_OUTPUT_LABELS)
    seg = hd.seg.segread(empty.path)
    assert seg.NumberOfFrames == ct.geometry.size[2] * len(SPLIT_OUTPUT_LABELS)
    assert not seg_label_map(seg, source_datasets(series["ctchest"])).any()


def test_an_sr_of_no_lung_codes_no_severity(series, tmp_path: Path) -> None:
    """No lung found (an --allow-empty result): the SR holds the volumes (0 mL) but no MosMedData category, since
    none was assessed; CT-0 would tell the PACS "no disease"."""
    from CovidSegLib.measure.dicom_sr import SEVERITY, sr_path_for, write_quantification_sr
    from CovidSegLib.measure.severity import FalseInfectionFloor

    ct = read_volume(series["ctchest"])
    labels = np.zeros(ct.geometry.array_shape, np.uint8)
    seg = write_dicom_seg(labels, ct.geometry, tmp_path / "empty.dcm", series_files(series["ctchest"]), IDENTITY,
                          SPLIT_OUTPUT_LABELS)
    figures = quantify(labels, ct.geometry, ct.array, FalseInfectionFloor(15.0, ("x: 15.0 mL",), "m"))
    assert figures.severity == "not assessed"
    written = write_quantification_sr(figures, labels, ct.geometry, seg.path, sr_path_for(seg.path), IDENTITY)
    sr = hd.sr.srread(written.path)
    assert read_severity(sr) is None
    assert read_measurements(sr)[("Both lungs involvement", "Volume")] == 0
    codes = {str(element.value) for element in sr.iterall() if element.keyword == "CodeValue"}
    assert "INFVOL" in codes  # what is there is found
    assert SEVERITY[0] not in codes and "CT-0" not in codes


def test_source_files_in_any_order_land_on_their_slices(series, tmp_path: Path) -> None:
    ct = read_volume(series["ctchest"])
    labels = np.zeros(ct.geometry.array_shape, np.uint8)
    labels[np.arange(34), 5, np.arange(34)] = 2  # a different pixel on every slice
    files = list(series_files(series["ctchest"]))
    written = write_dicom_seg(labels, ct.geometry, tmp_path / "seg.dcm", files[::-1], IDENTITY)
    assert np.array_equal(seg_label_map(hd.seg.segread(written.path), source_datasets(series["ctchest"])), labels)


def test_a_seg_that_does_not_read_back_right_is_refused(series, tmp_path: Path) -> None:
    ct = read_volume(series["lungmask"])
    labels = np.zeros(ct.geometry.array_shape, np.uint8)
    labels[:, 100:200, 100:200] = 1
    files = series_files(series["lungmask"])
    written = write_dicom_seg(labels, ct.geometry, tmp_path / "seg.dcm", files, IDENTITY)
    source = read_source_series(files, ct.geometry)
    other = labels.copy()
    other[1, 300, 300] = 2
    with pytest.raises(OutputError, match="its voxels differ from the label map"):
        verify_dicom_seg(written.path, other, written.segments, source)


def test_source_files_off_the_grid_are_refused(series) -> None:
    ct = read_volume(series["ctchest"])
    files = series_files(series["ctchest"])
    with pytest.raises(InputError, match="slice"):
        read_source_series(files[:-1], ct.geometry)  # one slice without its file
    lungmask = read_volume(series["lungmask"])
    with pytest.raises(InputError, match="pixels where the CT grid has"):
        read_source_series(series_files(series["lungmask"]), ct.geometry)
    assert lungmask.geometry.size[2] == 2


def test_a_series_without_a_study_is_refused_naming_its_folder(series, tmp_path: Path) -> None:
    folder = shutil.copytree(series["lungmask"], tmp_path / "no-study")
    for path in folder.glob("*.dcm"):
        dataset = pydicom.dcmread(path)
        del dataset.StudyInstanceUID
        dataset.save_as(path)
    with pytest.raises(InputError, match="has no Study Instance UID") as caught:
        read_source_series(sorted(folder.glob("*.dcm")), read_volume(series["lungmask"]).geometry)
    assert caught.value.source == str(folder) and "in-memory" not in str(caught.value)
    with pytest.raises(InputError, match="no DICOM files were given") as caught:
        read_source_series([], read_volume(series["lungmask"]).geometry)
    assert "in-memory" not in str(caught.value)
