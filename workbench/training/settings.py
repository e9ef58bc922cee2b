"""Everything a training run needs to know, in one validated dataclass (saved with the run).

The schedule is stated in tokens, not steps: `train_tokens` in all, `tokens_per_step` per
optimiser step (summed over processes and gradient-accumulation passes), warmup and the
evaluation / checkpoint cadence in tokens too. So changing the batch keeps the schedule's
shape, and a run's settings say how much data it saw. How a step is executed (how many
processes, how many sequences per forward pass, compiled or eager) is not a setting: it does not
change what is computed, and a run may resume with any of them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from workbench.config import VARIANTS, AOConfig


@dataclass(frozen=True)
class TrainSettings:
    # ---- model shape (the rest of AOConfig comes from the data: n_ctx = seq_len, d_vocab) ----
    variant: str
    n_layers: int = 4
    d_model: int = 192
    n_heads: int = 6
    d_head: int = 32
    d_mlp: int = 768
    # ---- data ----
    data: str = "stdlib"
    """A corpus spec for workbench.data.load_corpus: "stdlib" or a path."""
    tokenizer: str = "char"
    """"char" (built from the corpus), "byte", or a path to a local tokenizer.json."""
    seq_len: int = 128
    val_fraction: float = 0.1
    split: Literal["tail", "documents"] = "tail"
    """How validation is held out: "tail" (the last val_fraction of the text) or "documents"
    (whole documents, chosen by a hash of their text; workbench.data.document_split)."""
    max_chars: int | None = None
    """Cap on corpus characters (None: all; the stdlib loader has its own default cap)."""
    # ---- optimisation, in tokens ----
    order: Literal["random", "left_to_right"] = "random"
    """"random": a fresh uniformly random generation order per sequence (the AO-ARM objective)."""
    train_tokens: int = 131_072_000
    """Tokens in the whole run (steps = train_tokens // tokens_per_step)."""
    tokens_per_step: int = 65_536
    """Tokens per optimiser step, summed over all processes; a multiple of seq_len."""
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio at the last token."""
    warmup_tokens: int = 6_553_600
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (> 0; `inf` for no clipping)."""
    beta2: float = 0.99
    # ---- bookkeeping ----
    eval_every_tokens: int = 16_384_000
    eval_windows: int = 128
    """Validation windows in each evaluation during training (the first ones, fixed orders)."""
    checkpoint_every_tokens: int = 32_768_000
    early_stop_evals: int = 0
    """Stop when validation any-order bits have not improved for this many evaluations (0: never)."""
    snapshots: int = 0
    """Keep this many intermediate models (log-spaced in tokens) under snapshots/ for emergence studies."""
    seed: int = 0

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("Invalid training settings: " + "; ".join(problems) + ".")

    @property
    def batch_size(self) -> int:
        """Sequences per optimiser step (all processes together)."""
        return self.tokens_per_step // self.seq_len

    @property
    def steps(self) -> int:
        return self.train_tokens // self.tokens_per_step

    def model_config(self, d_vocab: int) -> AOConfig:
        return AOConfig(
            variant=self.variant,  # type: ignore[arg-type]  (AOConfig validates it)
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_head,
            d_mlp=self.d_mlp,
            n_ctx=self.seq_len,
            d_vocab=d_vocab,
            seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_POSITIVE_INTS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "seq_len", "train_tokens",
                  "tokens_per_step", "eval_every_tokens", "eval_windows", "checkpoint_every_tokens")


def _problems(s: TrainSettings) -> list[str]:
    """Every out-of-range setting, each with the range it must be in."""
    problems = []
    if s.variant not in VARIANTS:
        problems.append(f"variant={s.variant!r} is unknown; use one of {', '.join(VARIANTS)}")
    for name in _POSITIVE_INTS:
        value = getattr(s, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{name}={value!r} must be a positive integer")
    for name in ("warmup_tokens", "early_stop_evals", "snapshots", "seed"):
        value = getattr(s, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{name}={value!r} must be an integer >= 0")
    if s.max_chars is not None and (not isinstance(s.max_chars, int) or s.max_chars < 1):
        problems.append(f"max_chars={s.max_chars!r} must be a positive integer or None")
    if s.split not in ("tail", "documents"):
        problems.append(f"split={s.split!r} must be 'tail' or 'documents'")
    if s.order not in ("random", "left_to_right"):
        problems.append(f"order={s.order!r} must be 'random' or 'left_to_right'")
    for name, low, high in (("lr", 0.0, 1.0), ("val_fraction", 0.0, 1.0), ("beta2", 0.0, 1.0)):
        value = getattr(s, name)
        if not (isinstance(value, (int, float)) and low < value < high):
            problems.append(f"{name}={value!r} must be in ({low:g}, {high:g})")
    if not (isinstance(s.min_lr_ratio, (int, float)) and 0 <= s.min_lr_ratio <= 1):
        problems.append(f"min_lr_ratio={s.min_lr_ratio!r} must be in [0, 1]")
    if not (isinstance(s.weight_decay, (int, float)) and 0 <= s.weight_decay < 1):
        problems.append(f"weight_decay={s.weight_decay!r} must be in [0, 1)")
    if not (isinstance(s.grad_clip, (int, float)) and s.grad_clip > 0 and not math.isnan(s.grad_clip)):
        problems.append(f"grad_clip={s.grad_clip!r} must be > 0 (the largest gradient norm kept; inf: no clipping)")
    if problems:  # the relations below need valid numbers
        return problems
    if s.tokens_per_step % s.seq_len:
        problems.append(f"tokens_per_step={s.tokens_per_step} must be a multiple of seq_len={s.seq_len}")
    if s.train_tokens < s.tokens_per_step:
        problems.append(f"train_tokens={s.train_tokens} must be at least tokens_per_step={s.tokens_per_step}")
    if s.warmup_tokens > s.train_tokens:
        problems.append(f"warmup_tokens={s.warmup_tokens} must be at most train_tokens={s.train_tokens}")
    return problems
