"""The library's rooms and the one-way imports between them (README "The code's rooms", docs/architecture.md).

Each room may import the rooms below it and never one above, so that reading never depends on the engine, the
engine never on measurement, and nothing but the command line depends on everything. ``import CovidSegLib`` and
every room's modules (training aside, which is torch by nature) load without torch, so ``covidseg --help``,
``covidseg info`` and the Slicer module's start stay cheap."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import CovidSegLib

from conftest import PROJECT_ROOT

LIBRARY = PROJECT_ROOT / "CovidSegLib"
#: Rooms from the bottom up. A module's room is its subpackage, or its own name at the top of the package.
ROOMS = (
    {"__init__", "errors", "labels"},  # the foundation every room may use
    {"io"},
    {"checks"},
    {"engine"},
    {"measure"},
    {"pacs"},  # the DICOMweb round trip: runs the engine's pipeline and writes measure's SR, so above both
    {"slices"},
    {"training"},
    {"cohort"},  # a folder of cases across processes and machines: runs the pipeline and measures, for the CLI
    {"cli", "__main__"},
)


def room_of(module: str) -> int:
    """Rank of a dotted module under CovidSegLib (``CovidSegLib.engine.model`` -> engine's rank)."""
    parts = module.split(".")
    assert parts[0] == "CovidSegLib", module
    top = parts[1] if len(parts) > 1 else "__init__"
    for rank, names in enumerate(ROOMS):
        if top in names:
            return rank
    raise AssertionError(f"{module} lies in no room: add its folder to ROOMS, the README's map and "
                         "docs/architecture.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_imports(path: Path) -> set[str]:
    """Every CovidSegLib module ``path`` imports, at the top or inside a function, resolved to its dotted name."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "CovidSegLib")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "CovidSegLib":
                continue
            found.add(target)
            # "from . import x" and "from .engine import model" name modules, not attributes
            found.update(f"{target}.{a.name}" for a in node.names
                         if (LIBRARY.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").is_file())
    return found


def test_every_module_lies_in_a_room_and_imports_only_rooms_below() -> None:
    files = sorted(LIBRARY.rglob("*.py"))
    assert len(files) > 40
    upward = []
    for path in files:
        source = module_name(path)
        for target in library_imports(path):
            if room_of(target) > room_of(source):
                upward.append(f"{source} imports {target}")
    assert not upward, "a lower room imports a higher one:\n" + "\n".join(sorted(upward))


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule above would pass vacuously if the resolver found nothing: it must see a real upward import."""
    imports = library_imports(LIBRARY / "engine" / "pipeline.py")
    assert "CovidSegLib.engine.inference" in imports and "CovidSegLib.io.cases" in imports
    assert room_of("CovidSegLib.cli") > room_of("CovidSegLib.engine.pipeline") > room_of("CovidSegLib.io.cases")


def test_importing_the_package_and_every_room_does_not_import_torch() -> None:
    modules = ["CovidSegLib"] + [
        m.name for m in pkgutil.walk_packages(CovidSegLib.__path__, "CovidSegLib.")
        if not m.name.startswith("CovidSegLib.training") and m.name != "CovidSegLib.__main__"
    ]
    assert "CovidSegLib.engine.inference" in modules and "CovidSegLib.cli" in modules
    code = (
        "import sys, importlib\n"
        "import CovidSegLib\n"
        "first = [m for m in ('torch', 'torchvision', 'segmentation_models_pytorch') if m in sys.modules]\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "heavy = [m for m in ('torch', 'torchvision', 'segmentation_models_pytorch', 'slicer', 'vtk')\n"
        "         if m in sys.modules]\n"
        "print(','.join(first) + '|' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", check=True)
    assert result.stdout.strip() == "|", f"imported at package import: {result.stdout.strip()}"
