"""Single-stream any-order models: Decoupled RoPE and σ-GPT.

One causal stream in generation order. Slot 0 is BOS; slot i >= 1 holds x[σ[i-1]] at its own
position σ[i-1]; slot i predicts x[σ[i]], its target position. The two variants differ only in
how the target position reaches the model:

- `decoupled_rope`: keys are rotated by their own position and queries by the target position,
  so the target enters through attention alone and values carry content only.
- `sigma_gpt` (Pannatier et al. 2024, "σ-GPTs"): no rotation; the input is the sum of the token,
  own-position and target-position embeddings (three named tables, three hook points).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from workbench.components.hook_sets import LN_HOOKS, add_hook_points
from workbench.components.kv_cache import KVCache
from workbench.config import AOConfig
from workbench.models.base import HookedAOModel


def sinusoidal_table(n_pos: int, d_model: int) -> Tensor:
    """[n_pos, d_model] sin/cos position codes with unit RMS."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    freqs = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(n_pos, d_model, dtype=torch.float64)
    table[:, 0::2] = (pos * freqs).sin()
    table[:, 1::2] = (pos * freqs[: d_model // 2]).cos()
    return (table * math.sqrt(2)).float()


class SingleStreamModel(HookedAOModel):
    stream_names = ("main",)
    logit_stream = "main"

    def __init__(self, cfg: AOConfig):
        super().__init__(cfg)
        add_hook_points(self.ln_final, LN_HOOKS)
        self.hook_pos = HookPoint()  # [batch, slot], own position (-1 for BOS)
        self.hook_target_pos = HookPoint()  # [batch, slot], target position
        self.hook_embed = HookPoint()  # [batch, slot, d_model]
        if cfg.variant == "sigma_gpt":
            self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
            self.W_target = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
            self.hook_pos_embed = HookPoint()  # [batch, slot, d_model]
            self.hook_target_embed = HookPoint()  # [batch, slot, d_model]
        self._init_weights()
        if cfg.variant == "sigma_gpt":
            # Learned tables, initialised sinusoidally (Vaswani et al. 2017) at the scale of the
            # token embeddings: with a random init, nearness of positions must be learned from
            # scratch and any-order training sits on a long plateau first.
            with torch.no_grad():
                table = sinusoidal_table(cfg.n_ctx, cfg.d_model) * cfg.init_range
                self.W_pos.copy_(table)
                self.W_target.copy_(table)
        self.setup()

    def _forward_slots(self, ordered: Tensor, order: Tensor) -> Tensor:
        own_pos = torch.cat([torch.full_like(order[:, :1], -1), order[:, :-1]], dim=1)
        return self.run_slots(self.new_cache(), ordered[:, :-1], own_pos, order)

    def run_slots(
        self,
        cache: KVCache,
        ids: Int[Tensor, "batch slot"],
        own_pos: Int[Tensor, "batch slot"],
        target_pos: Int[Tensor, "batch slot"],
    ) -> Float[Tensor, "batch slot d_vocab"]:
        """Append slots to `cache` and return their logits (slot i predicts target_pos[:, i]).

        On an empty cache the BOS slot comes first, so `ids` has one fewer entry than the
        positions (whose first own position is -1).
        """
        first = cache.n_slots
        own_pos = self.hook_pos(own_pos)
        target_pos = self.hook_target_pos(target_pos)
        cache.add_positions(own_pos)
        x = self.hook_embed(self.embed_tokens(ids, bos_first=first == 0))
        if self.cfg.variant == "sigma_gpt":
            own = self.W_pos[own_pos.clamp(min=0)] * (own_pos >= 0).unsqueeze(-1)
            x = x + self.hook_pos_embed(own) + self.hook_target_embed(self.W_target[target_pos])
        key_angles, query_angles = self.rope_angles(own_pos), self.rope_angles(target_pos)
        for block, layer in zip(self.blocks, cache.layers):
            x = block.causal_stream(x, block, key_angles, query_angles, layer, first)
        return self.unembed(x, self.ln_final)
