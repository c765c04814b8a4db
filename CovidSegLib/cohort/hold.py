"""A pause in the middle of a case, for tests that must kill, stop or race a process there.

The project's tests assert nothing on timing ("sleep 0.8 s, then it must be segmenting" breaks on a slow or busy
machine). Instead, a process started with :data:`HOLD_VARIABLE` set to a folder, on reaching the middle of a case
(the CT read and checked, the segmentation begun: its first progress call, under the case's claim), writes
``FOLDER/<case>.<pid>.held`` and waits until ``FOLDER/<case>.go`` exists, or :data:`HOLD_LIMIT_S` passes (a test
that died must not leave it waiting for ever). The test waits for the ``.held`` file and then does what it tests.
Unset, as in every real run, the progress callback is the display's own.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

HOLD_VARIABLE = "COVIDSEG_TEST_HOLD"
HOLD_LIMIT_S = 600.0
POLL_S = 0.05
ProgressCallback = Callable[[float], "bool | None"]


def held_progress(case: str, progress: ProgressCallback) -> ProgressCallback:
    """``progress``, or, with :data:`HOLD_VARIABLE` set, ``progress`` that holds the case at its first call."""
    folder = os.environ.get(HOLD_VARIABLE)
    if not folder:
        return progress
    pending = [True]

    def holding(fraction: float) -> "bool | None":
        if pending[0]:
            pending[0] = False
            hold(Path(folder), case)
        return progress(fraction)

    return holding


def hold(folder: Path, case: str) -> None:
    """Say that this process holds ``case`` (``<case>.<pid>.held``) and wait for ``<case>.go``."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{case}.{os.getpid()}.held"
    temporary = marker.with_name(f".{marker.name}.tmp")
    temporary.write_text(str(os.getpid()), encoding="ascii")
    os.replace(temporary, marker)  # appears whole: a test reading it never sees it half-written
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not (folder / f"{case}.go").exists() and time.monotonic() < deadline:
        time.sleep(POLL_S)
