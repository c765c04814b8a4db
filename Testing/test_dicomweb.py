"""The DICOMweb round trip end to end: a real Orthanc with its DICOMweb plugin (Testing/orthanc.py), real CT series
uploaded to it, ``covidseg segment --dicomweb`` run as a user runs it (a process, credentials in its environment
or a file), and the SEG and SR fetched back from the server and checked: references, segments, voxels.

Also what goes wrong: a server that is down, a wrong study or series UID, a wrong password, a user that may not
store, a series with a gap (refused as a local folder is), a server that refuses the SR after taking the SEG or
says it stored the SR and drops it, a bearer token over HTTPS. No password or token may appear in any output.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orthanc import free_port, running_orthanc, skip_or_fail, unavailable

pytest.importorskip("torch")
hd = pytest.importorskip("highdicom")

from CovidSegLib.io.reading import read_volume  # noqa: E402
from CovidSegLib.labels import SPLIT_OUTPUT_LABELS  # noqa: E402

from dicom_helpers import seg_label_map, source_datasets, write_ct_series  # noqa: E402

PASSWORD = f"pw-{secrets.token_urlsafe(12)}"
READER_PASSWORD = f"rd-{secrets.token_urlsafe(12)}"
TOKEN = f"tk-{secrets.token_urlsafe(16)}"
USERS = {"covidseg": PASSWORD, "reader": READER_PASSWORD}
#: The user "reader" may read but not store: Orthanc's request filter refuses its POSTs (HTTP 403).
READ_ONLY_READER = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return not (method == 'POST' and username == 'reader')
end
"""
#: A server that takes one instance and not the other: it refuses the second STOW-RS request into a study
#: (HTTP 403; the tests upload through /dicom-web/studies, which is not counted) ...
REFUSES_THE_SECOND = """
posts = {}
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if method ~= 'POST' or uri == '/dicom-web/studies' then return true end
  posts[uri] = (posts[uri] or 0) + 1
  return posts[uri] < 2
end
"""
#: ... and one that answers an SR as stored and drops it (what Orthanc's DICOMweb does when a filter refuses).
DROPS_SR = """
function ReceivedInstanceFilter(dicom, origin, info)
  return dicom.Modality ~= 'SR'
end
"""
#: No basic auth: every request must carry the bearer token.
BEARER_ONLY = f"""
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return httpHeaders['authorization'] == 'Bearer {TOKEN}'
end
"""


@pytest.fixture(scope="module", autouse=True)
def orthanc_installed() -> None:
    """Skipped without Orthanc, saying why; failed instead where CI requires the round trip (orthanc.py). Module
    scope and autouse: it runs before the fixtures that start the servers."""
    reason = unavailable()
    if reason is not None:
        skip_or_fail(reason)


def covidseg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``covidseg`` as a process with exactly these extra environment variables (no credentials inherited)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COVIDSEG_DICOMWEB_")}
    environment.update(env or {})
    script = shutil.which("covidseg", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "CovidSegLib"]
    return subprocess.run(command + list(args), capture_output=True, text=True, encoding="utf-8", env=environment,
                          timeout=600)


def basic(user: str = "covidseg") -> dict[str, str]:
    return {"COVIDSEG_DICOMWEB_USER": user, "COVIDSEG_DICOMWEB_PASSWORD": USERS[user]}


def assert_no_secret(result: subprocess.CompletedProcess, *secrets_: str) -> None:
    for secret in secrets_ or (PASSWORD, READER_PASSWORD, TOKEN):
        assert secret not in result.stdout and secret not in result.stderr


@pytest.fixture(scope="module")
def series(volumes: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("series")
    return {"lungmask": shutil.copytree(volumes / "lungmask_dicom", root / "lungmask"),
            "ctchest": write_ct_series(volumes / "ctchest4.nrrd", root / "ctchest")}


@pytest.fixture(scope="module")
def server(tmp_path_factory, series):
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), USERS, READ_ONLY_READER) as orthanc:
        orthanc.uids = {name: orthanc.upload(folder) for name, folder in series.items()}
        yield orthanc


def fetch(orthanc, study: str, modality: str):
    """The one instance of the study's one series of ``modality``, fetched back with WADO-RS."""
    found = orthanc.series_by_modality(study).get(modality, [])
    assert len(found) == 1, f"{modality} series in the study: {found}"
    instances = orthanc.client().retrieve_series(study, found[0])
    assert len(instances) == 1
    return instances[0]


def check_seg(seg_dataset, source_folder: Path, expected: np.ndarray) -> None:
    seg = hd.seg.Segmentation.from_dataset(seg_dataset)
    sources = source_datasets(source_folder)
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == next(iter(sources.values())).SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == set(sources)
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers] == [
        info.name for info in SPLIT_OUTPUT_LABELS]
    assert expected.any() and np.array_equal(seg_label_map(seg, sources), expected)


