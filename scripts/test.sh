#!/usr/bin/env bash
# One command on a fresh machine: set up .venv with the test dependencies and run the whole test suite.
# Tests read real CT from ../shared/data (beside the project root). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup-env.sh" test
# The report and viewer tests use headless Chromium, the view tests render with VTK through EGL (Mesa's software
# OpenGL), the DICOMweb round-trip tests a real Orthanc with its DICOMweb plugin and openssl (the HTTPS test's
# certificate). Where we can (root with apt-get), each group is installed on its own, so that one package that
# fails does not take the others with it, and apt-get's errors are shown. CI (.ci/run) sets
# COVIDSEG_REQUIRE_ORTHANC=1, under which the Orthanc tests fail rather than skip when Orthanc is missing.
have_chromium() { command -v chromium >/dev/null 2>&1; }
have_egl() { ldconfig -p 2>/dev/null | grep -q libEGL.so.1; }
have_orthanc() { { command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } \
    && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; }
have_openssl() { command -v openssl >/dev/null 2>&1; }
install_group() {  # install_group WHAT PACKAGE...: apt-get's errors reach the log; a failure is a note, not the end
    local what="$1"
    shift
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; then
        echo "note: could not install $what ($*): the tests that need it will skip (or fail where required)" >&2
    fi
}
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
    && ! { have_chromium && have_egl && have_orthanc && have_openssl; }; then
    apt-get update -qq >/dev/null || echo "note: apt-get update failed; trying the installs anyway" >&2
    have_chromium || install_group "headless Chromium (HTML report and viewer tests)" chromium
    have_egl || install_group "EGL (view tests)" libegl1 libgl1-mesa-dri
    have_orthanc || install_group "Orthanc with DICOMweb (round-trip tests)" orthanc orthanc-dicomweb
    have_openssl || install_group "openssl (the HTTPS round-trip test)" openssl
fi
cd "$root"
exec .venv/bin/python -m pytest "$@"
