"""One stream of an any-order model under TransformerLens's own hook names, so TransformerLens's
tools (`ActivationCache` helpers, `transformer_lens.patching`, `transformer_lens.head_detector`)
run on it unchanged.

    view = StreamView(model, "query", order=order)       # or "content"; "main" for one stream
    logits, cache = view.run_with_cache(tokens)          # cache: a transformer_lens.ActivationCache
    cache["pattern", 0]                                  # = blocks.0.query.attn.hook_pattern
    transformer_lens.patching.get_act_patch_resid_pre(view, corrupted, cache, metric)

What the view is (docs/hooks.md, "TransformerLens interop", has the long version):

- **Names.** A two-stream model's `blocks.{l}.{stream}.X` and `{stream}.X` appear as
  `blocks.{l}.X` and `X`; a single-stream model's names are unchanged. The view owns its own
  HookPoints; on each forward it bridges the model's HookPoints of its stream that someone hooked
  to them, so `run_with_hooks`, `run_with_cache`, `hooks()`, `names_filter`, backward hooks and
  edits behave as on a TransformerLens model, and an unhooked forward takes the fused path.
- **A fixed generation order.** `view.order` ([step] or [batch, step]; None = left-to-right) is
  used on every forward, so tools that call `model(tokens)` many times (patching) run the
  any-order model under one order.
- **TransformerLens's "pos" axis is the slot (generation-order) axis**, of length T = number of
  tokens, in every stream: activations, patterns ([slot, key], plain causal, key 0 the null key)
  and logits. Slot i >= 1 of the content / main stream holds the token generated at step i-1;
  slot i of the query / main stream predicts the token generated at step i, `view.targets(tokens)`;
  key j >= 1 holds the token generated at step j-1 (`view.slot_positions` gives the positions).
  This is TransformerLens's own layout for a BOS-prefixed text read in generation order, so
  `logits[:, i]` is read off `resid_post[:, i]` as TransformerLens assumes.
- **Two-stream trimming.** The content stream has T+1 slots; its last one (the last generated
  token) is a key of no query row, so no logit depends on it, and the view drops it. The query
  stream's last key (the same slot) is visible to no query row: its pattern column is exactly 0.
  Dropping both makes every tensor of the view T long and every pattern square, as
  `detect_head` needs; edits made through the view leave the dropped slot as the model had it.
- **Weights.** `view.blocks[l].attn.W_O`, `.ln1.w`, `view.W_U`, ... are the model's own
  (shared between streams), and `view.ln_final(x)` applies the final LayerNorm (query and main
  streams only: the content stream never reaches the unembedding).

Not covered: `xlnet` (post-LN, so TransformerLens's residual decompositions do not describe it);
sigma_gpt's `hook_target_embed` has no TransformerLens counterpart, so `decompose_resid` leaves
it out (add `cache["hook_target_embed"]` to make its sum the residual).

Detection patterns for `detect_head` are built in the same slot coordinates
(`generation_order_detection_pattern`, `view.detection_pattern`): a position-coordinate rule
("the key at position p-1") becomes lower triangular once rows and keys are put in generation
order and keys the row cannot see are dropped.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.config import TransformerLensConfig
from transformer_lens.hook_points import HookPoint

from workbench.components.layer_norm import LayerNorm
from workbench.models.base import HookedAOModel
from workbench.orders import check_order, slot_positions

VIEW_VARIANTS = ("two_stream", "decoupled_rope", "sigma_gpt")
DETECTION_PATTERNS = ("previous_step", "previous_position", "adjacent_position", "duplicate_token", "induction")
_IDENTITY_HOOKS = SimpleNamespace(hook_scale=lambda t: t, hook_normalized=lambda t: t)


def canonical_name(model_name: str, stream: str, streams: tuple[str, ...]) -> str | None:
    """The TransformerLens name of hook `model_name` in `stream`'s view; None if it belongs to
    another stream. `blocks.3.query.attn.hook_z` -> `blocks.3.attn.hook_z` (stream "query")."""
    if streams == ("main",):
        return model_name
    parts = model_name.split(".")
    at = 2 if parts[0] == "blocks" else 0
    if len(parts) > at + 1 and parts[at] in streams:
        return ".".join(parts[:at] + parts[at + 1 :]) if parts[at] == stream else None
    return model_name  # shared by the streams (hook_order)


def slot_dims(name: str) -> tuple[int, ...]:
    """Dimensions of hook `name`'s tensor (with its batch dim) that run over slots or keys."""
    suffix = name.rsplit(".", 1)[-1]
    if suffix in ("hook_attn_scores", "hook_pattern"):
        return (2, 3)  # [batch, head, slot, key]
    if suffix == "hook_order":
        return ()  # [batch, step]: steps, not slots
    return (1,)  # [batch, slot, ...]


