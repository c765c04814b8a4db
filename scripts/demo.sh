#!/usr/bin/env bash
# One command on a fresh machine: set up .venv and run the main job on a real CT from ../shared/data:
# segment it with the bundled model, write the report (figures, pictures, HTML), and score the lungs against
# the expert segmentation. Output goes to ${OUT:-covidseg-demo}/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${COVIDSEG_DATA:-$root/../shared/data}"
out="${OUT:-covidseg-demo}"
"$root/scripts/setup-env.sh"
covidseg="$root/.venv/bin/covidseg"
"$covidseg" segment "$data/volumes/ctchest4.nrrd" -o "$out/ctchest4.seg.nrrd" --report
"$covidseg" evaluate "$out/ctchest4.seg.nrrd" "$data/volumes/ctchest4.seg.nrrd" -o "$out/evaluation"
echo "open $out/ctchest4_report/report.html, or load $out/ctchest4.seg.nrrd in 3D Slicer"
