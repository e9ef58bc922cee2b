"""Training loop for every variant: AdamW (fused on CUDA), warmup + cosine decay stated in tokens,
gradient clipping and accumulation, bf16 autocast and a compiled step on CUDA, periodic
evaluation with early stopping, resumable checkpoints, JSON-lines metrics, and several GPUs
through torchrun (DistributedDataParallel).

A run directory (`workbench.training.run_dir`) holds `settings.json` (the settings and the corpus
fingerprint), `metrics.jsonl`, `checkpoint/` (a loadable checkpoint plus the optimiser state: what
a resume starts from), `best/` (the model at the lowest validation any-order NLL so far) and, when
asked, `snapshots/step-NNNNNN/` (intermediate models, log-spaced in tokens). Calling `train` on a
directory with a checkpoint resumes it. The batch of step s is drawn from a generator seeded by
(seed, s) on the training device (`workbench.training.step.BatchSource`), so a resumed run sees exactly the batches and
orders an uninterrupted one would, whatever the number of processes or accumulation passes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from workbench.data import document_split, load_corpus, make_tokenizer, sequential_windows, train_val_split
from workbench.evaluation import per_window_bits
from workbench.models import HookedAOModel, from_config
from workbench.results_io import write_bytes_atomic
from workbench.training.run_dir import (
    VAL_TEXT,
    Saver,
    append_jsonl,
    check_run_dir,
    recover_saves,
    resume,
    truncate_metrics,
)
from workbench.training.settings import TrainSettings
from workbench.stats import blocked_mean
from workbench.training.step import BatchSource, TrainStep, make_optimizer, split_batch

LOG_EVERY = 25  # steps between metric lines (each costs one device sync)


@dataclass
class RunResult:
    model: HookedAOModel
    checkpoint: Path
    metrics: dict[str, Any]
    stopped_early: bool = False
    out_of_time: bool = False
    """The run saved its checkpoint and returned at `time_limit_s`; call `train` again to go on."""
    interrupted: bool = False
    """Ctrl-C: the run finished its step, saved its checkpoint and returned; call `train` again to go on."""


def train(
    settings: TrainSettings,
    out_dir: str | Path,
    device: str | None = None,
    progress: bool = True,
    compile: bool | None = None,
    micro_batch_tokens: int | None = None,
    time_limit_s: float | None = None,
) -> RunResult:
    """Train (or resume) a run in `out_dir`; returns the final model and its checkpoint path.

    `compile` (default: on CUDA) runs the step through torch.compile, falling back to eager with a
    warning if compiling fails. `micro_batch_tokens` caps the tokens of one forward pass per
    process (gradient accumulation makes up the step); default: the whole per-process batch.
    Neither changes what is computed, so a run may resume with other values (or processes).
    `time_limit_s` saves a checkpoint and returns once that much time has passed (checked every
    LOG_EVERY steps): a long run done as chunks, each resuming the last, trains exactly as one.
    """
    out_dir = Path(out_dir)
    rank, world, device = _init_distributed(device)
    split_batch(settings, world, micro_batch_tokens)  # a bad split fails before any work
    corpus = load_corpus(settings.data, **({"max_chars": settings.max_chars} if settings.max_chars else {}))
    run_record = {"settings": settings.to_dict(), "corpus": corpus.metadata()}
    check_run_dir(out_dir, run_record)
    tokenizer = make_tokenizer(settings.tokenizer, corpus.text)
    if settings.split == "documents":
        split = document_split(corpus.documents, tokenizer.encode_tensor, settings.seq_len, settings.val_fraction)
    else:
        split = train_val_split(tokenizer.encode_tensor(corpus.text), settings.seq_len, settings.val_fraction)
    val_windows = sequential_windows(split.val, settings.seq_len)
    model = from_config(settings.model_config(tokenizer.vocab_size))
    model.tokenizer = tokenizer
    model.to(device)
    optimizer = make_optimizer(model, settings, device)
    if rank == 0:
        recover_saves(out_dir)
    if world > 1:
        dist.barrier()  # every rank reads the checkpoint rank 0 has recovered
    state = resume(out_dir, model, optimizer, device)
    data_meta = {
        "corpus": corpus.metadata(), "val_fraction": settings.val_fraction, "split": settings.split,
        "n_train_tokens": split.train.numel(), "n_val_tokens": split.val.numel(), "val_text": VAL_TEXT,
    }
    n_params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out_dir / "settings.json", json.dumps(run_record, indent=2).encode())
        truncate_metrics(out_dir / "metrics.jsonl", state.step)
    train_step = TrainStep(model, optimizer, settings, device, rank, world, compile, micro_batch_tokens)
    batches = BatchSource(settings, split.train, tokenizer.vocab_size, device)
    saver = Saver(out_dir, settings, data_meta, n_params, split.val, tokenizer)
    snapshot_steps = _snapshot_steps(settings)
    metrics: dict[str, Any] = {}
    stopped_early = out_of_time = interrupted = False
    started = time.perf_counter()
    bar = tqdm(total=settings.steps, initial=state.step, disable=not progress or rank != 0,
               desc=settings.variant, unit="step")
    if state.stopped and rank == 0:
        print(f"{out_dir} stopped early at step {state.step}; nothing to resume (best model: {out_dir / 'best'})")
    clock, tokens_since = time.perf_counter(), 0
    with _graceful_interrupt(world == 1) as stop_requested:
        for step in range(state.step, state.step if state.stopped else settings.steps):
            tokens, order = batches(step)
            lr = learning_rate(settings, step * settings.tokens_per_step)
            loss, grad_norm = train_step(tokens, order, lr)
            tokens_since += settings.tokens_per_step
            bar.update(1)
            done = step + 1
            last = done == settings.steps
            if rank == 0 and (done % LOG_EVERY == 0 or last):
                loss_bits = loss.item() / math.log(2)  # this rank's share of the batch
                elapsed = time.perf_counter() - clock
                line = {"step": done, "tokens": done * settings.tokens_per_step, "loss_bits": loss_bits,
                        "lr": lr, "grad_norm": grad_norm.item(), "tokens_per_s": tokens_since / elapsed,
                        "compiled": train_step.compiled}
                append_jsonl(out_dir / "metrics.jsonl", line)
                bar.set_postfix_str(f"{line['tokens_per_s'] / 1e6:.2f} Mtok/s, train {loss_bits:.3f} bits"
                                    + (f", val {metrics['val_any_order_bits']:.3f}" if metrics else ""))
                clock, tokens_since = time.perf_counter(), 0
            if time_limit_s is not None and done % LOG_EVERY == 0 and not last:
                out_of_time = _agree(time.perf_counter() - started > time_limit_s, world, device)
            interrupted = stop_requested() and not last
            evaluate = done % _every(settings.eval_every_tokens, settings) == 0 or last
            checkpoint = done % _every(settings.checkpoint_every_tokens, settings) == 0 or last or out_of_time or interrupted
            if (evaluate or checkpoint or done in snapshot_steps) and device.type == "cuda":
                torch.cuda.synchronize(device)  # the pause below should not absorb queued training work
            stop, paused = False, time.perf_counter()
            if evaluate:
                if rank == 0:
                    metrics = _evaluate(model, val_windows, settings, done)
                    append_jsonl(out_dir / "metrics.jsonl", metrics)
                    state.step = done
                    if metrics["val_any_order_bits"] < state.best_bits:
                        state.best_bits, state.evals_since_best = metrics["val_any_order_bits"], 0
                        saver.model_only(model, out_dir / "best", done, metrics)
                    else:
                        state.evals_since_best += 1
                    stop = 0 < settings.early_stop_evals <= state.evals_since_best
                stop = _agree(stop, world, device)
            if rank == 0 and done in snapshot_steps:
                saver.model_only(model, out_dir / "snapshots" / f"step-{done:06d}", done, metrics, dtype=torch.float16)
            if rank == 0 and (checkpoint or stop):
                state.step, state.stopped = done, stop
                saver.full(model, optimizer, state, metrics)
            clock += time.perf_counter() - paused  # tokens/s counts training time only
            if stop:
                stopped_early = True
                if rank == 0:
                    print(f"early stop at step {done}: validation any-order bits have not improved for "
                          f"{settings.early_stop_evals} evaluations (best {state.best_bits:.4f}, in {out_dir / 'best'})")
                break
            if out_of_time:
                if rank == 0:
                    print(f"time limit of {time_limit_s:.0f} s reached at step {done}: checkpoint saved; rerun to go on")
                break
            if interrupted:
                print(f"interrupted at step {done}: checkpoint saved in {out_dir / 'checkpoint'}; rerun the same command to resume",
                      file=sys.stderr)
                break
    bar.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return RunResult(model.eval(), out_dir / "checkpoint", metrics, stopped_early or state.stopped, out_of_time, interrupted)


@contextmanager
def _graceful_interrupt(enabled: bool) -> Iterator[Callable[[], bool]]:
    """While training in one process: the first Ctrl-C asks the loop to finish its step, save a
    checkpoint and return (a step cut in half would leave the optimiser half-applied); a second
    Ctrl-C stops at once, leaving the last checkpoint. Yields "was a stop asked for?"."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    asked: list[bool] = []

    def handler(signum, frame) -> None:  # noqa: ANN001 (signal handler signature)
        if asked:
            raise KeyboardInterrupt
        asked.append(True)
        print("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(asked)
    finally:
        signal.signal(signal.SIGINT, previous)


def learning_rate(settings: TrainSettings, tokens_done: int) -> float:
    """Linear warmup to `lr` over `warmup_tokens`, then cosine decay to `lr * min_lr_ratio` at
    `train_tokens`; `tokens_done` is the tokens seen before the step it sets the rate of."""
    if tokens_done < settings.warmup_tokens:
        return settings.lr * min(1.0, (tokens_done + settings.tokens_per_step) / settings.warmup_tokens)
    span = max(settings.train_tokens - settings.warmup_tokens, 1)
    progress = min((tokens_done - settings.warmup_tokens) / span, 1.0)
    floor = settings.lr * settings.min_lr_ratio
    return floor + (settings.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _every(tokens: int, settings: TrainSettings) -> int:
    """A cadence in tokens as a whole number of steps (at least one)."""
    return max(tokens // settings.tokens_per_step, 1)


def _snapshot_steps(settings: TrainSettings) -> set[int]:
    """`snapshots` steps, log-spaced (halving back from the last step), for emergence studies."""
    return {max(round(settings.steps / 2 ** k), 1) for k in range(settings.snapshots)} if settings.snapshots else set()


def _agree(stop: bool, world: int, device: torch.device) -> bool:
    """Rank 0's decision, on every rank."""
    if world == 1:
        return stop
    flag = torch.tensor([float(stop)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


@torch.no_grad()
def _evaluate(model: HookedAOModel, windows: torch.Tensor, settings: TrainSettings, step: int) -> dict[str, Any]:
    """Validation bits/token on a fixed subset (the first windows), with fixed orders, so curves are
    comparable; the interval is blocked over 16 contiguous blocks (workbench.stats.blocked_mean)."""
    model.eval()
    subset = windows[: settings.eval_windows]
    any_order, _ = per_window_bits(model, subset, n_orders=2, seed=settings.seed + 1)
    l2r, _ = per_window_bits(model, subset, 1, 0, left_to_right=True)
    model.train()
    a, l = blocked_mean(any_order), blocked_mean(l2r)  # consecutive windows are correlated
    return {"step": step, "tokens": step * settings.tokens_per_step, "val_any_order_bits": a.mean,
            "val_any_order_ci": [a.ci_low, a.ci_high], "val_left_to_right_bits": l.mean,
            "val_windows": len(subset)}


def _init_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) this joins the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device
