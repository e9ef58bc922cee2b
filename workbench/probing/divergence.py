"""How far the two notions of "near" diverge, with no model: the k keys nearest the target
position versus the k most recently generated keys (Pynadath and Zhang, 2026).

For a generation order σ of length T, the row at step t (t >= k) predicts position σ[t] and sees
the keys generated at steps 0..t-1. Let A = the k visible keys with the smallest |σ[j] - σ[t]|
(ties go to the key on the left of the target) and B = the k most recent keys (steps t-k..t-1).
The overlap of the row is |A ∩ B| / k; its chance value is k / t, the overlap a random k-subset of
the t visible keys would have with B. Rows are averaged with equal weight, orders are uniformly
random, and the 95% interval treats each order as one unit.

Under uniformly random orders the step at which a visible key was generated is independent of
where it sits, so E[overlap] = k / t exactly: the two notions of "near" share nothing beyond the
pool of visible keys, and the mean over rows falls like k ln(T) / T. The measured curve is
therefore a check of the sampler as much as a result; the point is its size at T = 128 versus
T = 1024 (for k = 16: about 0.30 versus 0.07).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.orders import random_orders
from workbench.stats import mean_and_ci

DEFAULT_KS = (1, 4, 16)
_CHUNK_ELEMENTS = 1 << 22  # orders per chunk are chosen so chunk * T * T stays below this


@dataclass(frozen=True)
class OverlapPoint:
    length: int
    k: int
    overlap: float
    chance: float
    ci: float
    n_orders: int
    n_rows: int


def default_lengths(max_length: int = 2048) -> list[int]:
    """Powers of two from 16 up to at least `max_length` (and at least 1024)."""
    top = max(max_length, 1024)
    lengths, length = [], 16
    while length < top:
        lengths.append(length)
        length *= 2
    return lengths + [length]


@torch.no_grad()
def nearest_keys(order: Int[Tensor, "batch step"], k: int) -> Int[Tensor, "batch step k"]:
    """For every row t, the key steps of its k nearest visible keys, nearest first (rows with
    fewer than k visible keys are padded with invisible ones; callers skip those rows)."""
    n = order.shape[1]
    order = order.to(torch.int32)  # int32 halves the memory traffic of the [batch, T, T] score
    target, keys = order[:, :, None], order[:, None, :]
    # 2 * distance, +1 for keys right of the target: unique per key, the left one wins ties.
    score = (keys - target).abs_().mul_(2).add_((keys > target).to(torch.int32))
    steps = torch.arange(n, device=order.device)
    score.masked_fill_(steps[None, :] >= steps[:, None], 4 * n)  # key step j < row step t
    return score.topk(min(k, n), dim=-1, largest=False, sorted=True).indices


def row_overlaps(order: Int[Tensor, "batch step"], k: int, nearest: Tensor | None = None) -> Tensor:
    """The overlap |A ∩ B| / k of every row t >= k of each order: [batch, step - k]."""
    n = order.shape[1]
    if not 1 <= k < n:
        raise ValueError(f"k={k} must be in [1, T-1] for orders of length T={n}.")
    nearest = nearest_keys(order, k) if nearest is None else nearest
    recent_from = torch.arange(k, n, device=order.device)[:, None] - k  # B = steps t-k..t-1
    return (nearest[:, k:, :k] >= recent_from).sum(-1).double() / k


def order_divergence(
    lengths: list[int] | None = None,
    ks: tuple[int, ...] = DEFAULT_KS,
    n_orders: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[OverlapPoint]:
    """Mean overlap of the k nearest-by-position and k most recent keys, per length T and k."""
    lengths = default_lengths() if lengths is None else list(lengths)
    if n_orders < 2:
        raise ValueError(f"n_orders={n_orders} must be >= 2 to give a confidence interval.")
    points = []
    for length in lengths:
        generator = torch.Generator().manual_seed(_mix(seed, length))
        orders = random_orders(n_orders, length, generator).to(device)
        ks_here = [k for k in ks if k < length]
        if not ks_here:
            continue
        per_order = {k: [] for k in ks_here}
        chunk = max(1, _CHUNK_ELEMENTS // (length * length))
        for i in range(0, n_orders, chunk):
            nearest = nearest_keys(orders[i : i + chunk], max(ks_here))
            for k in ks_here:
                per_order[k].append(row_overlaps(orders[i : i + chunk], k, nearest).mean(-1).cpu())
        for k in ks_here:
            mean, ci = mean_and_ci(torch.cat(per_order[k]))
            steps = torch.arange(k, length, dtype=torch.float64)
            points.append(
                OverlapPoint(
                    length=length,
                    k=k,
                    overlap=mean,
                    chance=(k / steps).mean().item(),
                    ci=ci,
                    n_orders=n_orders,
                    n_rows=n_orders * (length - k),
                )
            )
    return points


def _mix(seed: int, length: int) -> int:
    return (seed * 1_000_003 + length * 7919) % (2**63)
