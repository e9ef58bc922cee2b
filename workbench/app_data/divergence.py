"""The Order divergence page's data: the committed divergence probe, a live computation (no model),
and one row drawn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench.app_data.common import AppInputError
from workbench.app_data.probes import chance_of
from workbench.app_data.text import make_order

__all__ = ["divergence_frame", "divergence_live", "divergence_example"]


def divergence_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The divergence probe's rows: length, k, overlap, chance, ci."""
    rows = table[table["metric"].str.match(r"^overlap_k\d+$")]
    frame = pd.DataFrame({
        "length": rows["x"].to_numpy(int), "k": rows["metric"].str[len("overlap_k"):].astype(int).to_numpy(),
        "overlap": rows["value"].to_numpy(float), "chance": chance_of(rows), "ci": rows["ci"].to_numpy(float),
    })
    return frame.sort_values(["k", "length"]).reset_index(drop=True)


def divergence_live(lengths: Sequence[int], ks: Sequence[int], n_orders: int = 16, seed: int = 0) -> pd.DataFrame:
    """`workbench.probing.divergence.order_divergence` as a frame: length, k, overlap, chance, ci."""
    from workbench.probing.divergence import order_divergence

    if n_orders < 2:
        raise AppInputError("Use at least 2 orders per length (the interval needs two).")
    points = order_divergence(list(lengths), tuple(ks), n_orders=n_orders, seed=seed)
    return pd.DataFrame([{"length": p.length, "k": p.k, "overlap": p.overlap, "chance": p.chance, "ci": p.ci}
                         for p in points], columns=["length", "k", "overlap", "chance", "ci"])


def divergence_example(length: int, step: int, k: int, seed: int = 0) -> dict[str, Any]:
    """For one random order of `length` positions and the row at `step`: the target position,
    the positions of the k visible keys nearest it and of the k most recent keys, and which
    positions are visible (generated before the step)."""
    from workbench.probing.divergence import nearest_keys

    if not 1 <= k < length:
        raise AppInputError(f"k={k} must be between 1 and the length - 1 = {length - 1}.")
    step = int(min(max(step, k), length - 1))
    order = make_order("random", length, seed)
    sigma = torch.as_tensor(order)[None]
    nearest_steps = nearest_keys(sigma, k)[0, step, :k].numpy()
    recent_steps = np.arange(step - k, step)
    near, recent = order[nearest_steps], order[recent_steps]
    return {
        "order": order, "step": step, "target": int(order[step]), "visible": np.sort(order[:step]),
        "nearest": np.sort(near), "recent": np.sort(recent), "overlap": len(set(near.tolist()) & set(recent.tolist())) / k,
    }
