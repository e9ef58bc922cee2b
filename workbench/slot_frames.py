"""Tidy tables of per-slot results (patching, detection, attributions), keyed by position and step.

TransformerLens's tools return tensors over a view's slot axis ("pos" in TransformerLens's
names): `patching.get_act_patch_resid_pre(view, ...)` is [layer, slot], `detect_head` [layer,
head]. A slot is not a position: content / main slot i holds the token generated at step i-1
(position σ[i-1]; slot 0 is BOS), and query / main row i predicts step i (position σ[i]); a
single-stream slot holds one position and predicts another. `slot_frame` writes every entry as
one row with both readings spelled out, so nothing is misread:

    frame = slot_frame(result, ("layer", "slot"), view, tokens)    # or view.frame(result, ...)

columns: one per dim (`layer`, `head`, `slot`, ...), then for a "slot" dim `holds_step`,
`holds_pos`, `holds_token` (content / main; -1 and "<BOS>" for the BOS slot) and
`predicts_step`, `predicts_pos`, `predicts_token` (query / main), missing (<NA>) where the slot
does not hold / predict; for a "pos" dim `token`; and `value`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from workbench.models.base import BOS_LABEL

if TYPE_CHECKING:
    from workbench.stream_view import StreamView


def slot_frame(
    values: Tensor,
    dims: tuple[str, ...],
    view: StreamView,
    tokens: str | Int[Tensor, "1 pos"] | Int[Tensor, " pos"],
    value: str = "value",
) -> pd.DataFrame:
    """One row per entry of `values` (of one sequence), named by `dims` (see the module doc)."""
    if not isinstance(values, Tensor):
        raise TypeError(f"values must be a tensor, got {type(values).__name__}.")
    if len(dims) != values.ndim:
        raise ValueError(f"dims names {len(dims)} axes {tuple(dims)} but values has shape {tuple(values.shape)}; name every axis.")
    tokens = view.to_tokens(tokens)
    if tokens.shape[0] != 1:
        raise ValueError(f"slot_frame reads one sequence, got a batch of {tokens.shape[0]}; index one row.")
    n_pos = tokens.shape[1]
    for d, name in enumerate(dims):
        if name in ("slot", "pos") and values.shape[d] != n_pos:
            raise ValueError(f"the {name} axis (dim {d}) has {values.shape[d]} entries, but the tokens have {n_pos}.")
    grids = torch.meshgrid(*[torch.arange(n) for n in values.shape], indexing="ij")
    frame = pd.DataFrame({name: g.reshape(-1).numpy() for name, g in zip(dims, grids)})
    str_tokens = view.model.to_str_tokens(tokens)
    if "slot" in dims:
        order = view.order_for(tokens)[0].cpu()
        slots = grids[dims.index("slot")].reshape(-1)
        if view.stream in ("content", "main"):
            held = torch.cat([torch.tensor([-1]), order])[slots]
            frame["holds_step"] = pd.array((slots - 1).tolist(), dtype="Int64")
            frame["holds_pos"] = pd.array(held.tolist(), dtype="Int64")
            frame["holds_token"] = [BOS_LABEL if p < 0 else str_tokens[p] for p in held.tolist()]
        if view.stream in ("query", "main"):
            predicted = order[slots]
            frame["predicts_step"] = pd.array(slots.tolist(), dtype="Int64")
            frame["predicts_pos"] = pd.array(predicted.tolist(), dtype="Int64")
            frame["predicts_token"] = [str_tokens[p] for p in predicted.tolist()]
        for column in ("holds_step", "holds_pos", "holds_token", "predicts_step", "predicts_pos", "predicts_token"):
            if column not in frame:
                frame[column] = pd.array([None] * len(frame), dtype="Int64" if not column.endswith("token") else "string")
    if "pos" in dims:
        frame["token"] = [str_tokens[p] for p in frame["pos"]]
    frame[value] = values.detach().float().cpu().reshape(-1).numpy()
    return frame
