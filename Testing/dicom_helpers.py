"""Real CT as DICOM series for the DICOM SEG, SR and DICOMweb tests, and reading a SEG back.

Slicer's CTChest (``ctchest4.nrrd``) becomes a proper CT Image Storage series: fresh Study, Series, Frame of
Reference and SOP Instance UIDs, a patient, one file per slice with its Image Position (Patient) from the volume's
geometry, orientation, pixel spacing, and stored values ``HU + 1024`` with Rescale Intercept -1024 (so a reader
that ignores the rescale is caught). Files are named at random, so nothing may rely on their order.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from CovidSegLib.io.reading import read_volume

RESCALE_INTERCEPT = -1024.0


def write_ct_series(source: Path, folder: Path, seed: int = 0) -> Path:
    """Write the CT volume ``source`` as a DICOM CT series into ``folder`` (one file per slice); returns it."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    volume = read_volume(source)
    geometry = volume.geometry
    direction = geometry.direction_matrix
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    names = random.Random(seed).sample(range(10000, 99999), geometry.size[2])
    for k in range(geometry.size[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "CTChest^Slicer", "CTCHEST4", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 3, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Manufacturer = "CovidSeg tests"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in geometry.index_to_lps(np.array([[0, 0, k]]))[0]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.PixelSpacing = [f"{geometry.spacing[1]:.6f}", f"{geometry.spacing[0]:.6f}"]
        ds.SliceThickness = f"{geometry.spacing[2]:.6f}"
        ds.Rows, ds.Columns = geometry.size[1], geometry.size[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{RESCALE_INTERCEPT:g}", "1", "HU"
        stored = np.clip(volume.array[k].astype(np.int32) - int(RESCALE_INTERCEPT), -32768, 32767).astype(np.int16)
        ds.PixelData = stored.tobytes()
        pydicom.dcmwrite(folder / f"IM{names[k]}.dcm", ds, enforce_file_format=True)
    return folder


def source_datasets(folder: Path) -> dict[str, "object"]:
    """The series' headers by SOP Instance UID."""
    import pydicom

    found = {}
    for path in folder.glob("*.dcm"):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        found[str(dataset.SOPInstanceUID)] = dataset
    return found


def seg_label_map(seg, sources: dict[str, object]) -> np.ndarray:
    """A SEG back as a ``[k, j, i]`` label map of CovidSeg values, slices in the series' order along its normal
    (as SimpleITK reads the series), decoded by highdicom alone and valued by segment name (not by CovidSeg's own
    reader, which is what is tested)."""
    from CovidSegLib.labels import LABELS

    def along_normal(dataset) -> float:
        orientation = np.asarray([float(v) for v in dataset.ImageOrientationPatient])
        normal = np.cross(orientation[:3], orientation[3:])
        return float(np.dot(normal, [float(v) for v in dataset.ImagePositionPatient]))

    ordered = sorted(sources, key=lambda uid: along_normal(sources[uid]))
    numbers = seg.get_pixels_by_source_instance(ordered, combine_segments=True, assert_missing_frames_are_empty=True)
    values = np.zeros(int(max(seg.segment_numbers)) + 1, np.uint8)
    by_name = {label.name: label.value for label in LABELS}
    for number in seg.segment_numbers:
        values[number] = by_name[seg.get_segment_description(number).SegmentLabel]
    return values[numbers]
