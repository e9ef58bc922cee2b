#!/usr/bin/env bash
# Unpack what `scripts/study_device.sh all` left under the device's $OUT into this checkout, and
# build every committed study result from it (CPU, no model): results/study.json (+ per-window
# values), results/study-curves.json, results/study-emergence.json and the seed-0 probe results.
# The bundled checkpoints (checkpoints/, results/probes/, results/nll.json) are replaced only when
# the bundle tars of all six (variant, length) pairs are at hand, from FOLDER or the earlier
# folders named after it (an arm run in an earlier call); until then the seed-0 probe results go
# to results/study-probes/ and checkpoints/ stays as it is (with no bundle at all, a call that
# trained more seeds, they stay in results/probes/). Then `git add -A checkpoints results`.
#
#   bash scripts/study_unpack.sh /work/.device/N [EARLIER_FOLDER ...]
set -euo pipefail
cd "$(dirname "$0")/.."
from="${1:?usage: study_unpack.sh FOLDER [EARLIER_FOLDER ...] (the files device calls returned)}"; shift
PYTHON="${PYTHON:-.venv/bin/python}"
[ -f "$from/runs.tgz" ] || { echo "no runs.tgz in $from: nothing to unpack"; exit 1; }
tar xzf "$from/runs.tgz"
[ -f "$from/probes.tgz" ] && tar xzf "$from/probes.tgz"
shopt -s nullglob
declare -A bundle=()  # name -> tar; the newest folder wins
for dir in "$@" "$from"; do for t in "$dir"/*.tar; do bundle[$(basename "$t" .tar)]="$t"; done; done
six=(two_stream-128 decoupled_rope-128 sigma_gpt-128 two_stream-1024 decoupled_rope-1024 sigma_gpt-1024)
missing=(); for n in "${six[@]}"; do [ -n "${bundle[$n]:-}" ] || missing+=("$n"); done
if [ "${#missing[@]}" -eq 0 ]; then
  # new bundled models: the older checkpoints, their probe results and training curves go
  rm -rf checkpoints results/probes results/training results/study-probes && mkdir -p checkpoints
  for n in "${six[@]}"; do tar xf "${bundle[$n]}" -C checkpoints; done
  probes_dir=probes
  if [ -f runs/nll.json ] && "$PYTHON" -c "import json, sys; sys.exit(set(json.load(open('runs/nll.json'))) != set(sys.argv[1:]))" "${six[@]}"; then
    cp runs/nll.json runs/nll.windows.safetensors results/
  else
    echo "WARNING: runs/nll.json does not cover all six bundled models: results/nll.json is stale until"
    echo "  workbench eval --checkpoint checkpoints/* --orders 4 --batch-size 128 --out results/nll.json  runs (on a GPU)"
  fi
elif [ "${#bundle[@]}" -eq 0 ]; then  # a call for more seeds: checkpoints/ and their probe results stay
  echo "no bundles in this call: checkpoints/ unchanged"
  probes_dir=probes
else
  echo "bundles missing for ${missing[*]}: checkpoints/ unchanged; seed-0 probe results go to results/study-probes/"
  probes_dir=study-probes
fi
"$PYTHON" scripts/study.py report --runs runs/study --out results/study.json ${STUDY_OPTIONS:-}
"$PYTHON" scripts/study_results.py --runs runs/study --sweeps 'runs/sweep-*' --probes-dir "$probes_dir"
"$PYTHON" scripts/study_tables.py results/study.json
ls checkpoints