def transformer_lens_config(model: HookedAOModel) -> TransformerLensConfig:
    """The TransformerLens config fields its tools read, from the model's AOConfig."""
    c = model.cfg
    return TransformerLensConfig(
        d_model=c.d_model,
        d_head=c.d_head,
        n_layers=c.n_layers,
        n_ctx=c.n_ctx,
        n_heads=c.n_heads,
        d_mlp=c.d_mlp,
        d_vocab=c.d_vocab,
        device=str(model.W_E.device),
        act_fn=c.act_fn,
        eps=c.layer_norm_eps,
        normalization_type="LN",  # pre-LN with weight and bias, not folded
        positional_embedding_type="standard" if c.variant == "sigma_gpt" else "rotary",
        default_prepend_bos=False,  # the BOS / null slot is a learned vector, not a token
        dtype=model.W_E.dtype,
    )


class _Mirror(nn.Module):
    """A weight-free module of the view's tree: holds HookPoints, and reads any other attribute
    (W_O, b_O, w, b, W_in, ...) from the model's module at the same place."""

    def __init__(self, target: nn.Module | None):
        super().__init__()
        self.__dict__["_target"] = target  # not registered: the model's weights stay the model's

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            target = self.__dict__.get("_target")
            if target is None:
                raise
            return getattr(target, name)

    def forward(self, x: Float[Tensor, "... d_model"]) -> Tensor:
        """LayerNorm mirrors apply the model's LayerNorm (no hooks fire), for `apply_ln_to_stack`."""
        target = self.__dict__.get("_target")
        if not isinstance(target, LayerNorm):
            raise TypeError(f"{self.name} is not a LayerNorm; only ln1 / ln2 / ln_final can be applied.")
        return target(x, _IDENTITY_HOOKS)


class _Unembed(nn.Module):
    """x @ W_U + b_U with the model's weights (TransformerLens's `unembed` component)."""

    def __init__(self, model: HookedAOModel):
        super().__init__()
        self.__dict__["_model"] = model

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        return x @ self._model.W_U + self._model.b_U


