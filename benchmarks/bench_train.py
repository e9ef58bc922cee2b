"""Training throughput: each variant against a plain causal GPT of the same dims, eager and
compiled (the trainer's torch.compile mode), at the recipe's tokens per step, and a sweep of
tokens per step (compiled).

Every row times the trainer's own step (`workbench.training.step`: each step's batch drawn on the
GPU, bf16 autocast, SlotLoss through CompiledOrEager, clipping, fused AdamW) on a random token
stream; the baseline (`benchmarks/baseline_gpt.py`) gets the same batch
draw, autocast, clipping and optimiser. FLOPs are counted (torch's FlopCounterMode over one eager
forward + backward: matmuls and attention; causal SDPA counted as full), MFU against the chip's
dense bf16 peak. Compilation is done first for every compiled row in parallel worker processes
(they fill Inductor's on-disk cache), then rows are timed one at a time in this process, so no
timing overlaps another process's work. Writes benchmarks/results/train-<device>-<date>.{json,md}.

    python benchmarks/bench_train.py [--lengths 128 1024] [--sweep 131072 262144] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_gpt import PlainGPT  # noqa: E402

from workbench.data import random_windows  # noqa: E402
from workbench.models import from_config  # noqa: E402
from workbench.training import TrainSettings  # noqa: E402
from workbench.training.step import COMPILE_MODE, BatchSource, CompiledOrEager, SlotLoss, flops_per_token  # noqa: E402

PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12}  # dense bf16 tensor-core FLOP/s (SXM datasheets)
VARIANTS = ("two_stream", "decoupled_rope", "sigma_gpt")
BASELINE = "plain_gpt"
VOCAB = 65
STREAM = 1 << 22  # tokens of the random stream batches are drawn from


def _settings(variant: str, seq_len: int, tokens_per_step: int) -> TrainSettings:
    return TrainSettings(variant=variant if variant != BASELINE else "decoupled_rope", seq_len=seq_len,
                         tokens_per_step=tokens_per_step, train_tokens=tokens_per_step * 1000)


class _Row:
    """One model at one shape: build, step, count FLOPs."""

    def __init__(self, variant: str, seq_len: int, tokens_per_step: int, compiled: bool, mode: str | None = None):
        self.variant, self.settings, self.compiled = variant, _settings(variant, seq_len, tokens_per_step), compiled
        s = self.settings
        torch.manual_seed(0)
        if variant == BASELINE:
            self.model = PlainGPT(s.n_layers, s.d_model, s.n_heads, s.d_head, s.d_mlp, seq_len, VOCAB).cuda()
            self.loss = self.model
        else:
            self.model = from_config(s.model_config(VOCAB)).cuda()
            self.loss = SlotLoss(self.model)
        self.step_fn = CompiledOrEager(self.loss, compiled, mode)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, fused=True)
        stream = torch.randint(0, VOCAB, (STREAM,), generator=torch.Generator().manual_seed(1))
        self.batches = BatchSource(s, stream, VOCAB, torch.device("cuda"))
        self.n_steps = 0

    def _batch(self) -> tuple[torch.Tensor, ...]:
        """The trainer's batch of the next step (the baseline draws the same windows, no orders)."""
        self.n_steps += 1
        if self.variant == BASELINE:
            g = torch.Generator(device="cuda").manual_seed(self.n_steps)
            s = self.settings
            return (random_windows(self.batches.stream, s.seq_len, s.batch_size, g),)
        return self.batches(self.n_steps)

    def step(self) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            self.step_fn.run(lambda loss: loss.backward(), *self._batch())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def flops(self) -> float:
        """Counted training FLOPs per token, under the step's autocast."""
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return flops_per_token(self.loss, *self._batch())


def _warm(config: tuple[str, int, int, str | None]) -> str:
    """Worker: compile one row (fills the shared Inductor cache)."""
    row = _Row(*config[:3], compiled=True, mode=config[3])
    t0 = time.perf_counter()
    row.step()
    torch.cuda.synchronize()
    return f"{config}: compiled={row.step_fn.compiled} in {time.perf_counter() - t0:.0f} s"


def _time(config: tuple[str, int, int, str | None], compiled: bool, repeats: int, steps: int) -> dict:
    torch._dynamo.reset()
    variant, seq_len, tps, mode = config
    row = _Row(variant, seq_len, tps, compiled, mode)
    t0 = time.perf_counter()
    row.step()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(3):
        row.step()
    rates = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        wall = time.perf_counter()
        start.record()
        for _ in range(steps):
            row.step()
        end.record()
        torch.cuda.synchronize()
        wall = time.perf_counter() - wall
        rates.append(tps * steps / max(wall, start.elapsed_time(end) / 1e3))
    flops = row.flops() * tps
    rate = statistics.median(rates)
    peak = next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None)
    result = {
        "variant": variant, "seq_len": seq_len, "tokens_per_step": tps, "compiled": compiled,
        "compile_mode": mode if compiled else None,
        "compile_fell_back": compiled and not row.step_fn.compiled,
        "n_params": sum(p.numel() for p in row.model.parameters()), "first_step_s": first,
        "tokens_per_s": rate, "tokens_per_s_repeats": rates, "flops_per_token": flops / tps,
        "mfu": flops / tps * rate / peak if peak else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9,
    }
    del row
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    print(json.dumps({k: v for k, v in result.items() if k != "tokens_per_s_repeats"}), flush=True)
    return result


