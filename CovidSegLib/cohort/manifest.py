"""What made an output, so that a rerun can tell a finished case from a stale or damaged one.

A case's manifest, ``OUT/.covidseg/manifests/<case>.json``, is written atomically after its label file (and
report): a label file without one is an interrupted case. It records the *expectation* (the software version,
the model card's name and weights sha256, the options that change the output, the input's fingerprint and the
output's file name) and the output itself (its sha256 and the grid it was written on), plus who made it and how
long it took, and the case's figures for the summary.

An output verifies when all of these hold, and is redone otherwise (never trusted silently):

- the output file exists and its sha256 equals the manifest's (not truncated, not edited, not replaced);
- the expectation equals this run's: same input bytes, same model weights, same options, same version;
- the output reads back as a label map on the grid recorded for it (the input's grid).

Options that do not change the labels are left out: the device and the batch size (a case made on a GPU
counts as done when the cohort is resumed on a CPU; the manifest says which device and precision made it).
The software version is in: outputs of one cohort should come from one version. A DICOM SEG output is checked
by its sha256 only (it does not read back as a label map).

Outputs made beside the label file from it (*extras*: the DICOM SR of ``--sr``) are recorded by name, size and
sha256 under ``extras``. They are not part of what verifies a case: a verified case whose SR is missing, changed,
or not recorded (made before, or by a run without ``--sr``) keeps its segmentation, and a run with ``--sr`` writes
the SR again from it (:mod:`.extras`)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from .. import __version__
from ..errors import InputError, OutputError
from ..io.reading import read_segmentation
from ..io.volume import Geometry
from ..io.writing import LABEL_SUFFIXES, write_text
from .fingerprint import file_sha256, input_fingerprint

MANIFEST_FORMAT = "covidseg-case-manifest/1"
#: SegmentOptions fields that do not change the labels written.
OPTIONS_NOT_IN_OUTPUT = ("device", "batch_size")
STATE_FOLDER = ".covidseg"


def state_folder(out: Path) -> Path:
    return out / STATE_FOLDER


def manifest_path(out: Path, case: str) -> Path:
    return state_folder(out) / "manifests" / f"{case}.json"


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists, NaN becomes null), so expectations compare after a
    round trip through a file."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def expectation_for(ct: Path, output: Path, card: Any, options: Any) -> dict[str, Any]:
    """What an output of ``ct`` made now would be made from (hashes the input; InputError if unreadable)."""
    chosen = {k: v for k, v in asdict(options).items() if k not in OPTIONS_NOT_IN_OUTPUT}
    return _plain({
        "software": f"CovidSeg {__version__}",
        "model": {"name": card.name, "weights_sha256": card.weights_sha256},
        "options": chosen,
        "input": input_fingerprint(ct),
        "output_name": output.name,
    })


def file_record(path: Path) -> dict[str, Any]:
    """What identifies a written file: its name, size and sha256."""
    return {"name": path.name, "size": path.stat().st_size, "sha256": file_sha256(path)}


def write_manifest(path: Path, expectation: Mapping[str, Any], output: Path, geometry: Geometry,
                   made: Mapping[str, Any], figures: Mapping[str, Any], protected: list[Path],
                   extras: Mapping[str, Path] | None = None) -> Path:
    """Record ``output`` (already in place) as made from ``expectation``; ``made``: who, when, how long, on
    which device; ``figures``: the case's summary cells; ``extras``: files made beside it, by key (``"sr"``)."""
    document = {
        "format": MANIFEST_FORMAT,
        "expectation": expectation,
        "output": {**file_record(output), "geometry": asdict(geometry)},
        "made": dict(made),
        "figures": dict(figures),
        "extras": {key: file_record(extra) for key, extra in (extras or {}).items()},
    }
    return _write(path, document, protected)


def _write(path: Path, document: Mapping[str, Any], protected: list[Path]) -> Path:
    return write_text(path, json.dumps(_plain(document), indent=1, allow_nan=False) + "\n", protected)


def record_extras(path: Path, extras: Mapping[str, Path], protected: list[Path]) -> Path:
    """Add (or replace) the records of ``extras`` in the manifest ``path`` of a verified case, atomically; an
    OutputError if it cannot be read (it verified a moment ago: another process must have replaced it)."""
    document = read_manifest(path)
    if document is None:
        raise OutputError(f"{path}: the case's manifest cannot be read to record its {', '.join(extras)}")
    document["extras"] = {**document.get("extras", {}), **{key: file_record(e) for key, e in extras.items()}}
    return _write(path, document, protected)


def extra_problem(manifest: Mapping[str, Any] | None, key: str, path: Path) -> str | None:
    """None if ``path`` is the extra ``key`` the manifest records (same name and sha256), else what is wrong."""
    if not path.is_file():
        return "missing"
    recorded = (manifest or {}).get("extras", {}).get(key)
    if not isinstance(recorded, Mapping) or recorded.get("name") != path.name:
        return "not recorded in the manifest (made by another run, or before manifests recorded it)"
    if recorded.get("sha256") != file_sha256(path):
        return "changed after it was written (its sha256 is not the manifest's)"
    return None


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) and document.get("format") == MANIFEST_FORMAT else None


def verification_problem(path: Path, output: Path, expectation: Mapping[str, Any]) -> str | None:
    """None if ``output`` verifies against its manifest ``path`` and this run's ``expectation`` (see the module
    docstring), else what is wrong, in words for the summary's note."""
    if not output.is_file():
        return "no output yet" if not path.exists() else "its output is missing"
    manifest = read_manifest(path)
    if manifest is None:
        return ("the output has no manifest (an interrupted run, or one before manifests)" if not path.exists()
                else "its manifest is unreadable")
    made_from = manifest.get("expectation", {})
    for key, what in (("input", "the input changed"), ("model", "another model made it"),
                      ("options", "it was made with other options"), ("software", "another CovidSeg version made it"),
                      ("output_name", "the output format changed")):
        if made_from.get(key) != expectation.get(key):
            return f"{what} ({_difference(made_from.get(key), expectation.get(key))})"
    recorded = manifest.get("output", {})
    if file_sha256(output) != recorded.get("sha256"):
        return "the output file changed after it was written (its sha256 is not the manifest's)"
    if output.name.lower().endswith(LABEL_SUFFIXES):
        try:
            grid = Geometry(**{k: tuple(v) for k, v in recorded["geometry"].items()})
            written = read_segmentation(output).geometry
        except InputError as error:
            return f"the output does not read back ({error.problem})"
        except (KeyError, TypeError, ValueError):
            return "its manifest records no grid"
        if not written.matches(grid):
            return f"the output's grid {written.size} is not the input's {grid.size}"
    return None


def _difference(before: Any, now: Any) -> str:
    if isinstance(before, Mapping) and isinstance(now, Mapping):
        keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        return ", ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" if not isinstance(now.get(k), (list, dict))
                         else k for k in keys)
    return f"{before!r} then, {now!r} now" if not isinstance(now, (list, dict)) else "differs"
