"""Per-window NLL in bits per token, and its summary with blocked intervals."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.models import HookedAOModel
from workbench.orders import random_orders
from workbench.stats import Estimate, blocked_mean, lag1_autocorrelation


@torch.no_grad()
def per_window_bits(
    model: HookedAOModel,
    windows: Int[Tensor, "window pos"],
    n_orders: int,
    seed: int,
    batch_size: int = 32,
    left_to_right: bool = False,
) -> tuple[Tensor, Tensor]:
    """(mean bits per token per window [window], bits per generation step [window, order, step]).

    Order k of every window is drawn from one generator seeded with `seed` ([window, step] at a
    time), so two models evaluated on the same windows with the same seed and `n_orders` see the
    same orders, whatever the batch size: their per-window values can be paired."""
    generator = torch.Generator().manual_seed(seed)
    device = model.W_E.device
    n_windows, n_pos = windows.shape
    orders = 1 if left_to_right else n_orders
    by_step = torch.empty(n_windows, orders, n_pos, dtype=torch.float64)
    for o in range(orders):
        if left_to_right:
            all_orders = torch.arange(n_pos).expand(n_windows, n_pos)
        else:
            all_orders = random_orders(n_windows, n_pos, generator)  # [window, step]
        for start in range(0, n_windows, batch_size):
            tokens = windows[start : start + batch_size].to(device)
            order = all_orders[start : start + batch_size].to(device)
            nll = model.nll(tokens, order)  # [batch, pos], nats
            by_step[start : start + tokens.shape[0], o] = (nll.gather(1, order) / math.log(2)).double().cpu()
    return by_step.mean(dim=(1, 2)), by_step


@dataclass(frozen=True)
class WindowValues:
    """Everything `evaluate` summarises, per window (what `workbench eval --out` saves beside
    the JSON). Windows are in text order; `start` is each window's first token in the
    evaluated token stream."""

    any_order: Float[Tensor, "window order"]  # bits/token of each window under each random order
    left_to_right: Float[Tensor, " window"]  # bits/token of each window, identity order
    by_fraction: Float[Tensor, "window bin"]  # bits/token per bin of generation steps, mean over orders
    fraction: Float[Tensor, " bin"]  # centre of each bin, as a fraction of the window revealed
    start: Int[Tensor, " window"]
    seq_len: int
    seed: int
    windows_sha256: str  # of the token ids: equal hashes, seeds and order counts = pairable

    @property
    def any_order_per_window(self) -> Float[Tensor, " window"]:
        return self.any_order.mean(dim=1)

    @property
    def n_windows(self) -> int:
        return self.any_order.shape[0]

    def pairable_with(self, other: WindowValues) -> bool:
        """Same windows, same orders: per-window differences are paired."""
        return (self.windows_sha256, self.seed, self.seq_len, self.any_order.shape) == (
            other.windows_sha256, other.seed, other.seq_len, other.any_order.shape)

    def tensors(self) -> dict[str, Tensor]:
        return {"any_order": self.any_order, "left_to_right": self.left_to_right,
                "by_fraction": self.by_fraction, "fraction": self.fraction, "start": self.start}


def windows_fingerprint(windows: Tensor) -> str:
    return hashlib.sha256(windows.to(torch.int64).contiguous().cpu().numpy().tobytes()).hexdigest()


def evaluate_windows(
    model: HookedAOModel,
    windows: Int[Tensor, "window pos"],
    n_orders: int = 4,
    seed: int = 0,
    batch_size: int = 32,
    n_step_bins: int = 16,
    start: Int[Tensor, " window"] | None = None,
) -> WindowValues:
    """Any-order bits/token of each window under each of `n_orders` random orders, left-to-right
    bits/token of each window, and bits/token per bin of generation steps. `start`: the first
    token of each window in its text (default: consecutive windows from 0)."""
    if windows.ndim != 2 or windows.shape[0] == 0:
        raise ValueError(f"need a non-empty [window, pos] tensor of token ids, got shape {tuple(windows.shape)}")
    n_windows, n_pos = windows.shape
    _, by_step = per_window_bits(model, windows, n_orders, seed, batch_size)
    l2r, _ = per_window_bits(model, windows, 1, seed, batch_size, left_to_right=True)
    bins = min(n_step_bins, n_pos)
    edges = torch.linspace(0, n_pos, bins + 1).round().long()
    by_fraction = torch.stack([by_step[:, :, edges[i] : edges[i + 1]].mean(dim=(1, 2)) for i in range(bins)], dim=1)
    return WindowValues(
        any_order=by_step.mean(dim=2),
        left_to_right=l2r,
        by_fraction=by_fraction,
        fraction=((edges[:-1] + edges[1:]) / 2 / n_pos).double(),
        start=torch.arange(n_windows) * n_pos if start is None else start.to(torch.int64),
        seq_len=n_pos,
        seed=seed,
        windows_sha256=windows_fingerprint(windows),
    )


def summarise(values: WindowValues) -> dict[str, Any]:
    """The JSON summary of one model: blocked 95% intervals (`workbench.stats.blocked_mean`) of
    the any-order and left-to-right bits/token and of each fraction-revealed bin."""
    any_order = values.any_order_per_window
    n_windows, n_orders = values.any_order.shape
    return {
        "any_order_bits": asdict(blocked_mean(any_order)),
        "left_to_right_bits": asdict(blocked_mean(values.left_to_right)),
        "by_fraction_revealed": [
            {"fraction": f, **asdict(blocked_mean(values.by_fraction[:, i]))}
            for i, f in enumerate(values.fraction.tolist())
        ],
        "lag1_autocorrelation": {"any_order": lag1_autocorrelation(any_order),
                                 "left_to_right": lag1_autocorrelation(values.left_to_right)},
        "n_windows": n_windows,
        "seq_len": values.seq_len,
        "n_orders": n_orders,
        "seed": values.seed,
        "windows_sha256": values.windows_sha256,
    }


def evaluate(model: HookedAOModel, windows: Int[Tensor, "window pos"], **options: Any) -> dict[str, Any]:
    """Any-order NLL, left-to-right NLL and NLL by fraction revealed, all in bits per token, with
    blocked 95% intervals over the windows (in text order): `summarise(evaluate_windows(...))`,
    `options` as for `evaluate_windows` (n_orders, seed, batch_size, n_step_bins)."""
    return summarise(evaluate_windows(model, windows, **options))


__all__ = ["Estimate", "WindowValues", "evaluate", "evaluate_windows", "per_window_bits", "summarise"]
