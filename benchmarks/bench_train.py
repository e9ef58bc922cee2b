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

Under torchrun (WORLD_SIZE > 1) it measures data parallelism instead (`ddp_main`): per variant and
length, tokens/s of the trainer's step (`workbench.training.step.TrainStep`, the path `workbench
train` takes, DistributedDataParallel included) on N processes against one process at the same
per-process batch, and a check that a few steps on N processes give the parameters one process
gets with the same global batch. Writes benchmarks/results/train-ddp<N>-<device>-<date>.{json,md}.

    torchrun --nproc_per_node=2 benchmarks/bench_train.py                      # 2 GPUs
    torchrun --nproc_per_node=2 benchmarks/bench_train.py --device cpu --dims 1,32,2,16,64 \
        --lengths 32 --tokens-per-gpu 256 --steps 2 --repeats 1 --out /tmp/ddp  # 2 CPU processes, gloo
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
from bench_common import device_name, result_stem, write_results  # noqa: E402

from workbench.data import random_windows  # noqa: E402
from workbench.models import from_config  # noqa: E402
from workbench.probing import distributed  # noqa: E402
from workbench.training import TrainSettings, learning_rate  # noqa: E402
from workbench.training.step import (  # noqa: E402
    COMPILE_MODE, BatchSource, CompiledOrEager, SlotLoss, TrainStep, flops_per_token, make_optimizer)

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
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return ddp_main()
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
    device, date = device_name("cuda"), datetime.date.today().isoformat()
    table = f"# Training throughput — {device}, {date}\n\n" + _table(rows, recipe)
    print(table)
    meta = {"device": device, "date": date, "torch": torch.__version__, "recipe_tokens_per_step": recipe,
            "dims": {k: v for k, v in _settings("two_stream", 128, recipe).to_dict().items()
                     if k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp")}, "vocab": VOCAB}
    write_results(result_stem(args.out, "train", device, date), {**meta, "rows": rows}, table)

# ---- data parallelism, under torchrun -----------------------------------------------------------

SPEEDUP_TARGET_2 = 1.8
"""Issue 20's target at 2 GPUs; at N GPUs the same 90% efficiency, 0.9 N."""
PARAM_ATOL = 1e-5
"""The parameter check's tolerance (fp32, no warmup, lr 2e-3): see `_check`."""
GRAD_NORM_RTOL = 1e-4
"""The gradient-norm check's relative tolerance (fp32): see `_check`."""


class _Trainee:
    """A model of `variant` with the trainer's optimiser, batch source and step (TrainStep) on
    process `rank` of `world`; `world` = 1 is one process on its own (no DDP), whatever the group."""

    def __init__(self, settings: TrainSettings, stream: torch.Tensor, device: torch.device, rank: int, world: int,
                 compile: bool, autocast: bool | None = None):
        self.settings = settings
        self.model = from_config(settings.model_config(VOCAB)).to(device)  # seeded by settings.seed
        self.step = TrainStep(self.model, make_optimizer(self.model, settings, device), settings, device, rank, world,
                              compile, autocast=autocast)
        self.batches = BatchSource(settings, stream, VOCAB, device)
        self.n_steps = 0

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        s, step = self.settings, self.n_steps
        self.n_steps += 1
        return self.step(*self.batches(step), learning_rate(s, step * s.tokens_per_step))

    def flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().float().flatten() for p in self.model.parameters()])


def _ddp_settings(args, variant: str, seq_len: int, tokens_per_step: int) -> TrainSettings:
    """The trainer's settings at these dims; no warmup, so every step moves at the full lr (the
    parameter check is then as sensitive as it can be; the rate does not change the timing)."""
    dims = dict(zip(("n_layers", "d_model", "n_heads", "d_head", "d_mlp"), args.dims)) if args.dims else {}
    return TrainSettings(variant=variant, seq_len=seq_len, tokens_per_step=tokens_per_step,
                         train_tokens=tokens_per_step * 1000, warmup_tokens=0, **dims)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ddp(args, variant: str, seq_len: int, world: int, stream, device, compile: bool) -> dict | None:
    """tokens/s of `world` processes (world = 1: rank 0 alone, the others wait) at args.tokens_per_gpu
    tokens per process per step. Every repeat starts together and ends when the slowest rank is done
    (barriers, as bench_probe.py). Returns the row on the ranks that stepped, None on the others."""
    tps = args.tokens_per_gpu * world
    runs = distributed.rank() < world
    row = None
    torch._dynamo.reset()  # every row compiles afresh (else the recompile limit quietly turns later rows eager)
    if runs:
        trainee = _Trainee(_ddp_settings(args, variant, seq_len, tps), stream, device, distributed.rank(), world, compile)
        t0 = time.perf_counter()
        trainee()
        _sync(device)
        first = time.perf_counter() - t0
        for _ in range(args.warmup_steps):
            trainee()
    rates = []
    for _ in range(args.repeats):
        distributed.barrier()  # the others wait here while rank 0 times one process alone
        if runs:
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                trainee()
            _sync(device)
            if world > 1:
                distributed.barrier()
            rates.append(tps * args.steps / (time.perf_counter() - t0))
    distributed.barrier()
    if runs:
        row = {"processes": world, "tokens_per_step": tps, "tokens_per_s": statistics.median(rates),
               "tokens_per_s_repeats": rates, "first_step_s": first, "compiled": trainee.step.compiled,
               "compile_mode": ((COMPILE_MODE if world == 1 and device.type == "cuda" else "default")
                                if trainee.step.compiled else None)}
        if device.type == "cuda":
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
            torch.cuda.reset_peak_memory_stats(device)
        del trainee
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _check(args, variant: str, seq_len: int, tokens_per_gpu: int, stream, device) -> dict | None:
    """`args.check_steps` steps on N processes (DDP, each its share of the global batch) against
    one process with the same global batch, both eager, in fp32 (no autocast), from the same
    seeded initialisation, over the same batches; returns the comparison on rank 0.

    Tolerances. Both runs compute the same sums in another order: the one process sums the
    gradient over the whole batch, the N processes over their shares and the all-reduce averages
    them. In fp32 that moves a gradient by ~1e-7-1e-6 relative, hence the gradient norms'
    GRAD_NORM_RTOL = 1e-4; a real fault (a rank on the wrong slice, gradients summed instead of
    averaged, unsynchronised ranks) moves it by O(1) relative. AdamW moves a parameter by about lr
    per step whatever the gradient's scale (lr = 2e-3 here, no warmup); a fault changes the
    direction of that move, so parameters by O(lr) = 1e-3 after a step, while fp32 rounding moves
    them by ~lr * 1e-6. PARAM_ATOL = 1e-5 (0.5% of one step's move; the two-process tests in
    tests/test_training.py use the same) sits between the two. Rare exceptions are gradients within
    rounding of zero, where AdamW's normalisation can turn a rounding difference into up to 2 lr:
    `n_over_atol` counts those elements. Under bf16 autocast (the timed runs on CUDA) the two
    sides round each pass's matmuls to bf16 differently, ~4e-3 relative, and AdamW then moves
    many small-gradient parameters by up to 2 lr apart: a comparison at any tolerance that would
    still catch a fault is not possible there, so the check is made in fp32.
    """
    world, rank = distributed.world_size(), distributed.rank()
    torch.set_float32_matmul_precision("highest")  # fp32 matmuls in fp32 (no TF32) on CUDA
    tps = tokens_per_gpu * world
    settings = _ddp_settings(args, variant, seq_len, tps)
    many = _Trainee(settings, stream, device, rank, world, compile=False, autocast=False)
    norms_many = [many()[1].item() for _ in range(args.check_steps)]
    params = many.flat_params()
    low, high = params.clone(), params.clone()
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    out = None
    if rank == 0:
        one = _Trainee(settings, stream, device, 0, 1, compile=False, autocast=False)
        norms_one = [one()[1].item() for _ in range(args.check_steps)]
        diff = (one.flat_params() - params).abs()
        grad_rel = max(abs(a - b) / max(b, 1e-30) for a, b in zip(norms_many, norms_one))
        out = {"variant": variant, "seq_len": seq_len, "processes": world, "tokens_per_step": tps,
               "steps": args.check_steps, "dtype": "fp32", "compiled": False, "lr": settings.lr,
               "n_params": params.numel(), "max_abs_diff": diff.max().item(),
               "n_over_atol": int((diff > PARAM_ATOL).sum()), "atol": PARAM_ATOL,
               "rank_spread": (high - low).max().item(), "grad_norms_processes": norms_many,
               "grad_norms_one": norms_one, "grad_norm_max_rel_diff": grad_rel, "grad_norm_rtol": GRAD_NORM_RTOL}
        out["passed"] = (out["max_abs_diff"] <= PARAM_ATOL and out["rank_spread"] == 0.0 and grad_rel <= GRAD_NORM_RTOL)
        print("check:", json.dumps({k: v for k, v in out.items() if not k.startswith("grad_norms")}), flush=True)
    distributed.barrier()
    return out


def speedup_target(world: int) -> float:
    return SPEEDUP_TARGET_2 if world == 2 else 0.9 * world


def _ddp_table(meta: dict, rows: list[dict], checks: list[dict]) -> str:
    n = meta["processes"]
    mtok = lambda x: f"{x / 1e6:.3g}"  # noqa: E731
    lines = [
        f"# Data-parallel training throughput — {meta['device']} x {n} ({meta['backend']}), {meta['date']}", "",
        f"The trainer's step (`TrainStep`: DistributedDataParallel over {n} processes, each its share of every step's "
        f"batch) against the same step on one process. **Same per-GPU batch**: {meta['tokens_per_gpu']:,} tokens per "
        f"process per step, so the {n}-process run's global batch is {n}x larger ({n * meta['tokens_per_gpu']:,} tokens "
        f"per optimiser step). {meta['precision']}; {meta['compile']}. Dims: {meta['dims']}; vocab {VOCAB}; torch "
        f"{meta['torch']}. Tokens/s: median of {meta['repeats']} runs of {meta['steps']} steps, each from a barrier "
        f"to the slowest rank's end. Speed-up = {n}-process tokens/s / 1-process tokens/s; target >= "
        f"{speedup_target(n):g}x{' (issue 20)' if n == 2 else ' (0.9 N)'}.", "",
        f"| variant | seq_len | 1 process: tokens/step | Mtok/s | {n} processes: global tokens/step | Mtok/s | "
        f"speed-up | target | met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        one, many = r["one"], r["many"]
        lines.append(f"| {r['variant']} | {r['seq_len']} | {one['tokens_per_step']:,} | {mtok(one['tokens_per_s'])} | "
                     f"{many['tokens_per_step']:,} | {mtok(many['tokens_per_s'])} | {r['speedup']:.2f} | "
                     f"{r['target']:g} | {'yes' if r['met'] else '**no**'} |")
    lines += ["", f"Parameter check: {meta['check_steps']} steps on {n} processes vs one process with the same global "
              f"batch, same initialisation and batches, eager, fp32, lr {checks[0]['lr'] if checks else '-'} from the "
              f"first step. Pass: max |difference| <= {PARAM_ATOL:g}, ranks identical, gradient norms within "
              f"{GRAD_NORM_RTOL:g} relative (why these tolerances, and why not bf16: `_check` in bench_train.py).", "",
              "| variant | seq_len | global tokens/step | params | max abs diff | elements over tol | rank spread | "
              "max rel diff of grad norms | pass |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in checks:
        lines.append(f"| {c['variant']} | {c['seq_len']} | {c['tokens_per_step']:,} | {c['n_params']:,} | "
                     f"{c['max_abs_diff']:.2e} | {c['n_over_atol']} | {c['rank_spread']:.1e} | "
                     f"{c['grad_norm_max_rel_diff']:.1e} | {'yes' if c['passed'] else '**NO**'} |")
    return "\n".join(lines)


def ddp_main() -> None:
    """Under torchrun: the data-parallel speed-up and the parameter check (module docstring)."""
    parser = argparse.ArgumentParser(description="bench_train.py under torchrun: data-parallel speed-up")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--tokens-per-gpu", type=int, default=TrainSettings(variant="two_stream").tokens_per_step,
                        help="tokens per process per step (default: the recipe's tokens per step)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda: one GPU per rank, NCCL; cpu: gloo")
    parser.add_argument("--no-compile", action="store_true", help="time eager steps (the default off CUDA)")
    parser.add_argument("--dims", type=lambda v: tuple(int(x) for x in v.split(",")),
                        help="n_layers,d_model,n_heads,d_head,d_mlp (default: the bundled models')")
    parser.add_argument("--steps", type=int, default=12, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps after the first")
    parser.add_argument("--check-steps", type=int, default=3)
    parser.add_argument("--check-tokens-per-gpu", type=int, default=None,
                        help="tokens per process per step of the parameter check, a multiple of every length "
                        "(default: 16 sequences)")
    parser.add_argument("--stream-tokens", type=int, default=STREAM, help="random token stream batches are drawn from")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--suffix", default="", help="appended to the results' name (e.g. T128 for a run split by length)")
    args = parser.parse_args()

    device, joined = distributed.init_from_env(torch.device(args.device))
    world, main_rank = distributed.world_size(), distributed.is_main()
    compile = device.type == "cuda" and not args.no_compile
    if device.type == "cuda":
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(args.out).resolve() / ".inductor-cache"))
    stream = torch.randint(0, VOCAB, (args.stream_tokens,), generator=torch.Generator().manual_seed(1))
    rows, checks = [], []
    try:
        for seq_len in args.lengths:
            for variant in args.variants:
                one = _time_ddp(args, variant, seq_len, 1, stream, device, compile)
                many = _time_ddp(args, variant, seq_len, world, stream, device, compile)
                if main_rank:
                    speedup = many["tokens_per_s"] / one["tokens_per_s"]
                    rows.append({"variant": variant, "seq_len": seq_len, "tokens_per_gpu": args.tokens_per_gpu,
                                 "one": one, "many": many, "speedup": speedup, "target": speedup_target(world),
                                 "met": speedup >= speedup_target(world)})
                    print("row:", json.dumps({k: v for k, v in rows[-1].items() if k not in ("one", "many")}), flush=True)
        for seq_len in args.lengths:
            for variant in args.variants:
                c = _check(args, variant, seq_len, args.check_tokens_per_gpu or 16 * seq_len, stream, device)
                if main_rank:
                    checks.append(c)
        if main_rank:
            name, date = device_name(device), datetime.date.today().isoformat()
            dims = _ddp_settings(args, "two_stream", 128, args.tokens_per_gpu).to_dict()
            meta = {"device": name, "date": date, "processes": world, "backend": torch.distributed.get_backend(),
                    "torch": torch.__version__, "tokens_per_gpu": args.tokens_per_gpu, "steps": args.steps,
                    "repeats": args.repeats, "check_steps": args.check_steps,
                    "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
                    "compile": (f"compiled: one process in torch.compile mode {COMPILE_MODE!r} (CUDA graphs) as "
                                "`workbench train` runs it, DDP in the default mode" if compile else "eager"),
                    "dims": {k: dims[k] for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp")}}
            table = _ddp_table(meta, rows, checks)
            print(table, flush=True)
            write_results(result_stem(args.out, f"train-ddp{world}", name, date, args.suffix),
                          {**meta, "rows": rows, "checks": checks,
                           "all_checks_passed": all(c["passed"] for c in checks)}, table)
    finally:
        distributed.finish(joined)


if __name__ == "__main__":
    main()
