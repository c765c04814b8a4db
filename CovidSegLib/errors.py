"""Exceptions that carry a user-facing message.

Every problem with a user's file is raised as a subclass of :class:`CovidSegError` whose message names the file
and says what is wrong, so the CLI and the Slicer module can show it as is (no traceback) and scripts can rely
on a distinct exit code.
"""

from __future__ import annotations

from pathlib import Path


class CovidSegError(Exception):
    """Base class for errors the user can act on."""


class InputError(CovidSegError):
    """An input file is unreadable, not a CT, 2D, empty, not in HU, or has unexpected label values."""

    def __init__(self, source: str | Path | None, problem: str) -> None:
        self.source = str(source) if source is not None else "<in-memory volume>"
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class OutputError(CovidSegError):
    """An output path is unusable (it would overwrite an input or a reference, or has an unknown format)."""


class ModelError(CovidSegError):
    """A model card or weights file is missing, corrupt, or does not match."""


class Cancelled(CovidSegError):
    """The user cancelled a running segmentation."""
