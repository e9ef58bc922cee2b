"""Multi-head attention over generation-order slots, with a fused and a hooked path.

Every stream is causal in slot coordinates (docs/coordinates.md): row i sees keys 0..i. The fast
path calls fused SDPA; the hooked path materialises `hook_attn_scores` and `hook_pattern`, and is
taken whenever anything hooks one of them (a TransformerLens hook, a cache, a plain
`register_forward_hook`: `hook_sets.is_hooked`). Both give the same output.
A non-finite key or value reaches exactly the rows that can see it (as NaN in that head's output),
never an earlier row: `zero_non_finite`.
`hook_result` (per-head outputs) is likewise only formed when something hooks it.
A stream that makes its own keys projects q, k and v with one matmul (`project`) on every path,
hooked or not: hook_q, hook_k and hook_v fire as before, on tensors of their own.
"""

from __future__ import annotations

import math

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from workbench.components.hook_sets import is_hooked
from workbench.components.rotary import Angles, Rotary
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

    def project(self, x: Float[Tensor, "batch slot d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        """Unhooked q, k, v, each [batch, slot, head, d_head]: one matmul against W_Q, W_K, W_V
        side by side (one read of x, one launch; the weights stay three parameters). Each comes
        out of its bias add a tensor of its own, not a view of the others, so a hook may edit it
        in place."""
        W_QKV = torch.cat([self.W_Q, self.W_K, self.W_V], dim=0)  # [3 head, d_model, d_head]
        q, k, v = einops.einsum(x, W_QKV, "b s d, h d e -> b s h e").chunk(3, dim=2)
        return q + self.b_Q, k + self.b_K, v + self.b_V

    def queries(
        self,
        x: Float[Tensor, "batch slot d_model"],
        angles: Angles | None,
        hooks: nn.Module,
    ) -> Float[Tensor, "batch slot head d_head"]:
        """Queries alone (the query stream, whose keys are the content stream's), hooked and rotated."""
        return self.hooked_queries(einops.einsum(x, self.W_Q, "b s d, h d e -> b s h e") + self.b_Q, angles, hooks)

    def hooked_queries(self, q: Tensor, angles: Angles | None, hooks: nn.Module) -> Tensor:
        """`q` through hook_q, rotated by each row's reference position (own or target, by
        stream), through hook_rot_q."""
        q = hooks.hook_q(q)
        return hooks.hook_rot_q(self.rotary.rotate(q, angles)) if self.rotary else q

    def rotate_keys(self, k: Tensor, angles: Angles | None, hooks: nn.Module) -> Tensor:
        return hooks.hook_rot_k(self.rotary.rotate(k, angles)) if self.rotary else k

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
        k_raw = k
        k, v, bad = zero_non_finite(k, v)
        sees_bad = bad.cumsum(dim=1)[:, first_row : first_row + n_rows] > 0  # [batch, slot, head]
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, slot, d_head]
        if is_hooked(hooks.hook_attn_scores) or is_hooked(hooks.hook_pattern):
            # The raw keys: masked_fill replaces a masked NaN score exactly, and a row that sees a
            # non-finite key shows it in its pattern.
            scores = (qh @ k_raw.transpose(1, 2).transpose(-1, -2)) * self.scale
            visible = _visible(n_rows, n_keys, first_row, q.device)
            scores = hooks.hook_attn_scores(scores.masked_fill(~visible, float("-inf")))
            pattern = hooks.hook_pattern(scores.softmax(dim=-1))
            z = pattern.to(vh.dtype) @ vh
        elif first_row == 0:
            # Keys past the last row are visible to no row (the query stream's last content slot):
            # dropping them makes the causal attention square, the case every fused kernel has.
            kh, vh = kh[:, :, :n_rows], vh[:, :, :n_rows]
            z = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=self.scale)
        elif n_rows == 1:  # a decoding step: the one row sees every cached key up to itself
            z = F.scaled_dot_product_attention(qh, kh[:, :, : first_row + 1], vh[:, :, : first_row + 1], scale=self.scale)
        else:
            visible = _visible(n_rows, n_keys, first_row, q.device)
            z = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=visible, scale=self.scale)
        z = poison_rows(z.transpose(1, 2), sees_bad)
        z = hooks.hook_z(z)  # [batch, slot, head, d_head]
        if is_hooked(hooks.hook_result):
            result = einops.einsum(z, self.W_O, "b s h e, h e d -> b s h d")
            return hooks.hook_result(result).sum(dim=2) + self.b_O
        return einops.einsum(z, self.W_O, "b s h e, h e d -> b s d") + self.b_O


def zero_non_finite(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Keys and values [batch, key, head, d_head] with every non-finite key or value vector set to
    zero, and `bad` [batch, key, head]: where one was. A masked key's weight is exactly 0, but
    0 * NaN is NaN: zeroed, a key a row cannot see contributes exactly nothing to it (scores and
    values), whatever it holds. Which rows do see a bad key, `poison_rows` marks."""
    # A NaN or inf anywhere in a vector makes its sum non-finite, with no key-sized temporary (a
    # float32 sum: only finite values summing past 3.4e38 would be taken for non-finite ones).
    bad = ~torch.isfinite(k.sum(dim=-1, dtype=torch.float32) + v.sum(dim=-1, dtype=torch.float32))
    return k.masked_fill(bad[..., None], 0.0), v.masked_fill(bad[..., None], 0.0), bad


def poison_rows(z: Float[Tensor, "batch slot head d_head"], sees_bad: Tensor) -> Tensor:
    """NaN in the head output of each row that sees a non-finite key or value ([batch, slot, head]
    `sees_bad`), where the unzeroed computation gives NaN or inf; the same on every path."""
    return z.masked_fill(sees_bad[..., None], float("nan"))


def _visible(n_rows: int, n_keys: int, first_row: int, device: torch.device) -> Tensor:
    rows = torch.arange(first_row, first_row + n_rows, device=device)[:, None]
    return torch.arange(n_keys, device=device)[None, :] <= rows  # [slot, key]
