#!/usr/bin/env bash
# Probe kernel v3 (issue 21) on a lent GPU machine, within 240 seconds: the GPU tier of the kernel
# tests (v2 and v3 against the reference in bf16 / fp16 / fp32, determinism), then the benchmark
# (SDPA causal forward, v2 with and without own distances, v3 likewise; T = 1024, 4096, 16384;
# 1M tokens, 8 heads, d_head 64, bf16, r = 4, w = 16; cache-then-reduce at T = 1024 only).
#
#   export PYTHONPATH=/tmp/site:$PWD; [TESTS=0] [V2C=1] bash benchmarks/kernel_v3_device.sh
#   export PYTHONPATH=/tmp/site:$PWD; PROFILE=1 bash benchmarks/kernel_v3_device.sh
#
# PROFILE=1 instead runs Nsight Compute (T = 1024, B = 64) on every launch of one probe_stats call:
# v3 (joint=False), then v2 (LSE, statistics and chance passes), each as a text report of speed of
# light, scheduler, warp-state, instruction, occupancy and launch sections, in $OUT/ncu-v3.txt
# and $OUT/ncu-v2.txt; the first call of each compiles and is not profiled.
#
# Run from the repository root (Python 3.12 with torch and triton installed). Everything that
# must come back goes to $OUT (default runs/out): the two logs, kernel_<date>.json / .md (rewritten
# after each size, so a run cut by the deadline keeps the sizes it finished) and nvidia-smi's view.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/triton-cache-kv3}"
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/kernel-v3-device.txt" 2>&1 \
  || echo "no nvidia-smi" > "$OUT/kernel-v3-device.txt"
git rev-parse HEAD >> "$OUT/kernel-v3-device.txt" 2>/dev/null || true

if [ "${PROFILE:-0}" = 1 ]; then
  sections=(--section SpeedOfLight --section SchedulerStats --section WarpStateStats --section InstructionStats
            --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats)
  for v in v3 v2; do
    flag=$([ "$v" = v3 ] && echo --v3 || true)
    timeout $((235 - (SECONDS - start))) ncu --clock-control none --profile-from-start off "${sections[@]}" \
      python3 benchmarks/profile_kernel.py 1024 64 $flag > "$OUT/ncu-$v.txt" 2>&1
    echo "ncu $v: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/kernel-v3-device.txt"
  done
  grep -E "^  [_a-z0-9]+ \(|Duration|Registers Per|Issued Ipc Active|Achieved Occupancy" "$OUT"/ncu-v*.txt
  exit 0
fi

# 1. tests: the GPU tier of tests/test_kernel.py only (-m gpu), through bench_kernel.py so that
#    workbench.kernels loads without the model code. At most 110 s; TESTS=0 skips them.
if [ "${TESTS:-1}" != 0 ]; then
  timeout 110 python3 benchmarks/bench_kernel.py --check-gpu --sizes "" --out "$OUT" \
    > "$OUT/kernel-v3-gpu-tests.log" 2>&1
  echo "tests: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/kernel-v3-device.txt"
fi
# 1b. V2C=1: v2c (commit da85a0a, 15.4 ms at T = 1024 on 2026-11-22) on this machine, its own
#     benchmark from its own tree, so that v2's slowdown since can be told from the machine's.
if [ "${V2C:-0}" = 1 ] && git rev-parse -q --verify da85a0a >/dev/null; then
  rm -rf /tmp/v2c && mkdir -p /tmp/v2c "$OUT/v2c" && git archive da85a0a | tar x -C /tmp/v2c
  (cd /tmp/v2c && timeout 90 python3 benchmarks/bench_kernel.py --sizes 1024 --out "$OUT/v2c" > "$OUT/v2c/bench.log" 2>&1)
  echo "v2c: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/kernel-v3-device.txt"
fi

# 2. benchmark, in what is left of 240 s (5 s kept for the copy-out)
left=$((235 - (SECONDS - start)))
if [ "$left" -gt 20 ]; then
  timeout "$left" python3 benchmarks/bench_kernel.py --sizes 1024,4096,16384 --ctr-sizes 1024 --out "$OUT" \
    > "$OUT/kernel-v3-bench.log" 2>&1
  echo "benchmark: exit $? after $((SECONDS - start)) s (124: cut by the deadline)" | tee -a "$OUT/kernel-v3-device.txt"
else
  echo "benchmark: skipped, only ${left} s left" | tee -a "$OUT/kernel-v3-device.txt"
fi
# 3. if time is left: v3 tiles at T = 1024 (its own folder: the result files are named by date)
left=$((235 - (SECONDS - start)))
if [ "$left" -gt 40 ]; then
  timeout "$left" python3 benchmarks/bench_kernel.py --sizes 1024 --ctr-sizes "" --out "$OUT/tiles" \
    --v3-configs "64x32/64x32;64x64/64x64;128x64/128x64;64x32/128x64" > "$OUT/kernel-v3-tiles.log" 2>&1
  echo "tile sweep: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/kernel-v3-device.txt"
fi
tail -n 12 "$OUT/kernel-v3-bench.log" 2>/dev/null
ls -l "$OUT"
