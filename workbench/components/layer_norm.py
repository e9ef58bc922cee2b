"""LayerNorm with TransformerLens's hook points (hook_scale, hook_normalized)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


class LayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Float[Tensor, "batch slot d_model"], hooks: nn.Module) -> Tensor:
        x = x - x.mean(-1, keepdim=True)
        scale = hooks.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())  # [batch, slot, 1]
        return hooks.hook_normalized(x / scale * self.w + self.b)
