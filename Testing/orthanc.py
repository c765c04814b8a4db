"""A real Orthanc with its DICOMweb plugin for the round-trip tests, started and stopped by the tests.

Each server listens on 127.0.0.1 on a free port, keeps its storage in a temporary folder, and reads a temporary
JSON configuration: the DICOMweb plugin from the Debian package (``orthanc-dicomweb``, plugins in
:data:`PLUGINS`), basic auth with registered users, or none, an optional Lua script (Orthanc's request and
instance filters: how the tests make a read-only user, or a server that refuses or drops one instance) and
optionally HTTPS with a self-signed certificate. Where Orthanc is not installed the tests skip, saying so, unless
:data:`REQUIRE_VARIABLE` is ``1`` (CI sets it, .ci/run): then they fail, so that a CI run cannot pass without a
single round trip because an install failed.

The binary is ``$ORTHANC`` if set, else ``Orthanc`` on the PATH, else Debian's ``/usr/sbin/Orthanc`` (``/usr/sbin``
is not on an ordinary user's PATH); the plugins are in ``$ORTHANC_PLUGINS`` or Debian's
``/usr/share/orthanc/plugins``.

HTTPS is terminated by a small TLS proxy in front of Orthanc (:func:`tls_proxy`): Debian's Orthanc 1.10.1
crashes (segmentation fault) on the first request to its own HTTPS server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

PLUGINS = Path(os.environ.get("ORTHANC_PLUGINS", "/usr/share/orthanc/plugins"))
DICOMWEB_PLUGIN = PLUGINS / "libOrthancDicomWeb.so"
DEBIAN_BINARY = Path("/usr/sbin/Orthanc")
START_TIMEOUT_S = 30.0
#: Seconds the tests' own requests wait for an answer: a stalled server fails a test instead of hanging it.
REQUEST_TIMEOUT_S = 30.0
#: Set to 1 (CI does): the Orthanc tests fail where Orthanc, its plugin or openssl is missing, instead of skipping.
REQUIRE_VARIABLE = "COVIDSEG_REQUIRE_ORTHANC"


def binary() -> str | None:
    """The Orthanc executable (see the module docstring), or None."""
    if os.environ.get("ORTHANC"):
        return os.environ["ORTHANC"] if Path(os.environ["ORTHANC"]).is_file() else None
    found = shutil.which("Orthanc")
    if found:
        return found
    return str(DEBIAN_BINARY) if DEBIAN_BINARY.is_file() and os.access(DEBIAN_BINARY, os.X_OK) else None


def unavailable() -> str | None:
    """Why the Orthanc tests cannot run here, or None."""
    if binary() is None:
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; scripts/test.sh does it as root)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"Orthanc's DICOMweb plugin is not installed ({DICOMWEB_PLUGIN.name} not in {PLUGINS})"
    return None


def required() -> bool:
    return os.environ.get(REQUIRE_VARIABLE) == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the test for ``reason``, or fail it where the Orthanc tests are required (:data:`REQUIRE_VARIABLE`)."""
    import pytest

    if required():
        pytest.fail(f"{reason}, and {REQUIRE_VARIABLE}=1 requires the Orthanc round trip", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(server PEM with key and certificate for Orthanc, certificate alone for the client's CA bundle)."""
    key, certificate = folder / "key.pem", folder / "certificate.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(certificate), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = folder / "server.pem"
    server.write_text(key.read_text() + certificate.read_text())
    return server, certificate


@dataclass
class Orthanc:
    base: str  # http(s)://127.0.0.1:PORT
    users: dict[str, str]
    process: subprocess.Popen
    log: Path
    ca_bundle: Path | None = None
    headers: dict[str, str] = field(default_factory=dict)  # what the tests' own requests send (a bearer token)

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicom-web"

    def client(self, user: str | None = None):
        """A dicomweb-client for the tests' own uploads and checks (the first registered user by default)."""
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        if self.users:
            user = user or next(iter(self.users))
            session.auth = (user, self.users[user])
        session.headers.update(self.headers)
        if self.ca_bundle is not None:  # and REQUESTS_CA_BUNDLE in the environment may not override it
            session.verify, session.trust_env = str(self.ca_bundle), False
        return DICOMwebClient(self.dicomweb, session=session, timeout=REQUEST_TIMEOUT_S)

    def upload(self, folder: Path) -> tuple[str, str]:
        """STOW-RS every file of a DICOM series folder; returns (study UID, series UID)."""
        import pydicom

        datasets = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]
        self.client().store_instances(datasets)
        return str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)

    def series_by_modality(self, study: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for item in self.client().search_for_series(study_instance_uid=study, fields=["Modality"]):
            modality = (item.get("00080060", {}).get("Value") or [""])[0]
            found.setdefault(modality, []).append(item["0020000E"]["Value"][0])
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running_orthanc(folder: Path, users: dict[str, str] | None = None, lua: str = "", https: bool = False
                    ) -> Iterator[Orthanc]:
    """Start Orthanc in ``folder`` (storage, configuration, log), wait until it answers, stop it afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    configuration = {
        "Name": "CovidSeg test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
        "HttpPort": port, "RemoteAccessAllowed": False, "DicomServerEnabled": False,
        "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpCompressionEnabled": False,
    }
    if lua:
        (folder / "filters.lua").write_text(lua)
        configuration["LuaScripts"] = [str(folder / "filters.lua")]
    (folder / "orthanc.json").write_text(json.dumps(configuration, indent=2))
    log = folder / "orthanc.log"
    with log.open("w") as log_file:
        process = subprocess.Popen([binary() or "Orthanc", str(folder / "orthanc.json")], cwd=folder, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: Orthanc("", {}, process, log).stop())
        base, ca_bundle = f"http://127.0.0.1:{port}", None
        if https:
            server_pem, ca_bundle = self_signed_certificate(folder)
            base = f"https://127.0.0.1:{stack.enter_context(tls_proxy(port, server_pem))}"
        server = Orthanc(base, dict(users or {}), process, log, ca_bundle)
        wait_until_ready(server)
        yield server


@contextlib.contextmanager
def tls_proxy(target_port: int, certificate: Path) -> Iterator[int]:
    """Accept TLS on a free port of 127.0.0.1 and pass the bytes on to ``target_port`` (plain HTTP) and back."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate))
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])
    stopping = threading.Event()

    def pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                secure = context.wrap_socket(client, server_side=True)
            except (OSError, ssl.SSLError):  # a client that does not trust the certificate hangs up here
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", target_port))
            for source, target in ((secure, upstream), (upstream, secure)):
                threading.Thread(target=pipe, args=(source, target), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stopping.set()
        listener.close()


def wait_until_ready(server: Orthanc) -> None:
    import requests

    auth = next(iter(server.users.items())) if server.users else None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"Orthanc stopped at start:\n{server.log.read_text()[-3000:]}")
        try:
            answer = requests.get(f"{server.base}/dicom-web/studies", auth=auth, timeout=2,
                                  verify=str(server.ca_bundle) if server.ca_bundle else True, headers=server.headers)
            if answer.status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT_S:g} s:\n{server.log.read_text()[-3000:]}")
