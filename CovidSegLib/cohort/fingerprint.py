"""What an input case is, byte for byte: the names, sizes and sha256 of the files it is read from.

An output is trusted as done only for the input it was made from. Modification times are not used (copying a
cohort to another file system changes them, and a file can change within one second); the contents are hashed,
at about the speed the disk reads them. The files are: the CT file itself, plus the data file a detached header
(``.mhd``, ``.nhdr``) points at; for a DICOM folder, every file directly in it except hidden ones (what the
series reader may read)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..errors import InputError

HASH_BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def detached_data_files(header: Path) -> list[Path]:
    """The data file(s) an ``.mhd`` (``ElementDataFile = x.raw``) or ``.nhdr`` (``data file: x.raw``) header
    names, relative to the header; none for other files, for ``LOCAL`` data or a file list it cannot resolve."""
    name = header.name.lower()
    if name.endswith(".mhd"):
        pattern = re.compile(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", re.MULTILINE)
    elif name.endswith(".nhdr"):
        pattern = re.compile(r"^\s*data ?file\s*:\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)
    else:
        return []
    try:
        text = header.read_bytes()[:65536].decode("latin-1")
    except OSError:
        return []
    found = []
    for match in pattern.finditer(text):
        value = match.group(1)
        if value.upper() == "LOCAL" or value.upper().startswith("LIST") or "%" in value:
            continue
        candidate = header.parent / value
        if candidate.is_file():
            found.append(candidate)
    return found


def input_files(case: Path) -> list[Path]:
    """The files a case is read from, sorted (see the module docstring)."""
    if case.is_dir():
        return sorted(p for p in case.iterdir() if p.is_file() and not p.name.startswith("."))
    return [case] + detached_data_files(case)


def input_fingerprint(case: Path) -> dict[str, object]:
    """``{"files": [{"name", "size", "sha256"}, ...]}``, names relative to the case's folder (a DICOM folder's
    files) or to the folder holding the case file, so moving the whole cohort does not invalidate it."""
    base = case if case.is_dir() else case.parent
    files = []
    try:
        for path in input_files(case):
            files.append({"name": path.relative_to(base).as_posix(), "size": path.stat().st_size,
                          "sha256": file_sha256(path)})
    except OSError as error:
        raise InputError(case, f"cannot be read ({error.strerror or error})") from None
    return {"files": files}
