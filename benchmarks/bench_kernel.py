"""Benchmark of the fused probe-statistics kernels (v2 and v3) against SDPA and cache-then-reduce.

    python benchmarks/bench_kernel.py [--check | --check-gpu] [--sizes 128,1024,4096,16384] [--out DIR]

For each sequence length T (batch B = 2^20 / T, so B*T = 1M tokens; 8 heads; d_head 64; bf16;
random generation orders, single-stream layout: T rows and keys, recency offset 0):

- `sdpa`: torch scaled_dot_product_attention(q, k, v, is_causal=True), the attention forward the
  model runs anyway (v random, same shape as k);
- `kernel`: `probe_stats(q, k, ...)` (v2, every statistic, the joint histogram included) without
  own positions (semantic + recency + parts), and `kernel+own` with them (single-stream rows also
  bin the own distance);
- `v3` / `v3+own`: `probe_stats(..., joint=False)`, the v3 kernels (slot frame + position frames),
  every statistic but the joint histogram;
- `cache-then-reduce`: materialise softmax(q k^T) for whole sequences, then `pattern_stats` on it
  (what a run_with_cache probe does), timed on as few sequences as needed and scaled to B;
- peak memory of each (torch allocator, above the inputs).

`--check` first runs tests/test_kernel.py on this device (bf16 / fp16 / fp32, the GPU tier
included); `--check-gpu` only its GPU tier (`-m gpu`); `--sizes ''` times nothing. The last lines
printed are a markdown table; JSON and markdown go to --out, rewritten after every size (so a run
cut short keeps the sizes it finished). `--ctr-sizes` limits cache-then-reduce (seconds per size)
to the listed T.
The kernel package is loaded without workbench/__init__.py (whose model code needs
transformer_lens): it depends on nothing but torch and triton.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if "workbench" not in sys.modules:  # load workbench.kernels alone (see the docstring)
    _pkg = types.ModuleType("workbench")
    _pkg.__path__ = [str(ROOT / "workbench")]
    sys.modules["workbench"] = _pkg
sys.path.insert(0, str(ROOT))

import bench_common  # noqa: E402  (torch only: the device needs nothing more)
from workbench.kernels.contract import pattern_stats  # noqa: E402
from workbench.kernels.probe_kernel import _launch, _prepare, probe_stats  # noqa: E402
from workbench.kernels.probe_v3 import probe_stats_v3  # noqa: E402

TOKENS = 1 << 20
HEADS, D_HEAD = 8, 64


def make_inputs(B: int, T: int, dtype=torch.bfloat16, device="cuda", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    order = torch.rand(B, T, generator=g, device=device).argsort(-1)
    bos = torch.full((B, 1), -1, device=device, dtype=torch.int64)
    key_pos = torch.cat([bos, order[:, :-1]], 1)  # slot 0: null key; slot j: position sigma[j-1]
    row_ref = order  # row i predicts sigma[i]
    row_own = torch.cat([bos, order[:, :-1]], 1)  # and holds sigma[i-1]
    q = torch.randn(B, HEADS, T, D_HEAD, generator=g, device=device).to(dtype)
    k = torch.randn(B, HEADS, T, D_HEAD, generator=g, device=device).to(dtype)
    v = torch.randn(B, HEADS, T, D_HEAD, generator=g, device=device).to(dtype)
    return q, k, v, key_pos, row_ref, row_own


def bench(fn, warmup_ms=100, rep_ms=400):
    import triton

    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def peak_mb(fn) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def cache_then_reduce(q, k, key_pos, row_ref, row_own, r, w):
    """Materialise the whole pattern of these sequences, then bin it (float64, pattern_stats)."""
    T = q.shape[2]
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    pattern = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
    del scores
    return pattern_stats(pattern, key_pos, row_ref, row_own, recency_offset=0, r=r, w=w)


def time_cache_then_reduce(q, k, key_pos, row_ref, row_own, r, w, budget_s=20.0):
    """(ms for the whole batch, sequences timed, peak MB) or an OOM note; scales linearly in B."""
    B = q.shape[0]
    n = 1
    try:
        fn = lambda: cache_then_reduce(q[:n], k[:n], key_pos[:n], row_ref[:n], row_own[:n], r, w)  # noqa: E731
        peak = peak_mb(fn)  # also warms up
        torch.cuda.synchronize()
        t0, reps = time.perf_counter(), 0
        while reps < 3 and time.perf_counter() - t0 < budget_s:
            fn()
            torch.cuda.synchronize()
            reps += 1
        per_seq = (time.perf_counter() - t0) / reps / n
        return dict(ms=per_seq * B * 1e3, timed_sequences=n, reps=reps, peak_mb=peak)
    except torch.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        return dict(ms=None, oom=str(e).split("\n")[0][:160])


def run_check(gpu_only: bool = False) -> int:
    import pytest

    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (Triton interpreter)"
    print("== correctness: tests/test_kernel.py", "(gpu tier)" if gpu_only else "", "on", where, flush=True)
    return pytest.main([str(ROOT / "tests" / "test_kernel.py"), "--noconftest", "-q", "-rs", "-p", "no:cacheprovider",
                        "-W", "ignore::DeprecationWarning", "--durations=5"] + (["-m", "gpu"] if gpu_only else []))


def write_results(out: Path, meta: dict, rows: list[dict], r: int, w: int) -> list[str]:
    """kernel_<date>.json and .md under out; returns the markdown lines."""
    md = [f"Probe-stats kernel, {meta['device']}, {meta['date']} (torch {meta['torch']}, triton {meta['triton']}); "
          f"B*T = 1M tokens, {HEADS} heads, d_head {D_HEAD}, bf16, r={r}, w={w}. v2: every statistic "
          "(joint histogram included); v3: probe_stats(joint=False), no joint histogram.", "",
          "| T | B | SDPA ms | v2 ms | x SDPA | v2+own ms | x SDPA | v3 ms | x SDPA | v3+own ms | x SDPA "
          "| v2 LSE + statistics / chance ms | cache-then-reduce ms | speed-up v2 / v3 "
          "| peak MB v2 / v2+own / v3 / v3+own / SDPA / cache-then-reduce |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        c = row["cache_then_reduce"]
        ctr_ms = ("-" if c is None else "OOM" if c.get("ms") is None
                  else f"{c['ms']:.0f} (from {c['timed_sequences']} seq)")
        speed = "-" if c is None or c.get("ms") is None else \
            f"{c['ms'] / row['kernel_ms']:.0f}x / {c['ms'] / row['v3_ms']:.0f}x"
        ctr_peak = "-" if c is None else "OOM" if c.get("ms") is None else f"{c['peak_mb']:.0f} (1 seq)"
        x = lambda name: f"{row[name + '_ms']:.2f} | {row[name + '_ms'] / row['sdpa_ms']:.2f}"  # noqa: E731
        md.append(f"| {row['T']} | {row['B']} | {row['sdpa_ms']:.2f} | {x('kernel')} | {x('kernel_own')} | {x('v3')} "
                  f"| {x('v3_own')} | {row['main_only_ms']:.2f} / {row['chance_only_ms']:.2f} | {ctr_ms} | {speed} "
                  f"| {row['kernel_peak_mb']:.0f} / {row['kernel_own_peak_mb']:.0f} / {row['v3_peak_mb']:.0f} / "
                  f"{row['v3_own_peak_mb']:.0f} / {row['sdpa_peak_mb']:.0f} / {ctr_peak} |")
    for row in rows:
        if "configs" in row:
            md += ["", "Launch configs at T=1024 (v2: block_m x block_n x warps x stages; v3: slot tile / position-frame "
                   "tile): "
                   + ", ".join(f"{k}: {v:.2f} ms" for k, v in row["configs"].items())]
        if "max_rel_diff" in row:
            md += [f"T={row['T']}: max |kernel - reference| / rows on 2 sequences: v2 {row['max_rel_diff']:.2e}, "
                   f"v3 {row['v3_max_rel_diff']:.2e}"]
    bench_common.write_results(Path(out) / f"kernel_{dt.date.today().isoformat()}", dict(meta=meta, rows=rows),
                               "\n".join(md), indent=1)
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="run the correctness tests on this device first")
    ap.add_argument("--check-gpu", action="store_true", help="run only the GPU tier of the tests first (-m gpu)")
    ap.add_argument("--ctr-sizes", default=None, help="time cache-then-reduce only at these T (default: every size)")
    ap.add_argument("--sizes", default="128,1024,4096,16384")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--configs", default="", help="extra launch configs to time at T=1024, e.g. '64x64x4x2;128x32x8x2' "
                    "(block_m x block_n x num_warps x num_stages)")
    ap.add_argument("--v3-configs", default="", help="v3 tiles to time at T=1024, e.g. '64x32/64x64;64x64/64x32' "
                    "(slot block_m x block_n / position-frame block_m x block_n)")
    ap.add_argument("--r", type=int, default=4)
    ap.add_argument("--w", type=int, default=16)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kernel.py needs a CUDA device")
    import triton

    dev = torch.cuda.get_device_name()
    meta = dict(device=dev, date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                tokens=TOKENS, heads=HEADS, d_head=D_HEAD, dtype="bfloat16", r=args.r, w=args.w,
                layout="single stream: T rows, T keys (slot 0 null), recency offset 0")
    print(json.dumps(meta), flush=True)
    rc = 0
    if args.check or args.check_gpu:
        rc = int(run_check(gpu_only=args.check_gpu and not args.check))
        print(f"== tests exit code {rc}", flush=True)
    rows = []
    ctr_sizes = None if args.ctr_sizes is None else {int(t) for t in args.ctr_sizes.split(",") if t}
    for T in [int(t) for t in args.sizes.split(",") if t]:
        B = TOKENS // T
        q, k, v, key_pos, row_ref, row_own = make_inputs(B, T)
        kw = dict(recency_offset=0, r=args.r, w=args.w, max_distance=T - 1)
        row = dict(T=T, B=B)
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        row["sdpa_ms"] = bench(sdpa)
        row["sdpa_peak_mb"] = peak_mb(sdpa)
        kern = lambda: probe_stats(q, k, key_pos, row_ref, **kw)  # noqa: E731
        kern_own = lambda: probe_stats(q, k, key_pos, row_ref, row_own=row_own, **kw)  # noqa: E731
        row["kernel_ms"] = bench(kern)
        row["kernel_peak_mb"] = peak_mb(kern)
        row["kernel_own_ms"] = bench(kern_own)
        row["kernel_own_peak_mb"] = peak_mb(kern_own)
        v3 = lambda: probe_stats(q, k, key_pos, row_ref, joint=False, **kw)  # noqa: E731
        v3_own = lambda: probe_stats(q, k, key_pos, row_ref, row_own=row_own, joint=False, **kw)  # noqa: E731
        row["v3_ms"] = bench(v3)
        row["v3_peak_mb"] = peak_mb(v3)
        row["v3_own_ms"] = bench(v3_own)
        row["v3_own_peak_mb"] = peak_mb(v3_own)
        print(json.dumps(row), flush=True)  # the timings so far, in case the cache-then-reduce baseline is cut
        # the two launches alone (main: per head; chance: once per batch), reductions included
        pp = _prepare(q, k, key_pos, row_ref, None, None, 0, args.r, args.w, None, T - 1, {})
        row["main_only_ms"] = bench(lambda: _launch(pp, chance=False))
        row["chance_only_ms"] = bench(lambda: _launch(pp, chance=True))
        row["cache_then_reduce"] = None
        if ctr_sizes is None or T in ctr_sizes:
            row["cache_then_reduce"] = time_cache_then_reduce(q, k, key_pos, row_ref, row_own, args.r, args.w)
        if T == 1024 and args.configs:
            row["configs"] = {}
            for c in args.configs.split(";"):
                bm, bn, nw, ns = (int(x) for x in c.split("x"))
                for own_name, own in (("", None), ("+own", row_own)):
                    fn = lambda: probe_stats(q, k, key_pos, row_ref, row_own=own, block_m=bm, block_n=bn,  # noqa: E731
                                             num_warps=nw, num_stages=ns, **kw)
                    row["configs"][c + own_name] = bench(fn)
        if T == 1024 and args.v3_configs:
            row.setdefault("configs", {})
            for c in args.v3_configs.split(";"):
                slot, band = (tuple(int(x) for x in part.split("x")) for part in c.split("/"))
                for own_name, own in (("", None), ("+own", row_own)):
                    fn = lambda: probe_stats_v3(q, k, key_pos, row_ref, row_own=own, slot_block=slot,  # noqa: E731
                                                band_block=band, **kw)
                    row["configs"]["v3 " + c + own_name] = bench(fn)
        # accuracy at this size on two sequences against the chunked reference
        if T <= 4096:
            from workbench.kernels.reference import reference_probe_stats

            s = slice(0, 2)
            b = reference_probe_stats(q[s], k[s], key_pos[s], row_ref[s], row_own=row_own[s], recency_offset=0,
                                      r=args.r, w=args.w)
            fields = ("sem_mass", "rec_mass", "own_mass", "parts_mass", "sem_chance", "parts_chance")
            for name, joint in (("max_rel_diff", True), ("v3_max_rel_diff", False)):
                a = probe_stats(q[s], k[s], key_pos[s], row_ref[s], row_own=row_own[s], joint=joint, **kw)
                row[name] = max(((getattr(a, n) - getattr(b, n)).abs().max() / b.n_rows).item() for n in fields)
        rows.append(row)
        print(json.dumps(row), flush=True)
        md = write_results(Path(args.out), meta, rows, args.r, args.w)
        q = k = v = None  # free before the next size
        torch.cuda.empty_cache()
    if rows:
        print("\n".join(md))
    sys.exit(rc)  # the tests' exit code (0 without --check)


if __name__ == "__main__":
    main()