def test_round_trip_stores_a_seg_and_sr_that_hold_what_was_segmented(server, series, tmp_path: Path) -> None:
    study, series_uid = server.uids["lungmask"]
    local = tmp_path / "local.nii.gz"
    result = covidseg("segment", "--dicomweb", server.dicomweb, "--study", study, "--series", series_uid,
                      "--store", "--sr", "-o", str(local), "--quiet", env=basic())
    assert result.returncode == 0, result.stderr
    assert_no_secret(result)
    assert f"stored in study {study} on {server.dicomweb}" in result.stdout
    expected = read_volume(local).array.astype(np.uint8)  # the same model on the same series, as NIfTI
    seg = fetch(server, study, "SEG")
    check_seg(seg, series["lungmask"], expected)
    sr = fetch(server, study, "SR")
    evidence = {item.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series_item in s.ReferencedSeriesSequence for item in series_item.ReferencedSOPSequence}
    assert evidence == {seg.SOPInstanceUID}
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == study


def test_round_trip_without_series_uid_with_a_credentials_file(server, series, tmp_path: Path) -> None:
    """The study's one CT series is chosen by the local rule; the SEG kept locally is the one stored."""
    study, _ = server.uids["ctchest"]
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"user": "covidseg", "password": PASSWORD}))
    credentials.chmod(0o600)
    local = tmp_path / "ctchest.dcm"
    result = covidseg("segment", "--dicomweb", server.dicomweb + "/", "--study", study, "--store", "-o", str(local),
                      "--dicomweb-credentials", str(credentials), "--quiet")
    assert result.returncode == 0, result.stderr
    assert_no_secret(result)
    assert "warning" not in result.stderr.split("craniocaudal")[0]  # no warning about the file's permissions
    stored = fetch(server, study, "SEG")
    assert stored.SOPInstanceUID == hd.seg.segread(local).SOPInstanceUID
    nifti = tmp_path / "ctchest.nii.gz"
    assert covidseg("segment", str(series["ctchest"]), "-o", str(nifti), "--quiet").returncode == 0
    check_seg(stored, series["ctchest"], read_volume(nifti).array.astype(np.uint8))
    assert "SR" not in server.series_by_modality(study)  # no --sr: no report


