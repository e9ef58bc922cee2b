"""A plain causal GPT, the speed baseline of `bench_train.py` (not part of the package).

Pre-LayerNorm, learned absolute positions, one fused QKV projection, fused causal SDPA, GELU MLP,
untied unembedding: the textbook model of the same dims as a workbench model, written the way a
fast GPT is usually written (nanoGPT's layout), so the ratio of the two says what the any-order
machinery costs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_head: int, d_mlp: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * n_heads * d_head)
        self.out = nn.Linear(n_heads * d_head, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, d_model))

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, self.d_head).unbind(2)
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.out(z.transpose(1, 2).reshape(b, t, -1))
        return x + self.mlp(self.ln2(x))


class PlainGPT(nn.Module):
    """`forward(tokens)` is the mean next-token NLL (nats) of tokens[:, 1:] given their prefixes."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_head: int, d_mlp: int, n_ctx: int, d_vocab: int):
        super().__init__()
        self.tok = nn.Embedding(d_vocab, d_model)
        self.pos = nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, d_head, d_mlp) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, d_vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.tok(tokens) + self.pos.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.unembed(self.ln_f(x))[:, :-1]
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
