"""Training loop for every variant: AdamW, warmup + cosine decay, gradient clipping, bf16 autocast
on GPU, fused attention, periodic evaluation, resumable checkpoints, JSON-lines metrics, and
several GPUs through torchrun (DistributedDataParallel).

A run directory holds `settings.json`, `metrics.jsonl` and `checkpoint/` (a loadable checkpoint
plus the optimiser state). Calling `train` on a directory with a checkpoint resumes it. The batch
of step s is drawn from a generator seeded by (seed, s), so a resumed run sees exactly the
batches and orders an uninterrupted one would, and N processes split the batch one would see.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from tqdm import tqdm

from workbench import checkpoint as ckpt
from workbench.data import load_corpus, make_tokenizer, random_windows, sequential_windows, train_val_split
from workbench.evaluation import Estimate, per_window_bits
from workbench.models import HookedAOModel, from_config
from workbench.orders import left_to_right, random_orders
from workbench.results_io import write_bytes_atomic
from workbench.training.settings import TrainSettings

VAL_TEXT = "val.txt"  # the validation split as text, so `workbench eval` needs no corpus
TRAINER_TENSORS = "trainer_state.safetensors"  # optimiser moments
TRAINER_JSON = "trainer_state.json"  # step and optimiser hyper-parameters


@dataclass
class RunResult:
    model: HookedAOModel
    checkpoint: Path
    metrics: dict[str, Any]


def train(settings: TrainSettings, out_dir: str | Path, device: str | None = None, progress: bool = True) -> RunResult:
    """Train (or resume) a run in `out_dir`; returns the final model and its checkpoint path."""
    out_dir = Path(out_dir)
    rank, world, device = _init_distributed(device)
    if settings.batch_size % world:
        raise ValueError(f"batch_size={settings.batch_size} must be divisible by the {world} processes")
    corpus = load_corpus(settings.data, **({"max_chars": settings.max_chars} if settings.max_chars else {}))
    tokenizer = make_tokenizer(settings.tokenizer, corpus.text)
    split = train_val_split(tokenizer.encode_tensor(corpus.text), settings.seq_len, settings.val_fraction)
    val_windows = sequential_windows(split.val, settings.seq_len)
    model = from_config(settings.model_config(tokenizer.vocab_size))
    model.tokenizer = tokenizer
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, betas=(0.9, settings.beta2), fused=device.type == "cuda",
    )
    start_step = _maybe_resume(out_dir, settings, model, optimizer, device)
    data_meta = {
        "corpus": corpus.metadata(), "val_fraction": settings.val_fraction,
        "n_train_tokens": split.train.numel(), "n_val_tokens": split.val.numel(), "val_text": VAL_TEXT,
    }
    n_params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out_dir / "settings.json", json.dumps(settings.to_dict(), indent=2).encode())
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    per_rank = settings.batch_size // world
    metrics: dict[str, Any] = {}
    bar = tqdm(total=settings.steps, initial=start_step, disable=not progress or rank != 0, desc=settings.variant)
    t0, tokens_seen = time.perf_counter(), 0
    for step in range(start_step, settings.steps):
        # Every process draws the same global batch and keeps its own slice, so N processes
        # compute exactly the gradient one process would on the whole batch.
        generator = torch.Generator().manual_seed(_step_seed(settings.seed, step))
        tokens = random_windows(split.train, settings.seq_len, settings.batch_size, generator)
        if settings.order == "random":
            order = random_orders(settings.batch_size, settings.seq_len, generator)
        else:
            order = left_to_right(settings.batch_size, settings.seq_len)
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        tokens, order = tokens[mine], order[mine]
        lr = learning_rate(settings, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            loss = train_model(tokens.to(device), order.to(device), return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        tokens_seen += settings.batch_size * settings.seq_len
        bar.update(1)
        last = step + 1 == settings.steps
        if rank == 0 and ((step + 1) % 50 == 0 or last):
            elapsed = time.perf_counter() - t0
            line = {"step": step + 1, "loss_bits": loss.item() / math.log(2), "lr": lr,
                    "grad_norm": grad_norm.item(), "tokens_per_s": tokens_seen / elapsed}
            _append_jsonl(out_dir / "metrics.jsonl", line)
            bar.set_postfix(bits=f"{line['loss_bits']:.3f}")
        if rank == 0 and ((step + 1) % settings.eval_every == 0 or last):
            metrics = _evaluate(model, val_windows, settings, step + 1)
            _append_jsonl(out_dir / "metrics.jsonl", metrics)
        if rank == 0 and ((step + 1) % settings.checkpoint_every == 0 or last):
            _save(out_dir, model, optimizer, settings, step + 1, data_meta, metrics, n_params, split.val, tokenizer)
    bar.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return RunResult(model.eval(), out_dir / "checkpoint", metrics)


def learning_rate(settings: TrainSettings, step: int) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(settings.steps - settings.warmup_steps, 1)
    progress = min((step - settings.warmup_steps) / span, 1.0)
    floor = settings.lr * settings.min_lr_ratio
    return floor + (settings.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def _evaluate(model: HookedAOModel, windows: torch.Tensor, settings: TrainSettings, step: int) -> dict[str, Any]:
    """Validation bits/token on a fixed subset, with fixed orders, so curves are comparable."""
    model.eval()
    subset = windows[: settings.eval_batches * 16]
    any_order, _ = per_window_bits(model, subset, n_orders=2, seed=settings.seed + 1)
    l2r, _ = per_window_bits(model, subset, 1, 0, left_to_right=True)
    model.train()
    a, l = Estimate.of(any_order), Estimate.of(l2r)
    return {"step": step, "val_any_order_bits": a.mean, "val_any_order_ci": [a.ci_low, a.ci_high],
            "val_left_to_right_bits": l.mean, "val_windows": len(subset)}


def _save(out_dir, model, optimizer, settings, step, data_meta, metrics, n_params, val_tokens, tokenizer) -> None:
    tensors, state = _optimizer_to_flat(optimizer)
    state["step"] = step
    training = {**settings.to_dict(), "n_params": n_params, "steps_done": step}
    ckpt.save(model, out_dir / "checkpoint", data=data_meta, training=training, metrics=metrics,
              extra_files={TRAINER_TENSORS: safetensors_bytes(tensors),
                           TRAINER_JSON: json.dumps(state, indent=2).encode(),
                           VAL_TEXT: tokenizer.decode(val_tokens).encode("utf-8")})


def _maybe_resume(out_dir: Path, settings: TrainSettings, model, optimizer, device) -> int:
    path = out_dir / "checkpoint"
    if not (path / TRAINER_JSON).is_file():
        return 0
    saved = json.loads((out_dir / "settings.json").read_text())
    if saved != settings.to_dict():
        diff = sorted(k for k in set(saved) | set(settings.to_dict()) if saved.get(k) != settings.to_dict().get(k))
        raise ValueError(
            f"{out_dir} holds a run with different settings (differing: {diff}); resume with the same "
            "settings, or choose a new --out directory."
        )
    loaded = ckpt.load(path, device=device)
    model.load_state_dict(loaded.state_dict())
    state = json.loads((path / TRAINER_JSON).read_text())
    _optimizer_from_flat(optimizer, load_file(str(path / TRAINER_TENSORS), device=str(device)), state)
    _truncate_metrics(out_dir / "metrics.jsonl", state["step"])
    print(f"resuming {out_dir} from step {state['step']}")
    return state["step"]


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors = {
        f"state.{idx}.{key}": value.detach().contiguous().cpu()
        for idx, entry in sd["state"].items()
        for key, value in entry.items()
    }
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        entries.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": entries, "param_groups": state["param_groups"]})


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines a killed run wrote after its last checkpoint (they will be redone), and a
    torn last line (the kill cut its write short); a bad line before the last one is an error."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line) if line.strip() else None
            if entry is not None and not isinstance(entry.get("step"), int):
                raise ValueError("no integer 'step'")
        except (ValueError, AttributeError) as err:
            if number == len(lines):
                break  # the line a kill tore: dropped, it will be written again
            raise ValueError(
                f"{path} line {number} is not a metrics record ({err}); fix or delete that line, then resume."
            ) from err
        if entry is not None and entry["step"] <= step:
            kept.append(line)
    write_bytes_atomic(path, "".join(l + "\n" for l in kept).encode())


def _step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def _append_jsonl(path: Path, line: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


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
