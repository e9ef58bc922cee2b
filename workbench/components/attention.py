"""Multi-head attention over generation-order slots, with a fused and a hooked path.

Every stream is causal in slot coordinates (docs/coordinates.md): row i sees keys 0..i. The fast
path calls fused SDPA; the hooked path materialises `hook_attn_scores` and `hook_pattern`, and is
taken whenever anything hooks one of them (a TransformerLens hook, a cache, a plain
`register_forward_hook`: `hook_sets.is_hooked`). Both give the same output.
`hook_result` (per-head outputs) is likewise only formed when something hooks it.
"""

from __future__ import annotations

import math

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.components.hook_sets import is_hooked
from workbench.components.rotary import Rotary
from workbench.config import AOConfig


class Attention(nn.Module):
    def __init__(self, cfg: AOConfig, rotary: Rotary | None):
        super().__init__()
        self.cfg = cfg
        shape = (cfg.n_heads, cfg.d_model, cfg.d_head)
        self.W_Q = nn.Parameter(torch.empty(shape))
        self.W_K = nn.Parameter(torch.empty(shape))
        self.W_V = nn.Parameter(torch.empty(shape))
        self.W_O = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_head, cfg.d_model))
        self.b_Q = nn.Parameter(torch.zeros(cfg.n_heads, cfg.d_head))
        self.b_K = nn.Parameter(torch.zeros(cfg.n_heads, cfg.d_head))
        self.b_V = nn.Parameter(torch.zeros(cfg.n_heads, cfg.d_head))
        self.b_O = nn.Parameter(torch.zeros(cfg.d_model))
        self.scale = 1.0 / math.sqrt(cfg.d_head)
        # Shared, not owned: the model's one Rotary. Kept out of the module tree.
        self.__dict__["rotary"] = rotary

    def queries(
        self,
        x: Float[Tensor, "batch slot d_model"],
        pos: Int[Tensor, "batch slot"],
        hooks: nn.Module,
    ) -> Float[Tensor, "batch slot head d_head"]:
        """Queries, rotated by each row's reference position (own or target, by stream)."""
        q = hooks.hook_q(einops.einsum(x, self.W_Q, "b s d, h d e -> b s h e") + self.b_Q)
        return hooks.hook_rot_q(self.rotary(q, pos)) if self.rotary else q

    def keys_values(
        self,
        x: Float[Tensor, "batch key d_model"],
        hooks: nn.Module,
    ) -> tuple[Tensor, Tensor]:
        """Unrotated keys and values, each [batch, key, head, d_head], through hook_k / hook_v."""
        k = hooks.hook_k(einops.einsum(x, self.W_K, "b s d, h d e -> b s h e") + self.b_K)
        v = hooks.hook_v(einops.einsum(x, self.W_V, "b s d, h d e -> b s h e") + self.b_V)
        return k, v

    def rotate_keys(self, k: Tensor, pos: Int[Tensor, "batch key"], hooks: nn.Module) -> Tensor:
        return hooks.hook_rot_k(self.rotary(k, pos)) if self.rotary else k

    def attend(
        self,
        q: Float[Tensor, "batch slot head d_head"],
        k: Float[Tensor, "batch key head d_head"],
        v: Float[Tensor, "batch key head d_head"],
        first_row: int,
        hooks: nn.Module,
    ) -> Float[Tensor, "batch slot d_model"]:
        """Row r of `q` is slot `first_row + r` and sees keys 0..first_row + r."""
        n_rows, n_keys = q.shape[1], k.shape[1]
        if first_row + n_rows > n_keys:
            raise RuntimeError(f"rows up to slot {first_row + n_rows - 1} need that many keys, got {n_keys}")
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, slot, d_head]
        if is_hooked(hooks.hook_attn_scores) or is_hooked(hooks.hook_pattern):
            scores = (qh @ kh.transpose(-1, -2)) * self.scale
            visible = _visible(n_rows, n_keys, first_row, q.device)
            scores = hooks.hook_attn_scores(scores.masked_fill(~visible, float("-inf")))
            pattern = hooks.hook_pattern(scores.softmax(dim=-1))
            z = pattern.to(vh.dtype) @ vh
        elif first_row == 0:
            z = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=self.scale)
        elif n_rows == 1:  # a decoding step: the one row sees every cached key up to itself
            z = F.scaled_dot_product_attention(qh, kh[:, :, : first_row + 1], vh[:, :, : first_row + 1], scale=self.scale)
        else:
            visible = _visible(n_rows, n_keys, first_row, q.device)
            z = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=visible, scale=self.scale)
        z = hooks.hook_z(z.transpose(1, 2))  # [batch, slot, head, d_head]
        if is_hooked(hooks.hook_result):
            result = einops.einsum(z, self.W_O, "b s h e, h e d -> b s h d")
            return hooks.hook_result(result).sum(dim=2) + self.b_O
        return einops.einsum(z, self.W_O, "b s h e, h e d -> b s d") + self.b_O


def _visible(n_rows: int, n_keys: int, first_row: int, device: torch.device) -> Tensor:
    rows = torch.arange(first_row, first_row + n_rows, device=device)[:, None]
    return torch.arange(n_keys, device=device)[None, :] <= rows  # [slot, key]
