"""A pre-LN transformer block run on one or two streams that share its weights."""

from __future__ import annotations

from collections.abc import Callable

from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.components.attention import Attention
from workbench.components.hook_sets import (
    LN_HOOKS,
    MLP_HOOKS,
    RESID_HOOKS,
    StreamHooks,
    add_hook_points,
    attn_hook_names,
)
from workbench.components.kv_cache import LayerKV
from workbench.components.layer_norm import LayerNorm
from workbench.components.mlp import MLP
from workbench.components.rotary import Angles, Rotary
from workbench.config import AOConfig


class Block(nn.Module):
    def __init__(self, cfg: AOConfig, rotary: Rotary | None):
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.attn = Attention(cfg, rotary)
        self.ln2 = LayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        if cfg.n_streams == 2:
            self.content = StreamHooks(rotary is not None)
            self.query = StreamHooks(rotary is not None)
        else:  # one stream: hooks sit on the weight modules, TransformerLens's own names
            add_hook_points(self, RESID_HOOKS)
            add_hook_points(self.ln1, LN_HOOKS)
            add_hook_points(self.ln2, LN_HOOKS)
            add_hook_points(self.attn, attn_hook_names(rotary is not None))
            add_hook_points(self.mlp, MLP_HOOKS)

    def residual(
        self,
        x: Float[Tensor, "batch slot d_model"],
        hooks: nn.Module,
        attention: Callable[[Tensor], Tensor],
    ) -> Tensor:
        """resid_pre -> +attention(ln1) -> resid_mid -> +mlp(ln2) -> resid_post, through `hooks`."""
        x = hooks.hook_resid_pre(x)
        attn_out = hooks.hook_attn_out(attention(self.ln1(x, hooks.ln1)))
        x = hooks.hook_resid_mid(x + attn_out)
        mlp_out = hooks.hook_mlp_out(self.mlp(self.ln2(x, hooks.ln2), hooks.mlp))
        return hooks.hook_resid_post(x + mlp_out)

    def causal_stream(
        self,
        x: Float[Tensor, "batch slot d_model"],
        hooks: nn.Module,
        key_angles: Angles | None,
        query_angles: Angles | None,
        cache: LayerKV,
        first: int,
    ) -> Tensor:
        """Slots first.. of a stream that attends to itself (rank <= own): the single stream, or
        the two-stream content stream. Keys are rotated by `key_angles` (each slot's own position),
        queries by `query_angles` (the target for a single stream, the own position for content);
        None without RoPE. Hooks fire in the order hook_k, hook_v, hook_rot_k, hook_q, hook_rot_q."""

        def attention(xn: Tensor) -> Tensor:
            q, k, v = self.attn.project(xn)
            k, v = hooks.attn.hook_k(k), hooks.attn.hook_v(v)
            _, k_rot, v = cache.extend(k, self.attn.rotate_keys(k, key_angles, hooks.attn), v)
            q = self.attn.hooked_queries(q, query_angles, hooks.attn)
            return self.attn.attend(q, k_rot, v, first, hooks.attn)

        return self.residual(x, hooks, attention)

    def query_stream(
        self,
        g: Float[Tensor, "batch step d_model"],
        target_angles: Angles | None,
        key_pos: Int[Tensor, "batch key"],
        cache: LayerKV,
        first: int,
    ) -> Tensor:
        """Query rows first..: row t sees content keys 0..t, i.e. BOS and ranks < t.

        The keys and values are the content stream's, passed through this stream's own hook_k /
        hook_v / hook_rot_k so they can be read or edited for the query stream alone (an edited
        hook_k is rotated again, by `key_pos`).
        """
        hooks = self.query.attn

        def attention(xn: Tensor) -> Tensor:
            k, v = hooks.hook_k(cache.k), hooks.hook_v(cache.v)
            k_rot = cache.k_rot if k is cache.k else self.attn.rotary(k, key_pos)
            q = self.attn.queries(xn, target_angles, hooks)
            return self.attn.attend(q, hooks.hook_rot_k(k_rot), v, first, hooks)

        return self.residual(g, self.query, attention)
