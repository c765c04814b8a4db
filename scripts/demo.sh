#!/usr/bin/env bash
# One command on a fresh machine: set up .venv and run the main job on the sample data in ../shared/data.
# Until the bundled model lands, the main job shown is reading and checking a real CT and scoring a
# reference segmentation with `covidseg evaluate`. Output goes to ${OUT:-covidseg-demo}/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${COVIDSEG_DATA:-$root/../shared/data}"
out="${OUT:-covidseg-demo}"
"$root/scripts/setup-env.sh"
covidseg="$root/.venv/bin/covidseg"
"$covidseg" info "$data/volumes/ctchest4.nrrd"
"$covidseg" evaluate "$data/volumes/ctchest4.seg.nrrd" "$data/volumes/ctchest4.seg.nrrd" -o "$out"
