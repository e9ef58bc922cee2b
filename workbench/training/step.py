"""The training step's pieces: each step's batch, the loss the step differentiates, and running
that loss compiled with a loud fallback to eager.

Batches are drawn on the training device from valid parts (a token stream checked once, orders
that are permutations by construction), so the compiled loss has no input checks (and so no
graph breaks or device syncs) inside it. The loss is the mean NLL over every position,
which does not depend on coordinates, so it is taken in slot (generation) order and the logits
never need to go back to sequence positions.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from workbench.data import random_windows
from workbench.models import HookedAOModel
from workbench.orders import check_tokens, left_to_right, random_orders
from workbench.training.settings import TrainSettings


COMPILE_MODE = "reduce-overhead"
"""torch.compile's mode for the training step: CUDA graphs, since a step of these small models is
bound by kernel launches (benchmarks/results/train-*.md: +10-70% tokens/s over the default mode)."""


def step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


class BatchSource:
    """Each step's whole batch (every process's share): [batch_size, seq_len] tokens and orders,
    drawn on the training device from a generator seeded by (seed, step).

    The draw depends on nothing but the settings, the step and the device type, so any number
    of processes (each keeps its slice), any number of accumulation passes, and a resumed run all
    see the same data. Token ids are checked once, for the whole stream, when the source is made;
    orders are permutations by construction (argsort of uniform keys). So a step costs the host a
    few kernel launches and no copy or sync, and the compiled loss needs no input checks.
    """

    def __init__(self, settings: TrainSettings, train_tokens: Tensor, d_vocab: int, device: torch.device):
        self.settings, self.device = settings, torch.device(device)
        self.stream = check_tokens(train_tokens, d_vocab, train_tokens.numel())[0].to(self.device)

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        s = self.settings
        generator = torch.Generator(device=self.device).manual_seed(step_seed(s.seed, step))
        tokens = random_windows(self.stream, s.seq_len, s.batch_size, generator)
        if s.order == "random":
            return tokens, random_orders(s.batch_size, s.seq_len, generator)
        return tokens, left_to_right(s.batch_size, s.seq_len, self.device)


class SlotLoss(nn.Module):
    """Mean NLL (nats) of a model on checked inputs, computed in slot order.

    Equal to `model(tokens, order, return_type="loss")` (the same terms, summed in another
    order); a module so that DistributedDataParallel and torch.compile can wrap it.
    """

    def __init__(self, model: HookedAOModel):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, order: Tensor) -> Tensor:
        ordered = tokens.gather(1, order)
        logits = self.model._forward_slots(ordered, order)  # row t predicts ordered[:, t]
        return F.cross_entropy(logits.flatten(0, 1).float(), ordered.flatten())


class CompiledOrEager:
    """Runs `fn(*args)` through `torch.compile(module)`, and if compiling fails, says so loudly
    (a warning and a line on stderr, with the error) and runs the eager module from then on.

    Compilation happens on the first call (forward) and the first backward; `run` wraps both,
    so a failure in either is caught. `compiled` says which path the last call took.
    """

    def __init__(self, module: nn.Module, enabled: bool, mode: str | None = None):
        self.module = module
        self.compiled = enabled
        self._fn: Callable[..., Tensor] = torch.compile(module, dynamic=False, mode=mode) if enabled else module
        self._proven = not enabled

    def run(self, backward: Callable[[Tensor], None], *args: Tensor) -> Tensor:
        """loss = fn(*args); backward(loss); returns the loss."""
        if self._proven:
            loss = self._fn(*args)
            backward(loss)
            return loss
        try:
            loss = self._fn(*args)
            backward(loss)
        except Exception as error:  # noqa: BLE001 (any compiler failure: report it, go on eager)
            self.fall_back(error)
            loss = self._fn(*args)
            backward(loss)
        self._proven = True
        return loss

    def fall_back(self, error: Exception) -> None:
        message = (f"torch.compile failed ({type(error).__name__}: {str(error).strip().splitlines()[0][:300]}); "
                   "training continues EAGER, which is several times slower. Pass --no-compile to skip compiling.")
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        print(f"WARNING: {message}", file=sys.stderr, flush=True)
        for p in self.module.parameters():
            p.grad = None  # drop any half-accumulated gradient of the failed attempt
        self._fn, self.compiled = self.module, False


def split_batch(settings: TrainSettings, world: int, micro_batch_tokens: int | None) -> tuple[int, int]:
    """(sequences per process, accumulation passes per step), or a clear error."""
    if settings.batch_size % world:
        raise ValueError(f"tokens_per_step={settings.tokens_per_step} is {settings.batch_size} sequences of "
                         f"{settings.seq_len}, which {world} processes cannot share evenly; choose a "
                         f"tokens_per_step that is a multiple of {world * settings.seq_len}")
    per_rank = settings.batch_size // world
    if micro_batch_tokens is None:
        return per_rank, 1
    micro = micro_batch_tokens // settings.seq_len
    if micro < 1 or per_rank % micro:
        raise ValueError(f"micro_batch_tokens={micro_batch_tokens} must be a whole number of sequences "
                         f"(seq_len={settings.seq_len}) that divides each process's {per_rank} sequences")
    return per_rank, per_rank // micro


def make_optimizer(model: nn.Module, settings: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    """The trainer's AdamW: weight decay on matrices only, fused on CUDA."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, betas=(0.9, settings.beta2), fused=torch.device(device).type == "cuda",
    )


