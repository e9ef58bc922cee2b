"""Rotary position embeddings (RoPE; Su et al. 2021) at arbitrary, per-slot positions.

Any-order models rotate each slot by the position it stands for, which is not its index: keys by
their own position, queries by their reference (target) position. Position -1 (the BOS / null
slot) gets the identity rotation. Halves are rotated GPT-NeoX style, as TransformerLens does.

A forward gathers the angles of each set of positions once (`angles`) and every layer rotates
with them (`rotate`): the gather depends on the positions alone, not on the layer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


class Angles(NamedTuple):
    """cos and sin of each slot's rotation, each [batch, slot, 1, rot] (broadcast over heads)."""

    cos: Tensor
    sin: Tensor


class Rotary(nn.Module):
    def __init__(self, n_rotary: int, n_ctx: int, base: float):
        super().__init__()
        self.n_rotary = n_rotary
        inv_freq = base ** (-torch.arange(0, n_rotary, 2, dtype=torch.float64) / n_rotary)
        angles = torch.arange(n_ctx, dtype=torch.float64)[:, None] * inv_freq  # [pos, rot/2]
        angles = torch.cat([angles, angles], dim=-1)
        # Row 0 is position -1: cos 1, sin 0.
        self.register_buffer("cos", torch.cat([torch.ones(1, n_rotary), angles.cos().float()]), persistent=False)
        self.register_buffer("sin", torch.cat([torch.zeros(1, n_rotary), angles.sin().float()]), persistent=False)

    def angles(self, pos: Int[Tensor, "batch slot"]) -> Angles:
        return Angles(self.cos[pos + 1].unsqueeze(2), self.sin[pos + 1].unsqueeze(2))

    def rotate(self, x: Float[Tensor, "batch slot head d_head"], angles: Angles) -> Tensor:
        cos, sin = angles.cos.to(x.dtype), angles.sin.to(x.dtype)
        rot, rest = x[..., : self.n_rotary], x[..., self.n_rotary :]
        half = self.n_rotary // 2
        flipped = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        return torch.cat([rot * cos + flipped * sin, rest], dim=-1)

    def forward(
        self, x: Float[Tensor, "batch slot head d_head"], pos: Int[Tensor, "batch slot"]
    ) -> Tensor:
        return self.rotate(x, self.angles(pos))