def with_baseline(rows: list[dict]) -> list[dict]:
    """Each row with `baseline_tokens_per_s` (the plain GPT's at its length, tokens per step and
    mode; None where it was not timed) and `ratio`."""
    base = {(r["seq_len"], r["tokens_per_step"], r["compiled"], r["compile_mode"]): r["tokens_per_s"]
            for r in rows if r["variant"] == BASELINE}
    out = []
    for r in rows:
        b = base.get((r["seq_len"], r["tokens_per_step"], r["compiled"], r["compile_mode"]))
        out.append({**r, "baseline_tokens_per_s": b, "ratio": r["tokens_per_s"] / b if b else None})
    return out


def _table(rows: list[dict], recipe: int) -> str:
    def find(variant, seq_len, compiled, tps=recipe):
        return next((r for r in rows if (r["variant"], r["seq_len"], r["compiled"], r["tokens_per_step"], r["compile_mode"])
                     == (variant, seq_len, compiled, tps, COMPILE_MODE if compiled else None)), None)

    lines = [f"Recipe: {recipe:,} tokens per step; compiled = torch.compile mode {COMPILE_MODE!r}, as the trainer runs it. Ratio = tokens/s of the variant / tokens/s of the plain GPT "
             "in the same mode. Best of sweep = the highest compiled tokens/s over the tokens-per-step sweep.", "",
             "| variant | seq_len | mode | params | Mtok/s | plain GPT Mtok/s | ratio | MFU | recipe / best of sweep |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for seq_len in sorted({r["seq_len"] for r in rows}):
        for compiled in (False, True):
            for variant in (*VARIANTS, BASELINE):
                r = find(variant, seq_len, compiled)
                if r is None:
                    continue
                base = find(BASELINE, seq_len, compiled)
                ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "n/a"
                mode = "compiled" + (" (FELL BACK TO EAGER)" if r["compile_fell_back"] else "") if compiled else "eager"
                sweep = [x["tokens_per_s"] for x in rows if x["variant"] == variant and x["seq_len"] == seq_len
                         and x["compiled"] and x["compile_mode"] == COMPILE_MODE]
                best = f"{r['tokens_per_s'] / max(sweep):.2f}" if compiled and len(sweep) > 1 else ""
                mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
                lines.append(f"| {variant} | {seq_len} | {mode} | {r['n_params']:,} | {r['tokens_per_s'] / 1e6:.2f} | "
                             f"{base['tokens_per_s'] / 1e6 if base else float('nan'):.2f} | {ratio} | {mfu} | {best} |")
    lines += ["", "Sweep (compiled):", "", "| variant | seq_len | tokens/step | compile mode | Mtok/s | first step s | peak GB |",
              "|---|---:|---:|---|---:|---:|---:|"]
    for r in sorted((r for r in rows if r["compiled"]), key=lambda r: (r["variant"], r["seq_len"], r["tokens_per_step"], str(r["compile_mode"]))):
        lines.append(f"| {r['variant']} | {r['seq_len']} | {r['tokens_per_step']:,} | {r['compile_mode'] or 'default'} | "
                     f"{r['tokens_per_s'] / 1e6:.2f} | {r['first_step_s']:.1f} | {r['peak_mem_gb']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--sweep", type=int, nargs="*", default=[131072, 262144],
                        help="other tokens-per-step values to time compiled (the recipe's is always timed)")
    parser.add_argument("--modes", nargs="*", default=[], help="other torch.compile modes to time at the recipe "
                        f"(the trainer's, {COMPILE_MODE!r}, is always timed)")
    parser.add_argument("--compiled-only", action="store_true", help="skip the eager rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=6, help="parallel compile processes")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    recipe = TrainSettings(variant="two_stream").tokens_per_step
    recipe_rows = [(v, t, recipe, COMPILE_MODE) for t in args.lengths for v in (*VARIANTS, BASELINE)]
    sweep_rows = [(v, t, s, COMPILE_MODE) for t in args.lengths for v in VARIANTS for s in args.sweep if s != recipe]
    sweep_rows += [(v, t, recipe, m) for v, t, _, _ in recipe_rows for m in args.modes]
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(args.out).resolve() / ".inductor-cache"))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=torch.multiprocessing.get_context("spawn")) as pool:
        for line in pool.map(_warm, recipe_rows + sweep_rows):
            print("warm:", line, flush=True)
    print(f"compiled {len(recipe_rows) + len(sweep_rows)} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = [] if args.compiled_only else [_time(c, False, args.repeats, args.steps) for c in recipe_rows]
    rows += [_time(c, True, args.repeats, args.steps) for c in recipe_rows + sweep_rows]
    rows = with_baseline(rows)
    device, date = torch.cuda.get_device_name(), datetime.date.today().isoformat()
    table = f"# Training throughput — {device}, {date}\n\n" + _table(rows, recipe)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"train-{device.replace(' ', '_')}-{date}"
    meta = {"device": device, "date": date, "torch": torch.__version__, "recipe_tokens_per_step": recipe,
            "dims": {k: v for k, v in _settings("two_stream", 128, recipe).to_dict().items()
                     if k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp")}, "vocab": VOCAB}
    (out / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    (out / f"{stem}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
