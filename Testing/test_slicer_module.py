"""The Slicer module's files: they compile, pass lint, load without torch, and the extension is complete."""

from __future__ import annotations

import ast
import py_compile
import subprocess
import sys
import xml.dom.minidom

from conftest import PROJECT_ROOT

MODULE = PROJECT_ROOT / "CovidSeg"
SLICER_BUNDLED = {"slicer", "vtk", "qt", "ctk", "numpy", "SimpleITK", "CovidSegLogic", "SampleData", "PyTorchUtils"}
STDLIB_OK = {"__future__", "logging", "math", "typing", "importlib", "os"}
LIGHT_LIBRARY_MODULES = {"CovidSegLib.labels", "CovidSegLib.io.volume", "CovidSegLib.errors"}


def test_module_files_compile() -> None:
    for path in MODULE.glob("*.py"):
        py_compile.compile(str(path), doraise=True)


def test_lint_passes() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check",
                             str(MODULE), str(PROJECT_ROOT / "CovidSegLib"), str(PROJECT_ROOT / "Testing")],
                            capture_output=True, text=True, encoding="utf-8", cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_module_level_imports_need_nothing_slicer_does_not_bundle() -> None:
    for path in MODULE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # top level only: torch may be imported inside functions
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root in SLICER_BUNDLED | STDLIB_OK or name in LIGHT_LIBRARY_MODULES, f"{path.name}: {name}"


def test_logic_imports_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None; sys.modules['segmentation_models_pytorch'] = None\n"
            f"sys.path.insert(0, {str(MODULE)!r})\nimport CovidSegLogic\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_ui_file_binds_every_parameter() -> None:
    document = xml.dom.minidom.parse(str(MODULE / "Resources" / "UI" / "CovidSeg.ui"))
    bound = {p.getElementsByTagName("string")[0].firstChild.data for p in document.getElementsByTagName("property")
             if p.getAttribute("name") == "SlicerParameterName"}
    declared = set()
    tree = ast.parse((MODULE / "CovidSeg.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "CovidSegParameterNode":
            declared = {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    assert declared and bound == declared
    names = {w.getAttribute("name") for w in document.getElementsByTagName("widget")}
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
            used.add(node.attr)
    assert used <= names, f"widgets used in CovidSeg.py but missing from the .ui: {used - names}"


def test_extension_cmake_adds_both_modules() -> None:
    top = (PROJECT_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top and "add_subdirectory(CovidSegLib)" in top
    assert "add_subdirectory(CovidSeg)" in top
    module = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in module and "slicer_add_python_unittest" in module
    assert (MODULE / "Resources" / "Icons" / "CovidSeg.png").is_file()