class StreamView(HookedRootModule):
    """One stream of `model` under TransformerLens's names, run under a fixed generation order.

    `view(tokens)` returns logits [batch, slot, d_vocab] in generation order (row i predicts
    `view.targets(tokens)[:, i]`); `return_type="loss"` gives the model's mean NLL (nats).
    """

    def __init__(
        self,
        model: HookedAOModel,
        stream: str | None = None,
        order: Int[Tensor, "batch step"] | Int[Tensor, " step"] | None = None,
    ):
        super().__init__()
        if model.cfg.variant not in VIEW_VARIANTS:
            raise ValueError(
                f"StreamView covers the pre-LN variants {VIEW_VARIANTS}, got {model.cfg.variant!r}; "
                "hook an XLNet through its own names (workbench.hook_name)."
            )
        stream = model.logit_stream if stream is None else stream
        if stream not in model.stream_names:
            raise ValueError(
                f"{model.cfg.variant} has streams {model.stream_names}, got {stream!r}; "
                f"e.g. StreamView(model, {model.stream_names[-1]!r})."
            )
        self.__dict__["model"] = model  # not a submodule: the model's HookPoints are not the view's
        self.stream = stream
        self.order = order
        self._tl_cfg = transformer_lens_config(model)
        self._n_pos: int | None = None
        self.model_names: dict[str, str] = {}
        """view hook name -> the model's hook name"""
        self.blocks = nn.ModuleList(_Mirror(block) for block in model.blocks)
        for block in self.blocks:  # each view block's hook_resid_post is one residual stream
            block.__dict__["hook_out_is_single_residual_stream"] = True
        if stream == model.logit_stream:
            self.unembed = _Unembed(model)
        for model_name in model.hook_dict:
            name = canonical_name(model_name, stream, model.stream_names)
            if name is not None:
                self.model_names[name] = model_name
                self._add_hook_point(name)
        self.setup()
        self.train(model.training)

    def _add_hook_point(self, name: str) -> None:
        *path, leaf = name.split(".")
        parent: nn.Module = self
        target: object = self.model
        for part in path:
            if part.isdigit():
                parent, target = parent[int(part)], target[int(part)]
                continue
            target = getattr(target, part, None)
            if part not in parent._modules:  # (add_module would see the mirrored attribute)
                parent._modules[part] = _Mirror(target)
            parent = parent._modules[part]
        parent._modules[leaf] = HookPoint()

    # ---- what TransformerLens reads ---------------------------------------------------------

    @property
    def cfg(self) -> TransformerLensConfig:
        self._tl_cfg.device = str(self.model.W_E.device)  # the model may have moved since
        self._tl_cfg.dtype = self.model.W_E.dtype
        return self._tl_cfg

    @property
    def W_E(self) -> Tensor:
        return self.model.W_E

    @property
    def W_U(self) -> Tensor:
        return self.model.W_U

    @property
    def b_U(self) -> Tensor:
        return self.model.b_U

    def tokens_to_residual_directions(self, tokens: int | Int[Tensor, "..."]) -> Float[Tensor, "... d_model"]:
        """The unembedding direction of each token (a column of W_U), as TransformerLens's."""
        if self.stream != self.model.logit_stream:
            raise ValueError(f"the {self.stream} stream has no logits; use the {self.model.logit_stream} stream's view.")
        tokens = torch.as_tensor(tokens, device=self.W_U.device)
        return self.W_U[:, tokens].movedim(0, -1)

    def _apply(self, *args, **kwargs):  # view.to(...), .cuda(), .half() move the model: the view has no weights
        self.model._apply(*args, **kwargs)
        return super()._apply(*args, **kwargs)

    def train(self, mode: bool = True) -> StreamView:
        """Also sets the model's mode (TransformerLens's patching insists on eval mode)."""
        super().train(mode)
        self.model.train(mode)
        return self

    def to_tokens(self, text: str | list[str] | Tensor) -> Int[Tensor, "batch pos"]:
        """Token ids in sequence-position order; a tensor of ids passes through (as [batch, pos])."""
        if isinstance(text, Tensor):
            return text if text.ndim == 2 else text.unsqueeze(0)
        return self.model.to_tokens(text)

    def to_str_tokens(self, tokens: str | Tensor) -> list[str]:
        """One string per token of one sequence, in sequence-position order."""
        tokens = self.to_tokens(tokens)
        if tokens.shape[0] != 1:
            raise ValueError(f"to_str_tokens takes one sequence, got a batch of {tokens.shape[0]}.")
        return [self.model.to_string(t[None]) for t in tokens[0]]

    def to_string(self, tokens: Tensor) -> str | list[str]:
        return self.model.to_string(tokens)

    # ---- running ------------------------------------------------------------------------------

    def order_for(self, tokens: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch step"]:
        """The view's generation order for this batch (left-to-right when `view.order` is None)."""
        return check_order(self.order, tokens.shape[0], tokens.shape[1], tokens.device)

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"] | str | list[str],
        return_type: Literal["logits", "loss", "both"] = "logits",
        order: Int[Tensor, "batch step"] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits [batch, slot, d_vocab] in generation order under `order` (default `view.order`)."""
        tokens = self.to_tokens(tokens)
        if order is None:
            tokens, order = self.model.check_inputs(tokens, self.order)
        else:
            tokens, order = self.model.check_inputs(tokens, order)
        self._n_pos = tokens.shape[1]
        bridges = [
            (self.model_names[name], self._bridge(name, hook_point))
            for name, hook_point in self.hook_dict.items()
            if hook_point.has_hooks()
        ]
        with self.model.hooks(fwd_hooks=bridges):
            out = self.model(tokens, order, return_type=return_type)
        if return_type == "loss":
            return out
        logits, loss = out if return_type == "both" else (out, None)
        logits = logits.gather(1, order[..., None].expand(-1, -1, logits.shape[-1]))  # pos -> slot
        return logits if return_type == "logits" else (logits, loss)

    def _bridge(self, name: str, hook_point: HookPoint):
        """A hook for the model's HookPoint: passes the view's slots through `hook_point`."""
        dims = slot_dims(name)

        def bridge(x: Tensor, hook: HookPoint) -> Tensor:
            n = self._n_pos
            trimmed = [d for d in dims if x.shape[d] == n + 1]  # two-stream: the dropped slot
            inner = x
            for d in trimmed:
                inner = inner.narrow(d, 0, n)
            out = hook_point(inner)
            if out is inner:  # unchanged or edited in place (inner is a view of x)
                return x
            if not trimmed:
                return out
            full = x.clone()
            index = [slice(None)] * x.ndim
            for d in trimmed:
                index[d] = slice(0, n)
            full[tuple(index)] = out
            return full

        return bridge

    def run_with_cache(self, *args, remove_batch_dim: bool = False, **kwargs) -> tuple[Tensor, ActivationCache]:
        """As TransformerLens's: (logits, ActivationCache) with this view's names and shapes."""
        out, cache_dict = super().run_with_cache(*args, remove_batch_dim=remove_batch_dim, **kwargs)
        return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    def cache_from(self, model_cache: dict[str, Tensor], has_batch_dim: bool = True) -> ActivationCache:
        """This stream's part of a cache of the *model* (`model.run_with_cache`), renamed and
        trimmed like the view's own: one model run serves a view of each stream. Needs
        `hook_order` in the cache (for the number of tokens)."""
        if "hook_order" not in model_cache:
            raise KeyError("cache_from needs 'hook_order' in the model cache to know the number of tokens.")
        n = model_cache["hook_order"].shape[-1]
        shift = 0 if has_batch_dim else 1
        out = {}
        for name, model_name in self.model_names.items():
            if model_name not in model_cache:
                continue
            x = model_cache[model_name]
            for d in slot_dims(name):
                if x.shape[d - shift] == n + 1:
                    x = x.narrow(d - shift, 0, n)
            out[name] = x
        return ActivationCache(out, self, has_batch_dim=has_batch_dim)

    # ---- coordinates ------------------------------------------------------------------------

    def targets(self, tokens: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch slot"]:
        """The token each logit row predicts: tokens in generation order, tokens[b, σ[i]]."""
        tokens = self.to_tokens(tokens)
        return tokens.gather(1, self.order_for(tokens))

    def slot_positions(
        self, tokens: Int[Tensor, "batch pos"], axis: Literal["row", "key", "own"] = "row"
    ) -> Int[Tensor, "batch slot"]:
        """Sequence position of each of the view's T slots (-1: the BOS / null slot).

        "row": the row's reference position (content: the position it holds; query / main: the
        position it predicts). "key": the position of the token each key holds. "own": the
        position each row holds (content / main; equal to "key")."""
        tokens = self.to_tokens(tokens)
        order, n = self.order_for(tokens), tokens.shape[1]
        if axis == "own":
            if self.stream == "query":
                raise ValueError("query rows hold no token; use axis='row' (the target position).")
            axis = "key"
        return slot_positions(order, self.stream, axis)[:, :n]

    def detection_pattern(
        self, name: str | Float[Tensor, "pos pos"], tokens: Int[Tensor, "1 pos"] | Int[Tensor, " pos"]
    ) -> Float[Tensor, "slot key"]:
        """A [slot, key] detection pattern for `transformer_lens.head_detector.detect_head` on one
        sequence: a name from `DETECTION_PATTERNS` or a [pos, pos] position-coordinate pattern."""
        tokens = self.to_tokens(tokens)
        if tokens.shape[0] != 1:
            raise ValueError(f"detect_head takes one sequence at a time, got a batch of {tokens.shape[0]}.")
        pattern = generation_order_detection_pattern(name, tokens, self.order_for(tokens), self.stream)
        return pattern[0]


# ---- detection patterns in generation order --------------------------------------------------


def position_detection_pattern(name: str, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos pos"]:
    """Rule `name` in sequence-position coordinates: entry [p, q] = 1 when a row whose reference
    position is p should attend to the key at position q (no causality: any-order rows may see
    keys on both sides)."""
    batch, n = tokens.shape
    p = torch.arange(n, device=tokens.device)[:, None]
    q = torch.arange(n, device=tokens.device)[None, :]
    if name == "previous_position":
        rule = (q == p - 1).expand(batch, n, n)
    elif name == "adjacent_position":
        rule = ((q - p).abs() == 1).expand(batch, n, n)
    elif name == "duplicate_token":  # the same token elsewhere
        rule = (tokens[:, :, None] == tokens[:, None, :]) & (p != q)
    elif name == "induction":  # the token after an earlier (in position) occurrence of the row's token
        prev = torch.cat([torch.full_like(tokens[:, :1], -1), tokens[:, :-1]], dim=1)  # token at q-1
        rule = (tokens[:, :, None] == prev[:, None, :]) & (q - 1 != p) & (q >= 1)
    else:
        raise ValueError(f"unknown position rule {name!r}; use one of {DETECTION_PATTERNS[1:]}.")
    return rule.float()


def generation_order_detection_pattern(
    name: str | Float[Tensor, "pos pos"] | Float[Tensor, "batch pos pos"],
    tokens: Int[Tensor, "batch pos"],
    order: Int[Tensor, "batch step"],
    stream: str,
) -> Float[Tensor, "batch slot key"]:
    """A detection pattern in a stream view's [slot, key] coordinates (T x T, lower triangular).

    - "previous_step": the key generated one step before the row's own token (content / main:
      key i-1 of row i >= 2), or, for query rows, the most recently generated key (key i of row
      i >= 1): recency 1 in the probe contract. TransformerLens's own "previous_token_head"
      (key i-1 of every row i >= 1) equals this for content / main apart from row 1, where it
      points at the null key; on a query view it means recency 2.
    - a position rule (`position_detection_pattern` names, or a [pos, pos] tensor): entry
      [i, j] = rule[ref(i), pos(j)] for visible keys j <= i, j >= 1, where ref(i) is the row's
      reference position (content: held; query / main: predicted) and pos(j) the key's position.
      For a query row "duplicate_token" thus marks earlier copies of the token it must predict.
    """
    n = tokens.shape[1]
    slots = torch.arange(n, device=tokens.device)
    visible = slots[None, :] <= slots[:, None]  # [slot, key]
    if isinstance(name, str) and name == "previous_step":
        offset = 0 if stream == "query" else 1
        rule = (slots[None, :] == slots[:, None] - offset) & (slots[None, :] >= 1)
        return rule.float().expand(tokens.shape[0], n, n).clone()
    rule = position_detection_pattern(name, tokens) if isinstance(name, str) else name.float()
    if rule.ndim == 2:
        rule = rule.expand(tokens.shape[0], n, n)
    row_pos = slot_positions(order, stream, "row")[:, :n]  # [batch, slot]
    key_pos = slot_positions(order, stream, "key")[:, :n]
    picked = rule.gather(1, row_pos.clamp(min=0)[:, :, None].expand(-1, -1, n))  # rows by reference position
    picked = picked.gather(2, key_pos.clamp(min=0)[:, None, :].expand(-1, n, -1))  # keys by their position
    keep = visible & (row_pos[:, :, None] >= 0) & (key_pos[:, None, :] >= 0)
    return picked * keep
