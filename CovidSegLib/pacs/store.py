"""Storing the verified DICOM SEG and SR in their study (STOW-RS), all or nothing as far as a server allows.

They are sent one at a time, the SEG first: the SR references the SEG, so the SR is never sent unless the SEG is
there. After each store the server is asked (QIDO-RS, a few times over a second or two) whether it lists the
instance: Orthanc, for one, answers a STOW-RS of an instance its filters refuse with success and drops it.

When something goes wrong after the server accepted an instance (a later store refused, an instance not listed,
a listing query that fails), every instance it accepted is removed again where the server allows it, the one not
(yet) listed included: it may appear later, and an SR must not stay behind pointing at a SEG that was removed.
DICOMweb has no standard delete (Orthanc's plugin answers 405), so the error says what is left, or may be left,
and why it could not be removed. A query that fails is told apart from one that does not list the instance: the
first says nothing either way about what the server holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OutputError
from .dicomweb import LISTING_ATTEMPTS, DicomWebServer

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from .roundtrip import DicomWebRequest


@dataclass
class Accepted:
    """An instance the server accepted (STOW-RS answered without a failure), listed by QIDO-RS or not yet."""

    what: str  # "DICOM SEG <SOP Instance UID>"
    dataset: "Dataset"
    listed: bool = False


def store_results(request: "DicomWebRequest", instances: list[tuple[str, Path]]) -> list[str]:
    """Store the verified instances (kind, file) in order, each confirmed listed before the next is sent; on any
    failure remove what the server accepted, where it allows it, and say so (see the module docstring)."""
    import pydicom

    server = request.server
    datasets = [(kind, pydicom.dcmread(path)) for kind, path in instances]
    for kind, dataset in datasets:  # before anything is sent
        if str(dataset.StudyInstanceUID) != request.study_uid:
            raise OutputError(f"{server.display}: the {kind} belongs to study {dataset.StudyInstanceUID}, not to "
                              f"study {request.study_uid} asked for (the server sent instances of another study): "
                              "nothing was stored")
    accepted: list[Accepted] = []
    for kind, dataset in datasets:
        what = f"{kind} {dataset.SOPInstanceUID}"
        try:
            server.store(dataset, what)
        except OutputError as error:
            if not accepted:
                raise
            raise OutputError(f"{error}; {undo(server, accepted)}") from None
        entry = Accepted(what, dataset)
        accepted.append(entry)  # from here on it may be on the server, listed yet or not
        try:
            entry.listed = server.wait_until_listed(dataset, what)
        except OutputError as error:
            raise OutputError(f"{error}, after it accepted the {what}; {undo(server, accepted)}") from None
        if not entry.listed:
            raise OutputError(f"{server.display}: storing the {what}: the server accepted it but does not list it in "
                              f"the study (asked {LISTING_ATTEMPTS} times); {undo(server, accepted)}")
    return [entry.what for entry in accepted]


def undo(server: DicomWebServer, accepted: list[Accepted]) -> str:
    """Remove what the server accepted before a failure; the sentence that says how that went."""
    kept, unsure = [], []
    for entry in accepted:
        problem = server.delete(entry.dataset)
        if problem is not None:
            described = f"{entry.what} (series {entry.dataset.SeriesInstanceUID}; {problem})"
            (kept if entry.listed else unsure).append(described)
    if not kept and not unsure:
        return (f"{' and '.join(entry.what for entry in accepted)}, accepted before, "
                f"{'was' if len(accepted) == 1 else 'were'} removed again: nothing is left on the server")
    parts = []
    if kept:
        parts.append(f"the server keeps {', '.join(kept)}: it is complete and correct on its own; delete it there if "
                     "the study should not hold it without its report")
    if unsure:
        parts.append(f"the server accepted {', '.join(unsure)} without listing it, and it could not be removed: it "
                     "may still appear in the study; delete it there if it does")
    return "; ".join(parts)
