"""Package hygiene: Slicer-free library, the console script and the label scheme (rooms: test_architecture)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from CovidSegLib.labels import (LABELS, OUTPUT_LABELS, SPLIT_OUTPUT_LABELS, label_by_name, labels_of,
                               present_values, slicer_terminology_string)

from conftest import PROJECT_ROOT, run_cli

LIBRARY = PROJECT_ROOT / "CovidSegLib"
FORBIDDEN = {"slicer", "qt", "vtk", "ctk", "slicer_core", "MRMLCorePython"}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_library_imports_no_slicer_qt_or_vtk() -> None:
    files = sorted(LIBRARY.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        assert not (_imported_modules(path) & FORBIDDEN), f"{path.name} imports {_imported_modules(path) & FORBIDDEN}"


def test_console_script_help_and_usage_errors() -> None:
    assert run_cli("--help").returncode == 0
    evaluate_help = run_cli("evaluate", "--help")
    assert evaluate_help.returncode == 0 and "--ref-map" in evaluate_help.stdout
    assert run_cli("no-such-command").returncode == 2


def test_version_names_the_software_and_the_bundled_model() -> None:
    import json

    import CovidSegLib
    from CovidSegLib.engine.model import BUNDLED_CARD

    result = run_cli("--version")
    card = json.loads(BUNDLED_CARD.read_text(encoding="utf-8"))
    assert result.returncode == 0
    assert result.stdout.strip() == (f"covidseg {CovidSegLib.__version__}, bundled model {card['name']} "
                                     f"(weights sha256 {card['weights_sha256'][:12]})")


def test_label_scheme_is_consistent() -> None:
    assert [label.value for label in OUTPUT_LABELS] == [1, 2, 3]
    assert [label.value for label in SPLIT_OUTPUT_LABELS] == [1, 2, 4, 5]
    assert len({label.value for label in LABELS}) == len({label.key for label in LABELS}) == len(LABELS)
    assert label_by_name("Left lung").value == 1 and label_by_name("right-lung").value == 2
    assert label_by_name("3").key == "infection"
    with pytest.raises(ValueError, match="unknown label 'spleen'"):
        label_by_name("spleen")
    assert slicer_terminology_string(OUTPUT_LABELS[0]).split("~")[1:4] == [
        "SCT^123037004^Anatomical Structure", "SCT^39607008^Lung", "SCT^7771000^Left"]


def test_a_label_map_gets_the_segments_it_holds() -> None:
    """Writers and the Slicer Logic name segments from the values present: a split infection gets its two
    classes, an empty one still gets its Infection segment, a value outside the scheme is refused."""
    labels = np.zeros((40, 8, 8), np.uint8)  # more slices than one counting block
    labels[0, 0, 0], labels[39, 1, 1] = 1, 5
    assert present_values(labels) == {0, 1, 5}
    assert present_values(np.ones((3, 4, 4), np.uint8)) == {1}  # no background voxel: 0 is not present
    assert [info.value for info in labels_of(labels)] == [1, 2, 5]
    assert [info.value for info in labels_of(np.zeros((2, 2), np.int32))] == [1, 2, 3]
    labels[20, 2, 2] = 9
    with pytest.raises(ValueError, match=r"values \[9\] outside the label scheme"):
        labels_of(labels)
