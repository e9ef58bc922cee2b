"""The position-wise MLP (hook_pre, hook_post as in TransformerLens)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from workbench.config import AOConfig


class MLP(nn.Module):
    def __init__(self, cfg: AOConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = F.gelu if cfg.act_fn == "gelu" else F.relu

    def forward(self, x: Float[Tensor, "batch slot d_model"], hooks: nn.Module) -> Tensor:
        pre = hooks.hook_pre(x @ self.W_in + self.b_in)  # [batch, slot, d_mlp]
        post = hooks.hook_post(self.act(pre))
        return post @ self.W_out + self.b_out
