"""XLNet's relative multi-head attention over generation-order slots (Yang et al. 2019, built on
Transformer-XL's relative positions, Dai et al. 2019).

For row i and key j, with q_i = x_i W_Q, k_j = h_j W_K (no biases, as in XLNet):

    score(i, j) = [ (q_i + u) . k_j                      content term   (u: HF `r_w_bias`)
                  + (q_i + v) . (pe(pos_i - pos_j) W_R)  position term  (v: HF `r_r_bias`)
                  + (q_i + b) . s[seg_i != seg_j]        segment term   (b: HF `r_s_bias`;
                  ] / sqrt(d_head)                        only when segment ids are given)

pe is XLNet's sinusoid of the relative distance (built by the model, `relative_encoding`). Rows
and keys carry the position they stand for; -1 marks the null slot, which has no position and no
segment, so its position and segment terms are 0.

Visibility (docs/xlnet.md): row slot s >= 1 sees keys 1..s; row 0 sees key 0 (the null slot)
only. There is no fused path: the position term is not SDPA-shaped, so scores and the pattern
are always materialised, and hooking them costs nothing more. `hook_result` (per-head outputs)
is only formed when something hooks it.
"""

from __future__ import annotations

import math

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.components.attention import poison_rows, zero_non_finite
from workbench.config import AOConfig

SCORE_HOOKS = (
    "hook_score_content",  # [batch, head, slot, key], (q + u) . k, unscaled and unmasked
    "hook_score_position",  # [batch, head, slot, key], (q + v) . r(pos_i - pos_j)
    "hook_score_segment",  # [batch, head, slot, key], (q + b) . s (fires only with segment ids)
)


class RelativeAttention(nn.Module):
    def __init__(self, cfg: AOConfig):
        super().__init__()
        shape = (cfg.n_heads, cfg.d_model, cfg.d_head)
        self.W_Q = nn.Parameter(torch.empty(shape))
        self.W_K = nn.Parameter(torch.empty(shape))
        self.W_V = nn.Parameter(torch.empty(shape))
        self.W_R = nn.Parameter(torch.empty(shape))  # projects the relative encoding to position keys
        self.W_O = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_head, cfg.d_model))
        self.b_content = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_head))  # u
        self.b_pos = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_head))  # v
        self.b_seg = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_head))  # b
        self.W_seg = nn.Parameter(torch.empty(2, cfg.n_heads, cfg.d_head))  # s: [same, different segment]
        self.scale = 1.0 / math.sqrt(cfg.d_head)

    def keys_values(self, x: Float[Tensor, "batch key d_model"], hooks: nn.Module) -> tuple[Tensor, Tensor]:
        """Content keys and values, each [batch, key, head, d_head], through hook_k / hook_v."""
        k = hooks.hook_k(einops.einsum(x, self.W_K, "b s d, h d e -> b s h e"))
        v = hooks.hook_v(einops.einsum(x, self.W_V, "b s d, h d e -> b s h e"))
        return k, v

    def position_keys(self, rel_enc: Float[Tensor, "rel d_model"]) -> Float[Tensor, "rel head d_head"]:
        return einops.einsum(rel_enc.to(self.W_R.dtype), self.W_R, "r d, h d e -> r h e")

    def forward(
        self,
        x: Float[Tensor, "batch slot d_model"],
        row_pos: Int[Tensor, "batch slot"],
        first_row: int,
        k: Float[Tensor, "batch key head d_head"],
        v: Float[Tensor, "batch key head d_head"],
        key_pos: Int[Tensor, "batch key"],
        pos_keys: Float[Tensor, "rel head d_head"],
        hooks: nn.Module,
        row_seg: Int[Tensor, "batch slot"] | None = None,
        key_seg: Int[Tensor, "batch key"] | None = None,
    ) -> Float[Tensor, "batch slot d_model"]:
        """Row r of `x` is slot `first_row + r`. `pos_keys` (2D + 1 rows, from `position_keys`)
        holds the position key of each distance -D..D, row m for distance m - D."""
        n_rows, n_keys = x.shape[1], k.shape[1]
        if first_row + n_rows > n_keys:
            raise RuntimeError(f"rows up to slot {first_row + n_rows - 1} need that many keys, got {n_keys}")
        q = hooks.hook_q(einops.einsum(x, self.W_Q, "b s d, h d e -> b s h e"))
        # Slots without a position (the null slot) get no position or segment term.
        positioned = ((row_pos >= 0)[:, :, None] & (key_pos >= 0)[:, None, :])[:, None]  # [batch, 1, slot, key]

        ac = einops.einsum(q + self.b_content, k, "b s h e, b k h e -> b h s k")
        ac = hooks.hook_score_content(ac)

        max_dist = (pos_keys.shape[0] - 1) // 2
        rel = row_pos[:, :, None] - key_pos[:, None, :]  # [batch, slot, key]
        index = (rel + max_dist).clamp(0, 2 * max_dist)
        bd_all = einops.einsum(q + self.b_pos, pos_keys, "b s h e, r h e -> b h s r")
        bd = bd_all.gather(-1, index[:, None].expand(-1, bd_all.shape[1], -1, -1))
        bd = hooks.hook_score_position(bd.masked_fill(~positioned, 0.0))
        scores = ac + bd

        if row_seg is not None and key_seg is not None:
            ef_by_class = einops.einsum(q + self.b_seg, self.W_seg, "b s h e, c h e -> b h s c")
            different = (row_seg[:, :, None] != key_seg[:, None, :])[:, None]  # [batch, 1, slot, key]
            ef = torch.where(different, ef_by_class[..., 1:], ef_by_class[..., :1])
            scores = scores + hooks.hook_score_segment(ef.masked_fill(~positioned, 0.0))

        visible = visible_keys(n_rows, n_keys, first_row, x.device)
        scores = hooks.hook_attn_scores((scores * self.scale).masked_fill(~visible, float("-inf")))
        pattern = hooks.hook_pattern(scores.softmax(dim=-1))
        _, v, bad = zero_non_finite(k, v)  # a key this row cannot see contributes nothing, even NaN
        sees_bad = einops.einsum(visible.to(v.dtype), bad.to(v.dtype), "s k, b k h -> b s h") > 0
        z = einops.einsum(pattern.to(v.dtype), v, "b h s k, b k h e -> b s h e")
        z = hooks.hook_z(poison_rows(z, sees_bad))
        if hooks.hook_result.has_hooks():
            result = einops.einsum(z, self.W_O, "b s h e, h e d -> b s h d")
            return hooks.hook_result(result).sum(dim=2)
        return einops.einsum(z, self.W_O, "b s h e, h e d -> b s d")


def visible_keys(n_rows: int, n_keys: int, first_row: int, device: torch.device | str | None = None) -> Tensor:
    """[slot, key] bool: row slot s >= 1 sees keys 1..s; row 0 sees the null key 0 only.

    Row 0 is the content stream's null slot, or the query row of the first-generated position,
    which in XLNet has no visible token (docs/xlnet.md says what the null slot holds).
    """
    rows = torch.arange(first_row, first_row + n_rows, device=device)[:, None]
    keys = torch.arange(n_keys, device=device)[None, :]
    return (keys <= rows) & ((keys >= 1) | (rows == 0))
