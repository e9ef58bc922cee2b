"""Two-stream attention (XLNet-style; Yang et al. 2019), with RoPE at each slot's position.

Content stream h: slot 0 is BOS, slot i >= 1 holds x[σ[i-1]] and attends to content slots 0..i
(rank[k] <= rank[q]). Query stream g: row t starts from a learned content-free vector, stands for
position σ[t] and attends to content slots 0..t (BOS and rank[k] < t); its logits predict x[σ[t]].
Every weight is shared between the streams; each stream has its own hook points.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.components.hook_sets import LN_HOOKS, HookSet
from workbench.components.kv_cache import KVCache
from workbench.config import AOConfig
from workbench.models.base import HookedAOModel


class TwoStreamModel(HookedAOModel):
    stream_names = ("content", "query")
    logit_stream = "query"

    def __init__(self, cfg: AOConfig):
        super().__init__(cfg)
        self.w_query = nn.Parameter(torch.empty(cfg.d_model))  # the query stream's start
        self.content = HookSet(("hook_pos", "hook_embed"))  # [batch, slot], [batch, slot, d_model]
        self.query = HookSet(("hook_pos", "hook_embed"))  # [batch, step], [batch, step, d_model]
        self.query.ln_final = HookSet(LN_HOOKS)
        self._init_weights()
        self.setup()

    def _forward_slots(self, ordered: Tensor, order: Tensor) -> Tensor:
        content_pos = torch.cat([torch.full_like(order[:, :1], -1), order], dim=1)
        return self.run_streams(self.new_cache(), ordered, content_pos, order, query_first=0)

    def run_streams(
        self,
        cache: KVCache,
        content_ids: Int[Tensor, "batch slot"] | None,
        content_pos: Int[Tensor, "batch slot"] | None,
        query_pos: Int[Tensor, "batch step"] | None,
        query_first: int,
    ) -> Float[Tensor, "batch step d_vocab"] | None:
        """Append content slots to `cache` and/or run query rows against it, layer by layer.

        A content chunk that starts an empty cache gets the BOS slot prepended (`content_pos`
        then includes its -1). Query row r is step `query_first + r` and sees keys 0..that step.
        Returns the query rows' logits, or None when no query rows were given.
        """
        h = g = None
        if content_ids is not None:
            content_first = cache.n_slots
            content_pos = self.content.hook_pos(content_pos)
            cache.add_positions(content_pos)
            h = self.content.hook_embed(self.embed_tokens(content_ids, bos_first=content_first == 0))
            content_angles = self.rope_angles(content_pos)  # keys and queries: each slot's own position
        if query_pos is not None:
            query_pos = self.query.hook_pos(query_pos)
            g = self.query.hook_embed(self.w_query.expand(*query_pos.shape, -1).clone())
            query_angles = self.rope_angles(query_pos)
        for block, layer in zip(self.blocks, cache.layers):
            if h is not None:
                h = block.causal_stream(h, block.content, content_angles, content_angles, layer, content_first)
            if g is not None:
                g = block.query_stream(g, query_angles, cache.key_pos, layer, query_first)
        return None if g is None else self.unembed(g, self.query.ln_final)
