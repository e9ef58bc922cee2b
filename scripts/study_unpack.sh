#!/usr/bin/env bash
# Unpack what `scripts/study_device.sh all` left under the device's $OUT into this checkout, and
# build every committed study result from it (CPU, no model): results/study.json (+ per-window
# values), results/study-curves.json, results/study-emergence.json, results/probes/<name>/, the six
# bundled checkpoints in checkpoints/ (the older ones, their probe results and training curves
# removed) and results/nll.json of them. Then `git add -A checkpoints results` and look at the diff.
#
#   bash scripts/study_unpack.sh /work/.device/N      # the folder the device's files came back to
set -euo pipefail
cd "$(dirname "$0")/.."
from="${1:?usage: study_unpack.sh FOLDER (the files a device call returned)}"
PYTHON="${PYTHON:-.venv/bin/python}"
[ -f "$from/runs.tgz" ] || { echo "no runs.tgz in $from: nothing to unpack"; exit 1; }
tar xzf "$from/runs.tgz"
[ -f "$from/probes.tgz" ] && tar xzf "$from/probes.tgz"
shopt -s nullglob
bundles=("$from"/*.tar)
if [ "${#bundles[@]}" -gt 0 ]; then
  # new bundled models: the older checkpoints, their probe results and training curves go
  rm -rf checkpoints results/probes results/training && mkdir -p checkpoints
  for t in "${bundles[@]}"; do tar xf "$t" -C checkpoints; done
  cp runs/nll.json runs/nll.windows.safetensors results/
fi
"$PYTHON" scripts/study.py report --runs runs/study --out results/study.json ${STUDY_OPTIONS:-}
"$PYTHON" scripts/study_results.py --runs runs/study --sweeps 'runs/sweep-*'
"$PYTHON" scripts/study_tables.py results/study.json
ls checkpoints