def test_a_server_that_is_down_is_named(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    result = covidseg("segment", "--dicomweb", url, "--study", "1.2.3", "--store", env=basic())
    assert result.returncode == 3
    assert f"{url} (study 1.2.3): searching the study's series: cannot connect to the server" in result.stderr
    assert_no_secret(result)


def test_wrong_study_or_series_uid(server) -> None:
    study, series_uid = server.uids["lungmask"]
    result = covidseg("segment", "--dicomweb", server.dicomweb, "--study", "1.2.3.4", "--store", env=basic())
    assert result.returncode == 3
    assert f"{server.dicomweb} (study 1.2.3.4): the server has no such study" in result.stderr
    result = covidseg("segment", "--dicomweb", server.dicomweb, "--study", study, "--series", "1.2.3.4", "--store",
                      env=basic())
    assert result.returncode == 3
    assert f"(study {study}, series 1.2.3.4): the study has no such series; present: " in result.stderr
    assert f"{series_uid} (no modality, 2 instances)" in result.stderr  # the lungmask slices say no modality
    assert_no_secret(result)


def test_a_wrong_password_is_refused_without_showing_it(server) -> None:
    study, _ = server.uids["lungmask"]
    wrong = f"wrong-{secrets.token_urlsafe(8)}"
    result = covidseg("segment", "--dicomweb", server.dicomweb, "--study", study, "--store",
                      env={"COVIDSEG_DICOMWEB_USER": "covidseg", "COVIDSEG_DICOMWEB_PASSWORD": wrong})
    assert result.returncode == 3
    assert "refused the sign-in (HTTP 401) with the basic auth from the environment" in result.stderr
    assert server.dicomweb in result.stderr
    assert_no_secret(result, wrong, PASSWORD)


def test_credentials_in_the_url_are_refused_without_showing_them(server) -> None:
    url = server.dicomweb.replace("http://", f"http://covidseg:{PASSWORD}@")
    result = covidseg("segment", "--dicomweb", url, "--study", "1.2.3", "--store")
    assert result.returncode == 2 and "holds credentials" in result.stderr
    assert_no_secret(result)


def test_a_refused_store_leaves_nothing_on_the_server(server, series, tmp_path: Path) -> None:
    study, series_uid = server.uids["lungmask"]
    before = server.series_by_modality(study)
    result = covidseg("segment", "--dicomweb", server.dicomweb, "--study", study, "--series", series_uid, "--store",
                      "--sr", "--quiet", env=basic("reader"))
    assert result.returncode == 4, result.stderr
    assert f"{server.dicomweb}: storing the DICOM SEG" in result.stderr and "HTTP 403" in result.stderr
    assert server.series_by_modality(study) == before
    assert_no_secret(result)


def test_a_series_with_a_gap_is_refused_as_a_local_folder_is(server, volumes: Path, tmp_path: Path) -> None:
    folder = write_ct_series(volumes / "ctchest4.nrrd", tmp_path / "gap", seed=1)
    middle = sorted(source_datasets(folder).values(), key=lambda d: float(d.ImagePositionPatient[2]))[17]
    next(p for p in folder.glob("*.dcm") if source_datasets_one(p) == middle.SOPInstanceUID).unlink()
    study, series_uid = server.upload(folder)
    result = covidseg("segment", "--dicomweb", server.dicomweb, "--study", study, "--store", env=basic())
    local = covidseg("segment", str(folder), "-o", str(tmp_path / "x.dcm"))
    assert result.returncode == local.returncode == 3
    assert "DICOM series has a gap" in result.stderr and "DICOM series has a gap" in local.stderr
    assert f"{server.dicomweb} (study {study}, series {series_uid}): DICOM series has a gap" in result.stderr
    assert "covidseg-dicomweb-" not in result.stderr  # the temporary folder is not what the user is told about
    assert "SEG" not in server.series_by_modality(study)


def source_datasets_one(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("refusing"), {"covidseg": PASSWORD}, REFUSES_THE_SECOND) as orthanc:
        yield orthanc


def test_a_store_refused_after_the_seg_says_what_is_left(refusing_server, volumes: Path, tmp_path: Path) -> None:
    """The SEG goes first; the server refuses the SR (HTTP 403). Orthanc's DICOMweb has no DELETE, so the SEG
    stays, complete on its own, and the error says which one is left and why it could not be removed."""
    study, series_uid = refusing_server.upload(write_ct_series(volumes / "ctchest4.nrrd", tmp_path / "ct", seed=2))
    result = covidseg("segment", "--dicomweb", refusing_server.dicomweb, "--study", study, "--store", "--sr",
                      "--quiet", env=basic())
    assert result.returncode == 4, result.stderr
    assert "storing the DICOM SR" in result.stderr and "HTTP 403" in result.stderr
    stored = refusing_server.series_by_modality(study)
    assert "SR" not in stored and len(stored["SEG"]) == 1
    assert "the server keeps DICOM SEG" in result.stderr and f"series {stored['SEG'][0]}" in result.stderr
    assert "HTTP 405" in result.stderr  # why it could not be removed
    assert_no_secret(result)


@pytest.fixture(scope="module")
def dropping_server(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("dropping"), {"covidseg": PASSWORD}, DROPS_SR) as orthanc:
        yield orthanc


def test_an_instance_the_server_says_it_stored_but_drops_is_caught(dropping_server, series) -> None:
    """Orthanc answers STOW-RS with success for an instance its filter refused: only asking for it afterwards
    (QIDO-RS) shows it is not there."""
    study, series_uid = dropping_server.upload(series["lungmask"])
    result = covidseg("segment", "--dicomweb", dropping_server.dicomweb, "--study", study, "--store", "--sr",
                      "--quiet", env=basic())
    assert result.returncode == 4, result.stderr
    assert "storing the DICOM SR" in result.stderr and "the server accepted it but does not list it" in result.stderr
    stored = dropping_server.series_by_modality(study)
    assert "SR" not in stored and len(stored["SEG"]) == 1 and f"series {stored['SEG'][0]}" in result.stderr
    assert_no_secret(result)


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory):
    if shutil.which("openssl") is None:
        skip_or_fail("openssl is not installed: no certificate for the HTTPS server")
    with running_orthanc(tmp_path_factory.mktemp("secure"), None, BEARER_ONLY, https=True) as orthanc:
        orthanc.headers["Authorization"] = f"Bearer {TOKEN}"
        yield orthanc


def test_https_with_a_bearer_token(secure_server, series, tmp_path: Path) -> None:
    study, series_uid = secure_server.upload(series["lungmask"])
    bundle = {"REQUESTS_CA_BUNDLE": str(secure_server.ca_bundle)}
    result = covidseg("segment", "--dicomweb", secure_server.dicomweb, "--study", study, "--store", "--quiet",
                      env={**bundle, "COVIDSEG_DICOMWEB_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert len(secure_server.series_by_modality(study)["SEG"]) == 1
    wrong = covidseg("segment", "--dicomweb", secure_server.dicomweb, "--study", study, "--store",
                     env={**bundle, "COVIDSEG_DICOMWEB_TOKEN": "not-the-token"})
    assert wrong.returncode == 3 and "HTTP 403" in wrong.stderr
    untrusted = covidseg("segment", "--dicomweb", secure_server.dicomweb, "--study", study, "--store",
                         env={"COVIDSEG_DICOMWEB_TOKEN": TOKEN})
    assert untrusted.returncode == 3 and "certificate check" in untrusted.stderr
    for run in (result, wrong, untrusted):
        assert_no_secret(run)
