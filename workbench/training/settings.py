"""Everything a training run needs to know, in one validated dataclass (saved with the run)."""

from __future__ import annotations

import dataclasses
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
    max_chars: int | None = None
    """Cap on corpus characters (None: all; the stdlib loader has its own default cap)."""
    # ---- optimisation ----
    order: Literal["random", "left_to_right"] = "random"
    """"random": a fresh uniformly random generation order per sequence (the AO-ARM objective)."""
    steps: int = 2000
    batch_size: int = 64
    """Sequences per optimiser step, summed over all processes."""
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    beta2: float = 0.99
    # ---- bookkeeping ----
    eval_every: int = 250
    eval_batches: int = 8
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant={self.variant!r} is unknown; use one of {', '.join(VARIANTS)}")
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.order not in ("random", "left_to_right"):
            problems.append(f"order={self.order!r} must be 'random' or 'left_to_right'")
        if not 0 < self.lr < 1:
            problems.append(f"lr={self.lr} must be in (0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.warmup_steps < 0 or self.warmup_steps > self.steps:
            problems.append(f"warmup_steps={self.warmup_steps} must be in [0, steps={self.steps}]")
        if problems:
            raise ValueError("Invalid training settings: " + "; ".join(problems) + ".")

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
