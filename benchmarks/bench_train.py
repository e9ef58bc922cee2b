"""Training throughput per variant: tokens/s and model-FLOPs utilisation (MFU) on the GPU.

FLOPs are counted, not estimated: torch's FlopCounterMode over one real forward + backward step
(matmuls and attention; the causal SDPA is counted as full, so MFU is, if anything, generous to
two-stream, whose query stream does a second pass of every matmul). Peak is the dense bf16 rate of
the chip. Writes benchmarks/results/train-<device>-<date>.{json,md}.

    python benchmarks/bench_train.py [--steps 30] [--compile]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from workbench.models import from_config
from workbench.orders import random_orders
from workbench.training import TrainSettings

PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12}  # dense bf16 tensor-core FLOP/s (SXM)
SHAPES = ((128, 64), (1024, 8))  # (seq_len, batch): 8192 tokens per step, as the bundled runs


def bench(variant: str, seq_len: int, batch: int, steps: int, compile_model: bool) -> dict:
    settings = TrainSettings(variant=variant, seq_len=seq_len)
    model = from_config(settings.model_config(d_vocab=65)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    step_fn = torch.compile(model) if compile_model else model
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 65, (batch, seq_len), generator=g).cuda()
    order = random_orders(batch, seq_len, g).cuda()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(tokens, order, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return {
        "variant": variant, "seq_len": seq_len, "batch": batch, "compiled": compile_model,
        "n_params": sum(p.numel() for p in model.parameters()), "step_ms": dt * 1e3,
        "tokens_per_s": batch * seq_len / dt, "flops_per_step": flops,
        "mfu": flops / dt / peak if peak else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.cuda.get_device_name()
    rows = [bench(v, t, b, args.steps, args.compile)
            for t, b in SHAPES for v in ("two_stream", "decoupled_rope", "sigma_gpt")]
    date = datetime.date.today().isoformat()
    lines = [f"# Training throughput — {device}, {date}", "",
             "| variant | seq_len | batch | params | step (ms) | tokens/s | GFLOP/step | MFU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['variant']} | {r['seq_len']} | {r['batch']} | {r['n_params']:,} | {r['step_ms']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['flops_per_step'] / 1e9:.1f} | {mfu} |")
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    stem = f"train-{device.replace(' ', '_')}-{date}"
    (out / f"{stem}.json").write_text(json.dumps({"device": device, "date": date, "rows": rows}, indent=2))
    (out / f"{stem}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
