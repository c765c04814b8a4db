#!/usr/bin/env bash
# One command on a fresh machine: set up .venv with the test dependencies and run the whole test suite.
# Tests read real CT from ../shared/data (beside the project root). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup-env.sh" test
cd "$root"
exec .venv/bin/python -m pytest "$@"
