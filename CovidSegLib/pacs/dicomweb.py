"""A DICOMweb server as CovidSeg uses it: find a study's series (QIDO-RS), download one (WADO-RS), store derived
instances (STOW-RS), and say in one sentence what went wrong.

Every failure becomes a CovidSegError whose message names the server by its address without credentials and what
happened (cannot connect, sign-in refused, no such study, the store refused and why); nothing raw from the HTTP
library is shown, since its messages are long and may repeat request details. What is read is an input
(:class:`InputError`, exit 3), what is refused on storing an output (:class:`OutputError`, exit 4). Every UID put
into a URL or a file name is checked to be one first (:mod:`.uids`).

dicomweb-client and requests are imported inside the functions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from ..errors import InputError, OutputError
from .credentials import Credentials, display_url
from .uids import is_uid, uid_problem

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: Seconds to wait for the server to answer a request (a whole series is many requests' worth of time).
TIMEOUT_S = 60.0
#: A request that fails (no connection, HTTP 429, 408, 503, 504) is tried this often in all, waiting 1 s then 2 s:
#: enough for a server that is restarting, not the half minute dicomweb-client's default spends on a wrong address
#: or an untrusted certificate.
ATTEMPTS = 3
RETRY_WAIT_MULTIPLIER_MS = 500
#: Series of these modalities are results or documents, not images: never candidates for segmenting.
NOT_IMAGES = {"SEG", "SR", "PR", "KO", "DOC", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "FID", "PLAN"}
#: After a store, QIDO-RS is asked this often whether it lists the instance, waiting LISTING_WAIT_S, then twice
#: that, ... in between (1.75 s in all), before an instance the server accepted is called missing: a server may
#: index what it received a moment after answering.
LISTING_ATTEMPTS = 4
LISTING_WAIT_S = 0.25


class DuplicateInstance(Exception):
    """A series download holds one SOP Instance UID twice (two slices in one, as a local folder cannot)."""


@dataclass(frozen=True)
class SeriesSummary:
    """What QIDO-RS says about a series: its UID, modality ("" when the instances have none) and size."""

    uid: str
    modality: str
    instances: int | None

    def describe(self) -> str:
        count = f", {self.instances} instances" if self.instances is not None else ""
        return f"{self.uid} ({self.modality or 'no modality'}{count})"


class DicomWebServer:
    """One DICOMweb service (its base URL, e.g. ``http://host:8042/dicom-web``) and the credentials to use."""

    def __init__(self, url: str, credentials: Credentials | None = None, timeout_s: float = TIMEOUT_S) -> None:
        self.url = url
        self.credentials = credentials
        self.timeout_s = timeout_s
        self._client = None

    def __repr__(self) -> str:  # never the credentials
        return f"DicomWebServer({self.display})"

    @property
    def display(self) -> str:
        return display_url(self.url)

    def client(self):
        if self._client is None:
            import logging

            import requests
            from dicomweb_client.api import DICOMwebClient

            # its own log lines ("Resource could not be deleted ...") would reach stderr beside CovidSeg's message,
            # which says it better; an application that configures logging still gets them
            library_log = logging.getLogger("dicomweb_client")
            if not any(isinstance(h, logging.NullHandler) for h in library_log.handlers):
                library_log.addHandler(logging.NullHandler())

            session = requests.Session()
            if self.credentials is not None and self.credentials.token:
                session.headers["Authorization"] = f"Bearer {self.credentials.token}"
            elif self.credentials is not None:
                session.auth = (self.credentials.user, self.credentials.password)
            self._client = DICOMwebClient(self.url, session=session, timeout=self.timeout_s)
            self._client.set_http_retry_params(max_attempts=ATTEMPTS,
                                               wait_exponential_multiplier=RETRY_WAIT_MULTIPLIER_MS)
        return self._client

    # ---- what went wrong ---------------------------------------------------------------------------------
    def problem(self, error: Exception, doing: str) -> str:
        """One sentence for an exception of requests / dicomweb-client while ``doing`` something."""
        import requests

        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(error, requests.exceptions.SSLError):
            return (f"{doing}: the HTTPS connection failed its certificate check (a self-signed server needs its "
                    "CA in REQUESTS_CA_BUNDLE)")
        if isinstance(error, requests.exceptions.ConnectionError):
            return f"{doing}: cannot connect to the server (is it running, and is the address right?)"
        if isinstance(error, requests.exceptions.Timeout):
            return f"{doing}: the server did not answer within {self.timeout_s:g} s"
        if status == 401:
            how = (f"the {self.credentials.kind} from {self.credentials.origin}" if self.credentials else
                   "no credentials (set them in the environment or give --dicomweb-credentials)")
            return f"{doing}: the server refused the sign-in (HTTP 401) with {how}"
        if status == 403:
            return f"{doing}: the server refused it (HTTP 403, forbidden: the account may not do this)"
        if status is not None:
            reason = getattr(error.response, "reason", "") or ""
            return f"{doing}: the server answered HTTP {status} {reason}".rstrip()
        return f"{doing}: {type(error).__name__}"

    def _input_error(self, what: str, error: Exception, doing: str) -> InputError:
        return InputError(f"{self.display} ({what})", self.problem(error, doing))

    # ---- reading -----------------------------------------------------------------------------------------
    def series_of_study(self, study_uid: str) -> list[SeriesSummary]:
        """The study's series; a study the server does not have is an InputError."""
        self._check_read_uids(f"study {study_uid}", study=study_uid)
        try:
            found = self.client().search_for_series(study_instance_uid=study_uid,
                                                    fields=["Modality", "NumberOfSeriesRelatedInstances"])
        except Exception as error:  # requests' and dicomweb-client's errors, all told apart in problem()
            raise self._input_error(f"study {study_uid}", error, "searching the study's series") from None
        if not found:
            raise InputError(f"{self.display} (study {study_uid})", "the server has no such study")
        return [summary_of(item) for item in found]

    def download_series(self, study_uid: str, series_uid: str, folder: Path, expected: int | None = None,
                        progress: Callable[[int], None] | None = None) -> list[Path]:
        """Write every instance of the series into ``folder`` as ``<SOPInstanceUID>.dcm``; refuse a series the
        server sends fewer (or more) instances of than it listed, or none."""
        where = f"study {study_uid}, series {series_uid}"
        self._check_read_uids(where, study=study_uid, series=series_uid)
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        try:
            for dataset in self.client().iter_series(study_uid, series_uid):
                written.append(save_instance(dataset, folder, len(written)))
                if progress is not None:
                    progress(len(written))
        except OSError as error:
            raise OutputError(f"{folder}: cannot write the downloaded series ({error.strerror or error})") from None
        except DuplicateInstance as error:
            raise InputError(f"{self.display} ({where})", str(error)) from None
        except Exception as error:
            raise self._input_error(where, error, f"downloading (after {len(written)} instances)") from None
        if not written:
            raise InputError(f"{self.display} ({where})", "the server sent no instances of the series")
        if expected is not None and len(written) != expected:
            raise InputError(f"{self.display} ({where})", f"the server listed {expected} instances but sent "
                                                          f"{len(written)}")
        return written

    def _check_read_uids(self, where: str, **uids: str) -> None:
        """Refuse (InputError naming the server) a study or series "UID" that is not one, before any request."""
        for what, uid in uids.items():
            problem = uid_problem(uid, f"the {what} UID")
            if problem:
                raise InputError(f"{self.display} ({where})", problem)

    @staticmethod
    def _stored_uid_problem(dataset: "Dataset") -> str | None:
        for what, keyword in (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID"),
                              ("SOP instance", "SOPInstanceUID")):
            problem = uid_problem(str(dataset.get(keyword, "")), f"its {what} UID")
            if problem:
                return problem
        return None

    def lists_instance(self, dataset: "Dataset", what: str) -> bool:
        """Whether QIDO-RS lists the instance in its study and series. A query that fails says nothing either way:
        it is an OutputError, never "not there"."""
        study, series, sop = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID),
                              str(dataset.SOPInstanceUID))
        try:
            found = self.client().search_for_instances(study_instance_uid=study, series_instance_uid=series,
                                                       search_filters={"SOPInstanceUID": sop})
        except Exception as error:
            raise OutputError(f"{self.display}: {self.problem(error, f'asking whether it lists the {what}')}"
                              ) from None
        return bool(found)

    def wait_until_listed(self, dataset: "Dataset", what: str) -> bool:
        """Ask (QIDO-RS) whether the instance just stored is listed, up to :data:`LISTING_ATTEMPTS` times, waiting
        longer each time; False if it never is; OutputError if a query fails."""
        wait = LISTING_WAIT_S
        for attempt in range(LISTING_ATTEMPTS):
            if self.lists_instance(dataset, what):
                return True
            if attempt + 1 < LISTING_ATTEMPTS:
                time.sleep(wait)
                wait *= 2
        return False

    # ---- writing -----------------------------------------------------------------------------------------
    def store(self, dataset: "Dataset", what: str) -> None:
        """STOW-RS one instance into its study; OutputError saying why when the server does not take it."""
        study = str(dataset.StudyInstanceUID)
        problem = self._stored_uid_problem(dataset)
        if problem:
            raise OutputError(f"{self.display}: storing the {what}: {problem}")
        try:
            response = self.client().store_instances([dataset], study_instance_uid=study)
        except Exception as error:
            raise OutputError(f"{self.display}: {self.problem(error, f'storing the {what}')}") from None
        failed = list(response.get("FailedSOPSequence", []) if response is not None else [])
        if failed:
            reason = failed[0].get("FailureReason")
            code = f" (failure reason {int(reason):#06x})" if reason is not None else ""
            raise OutputError(f"{self.display}: storing the {what}: the server refused it{code}")

    def delete(self, dataset: "Dataset") -> str | None:
        """Try to remove a stored instance (not part of the DICOMweb standard, so many servers refuse);
        None when done, else why not."""
        problem = self._stored_uid_problem(dataset)
        if problem:
            return problem
        try:
            self.client().delete_instance(str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID),
                                          str(dataset.SOPInstanceUID))
        except Exception as error:
            return self.problem(error, "removing it")
        return None


def summary_of(item: dict) -> SeriesSummary:
    """A QIDO-RS series result (DICOM JSON) as a :class:`SeriesSummary`."""
    def value(tag: str):
        values = item.get(tag, {}).get("Value") or [None]
        return values[0]

    count = value("00201209")
    return SeriesSummary(uid=str(value("0020000E")), modality=str(value("00080060") or ""),
                         instances=int(count) if count is not None else None)


def image_series(series: Sequence[SeriesSummary]) -> list[SeriesSummary]:
    """The series that may be a CT to segment: not a SEG, SR or other result or document."""
    return [s for s in series if s.modality.upper() not in NOT_IMAGES]


def save_instance(dataset: "Dataset", folder: Path, index: int) -> Path:
    """Write one downloaded instance as a DICOM file named after its SOP Instance UID (an index when the UID is
    not a plain UID, so a server cannot choose where the file goes). The same instance twice is refused."""
    uid = str(dataset.get("SOPInstanceUID", ""))
    name = f"{uid}.dcm" if is_uid(uid) else f"instance{index:05d}.dcm"
    path = folder / name
    if path.exists():
        raise DuplicateInstance(f"the server sent instance {uid} twice")
    dataset.save_as(path, enforce_file_format=True)
    return path
