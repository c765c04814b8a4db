"""DICOM UIDs as the round trip may put them into a file name or a URL: only when they are UIDs.

A UID comes from the user (``--study``, ``--series``) or from the server (the series it lists, the instances it
sends), and both end up in paths of this machine and in the URLs of later requests. A server is not trusted to
choose either: a "UID" such as ``../../x``, ``/etc`` or ``1.2/../../instances`` would pick where a file goes or
which resource is asked for (and deleted). DICOM (PS3.5 9.1) allows digits in dot-separated components and at
most 64 characters; anything else is refused before it is used.
"""

from __future__ import annotations

import re

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
UID_MAX_LENGTH = 64
#: How much of a value that is not a UID a message repeats (a server may send anything, of any length).
SHOWN_CHARACTERS = 80


def is_uid(value: object) -> bool:
    """Whether ``value`` is a string that is a DICOM UID (never ``.``, ``..``, a path or an empty string)."""
    return isinstance(value, str) and len(value) <= UID_MAX_LENGTH and UID_PATTERN.match(value) is not None


def uid_problem(value: object, what: str) -> str | None:
    """None if ``value`` is a UID, else the sentence that says it is not (naming ``what`` it should be)."""
    if is_uid(value):
        return None
    shown = repr(str(value)[:SHOWN_CHARACTERS]) + ("..." if len(str(value)) > SHOWN_CHARACTERS else "")
    return (f"{what} {shown} is not a DICOM UID (digits and dots, at most {UID_MAX_LENGTH} characters): it is "
            "not used in a file name or a request")
