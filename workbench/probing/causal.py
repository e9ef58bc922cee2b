"""Causal checks through hooks: per-head ablation and attention knockout, scored by the change in
NLL (bits per token) with a 95% confidence interval over blocks of contiguous sequences.

- **Ablation** replaces one head's output `hook_z` by zeros ("zero") or by its mean over a
  reference batch ("mean", the mean over sequences and slots of the clean run).
- **Knockout** sets the attention scores of one head on the keys of its semantic set S_r or
  structural set R_w (docs/coordinates.md) to -inf at `hook_attn_scores`; the softmax then
  renormalises over the keys left. The null key is in neither set, so a row always keeps a key
  (XLNet hides it from content rows: a row that would keep none is left as it was).
- **Control**: for every knockout, a random set of the same size per row (drawn uniformly from
  that row's visible non-null keys) is knocked out instead. A label means more when knocking out
  its set hurts more than knocking out as many random keys.

Each sequence's NLL averages its positions, and every comparison is paired per sequence (the same
tokens and order with and without the intervention; a knockout against its random control: the
per-sequence difference of the two). The sequences are consecutive windows of one text, so the
interval of the mean change is `workbench.stats.window_mean`'s: blocked over 16 contiguous blocks
of windows, or over sequences when there are fewer than 32 (`workbench.stats.window_blocks`).
`sequence_bits` returns the sequences in window order, and the batch map keeps that order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from workbench.hook_names import hook_name
from workbench.models import HookedAOModel
from workbench.orders import ProbeLayout, probe_layout

LN2 = math.log(2)
SETS = ("semantic", "structural", "random")
ABLATIONS = ("zero", "mean")


@dataclass(frozen=True)
class Intervention:
    """One edit of one head: an ablation ("zero" / "mean") or a knockout of a key set."""

    kind: str
    """"zero", "mean" (ablation) or "knockout"."""
    layer: int
    stream: str
    head: int
    key_set: str = ""
    """For a knockout: "semantic", "structural", or "random:semantic" / "random:structural" (a
    random set of the same size per row as that set: the control)."""

    @property
    def name(self) -> str:
        what = self.kind if self.kind != "knockout" else f"knockout:{self.key_set}"
        return f"{what}@L{self.layer}.{self.stream}.H{self.head}"


def set_masks(
    layout: ProbeLayout, n_rows: int, r: int, w: int
) -> tuple[Bool[Tensor, "batch row key"], Bool[Tensor, "batch row key"]]:
    """(semantic S_r, structural R_w) membership of every (row, key) of one stream, per the
    probe contract: visible (key <= row), not the null key, distance <= r / recency <= w."""
    key_pos, row_ref = layout.key_pos, layout.row_ref[:, :n_rows]
    n_keys = key_pos.shape[1]
    rows = torch.arange(n_rows, device=key_pos.device)[:, None]
    keys = torch.arange(n_keys, device=key_pos.device)[None, :]
    real = (keys <= rows) & (keys >= 1)  # [row, key]: visible, not the null key
    recency = rows - keys + layout.recency_offset
    structural = (real & (recency <= w)).expand(key_pos.shape[0], -1, -1)
    distance = (key_pos[:, None, :] - row_ref[:, :, None]).abs()
    semantic = real & (distance <= r) & (row_ref[:, :, None] >= 0)
    return semantic, structural


def random_like(
    target: Bool[Tensor, "batch row key"], generator: torch.Generator
) -> Bool[Tensor, "batch row key"]:
    """Per row, as many keys as `target` holds, drawn uniformly from the visible non-null keys."""
    batch, n_rows, n_keys = target.shape
    rows = torch.arange(n_rows)[:, None]
    keys = torch.arange(n_keys)[None, :]
    real = ((keys <= rows) & (keys >= 1)).to(target.device)
    draw = torch.rand(batch, n_rows, n_keys, generator=generator).to(target.device)
    draw = draw.masked_fill(~real, 2.0)  # never drawn: beyond every real key's value
    rank = draw.argsort(-1).argsort(-1)
    return rank < target.sum(-1, keepdim=True)


def mean_z(model: HookedAOModel, tokens: Tensor, order: Tensor) -> dict[str, Tensor]:
    """Mean of `hook_z` over sequences and slots, per (layer, stream): {"L.stream": [head, d_head]}."""
    names = {hook_name("z", layer, s): f"{layer}.{s}" for layer in range(model.cfg.n_layers) for s in model.stream_names}
    _, cache = model.run_with_cache(tokens, order, names_filter=lambda n: n in names)
    return {key: cache[name].mean(dim=(0, 1)).float().cpu() for name, key in names.items()}


@torch.no_grad()
def sequence_bits(
    model: HookedAOModel,
    tokens: Int[Tensor, "batch pos"],
    order: Int[Tensor, "batch step"],
    interventions: list[Intervention],
    *,
    r: int,
    w: int,
    generator: torch.Generator,
    z_means: dict[str, Tensor] | None = None,
) -> Float[Tensor, "intervention batch"]:
    """Mean NLL per token (bits) of every sequence: row 0 clean, row 1 + i under intervention i."""
    tokens, order = model.check_inputs(tokens, order)  # on the model's device, like the masks below
    out = [model.nll(tokens, order).double().mean(-1) / LN2]
    masks: dict[str, tuple[Tensor, Tensor]] = {}
    for intervention in interventions:
        hooks = [intervention_hook(model, tokens, order, intervention, r=r, w=w, generator=generator, z_means=z_means, masks=masks)]
        with model.hooks(fwd_hooks=hooks):
            out.append(model.nll(tokens, order).double().mean(-1) / LN2)
    return torch.stack(out).cpu()


def intervention_hook(
    model: HookedAOModel,
    tokens: Tensor,
    order: Tensor,
    intervention: Intervention,
    *,
    r: int,
    w: int,
    generator: torch.Generator,
    z_means: dict[str, Tensor] | None = None,
    masks: dict[str, tuple[Tensor, Tensor]] | None = None,
) -> tuple[str, Callable]:
    """(hook name, hook function) that applies `intervention` (for model.hooks(fwd_hooks=...)).

    `masks` caches the per-stream set masks between interventions on the same batch."""
    head, stream, layer = intervention.head, intervention.stream, intervention.layer
    if not 0 <= layer < model.cfg.n_layers or not 0 <= head < model.cfg.n_heads or stream not in model.stream_names:
        raise ValueError(
            f"intervention {intervention.name} is outside the model: layers 0..{model.cfg.n_layers - 1}, "
            f"heads 0..{model.cfg.n_heads - 1}, streams {model.stream_names}."
        )
    if intervention.kind in ABLATIONS:
        if intervention.kind == "mean":
            if z_means is None:
                raise ValueError("mean ablation needs z_means (workbench.probing.causal.mean_z on a reference batch).")
            fill = z_means[f"{layer}.{stream}"][head].to(tokens.device)

        def ablate(z: Tensor, hook) -> Tensor:  # [batch, slot, head, d_head]
            z = z.clone()
            z[:, :, head] = 0.0 if intervention.kind == "zero" else fill.to(z.dtype)
            return z

        return hook_name("z", layer, stream), ablate
    if intervention.kind != "knockout":
        raise ValueError(f"unknown intervention kind {intervention.kind!r}; use zero, mean or knockout.")
    masks = {} if masks is None else masks
    if stream not in masks:
        layout = probe_layout(order, stream)
        n_rows = layout.row_ref.shape[1]
        masks[stream] = set_masks(layout, n_rows, r, w)
    semantic, structural = masks[stream]
    key_set = intervention.key_set
    base = {"semantic": semantic, "structural": structural}
    if key_set in base:
        blocked = base[key_set]
    elif key_set.startswith("random:") and key_set[7:] in base:
        blocked = random_like(base[key_set[7:]], generator)
    else:
        raise ValueError(
            f"unknown key set {key_set!r}; use semantic, structural, random:semantic or random:structural."
        )

    def knock_out(scores: Tensor, hook) -> Tensor:  # [batch, head, row, key]
        scores = scores.clone()
        knocked = scores[:, head].masked_fill(blocked, float("-inf"))
        # A row left with no finite score would softmax to NaN. With a visible null key that cannot
        # happen; in XLNet (null key hidden from content rows) such a row is left as it was.
        empty = torch.isneginf(knocked).all(-1, keepdim=True)
        scores[:, head] = torch.where(empty, scores[:, head], knocked)
        return scores

    return hook_name("attn_scores", layer, stream), knock_out
