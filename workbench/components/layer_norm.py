"""LayerNorm with TransformerLens's hook points (hook_scale, hook_normalized)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from jaxtyping import Float
from torch import Tensor, nn

_NO_HOOKS = SimpleNamespace(hook_scale=lambda t: t, hook_normalized=lambda t: t)


class LayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Float[Tensor, "... d_model"], hooks: nn.Module | None = None) -> Tensor:
        """LayerNorm of `x`, through `hooks.hook_scale` / `hook_normalized` (no hooks when None,
        so `model.ln_final(x)` works as in TransformerLens on any stack of residuals)."""
        hooks = _NO_HOOKS if hooks is None else hooks
        x = x - x.mean(-1, keepdim=True)
        scale = hooks.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())  # [batch, slot, 1]
        return hooks.hook_normalized(x / scale * self.w + self.b)