class TrainStep:
    """One optimiser step as the trainer takes it, on one process of `world`.

    Every process is handed the step's whole batch (`BatchSource`) and keeps its rows
    [rank * per_rank, (rank + 1) * per_rank); those go through `n_micro` accumulation passes of
    `SlotLoss` (wrapped in DistributedDataParallel when world > 1, whose gradient all-reduce runs
    on the last pass only), under bf16 autocast on CUDA, through `CompiledOrEager`; then gradient
    clipping and the optimiser step at the caller's learning rate. `workbench train` and
    benchmarks/bench_train.py (one GPU and under torchrun) both step through this.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, settings: TrainSettings,
                 device: torch.device, rank: int = 0, world: int = 1, compile: bool | None = None,
                 micro_batch_tokens: int | None = None, autocast: bool | None = None):
        device = torch.device(device)
        self.model, self.optimizer, self.settings, self.rank, self.world = model, optimizer, settings, rank, world
        self.per_rank, self.n_micro = split_batch(settings, world, micro_batch_tokens)
        loss_module: nn.Module = SlotLoss(model)
        if world > 1:
            loss_module = nn.parallel.DistributedDataParallel(
                loss_module, device_ids=[device] if device.type == "cuda" else None)
        self.loss_module = loss_module
        # CUDA graphs on one process with one pass per step; under DDP the default mode, since its
        # gradient hooks run between the graph's kernels (benchmarks/bench_train.py under torchrun
        # measures that case), and with gradient accumulation too: a second replay overwrites the
        # graph's outputs that the first pass's gradients still live in ("accessing tensor output
        # of CUDAGraphs that has been overwritten", seen on an H100 on 2026-12-07).
        graphs = world == 1 and self.n_micro == 1 and device.type == "cuda"
        self.step_fn = CompiledOrEager(loss_module, device.type == "cuda" if compile is None else compile,
                                       COMPILE_MODE if graphs else None)
        bf16 = device.type == "cuda" if autocast is None else autocast
        self._autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    @property
    def compiled(self) -> bool:
        return self.step_fn.compiled

    def __call__(self, tokens: Tensor, order: Tensor, lr: float) -> tuple[Tensor, Tensor]:
        """Step on the step's whole batch at learning rate `lr`; returns (this process's mean loss
        in nats, the gradient norm before clipping), both on the device (reading them syncs)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n_micro = self.n_micro
        mine = slice(self.rank * self.per_rank, (self.rank + 1) * self.per_rank)
        loss_sum = torch.zeros((), device=tokens.device)
        for i, (t, o) in enumerate(zip(tokens[mine].chunk(n_micro), order[mine].chunk(n_micro))):
            sync = nullcontext() if self.world == 1 or i == n_micro - 1 else self.loss_module.no_sync()
            with sync, self._autocast():
                loss = self.step_fn.run(lambda l: (l / n_micro).backward(), t, o)
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / n_micro, grad_norm


def flops_per_token(loss_module: nn.Module, tokens: Tensor, *rest: Tensor) -> float:
    """Training FLOPs per input token of one forward + backward of `loss_module(tokens, *rest)`,
    counted by torch's FlopCounterMode (matmuls and attention; causal SDPA counted as full).
    Leaves no gradient behind."""
    with FlopCounterMode(display=False) as counter:
        loss_module(tokens, *rest).backward()
    for p in loss_module.parameters():
        p.grad = None
    return counter.get_total_flops() / tokens.numel()
