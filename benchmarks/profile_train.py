"""Where a compiled training step's time goes: GPU kernel time per step against wall time per step
(the difference is the host), and the kernels that take the most, for each model given.

    python benchmarks/profile_train.py [--models decoupled_rope sigma_gpt plain_gpt] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import _Row  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["decoupled_rope", "sigma_gpt", "two_stream", "plain_gpt"])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--tokens-per-step", type=int, default=65536)
    parser.add_argument("--mode", default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=18)
    args = parser.parse_args()
    for name in args.models:
        torch._dynamo.reset()
        row = _Row(name, args.seq_len, args.tokens_per_step, compiled=True, mode=args.mode)
        for _ in range(4):
            row.step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            wall = time.perf_counter()
            for _ in range(args.steps):
                row.step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - wall) / args.steps
        events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0) > 0]
        gpu = sum(e.self_device_time_total for e in events) / args.steps / 1e3
        n_kernels = sum(e.count for e in events if e.self_device_time_total > 0) / args.steps
        print(f"\n== {name} T={args.seq_len} tokens/step={args.tokens_per_step} mode={args.mode}: "
              f"wall {wall * 1e3:.2f} ms/step, GPU busy {gpu:.2f} ms/step, ~{n_kernels:.0f} kernels/step")
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=args.top, max_name_column_width=70))


if __name__ == "__main__":
    main()
