#!/usr/bin/env bash
# One command on a fresh machine: set up .venv with the test dependencies and run the whole test suite.
# Tests read real CT from ../shared/data (beside the project root). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup-env.sh" test
# The report and viewer tests use headless Chromium, the view tests render with VTK through EGL (Mesa's software
# OpenGL), the DICOMweb round-trip tests a real Orthanc with its DICOMweb plugin; install them where we can (root
# with apt-get).
missing() { ! command -v chromium >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q libEGL.so.1 \
    || ! command -v Orthanc >/dev/null 2>&1 || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; }
if missing && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium libegl1 libgl1-mesa-dri \
        orthanc orthanc-dicomweb; } >/dev/null 2>&1 \
        || echo "note: could not install chromium/EGL/Orthanc; the HTML, view, viewer and DICOMweb tests will skip"
fi
cd "$root"
exec .venv/bin/python -m pytest "$@"
