"""The DICOMweb round trip against servers that misbehave in ways a real Orthanc cannot be made to (no server
process: DicomWebServer subclasses that answer as such a server would): UIDs that are paths, an instance that is
listed only a moment after it was stored, a listing query that fails, an SR accepted but never listed. What may
never happen: a file written outside the temporary folder, a request built from a value that is not a UID, an SR
left on the server pointing at a SEG that was removed, a failed query taken for "not there"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from CovidSegLib.cli import EXIT_USAGE, main
from CovidSegLib.engine.pipeline import SegmentOptions
from CovidSegLib.errors import InputError, OutputError
from CovidSegLib.pacs import dicomweb as dicomweb_module
from CovidSegLib.pacs.dicomweb import DicomWebServer, SeriesSummary, save_instance
from CovidSegLib.pacs.roundtrip import DOWNLOAD_FOLDER, DicomWebRequest, segment_from_dicomweb
from CovidSegLib.pacs.store import store_results
from CovidSegLib.pacs.uids import is_uid

STUDY = "1.2.826.0.1.3680043.8.498.99442832844785701617685555618610994967"  # the lungmask slices' study
NOT_UIDS = (".", "..", "", "../../evil", "/etc/cron.d", "1.2/../../instances", "1.2.", ".1.2", "1..2", "1.2 ",
            "1." + "2" * 64)


class Unreachable(DicomWebServer):
    """A server no request may reach: any request is a failure of the test."""

    def __init__(self) -> None:
        super().__init__("http://pacs.example.org/dicom-web")

    def client(self):
        raise AssertionError("a request was sent")


def test_only_uids_are_uids() -> None:
    assert is_uid(STUDY) and is_uid("1") and is_uid("1.2.840.10008.5.1.4.1.1.66.4")
    for bad in NOT_UIDS + (None, 12):
        assert not is_uid(bad), bad


def test_a_server_cannot_choose_where_the_series_goes(tmp_path: Path) -> None:
    """A series "UID" that is an absolute path or climbs out with ``..``: refused before any request or any file;
    the download folder's name is fixed, whatever the server lists."""
    escaped = tmp_path / "escaped"
    for uid in (str(escaped), f"../../{escaped.name}", ".."):
        request = DicomWebRequest(Unreachable(), STUDY, store=True)
        with pytest.raises(InputError, match="is not a DICOM UID"):
            segment_from_dicomweb(request, SeriesSummary(uid, "CT", 2), None, SegmentOptions(),
                                  tmp_path / "x.nii.gz")
        with pytest.raises(InputError, match="is not a DICOM UID"):
            Unreachable().download_series(STUDY, uid, tmp_path / "folder")
    assert not escaped.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="the study UID '../x' is not a DICOM UID"):
        Unreachable().series_of_study("../x")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_an_instance_uid_that_is_not_a_uid_gets_a_plain_file_name(volumes: Path, tmp_path: Path) -> None:
    import pydicom

    dataset = pydicom.dcmread(volumes / "lungmask_dicom" / "0.dcm")
    for index, uid in enumerate(("..", ".", "../../evil")):
        dataset.SOPInstanceUID = uid
        assert save_instance(dataset, tmp_path, index) == tmp_path / f"instance{index:05d}.dcm"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"instance{i:05d}.dcm" for i in range(3)]
    assert not (tmp_path.parent.parent / "evil.dcm").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--study", "../../x"], "--study '../../x' is not a DICOM UID"),
    (["--study", STUDY, "--series", "/etc"], "--series '/etc' is not a DICOM UID"),
    (["--study", STUDY, "--report"], "--report and --part go with a local CT"),
    (["--study", STUDY, "--part", "0/2"], "--report and --part go with a local CT"),
])
def test_dicomweb_usage_errors(arguments: list[str], message: str, capsys) -> None:
    assert main(["segment", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--store", *arguments]) == EXIT_USAGE
    assert message in capsys.readouterr().err


class Pacs(DicomWebServer):
    """A server that takes every store, lists an instance only from its ``listed_after``-th query on (never, for
    None), may fail its queries or refuse a kind, and cannot delete (as Orthanc's DICOMweb plugin)."""

    def __init__(self, listed_after: dict[str, int | None] | None = None, query_fails: bool = False,
                 refuses: str = "", series: Path | None = None) -> None:
        super().__init__("http://pacs.example.org/dicom-web")
        self.listed_after = listed_after or {}
        self.query_fails, self.refuses, self.series = query_fails, refuses, series
        self.stored: list[str] = []
        self.queries: dict[str, int] = {}
        self.deleted: list[str] = []
        self.downloaded_into: list[Path] = []

    def store(self, dataset, what: str) -> None:
        if self.refuses and what.startswith(self.refuses):
            raise OutputError(f"{self.display}: storing the {what}: the server refused it (HTTP 403)")
        self.stored.append(what)

    def lists_instance(self, dataset, what: str) -> bool:
        if self.query_fails:
            raise OutputError(f"{self.display}: asking whether it lists the {what}: the server answered HTTP 500")
        kind = what.rsplit(" ", 1)[0]
        self.queries[kind] = self.queries.get(kind, 0) + 1
        after = self.listed_after.get(kind, 1)
        return after is not None and self.queries[kind] >= after

    def delete(self, dataset) -> str | None:
        self.deleted.append(str(dataset.SOPInstanceUID))
        return "removing it: the server answered HTTP 405 Method Not Allowed"

    def series_of_study(self, study_uid: str) -> list[SeriesSummary]:
        raise AssertionError("the series is chosen by the test")

    def download_series(self, study_uid, series_uid, folder, expected=None, progress=None) -> list[Path]:
        self.downloaded_into.append(folder)
        folder.mkdir(parents=True)
        return [Path(shutil.copy(path, folder)) for path in sorted(self.series.glob("*.dcm"))]


@pytest.fixture
def no_waiting(monkeypatch) -> None:
    monkeypatch.setattr(dicomweb_module.time, "sleep", lambda seconds: None)


def instance(folder: Path, kind: str, study: str = STUDY, number: int = 1) -> tuple[str, Path]:
    """A minimal DICOM file of ``kind`` ("DICOM SEG", "DICOM SR") in ``study``: what store_results reads."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, generate_uid()
    path = folder / f"{number}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return kind, path


def test_an_instance_listed_a_moment_later_is_stored(no_waiting, tmp_path: Path) -> None:
    server = Pacs({"DICOM SEG": 3})
    stored = store_results(DicomWebRequest(server, STUDY, store=True),
                           [instance(tmp_path, "DICOM SEG"), instance(tmp_path, "DICOM SR", number=2)])
    assert [s.split()[1] for s in stored] == ["SEG", "SR"] and server.queries == {"DICOM SEG": 3, "DICOM SR": 1}
    assert server.deleted == []


def test_an_sr_accepted_but_never_listed_is_undone_with_its_seg(no_waiting, tmp_path: Path) -> None:
    """The SR may still appear later: it is in what is removed, and the message says it may be left."""
    server = Pacs({"DICOM SR": None})
    seg, sr = instance(tmp_path, "DICOM SEG"), instance(tmp_path, "DICOM SR", number=2)
    with pytest.raises(OutputError) as caught:
        store_results(DicomWebRequest(server, STUDY, store=True), [seg, sr])
    message = str(caught.value)
    assert "storing the DICOM SR" in message and "accepted it but does not list it in the study" in message
    assert server.queries["DICOM SR"] == dicomweb_module.LISTING_ATTEMPTS
    assert len(server.deleted) == 2  # the SEG and the SR both
    assert "the server keeps DICOM SEG" in message and "may still appear in the study" in message


def test_a_failed_query_is_not_taken_for_not_listed(no_waiting, tmp_path: Path) -> None:
    server = Pacs(query_fails=True)
    with pytest.raises(OutputError) as caught:
        store_results(DicomWebRequest(server, STUDY, store=True),
                      [instance(tmp_path, "DICOM SEG"), instance(tmp_path, "DICOM SR", number=2)])
    message = str(caught.value)
    assert "asking whether it lists the DICOM SEG" in message and "HTTP 500" in message
    assert "does not list" not in message
    assert [s.split()[1] for s in server.stored] == ["SEG"]  # the SR is never sent after an unconfirmed SEG
    assert len(server.deleted) == 1 and "may still appear" in message


def test_instances_of_another_study_are_not_stored(no_waiting, tmp_path: Path) -> None:
    server = Pacs()
    with pytest.raises(OutputError, match="not to study .* asked for"):
        store_results(DicomWebRequest(server, STUDY, store=True), [instance(tmp_path, "DICOM SEG", study="1.2.3")])
    assert server.stored == []


def test_the_round_trip_downloads_into_a_fixed_folder_and_names_outputs_by_series(no_waiting, volumes: Path,
                                                                                  tmp_path: Path) -> None:
    """The lungmask slices, "downloaded" from a server that hands out the local files: segmented by the bundled
    model, written to OUT/<series UID>.dcm with its SR, both stored, SEG first."""
    pytest.importorskip("torch")
    pytest.importorskip("highdicom")
    from CovidSegLib.engine.model import load_model

    server = Pacs(series=volumes / "lungmask_dicom")
    series_uid = "1.2.826.0.1.3680043.8.498.22032370629701851459946006816247576553"
    out = tmp_path / "out"
    out.mkdir()
    trip = segment_from_dicomweb(DicomWebRequest(server, STUDY, series_uid, store=True, with_sr=True),
                                 SeriesSummary(series_uid, "", 2), load_model(None),
                                 SegmentOptions(output_format="dicom-seg"), out)
    folder = server.downloaded_into[0]
    assert folder.name == DOWNLOAD_FOLDER and folder.parent.name.startswith("covidseg-dicomweb-")
    assert not folder.parent.exists()  # the temporary folder is gone
    assert trip.series_uid == series_uid and trip.instances == 2
    assert sorted(p.name for p in out.iterdir()) == [f"{series_uid}.dcm", f"{series_uid}.sr.dcm"]
    assert [s.split()[1] for s in trip.stored] == ["SEG", "SR"] == [s.split()[1] for s in server.stored]
