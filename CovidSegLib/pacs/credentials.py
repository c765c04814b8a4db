"""Where a DICOMweb server is and how CovidSeg signs in to it, without a secret ever on a command line or in a log.

A command line is visible to every user of the machine (``ps``) and kept in shell histories and CI logs, so the
server address may not carry credentials (``https://user:secret@host`` is refused). They come from the
environment (:data:`USER_VARIABLE` and :data:`PASSWORD_VARIABLE` for HTTP basic auth, or :data:`TOKEN_VARIABLE`
for a bearer token) or from a JSON file given by path (``{"user": ..., "password": ...}`` or ``{"token": ...}``),
the file winning when both are there. :class:`Credentials` never shows its secret in ``repr`` or ``str``, and every
message names the server by :func:`display_url`, which has no user information.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

USER_VARIABLE = "COVIDSEG_DICOMWEB_USER"
PASSWORD_VARIABLE = "COVIDSEG_DICOMWEB_PASSWORD"
TOKEN_VARIABLE = "COVIDSEG_DICOMWEB_TOKEN"


@dataclass(frozen=True)
class Credentials:
    """HTTP basic auth (``user`` and ``password``) or a bearer ``token``; the secrets are left out of ``repr``."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    origin: str = ""  # where they came from, for messages: "the environment" or the file's path

    @property
    def kind(self) -> str:
        return "bearer token" if self.token else "basic auth"

    def secrets(self) -> tuple[str, ...]:
        """The values no message may contain (tests check outputs against them)."""
        return tuple(s for s in (self.password, self.token) if s)


def checked_url(url: str) -> str:
    """The DICOMweb base URL, refused (ValueError) unless it is ``http(s)://host[:port][/path]`` without
    credentials, query or fragment. The message never repeats what stood before the ``@``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--dicomweb needs an http:// or https:// address, not {display_url(url)!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"the DICOMweb address {display_url(url)} holds credentials, which a command line shows to "
                         f"everyone: remove them and set {USER_VARIABLE} and {PASSWORD_VARIABLE} (or "
                         f"{TOKEN_VARIABLE}) in the environment, or give --dicomweb-credentials FILE")
    if parts.query or parts.fragment:
        raise ValueError(f"the DICOMweb address {display_url(url)} has a query or fragment: give the service's base "
                         "address (e.g. http://host:8042/dicom-web)")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def display_url(url: str) -> str:
    """``url`` without any user information (and without query or fragment), safe to print."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path.rstrip("/"), "", ""))


def credentials_from(environment: Mapping[str, str], file: str | Path | None = None) -> Credentials | None:
    """The credentials to use: from ``file`` when given, else from the environment, else None (no auth).

    Refused (ValueError, naming the variables or the file but never a value): a user without a password or the
    reverse, both a user and a token, a file that cannot be read or is not the JSON described in the module."""
    if file is not None:
        return _from_file(Path(file))
    user, password, token = (environment.get(name) or None for name in (USER_VARIABLE, PASSWORD_VARIABLE,
                                                                         TOKEN_VARIABLE))
    return _checked(user, password, token, "the environment",
                    f"{USER_VARIABLE} and {PASSWORD_VARIABLE}", TOKEN_VARIABLE)


def _from_file(path: Path) -> Credentials:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path}: cannot read the DICOMweb credentials file ({error.strerror or 'unreadable'})"
                         ) from None
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path}: the DICOMweb credentials file is not JSON; write "
                         '{"user": "...", "password": "..."} or {"token": "..."}') from None
    if not isinstance(document, dict) or set(document) - {"user", "password", "token"} or not all(
            isinstance(v, str) for v in document.values()):
        raise ValueError(f'{path}: the DICOMweb credentials file must hold {{"user": "...", "password": "..."}} or '
                         '{"token": "..."} (strings, no other keys)')
    credentials = _checked(document.get("user") or None, document.get("password") or None,
                           document.get("token") or None, str(path), '"user" and "password"', '"token"')
    if credentials is None:
        raise ValueError(f"{path}: the DICOMweb credentials file holds no credentials")
    return credentials


def _checked(user: str | None, password: str | None, token: str | None, origin: str, basic: str, bearer: str
             ) -> Credentials | None:
    if token and (user or password):
        raise ValueError(f"{origin}: give either {basic} (basic auth) or {bearer} (bearer token), not both")
    if bool(user) != bool(password):
        raise ValueError(f"{origin}: basic auth needs both {basic}")
    if not (user or token):
        return None
    return Credentials(user=user, password=password, token=token, origin=origin)


def sent_in_clear(url: str, credentials: Credentials | None) -> bool:
    """Credentials that would cross a network unencrypted: plain http:// to a host other than this machine."""
    parts = urlsplit(url)
    return credentials is not None and parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1",
                                                                                          "::1")


def readable_by_others(path: str | Path) -> bool:
    """A credentials file that group or others may read is worth a warning (as ssh does for keys)."""
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False
