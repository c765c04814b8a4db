"""What a 3D Slicer extension ships besides its code: the catalog entry, the CMake metadata that points at files
this repository holds, the registered self-test, the licences and a version in one place."""

from __future__ import annotations

import json
import re
import tomllib

import CovidSegLib

from conftest import PROJECT_ROOT

RAW_PREFIX = "https://raw.githubusercontent.com/covidseg/SlicerCovidSeg/main/"
#: slicer-extension-catalog-entry-schema v1.0.1: additionalProperties false, these three required
CATALOG_KEYS = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type",
                "scm_url", "tier", "enabled"}
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}


def cmake_settings(path) -> dict[str, str]:
    return dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', path.read_text(encoding="utf-8")))


def test_catalog_entry_matches_the_cmake_metadata() -> None:
    entry = json.loads((PROJECT_ROOT / "CovidSeg.json").read_text(encoding="utf-8"))
    settings = cmake_settings(PROJECT_ROOT / "CMakeLists.txt")
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_KEYS
    assert "slicer-extension-catalog-entry-schema" in entry["$schema"]
    assert entry["category"] == settings["EXTENSION_CATEGORY"]
    assert entry["scm_url"].removesuffix(".git") == settings["EXTENSION_HOMEPAGE"]
    assert entry["build_dependencies"] == settings["EXTENSION_DEPENDS"].split()


def test_cmake_icon_and_screenshot_are_files_of_this_repository() -> None:
    settings = cmake_settings(PROJECT_ROOT / "CMakeLists.txt")
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        urls = settings[key].split()
        assert urls, f"{key} is empty"
        for url in urls:
            assert url.startswith(RAW_PREFIX), url
            assert (PROJECT_ROOT / url.removeprefix(RAW_PREFIX)).is_file(), f"{key}: {url} names no file here"


def test_module_self_test_is_registered_as_slicer_extensions_do() -> None:
    text = (PROJECT_ROOT / "CovidSeg" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)
    assert "class CovidSegTest(ScriptedLoadableModuleTest)" in (PROJECT_ROOT / "CovidSeg" / "CovidSeg.py").read_text()


def test_licences_and_a_single_version() -> None:
    licence = (PROJECT_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "CC BY-NC-SA 4.0" in (PROJECT_ROOT / "LICENSE-weights.md").read_text(encoding="utf-8")
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" in project["dynamic"] and "version" not in project  # CovidSegLib.__version__ is the one
    assert re.fullmatch(r"\d+\.\d+\.\d+", CovidSegLib.__version__)
