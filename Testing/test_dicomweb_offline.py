"""DICOMweb without a server: addresses and credentials (CovidSegLib.pacs.credentials), where they may come from,
what is refused, that no secret ever shows in a message, a ``repr`` or the command's output; and the choice of the
series to download (CovidSegLib.pacs.roundtrip.choose_series) from what the server lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from CovidSegLib.cli import EXIT_USAGE, main
from CovidSegLib.errors import InputError
from CovidSegLib.pacs.credentials import Credentials, checked_url, credentials_from, display_url, sent_in_clear
from CovidSegLib.pacs.dicomweb import DicomWebServer, SeriesSummary
from CovidSegLib.pacs.roundtrip import DicomWebRequest, choose_series

SECRET = "s3cret-Value-42"


def test_credentials_come_from_the_environment() -> None:
    basic = credentials_from({"COVIDSEG_DICOMWEB_USER": "ana", "COVIDSEG_DICOMWEB_PASSWORD": SECRET})
    assert (basic.user, basic.password, basic.kind, basic.origin) == ("ana", SECRET, "basic auth", "the environment")
    token = credentials_from({"COVIDSEG_DICOMWEB_TOKEN": SECRET})
    assert token.token == SECRET and token.kind == "bearer token"
    assert credentials_from({}) is None
    for credentials in (basic, token):
        assert SECRET not in repr(credentials) and SECRET not in str(credentials)
    assert SECRET not in repr(DicomWebServer("http://host/dicom-web", basic))


@pytest.mark.parametrize("environment, message", [
    ({"COVIDSEG_DICOMWEB_USER": "ana"}, "basic auth needs both"),
    ({"COVIDSEG_DICOMWEB_PASSWORD": SECRET}, "basic auth needs both"),
    ({"COVIDSEG_DICOMWEB_USER": "ana", "COVIDSEG_DICOMWEB_PASSWORD": SECRET, "COVIDSEG_DICOMWEB_TOKEN": SECRET},
     "not both"),
])
def test_incomplete_or_ambiguous_environments_are_refused(environment: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        credentials_from(environment)
    assert SECRET not in str(caught.value)


def test_a_credentials_file_wins_over_the_environment_and_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({"user": "ana", "password": SECRET}))
    found = credentials_from({"COVIDSEG_DICOMWEB_TOKEN": "other"}, path)
    assert (found.user, found.password, found.origin) == ("ana", SECRET, str(path))
    for text, message in ((f"user=ana password={SECRET}", "is not JSON"),
                          (json.dumps({"user": "ana", "pass": SECRET}), "no other keys"),
                          (json.dumps({"user": "ana"}), "needs both"),
                          (json.dumps({}), "holds no credentials")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as caught:
            credentials_from({}, path)
        assert SECRET not in str(caught.value)
    with pytest.raises(ValueError, match="cannot read the DICOMweb credentials file"):
        credentials_from({}, tmp_path / "missing.json")


def test_addresses_are_checked_and_shown_without_credentials() -> None:
    assert checked_url("https://pacs.example.org:8443/dicom-web/") == "https://pacs.example.org:8443/dicom-web"
    with pytest.raises(ValueError, match="holds credentials") as caught:
        checked_url(f"https://ana:{SECRET}@pacs.example.org/dicom-web")
    assert SECRET not in str(caught.value) and "ana" not in str(caught.value)
    assert display_url(f"http://ana:{SECRET}@10.0.0.1:8042/dicom-web?x=1") == "http://10.0.0.1:8042/dicom-web"
    for bad in ("ftp://host/dicom-web", "host:8042/dicom-web", "http:///dicom-web"):
        with pytest.raises(ValueError, match="needs an http"):
            checked_url(bad)
    with pytest.raises(ValueError, match="query or fragment"):
        checked_url("http://host/dicom-web?token=abc")


def test_a_dicomweb_command_line_without_what_it_needs_is_a_usage_error(capsys) -> None:
    assert main(["segment", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--store"]) == EXIT_USAGE
    assert "--dicomweb needs --study UID" in capsys.readouterr().err
    assert main(["segment", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", "1.2"]) == EXIT_USAGE
    assert "-o/--output is required" in capsys.readouterr().err
    assert main(["segment", "ct.nrrd", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", "1.2",
                 "--store"]) == EXIT_USAGE
    assert "one of them" in capsys.readouterr().err
    assert main(["segment", "--dicomweb", f"http://ana:{SECRET}@127.0.0.1:9/dicom-web", "--study", "1.2",
                 "--store"]) == EXIT_USAGE
    assert SECRET not in capsys.readouterr().err


def test_credentials_are_never_options() -> None:
    from CovidSegLib.cli import build_parser

    segment = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "segment")[1]
    options = {o for action in segment._actions for o in action.option_strings}
    assert not {o for o in options if "password" in o or "token" in o or o == "--user"}
    assert Credentials(user="a", password=SECRET).secrets() == (SECRET,)


def test_plain_http_beyond_this_machine_is_flagged() -> None:
    credentials = Credentials(user="a", password=SECRET)
    assert sent_in_clear("http://pacs.example.org/dicom-web", credentials)
    assert not sent_in_clear("https://pacs.example.org/dicom-web", credentials)
    assert not sent_in_clear("http://127.0.0.1:8042/dicom-web", credentials)
    assert not sent_in_clear("http://pacs.example.org/dicom-web", None)


class ListingServer(DicomWebServer):
    """A server that only lists series (what QIDO-RS would answer)."""

    def __init__(self, series: list[SeriesSummary]) -> None:
        super().__init__("http://pacs.example.org/dicom-web")
        self.listed = series

    def series_of_study(self, study_uid: str) -> list[SeriesSummary]:
        return self.listed


def test_the_series_is_chosen_by_the_rule_of_a_local_folder() -> None:
    ct, thin, seg = (SeriesSummary("1.1", "CT", 34), SeriesSummary("1.2", "CT", 120), SeriesSummary("1.3", "SEG", 1))
    assert choose_series(DicomWebRequest(ListingServer([ct, thin, seg]), "9")) == thin
    assert choose_series(DicomWebRequest(ListingServer([ct, thin, seg]), "9", "1.1")) == ct
    with pytest.raises(InputError, match=r"2 image series of 34 instances each \(1.4, 1.1\): say which one"):
        choose_series(DicomWebRequest(ListingServer([ct, SeriesSummary("1.4", "", 34), seg]), "9"))
    with pytest.raises(InputError, match=r"no image series to segment \(only SEG\)"):
        choose_series(DicomWebRequest(ListingServer([seg]), "9"))
    with pytest.raises(InputError, match=r"no such series; present: 1.1 \(CT, 34 instances\)"):
        choose_series(DicomWebRequest(ListingServer([ct]), "9", "2.2"))
    # without counts, the rule runs on the downloaded files (all image series are fetched)
    assert choose_series(DicomWebRequest(ListingServer([SeriesSummary("1.1", "CT", None), seg]), "9")) is None
