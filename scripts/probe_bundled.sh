#!/usr/bin/env bash
# Probe every bundled checkpoint and write results/probes/<checkpoint>/ (probes.parquet + metadata.json),
# the small committed results the app reads. CPU is enough: a few minutes per checkpoint on 2 cores.
#
#   bash scripts/probe_bundled.sh                 # all bundled checkpoints
#   bash scripts/probe_bundled.sh two_stream-128  # some of them
#   SEQ_128=128 SEQ_1024=32 DEVICE=cuda bash scripts/probe_bundled.sh   # more sequences, on a GPU
#
# Each run resumes if killed; a finished one is left as it is (delete its directory to redo it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
[ -x /work/venv/bin/python ] && [ "$PYTHON" = python ] && PYTHON=/work/venv/bin/python
DEVICE="${DEVICE:-cpu}"
SEQ_128="${SEQ_128:-64}"     # sequences probed at length 128 (attention statistics)
SEQ_1024="${SEQ_1024:-8}"    # ... at length 1024 (each costs 64x the attention entries of a 128 one)
CAUSAL_128="${CAUSAL_128:-32}"   # sequences for the ablation / knockout probes
CAUSAL_1024="${CAUSAL_1024:-8}"
SEED="${SEED:-0}"
THREADS="${THREADS:+--threads $THREADS}"  # e.g. THREADS=1 on a busy machine

if [ "$#" -gt 0 ]; then
  names=("$@")
else
  mapfile -t names < <("$PYTHON" -c "from workbench import list_checkpoints; print('\n'.join(list_checkpoints()))")
fi
[ "${#names[@]}" -gt 0 ] || { echo "no bundled checkpoints in checkpoints/"; exit 1; }

for name in "${names[@]}"; do
  n_ctx=$("$PYTHON" -c "from workbench.checkpoint import read_info; print(read_info('$name').config.n_ctx)")
  if [ "$n_ctx" -gt 256 ]; then seqs=$SEQ_1024; causal=$CAUSAL_1024; else seqs=$SEQ_128; causal=$CAUSAL_128; fi
  echo "== $name (n_ctx $n_ctx): $seqs sequences, $causal for causal checks, device $DEVICE"
  "$PYTHON" -m workbench.cli probe --checkpoint "$name" --out "results/probes/$name" \
    --max-sequences "$seqs" --causal-sequences "$causal" --batch-size 8 --seed "$SEED" --device "$DEVICE" \
    --r 4 --w 4 --no-progress $THREADS
done
