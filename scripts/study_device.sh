#!/usr/bin/env bash
# The study (docs/study.md) on a lent GPU machine, in stages that each fit one 10-minute call and
# leave what must come back under $OUT (at most 8 files of 16 MB). Run from the project root with
# the corpus at runs/study-corpus.jsonl (scripts/build_study_corpus.py).
#
#   bash scripts/study_device.sh all SIZE TOKENS SECONDS [SWEEP_SIZE ...]
#
# Trains 3 variants x {128, 1024} x 3 seeds (at most SECONDS), beside them decoupled_rope-128
# seed 0 at each SWEEP_SIZE (the size sweep, runs/sweep-SIZE), then evaluates the grid, bundles
# its seed-0 models and probes them, packing each result as soon as it exists. LENGTHS (default
# "1024 128") and PARALLEL (default 9) pick the lengths and processes at once, VARIANTS and SEEDS
# (default "0 1 2") the rest of the grid; seed 0 alone is bundled and probed, so a call for more
# seeds (SEEDS="3 4 5 6 7 8") trains and evaluates only. DEADLINE (s, default 575) bounds the
# whole stage.
#
#   bash scripts/study_device.sh bundled [NAME ...]
#
# Evaluates the tree's checkpoints/ (-> results/nll.json) and probes checkpoints/NAME like the
# study's seed-0 probes (-> results/probes/NAME), all in $OUT/bundled.tgz; DEADLINE default 300.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR="$PWD/.inductor-cache"
# STUDY_OPTIONS: more options for every study.py call (a small local rehearsal: --tokens-per-step 512 ...)
study() { python3 scripts/study.py "$@" --corpus runs/study-corpus.jsonl ${STUDY_OPTIONS:-}; }

# MPS lets several small training processes share the GPU at once instead of by time slices.
start_mps() {
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d \
     && timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    echo "MPS on"
    trap 'echo quit | nvidia-cuda-mps-control' EXIT  # leave the machine as it was found
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null || true
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS unavailable: training processes share the GPU by time slices"
  fi
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi"
start_mps
stage="$1"; shift
case "$stage" in
  all)  # training bounded in memory by micro-batches; every result packed as soon as it exists
    size="$1" tokens="$2" seconds="$3" deadline=$((SECONDS + ${DEADLINE:-575})); shift 3
    left() { echo $((deadline - SECONDS)); }
    pack() {  # what the study needs back, small files only (curves, settings, logs, evaluations)
      tar czf "$OUT/runs.tgz" runs/study/*-s*/{metrics.jsonl,settings.json} runs/study/*.log \
        $(ls -d runs/study/*/eval runs/study.json runs/study.windows.safetensors runs/nll.json runs/nll.windows.safetensors \
          runs/sweep-*/*/metrics.jsonl runs/sweep-*/*/settings.json runs/sweep-*/*.log 2>/dev/null)
    }
    for sweep in "$@"; do
      study train --runs "runs/sweep-$sweep" --size "$sweep" --variants decoupled_rope --lengths 128 --seeds 0 \
        --train-tokens "$tokens" --seconds "$seconds" --parallel 1 > "runs/sweep-$sweep-128.out" 2>&1 &
    done
    grid=(--runs runs/study --size "$size" --lengths ${LENGTHS:-1024 128} --train-tokens "$tokens"  # the slower length first
          --variants ${VARIANTS:-two_stream decoupled_rope sigma_gpt} --seeds ${SEEDS:-0 1 2})
    seed0=("${grid[@]}" --seeds 0)  # bundled and probed: seed 0 only (the later --seeds wins)
    study train "${grid[@]}" --seconds "$seconds" --parallel "${PARALLEL:-9}" --micro-batch-tokens 16384
    wait
    cat runs/sweep-*.out 2>/dev/null || true
    pack
    timeout "$(left)" python3 scripts/study.py evaluate "${grid[@]}" --corpus runs/study-corpus.jsonl --out runs/study.json \
      --unfinished ${STUDY_OPTIONS:-} || echo "evaluation failed or stopped at the deadline"
    pack
    if [[ " ${SEEDS:-0} " == *" 0 "* ]]; then  # more seeds (SEEDS="3 4 5") train and evaluate only
      study bundle "${seed0[@]}" --dest runs/bundle || echo "bundle failed"
      for d in $(ls -d runs/bundle/* 2>/dev/null); do tar cf "$OUT/$(basename "$d").tar" -C runs/bundle "$(basename "$d")"; done
      timeout "$(left)" python3 scripts/study.py probe "${seed0[@]}" --dest runs/bundle ${STUDY_OPTIONS:-} \
        || echo "probes stopped (deadline or error)"
    fi
    tar czf "$OUT/probes.tgz" runs/study/*-s0/probes || true
    if [ -d runs/bundle ] && [ "$(left)" -gt 30 ]; then  # the bundle's own evaluation (results/nll.json), if time is left
      timeout "$(left)" python3 -m workbench.cli eval --checkpoint runs/bundle/* --orders 4 --batch-size 128 --out runs/nll.json \
        || echo "eval of the bundle failed or stopped at the deadline"
      pack
    fi
    ;;
  bundled)  # the bundled checkpoints/ of the tree: results/nll.json, then the probes of NAME ... (bundled.tgz)
    deadline=$((SECONDS + ${DEADLINE:-300})); mkdir -p runs/bundled
    timeout "$((deadline - SECONDS))" python3 -m workbench.cli eval --checkpoint checkpoints/* --orders 4 --batch-size 128 \
      --out runs/bundled/nll.json || echo "eval of the bundled checkpoints failed or stopped at the deadline"
    tar czf "$OUT/bundled.tgz" -C runs/bundled .
    for name in "$@"; do
      timeout "$((deadline - SECONDS))" python3 -m workbench.cli probe --checkpoint "checkpoints/$name" \
        --out "runs/bundled/probes/$name" --fast --max-sequences 0 --r 4 --w 4 --seed 0 --no-progress \
        --causal-sequences 256 || echo "probes of $name failed or stopped at the deadline"
      tar czf "$OUT/bundled.tgz" -C runs/bundled .
    done
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
ls -la "$OUT"
