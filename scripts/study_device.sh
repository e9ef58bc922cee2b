#!/usr/bin/env bash
# The study (docs/study.md) on a lent GPU machine, in stages that each fit one 10-minute call and
# leave what must come back under $OUT (at most 8 files of 16 MB). Run from the project root with
# the corpus at runs/study-corpus.jsonl (scripts/build_study_corpus.py).
#
#   bash scripts/study_device.sh sweep SECONDS          # model size: decoupled_rope-128 at sizes s, m4, m, l
#   bash scripts/study_device.sh grid LENGTH SIZE SECONDS   # 3 variants x 3 seeds at one length,
#                                                       # then evaluate, probe, bundle seed 0
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR="$PWD/.inductor-cache"
study() { python3 scripts/study.py "$@" --corpus runs/study-corpus.jsonl; }

# MPS lets several small training processes share the GPU at once instead of by time slices.
start_mps() {
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d \
     && timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    echo "MPS on"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null || true
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS unavailable: training processes share the GPU by time slices"
  fi
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
start_mps
stage="$1"; shift
case "$stage" in
  sweep)
    seconds="$1"
    for size in s m4 m l; do
      study train --runs "runs/sweep-$size" --size "$size" --variants decoupled_rope --lengths 128 --seeds 0 \
        --seconds "$seconds" --parallel 1 > "runs/sweep-$size.out" 2>&1 &
    done
    study train --runs runs/sweep-m4 --size m4 --variants two_stream --lengths 128 --seeds 0 \
      --seconds "$seconds" --parallel 1 > runs/sweep-m4-ts.out 2>&1 &
    study train --runs runs/sweep-m4 --size m4 --variants decoupled_rope --lengths 1024 --seeds 0 \
      --seconds "$seconds" --parallel 1 > runs/sweep-m4-1024.out 2>&1 &
    wait
    cat runs/sweep-*.out
    tar czf "$OUT/sweep.tgz" runs/sweep-*/*/metrics.jsonl runs/sweep-*/*/settings.json runs/sweep-*/*.log runs/sweep-*.out
    ;;
  grid)
    length="$1" size="$2" seconds="$3" deadline=$((SECONDS + 560))
    grid=(--runs runs/study --size "$size" --lengths "$length")
    study train "${grid[@]}" --seconds "$seconds" --parallel 9
    study evaluate "${grid[@]}" --out "runs/study-$length.json"
    study bundle "${grid[@]}" --dest runs/bundle
    for d in runs/bundle/*-"$length"; do tar cf "$OUT/$(basename "$d").tar" -C runs/bundle "$(basename "$d")"; done
    tar czf "$OUT/study-$length.tgz" runs/study/*-"$length"-s*/{metrics.jsonl,settings.json,eval} \
      runs/study/*-"$length"-s*.log "runs/study-$length.json"
    timeout $((deadline - SECONDS)) python3 scripts/study.py probe "${grid[@]}" || echo "probes stopped at the deadline"
    tar czf "$OUT/probes-$length.tgz" runs/study/*-"$length"-s0/probes
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
ls -la "$OUT"
