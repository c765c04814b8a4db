#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install CovidSegLib into it.
# Usage: scripts/setup-env.sh [EXTRAS]   e.g. "test". Idempotent: reruns only install what changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x "$root/.venv/bin/python" ]; then
    "$python" -m venv "$root/.venv"
fi
target="$root"
[ -n "$extras" ] && target="$root[$extras]"
# torch and torchvision come as a matched pair from the registry (the CUDA build also runs on CPU).
"$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$target"
