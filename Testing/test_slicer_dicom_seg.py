"""The Slicer module's DICOM SEG export (CovidSegLogic.export_dicom_seg) on Slicer's real MRML (slicer-core).

The lungmask DICOM slices are read by Slicer's own volume reader, the node gets the ``DICOM.instanceUIDs``
attribute Slicer's DICOM module sets, a dictionary stands in for ``slicer.dicomDatabase.fileForInstance``, the
Logic segments with the bundled model and exports; the SEG is read back with highdicom.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PROJECT_ROOT

slicer = pytest.importorskip("slicer")
pytest.importorskip("torch")
hd = pytest.importorskip("highdicom")
sys.path.insert(0, str(PROJECT_ROOT / "CovidSeg"))

from CovidSegLogic import DICOM_INSTANCE_UIDS_ATTRIBUTE, CovidSegLogic  # noqa: E402

import CovidSegLib  # noqa: E402
from CovidSegLib.engine.model import BUNDLED_CARD, read_card  # noqa: E402
from CovidSegLib.errors import InputError  # noqa: E402
from CovidSegLib.labels import SPLIT_OUTPUT_LABELS  # noqa: E402
from CovidSegLib.measure.dicom_sr import read_severity  # noqa: E402

from dicom_helpers import seg_label_map, source_datasets  # noqa: E402


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def dicom_volume(scene, volumes: Path, tmp_path: Path):
    """The lungmask series as Slicer loads it from its DICOM database: a volume node with the instances' UIDs,
    and the database's instance -> file lookup."""
    folder = shutil.copytree(volumes / "lungmask_dicom", tmp_path / "database")
    sources = source_datasets(folder)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "lungmask")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(folder / "0.dcm"))
    assert storage.ReadData(node)
    assert slicer.util.arrayFromVolume(node).shape == (2, 512, 512)
    files = {sop_instance_uid(path): str(path) for path in folder.glob("*.dcm")}
    node.SetAttribute(DICOM_INSTANCE_UIDS_ATTRIBUTE, " ".join(sorted(sources)))  # any order: placed by position
    return node, folder, files


def sop_instance_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_the_logic_exports_the_segments_as_a_dicom_seg_and_sr(scene, dicom_volume, tmp_path: Path) -> None:
    volume, folder, files = dicom_volume
    logic = CovidSegLogic(scene)
    segmentation = logic.segment(volume, model_path=str(BUNDLED_CARD))
    uids = CovidSegLogic.dicom_instance_uids(volume)
    assert sorted(uids) == sorted(files)
    path, sr_path = tmp_path / "out" / "lungmask.seg.dcm", tmp_path / "out" / "lungmask.sr.dcm"
    written = logic.export_dicom_seg(segmentation, volume, [files[uid] for uid in uids], str(path),
                                     sr_path=str(sr_path))
    assert written.path == path and path.is_file() and sr_path.is_file()

    seg = hd.seg.segread(path)
    sources = source_datasets(folder)
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(
        sources)
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers] == [
        info.name for info in SPLIT_OUTPUT_LABELS]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in sources[uid].ImagePositionPatient])
    expected = logic.label_map(segmentation, volume)
    assert expected.any() and np.array_equal(seg_label_map(seg, sources), expected)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    card = read_card(BUNDLED_CARD)
    assert algorithm.AlgorithmName == "CovidSeg" and algorithm.AlgorithmVersion == CovidSegLib.__version__
    assert f"weights_sha256={card.weights_sha256}" in algorithm.AlgorithmParameters

    _, quantification = logic.quantify(segmentation, volume)
    assert read_severity(hd.sr.srread(sr_path)) == quantification.severity


def test_a_volume_not_from_dicom_has_no_instances_and_files_off_its_grid_are_refused(
        scene, dicom_volume, volumes: Path, tmp_path: Path) -> None:
    _, _, files = dicom_volume
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ctchest")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(volumes / "ctchest4.nrrd"))
    assert storage.ReadData(other)
    assert CovidSegLogic.dicom_instance_uids(other) == []
    logic = CovidSegLogic(scene)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "ctchest labels")
    labels = np.zeros(slicer.util.arrayFromVolume(other).shape, np.uint8)
    labels[10:20, 40:60, 40:60] = 1
    logic.labels_to_segmentation(labels, other, segmentation)
    out = tmp_path / "wrong.seg.dcm"
    with pytest.raises(InputError, match="pixels where the CT grid has"):
        logic.export_dicom_seg(segmentation, other, list(files.values()), str(out))
    assert not out.exists()
