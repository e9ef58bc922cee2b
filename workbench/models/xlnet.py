"""XLNet (Yang et al. 2019) as a hooked two-stream model, in generation-order slot coordinates.

The same two streams and hook names as `two_stream` (docs/coordinates.md), with XLNet's own
mechanics so that Hugging Face's `XLNetLMHeadModel` converts exactly (`workbench.convert`):

- relative attention with content, position and segment terms and their biases
  (`workbench.components.relative_attention`); no RoPE, no absolute positions;
- post-LayerNorm blocks: h -> ln1(h + attn(h)) -> ln2(y + mlp(y)); no final LayerNorm;
- the query stream starts from one learned vector, `w_query` (HF's `mask_emb`).

Slots. Content slot i >= 1 holds x[σ[i-1]] and sees content keys 1..i (rank <= own); query row
t >= 1 predicts x[σ[t]] and sees keys 1..t (rank < t). XLNet has no BOS, so slot 0 is a *null
slot*: at every block's input it holds the mean of the real content slots, and only query row 0
(the first-generated position) sees it. Hugging Face gives that row, which has no visible token,
a uniform softmax over every position (its -1e30 additive mask makes all scores equal); values
have no bias, so attending to the mean slot is exactly that. Step-by-step decoding has no content
yet at step 0, and there the null slot is zero. docs/xlnet.md has the details.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from workbench.components.hook_sets import HookSet, StreamHooks, add_hook_points
from workbench.components.kv_cache import KVCache, LayerKV
from workbench.components.layer_norm import LayerNorm
from workbench.components.mlp import MLP
from workbench.components.relative_attention import SCORE_HOOKS, RelativeAttention
from workbench.config import AOConfig
from workbench.models.base import HookedAOModel, _token_nll
from workbench.orders import slots_to_positions


@dataclass
class XLNetCache(KVCache):
    key_seg: Tensor | None = None  # [batch, key], segment id of each cached key (-1: null slot)


class XLNetBlock(nn.Module):
    """One post-LN XLNet layer; both streams share its weights and have their own hooks."""

    def __init__(self, cfg: AOConfig):
        super().__init__()
        self.attn = RelativeAttention(cfg)
        self.ln1 = LayerNorm(cfg.d_model, cfg.layer_norm_eps)  # after attention (HF rel_attn.layer_norm)
        self.mlp = MLP(cfg)
        self.ln2 = LayerNorm(cfg.d_model, cfg.layer_norm_eps)  # after the MLP (HF ff.layer_norm)
        self.content = StreamHooks(rotary=False)
        self.query = StreamHooks(rotary=False)
        add_hook_points(self.content.attn, SCORE_HOOKS)
        add_hook_points(self.query.attn, SCORE_HOOKS)

    def residual(self, x: Float[Tensor, "batch slot d_model"], hooks: nn.Module, attention: Callable[[Tensor], Tensor]) -> Tensor:
        """Post-LN: resid_pre -> +attn -> resid_mid -> ln1 -> +mlp -> resid_post -> ln2 (the output).

        As in TransformerLens's BERT block, resid_mid and resid_post are the sums before their
        LayerNorm; the block's output is ln2's hook_normalized (= the next block's resid_pre).
        """
        x = hooks.hook_resid_pre(x)
        attn_out = hooks.hook_attn_out(attention(x))
        y = self.ln1(hooks.hook_resid_mid(x + attn_out), hooks.ln1)
        mlp_out = hooks.hook_mlp_out(self.mlp(y, hooks.mlp))
        return self.ln2(hooks.hook_resid_post(y + mlp_out), hooks.ln2)

    def content_stream(
        self,
        h: Float[Tensor, "batch slot d_model"],
        pos: Int[Tensor, "batch slot"],
        seg: Int[Tensor, "batch slot"] | None,
        cache: LayerKV,
        key_pos: Int[Tensor, "batch key"],
        key_seg: Int[Tensor, "batch key"] | None,
        pos_keys: Tensor,
        first: int,
    ) -> Tensor:
        """Content slots first..: slot s >= 1 attends to content slots 1..s (rank <= own)."""
        if first == 0:  # this chunk holds the null slot: reset it to the mean of the content
            h = torch.cat([_null_slot(h[:, 1:]), h[:, 1:]], dim=1)
        hooks = self.content.attn

        def attention(x: Tensor) -> Tensor:
            k, v = self.attn.keys_values(x, hooks)
            k, _, v = cache.extend(k, k, v)
            return self.attn(x, pos, first, k, v, key_pos, pos_keys, hooks, seg, key_seg)

        return self.residual(h, self.content, attention)

    def query_stream(
        self,
        g: Float[Tensor, "batch step d_model"],
        target_pos: Int[Tensor, "batch step"],
        seg: Int[Tensor, "batch step"] | None,
        cache: LayerKV,
        key_pos: Int[Tensor, "batch key"],
        key_seg: Int[Tensor, "batch key"] | None,
        pos_keys: Tensor,
        first: int,
    ) -> Tensor:
        """Query rows first..: row t >= 1 sees content keys 1..t (ranks < t); row 0 the null slot.

        Keys and values are the content stream's, passed through this stream's own hook_k /
        hook_v so they can be read or edited for the query stream alone.
        """
        hooks = self.query.attn

        def attention(x: Tensor) -> Tensor:
            k, v = hooks.hook_k(cache.k), hooks.hook_v(cache.v)
            return self.attn(x, target_pos, first, k, v, key_pos, pos_keys, hooks, seg, key_seg)

        return self.residual(g, self.query, attention)


class HookedXLNet(HookedAOModel):
    """XLNet's two-stream attention with the workbench's hooks API; see the module docstring."""

    stream_names = ("content", "query")
    logit_stream = "query"

    def __init__(self, cfg: AOConfig):
        if cfg.variant != "xlnet":
            raise ValueError(f"HookedXLNet needs variant='xlnet', got {cfg.variant!r}; use workbench.from_config.")
        # Not HookedAOModel.__init__: XLNet has no BOS vector, RoPE, pre-LN blocks or final LayerNorm.
        HookedRootModule.__init__(self)
        self.cfg = cfg
        self.tokenizer = None
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.w_query = nn.Parameter(torch.empty(cfg.d_model))  # the query stream's start (HF mask_emb)
        self.blocks = nn.ModuleList(XLNetBlock(cfg) for _ in range(cfg.n_layers))
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.hook_order = HookPoint()  # [batch, step], σ: the position generated at each step
        self.content = HookSet(("hook_pos", "hook_embed"))  # [batch, slot], [batch, slot, d_model]
        self.query = HookSet(("hook_pos", "hook_embed"))  # [batch, step], [batch, step, d_model]
        self._init_weights()
        self.setup()

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        order: Int[Tensor, "batch step"] | None = None,
        return_type: Literal["logits", "loss", "both"] = "logits",
        token_type_ids: Int[Tensor, "batch pos"] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """As `HookedAOModel.forward`, plus XLNet's segment ids (HF `token_type_ids`, by position).

        Without segment ids there is no segment term, as in Hugging Face.
        """
        if return_type not in ("logits", "loss", "both"):
            raise ValueError(f"return_type must be 'logits', 'loss' or 'both', got {return_type!r}.")
        tokens, order = self.check_inputs(tokens, order)
        segments = _check_segments(token_type_ids, tokens)
        order = self.hook_order(order)
        seg = None if segments is None else segments.gather(1, order)
        logits = self._forward_slots(tokens.gather(1, order), order, seg)
        logits = slots_to_positions(logits, order, self.logit_stream)
        if return_type == "logits":
            return logits
        loss = _token_nll(logits, tokens).mean()
        return loss if return_type == "loss" else (logits, loss)

    def _forward_slots(self, ordered: Tensor, order: Tensor, seg: Tensor | None = None) -> Tensor:
        null = torch.full_like(order[:, :1], -1)
        content_pos = torch.cat([null, order], dim=1)
        content_seg = None if seg is None else torch.cat([null, seg], dim=1)
        return self.run_streams(self.new_cache(), ordered, content_pos, order, 0, content_seg, seg)

    def new_cache(self) -> XLNetCache:
        return XLNetCache.empty(self.cfg.n_layers)

    def run_streams(
        self,
        cache: XLNetCache,
        content_ids: Int[Tensor, "batch slot"] | None,
        content_pos: Int[Tensor, "batch slot"] | None,
        query_pos: Int[Tensor, "batch step"] | None,
        query_first: int,
        content_seg: Int[Tensor, "batch slot"] | None = None,
        query_seg: Int[Tensor, "batch step"] | None = None,
    ) -> Float[Tensor, "batch step d_vocab"] | None:
        """Append content slots to `cache` and/or run query rows against it, layer by layer.

        A content chunk that starts an empty cache gets the null slot prepended (`content_pos`
        and `content_seg` then include its -1). Query row r is step `query_first + r`. Segment
        ids are all-or-nothing: give them with every chunk and query, or never.
        Returns the query rows' logits, or None when no query rows were given.
        """
        h = g = None
        if content_ids is not None:
            content_first = cache.n_slots
            if content_first and (content_seg is None) != (cache.key_seg is None):
                raise ValueError("segment ids must be given with every content chunk, or with none.")
            content_pos = self.content.hook_pos(content_pos)
            cache.add_positions(content_pos)
            if content_seg is not None:
                cache.key_seg = content_seg if cache.key_seg is None else torch.cat([cache.key_seg, content_seg], 1)
            h = self.content.hook_embed(self.embed_tokens(content_ids, bos_first=content_first == 0))
        if query_pos is not None:
            if cache.key_pos is None:
                raise RuntimeError("query rows need content keys; run a content chunk (at least the null slot) first.")
            if (query_seg is None) != (cache.key_seg is None):
                raise ValueError("query rows need segment ids exactly when the content has them.")
            query_pos = self.query.hook_pos(query_pos)
            g = self.query.hook_embed(self.w_query.expand(*query_pos.shape, -1).clone())
        n_pos = 1 + max(0, int(cache.key_pos.max()), int(query_pos.max()) if query_pos is not None else 0)
        rel_enc = self.relative_encoding(n_pos)
        for block, layer in zip(self.blocks, cache.layers):
            pos_keys = block.attn.position_keys(rel_enc)
            if h is not None:
                h = block.content_stream(h, content_pos, content_seg, layer, cache.key_pos, cache.key_seg, pos_keys, content_first)
            if g is not None:
                g = block.query_stream(g, query_pos, query_seg, layer, cache.key_pos, cache.key_seg, pos_keys, query_first)
        return None if g is None else self.unembed(g)

    def relative_encoding(self, n_pos: int) -> Float[Tensor, "rel d_model"]:
        """XLNet's sinusoidal encoding of the distances -(n_pos-1)..(n_pos-1), clamped to
        ±clamp_len when set: row m encodes distance m - (n_pos - 1).

        Computed in float32 exactly as Hugging Face does (`relative_positional_encoding`).
        """
        device = self.W_E.device
        dist = torch.arange(-(n_pos - 1), n_pos, dtype=torch.int64, device=device).float()
        if self.cfg.clamp_len > 0:
            dist = dist.clamp(-self.cfg.clamp_len, self.cfg.clamp_len)
        freq_seq = torch.arange(0, self.cfg.d_model, 2.0, dtype=torch.int64, device=device).float()
        inv_freq = 1 / torch.pow(10000, freq_seq / self.cfg.d_model)
        angles = dist[:, None] * inv_freq  # [rel, d_model / 2]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def probe_qk(
        self,
        cache: dict[str, Tensor],
        layer: int,
        stream: str,
        order: Int[Tensor, "batch step"],
        token_type_ids: Int[Tensor, "batch pos"] | None = None,
    ) -> tuple[Float[Tensor, "batch head row d_probe"], Float[Tensor, "batch head key d_probe"], float]:
        """(q, k, scale) whose plain causal attention -- softmax(q k^T * scale), row i seeing keys
        0..i, as the probe kernel computes it -- is this layer's and stream's `hook_pattern`.

        XLNet's score is not a dot product of q and k, but each term factorises: the position
        term through sin/cos(a - b) = products of sin/cos a and sin/cos b, the segment term
        through one-hot segment features (less a per-row constant, which softmax ignores), and
        the null key's invisibility to rows >= 1 through one feature worth -1e4 after scaling.
        The features are [q + u | position (d_model) | segments (one per id) | null]; scale is
        1/sqrt(d_head). Needs `cache` to hold this stream's `hook_q` and `hook_k` at `layer`.
        Exact up to float round-off, except that a clamp_len shorter than the sequence breaks
        the factorisation (then it raises: use the patterns instead).
        """
        from workbench.hook_names import hook_name
        from workbench.orders import slot_positions

        n_pos = order.shape[1]
        if 0 < self.cfg.clamp_len < n_pos - 1:
            raise NotImplementedError(
                f"clamp_len={self.cfg.clamp_len} clamps distances in sequences of {n_pos}, which does not "
                "factorise into q and k; compute probe statistics from hook_pattern instead."
            )
        attn = self.blocks[layer].attn
        q, k = cache[hook_name("q", layer, stream)].double(), cache[hook_name("k", layer, stream)].double()
        batch, n_rows, n_heads, _ = q.shape
        n_keys = k.shape[1]
        row_pos, key_pos = slot_positions(order, stream, "row"), slot_positions(order, stream, "key")
        n_freq = self.cfg.d_model // 2
        freq_seq = torch.arange(0, self.cfg.d_model, 2.0, dtype=torch.int64, device=q.device).float()
        inv_freq = (1 / torch.pow(10000, freq_seq / self.cfg.d_model)).double()

        def sin_cos(pos: Tensor) -> tuple[Tensor, Tensor]:  # [batch, slot, 1, freq]; 0 for the null slot
            angles = pos.clamp(min=0).double()[..., None, None] * inv_freq
            real = (pos >= 0).double()[..., None, None]
            return angles.sin() * real, angles.cos() * real

        a = einops.einsum(q + attn.b_pos.double(), attn.W_R.double(), "b s h e, h m e -> b s h m")
        a_sin, a_cos = a[..., :n_freq], a[..., n_freq:]
        s_i, c_i = sin_cos(row_pos)
        s_j, c_j = sin_cos(key_pos)
        q_parts = [q + attn.b_content.double(), a_sin * s_i + a_cos * c_i, a_cos * s_i - a_sin * c_i]
        k_parts = [k, c_j.expand(-1, -1, n_heads, -1), s_j.expand(-1, -1, n_heads, -1)]
        if token_type_ids is not None:
            seg = _check_segments(token_type_ids, order).gather(1, order)
            null = torch.full_like(seg[:, :1], -1)
            key_seg = torch.cat([null, seg], 1)
            row_seg = key_seg if stream == "content" else seg
            n_ids = int(seg.max()) + 1
            qb = q + attn.b_seg.double()
            same, different = (einops.einsum(qb, attn.W_seg[c].double(), "b s h e, h e -> b s h") for c in (0, 1))
            onehot_row = torch.nn.functional.one_hot(row_seg.clamp(min=0), n_ids).double() * (row_seg >= 0)[..., None]
            onehot_key = torch.nn.functional.one_hot(key_seg.clamp(min=0), n_ids).double() * (key_seg >= 0)[..., None]
            q_parts.append((same - different)[..., None] * onehot_row[:, :, None])
            k_parts.append(onehot_key[:, :, None].expand(-1, -1, n_heads, -1))
        big = 100.0
        row_index = torch.arange(n_rows, device=q.device)
        q_parts.append((row_index >= 1).double().view(1, n_rows, 1, 1).expand(batch, -1, n_heads, -1) * big)
        key_null = (torch.arange(n_keys, device=q.device) == 0).double().view(1, n_keys, 1, 1)
        k_parts.append(key_null.expand(batch, -1, n_heads, -1) * (-big * self.cfg.d_head**0.5))
        q_probe = torch.cat(q_parts, -1).transpose(1, 2).float()
        k_probe = torch.cat(k_parts, -1).transpose(1, 2).float()
        return q_probe.contiguous(), k_probe.contiguous(), attn.scale

    def unembed(self, x: Float[Tensor, "batch step d_model"], hooks: nn.Module | None = None) -> Tensor:
        """XLNet's LM head reads the query stream directly: there is no final LayerNorm."""
        return x @ self.W_U + self.b_U

    def embed_tokens(self, ids: Int[Tensor, "batch slot"], bos_first: bool) -> Tensor:
        """Token embeddings; the null slot (their mean) prepended when `bos_first`."""
        x = self.W_E[ids]
        return torch.cat([_null_slot(x), x], dim=1) if bos_first else x


def _null_slot(h: Float[Tensor, "batch slot d_model"]) -> Float[Tensor, "batch 1 d_model"]:
    """The null slot: the mean of the content slots `h` (zero when there are none yet)."""
    if h.shape[1] == 0:
        return h.new_zeros(h.shape[0], 1, h.shape[2])
    return h.mean(dim=1, keepdim=True)


def _check_segments(token_type_ids: object, tokens: Tensor) -> Tensor | None:
    if token_type_ids is None:
        return None
    if not isinstance(token_type_ids, Tensor) or token_type_ids.is_floating_point() or token_type_ids.dtype == torch.bool:
        raise TypeError("token_type_ids must be an integer tensor of segment ids, shaped like tokens.")
    if token_type_ids.ndim == 1:
        token_type_ids = token_type_ids.unsqueeze(0)
    if token_type_ids.shape != tokens.shape:
        raise ValueError(
            f"token_type_ids has shape {tuple(token_type_ids.shape)}, but tokens have {tuple(tokens.shape)}; "
            "give one segment id per token."
        )
    if (token_type_ids < 0).any():
        raise ValueError("token_type_ids must be >= 0 (XLNet compares segment ids for equality only).")
    return token_type_ids.to(tokens.device).long()
