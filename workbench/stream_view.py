"""One stream of an any-order model under TransformerLens's own hook names, so TransformerLens's
tools (`ActivationCache` helpers, `transformer_lens.patching`, `transformer_lens.head_detector`)
run on it unchanged.

    view = model.view("query", order)                    # = StreamView(model, "query", order)
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
- **Weights.** `view.blocks[l].attn.W_O`, `.ln1.w`, `view.W_U`, `view.W_Q` (stacked), `view.OV`,
  ... are the model's own (shared between streams), and `view.ln_final(x)` applies the final
  LayerNorm (query and main streams only: the content stream never reaches the unembedding).
  `view.fold_ln()` folds the model's LayerNorms (workbench.models.weights), after which DLA and
  `logit_attrs` add up to the logits exactly.
- **Caches** are `ViewCache`s: TransformerLens's ActivationCache, with sigma_gpt's
  `hook_target_embed` counted as a component in `decompose_resid` / `get_full_resid_decomposition`
  (so they sum to the residual), and a clear refusal of final-LayerNorm helpers on the content view.

Not covered: `xlnet` (post-LN, so TransformerLens's residual decompositions do not describe it).
Detection patterns for `detect_head`: workbench.detection (`view.detection_pattern`).
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.config import TransformerLensConfig
from transformer_lens.hook_points import HookPoint

from workbench.components.hook_sets import is_hooked
from workbench.components.layer_norm import LayerNorm
from workbench.detection import generation_order_detection_pattern
from workbench.hook_names import CheckedHookNames
from workbench.view_cache import ViewCache
from workbench.models.base import HookedAOModel
from workbench.orders import check_order, slot_positions

VIEW_VARIANTS = ("two_stream", "decoupled_rope", "sigma_gpt")
# What a view reads from the model unchanged (stacked weights, circuits, token helpers).
_FROM_MODEL = (
    "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "W_out", "b_in", "b_out",
    "QK", "OV", "W_pos", "to_string", "to_single_token",
)


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
    cfg = TransformerLensConfig(
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
    # HookedTransformerConfig's count: the attention and MLP weight matrices (no embeddings, biases).
    cfg.n_params = c.n_layers * (4 * c.d_model * c.d_head * c.n_heads + 2 * c.d_model * c.d_mlp)
    return cfg


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
        return target(x)


class _Unembed(nn.Module):
    """x @ W_U + b_U with the model's weights (TransformerLens's `unembed` component)."""

    def __init__(self, model: HookedAOModel):
        super().__init__()
        self.__dict__["_model"] = model

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        return x @ self._model.W_U + self._model.b_U


class StreamView(CheckedHookNames, HookedRootModule):
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

    def tokens_to_residual_directions(self, tokens: int | str | Int[Tensor, "..."]) -> Float[Tensor, "... d_model"]:
        """The unembedding direction of each token (a column of W_U), as TransformerLens's."""
        if self.stream != self.model.logit_stream:
            raise ValueError(f"the {self.stream} stream has no logits; use the {self.model.logit_stream} stream's view.")
        return self.model.tokens_to_residual_directions(tokens)

    def __getattr__(self, name: str):
        if name in _FROM_MODEL:
            return getattr(self.__dict__["model"], name)
        return super().__getattr__(name)

    def _name_hint(self, name: str) -> str:
        if name in self.model.hook_dict:
            mine = canonical_name(name, self.stream, self.model.stream_names)
            where = f"in this {self.stream} view it is {mine!r}" if mine else f"it belongs to another stream than {self.stream!r}"
            return f" That is the model's name; {where} (a view uses TransformerLens's names)."
        return super()._name_hint(name)

    def fold_ln(self) -> StreamView:
        """Fold the model's LayerNorms into its weights (`HookedAOModel.fold_ln`); returns the view."""
        self.model.fold_ln()
        return self

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Float[Tensor, " d_model"]:
        """TransformerLens's: the sum of the attention output biases (and MLP output biases, when
        `include_mlp_biases`) of the layers before `layer`, plus layer `layer`'s attention bias
        when `mlp_input` (the input of its MLP). The per-head results leave b_O out, and the
        neurons b_out, so `get_full_resid_decomposition` adds this to sum to the residual."""
        bias = torch.zeros(self.cfg.d_model, device=self.W_E.device, dtype=self.W_E.dtype)
        for i, block in enumerate(self.model.blocks[: layer + 1 if mlp_input else layer]):
            bias = bias + block.attn.b_O
            if include_mlp_biases and i < layer:
                bias = bias + block.mlp.b_out
        return bias

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

    def to_str_tokens(self, tokens: str | Tensor, axis: Literal["slot", "pos"] = "slot") -> list[str]:
        """One string per slot of the view (axis "slot", the default: the labels of every view
        tensor's T long axis, "<BOS>" first, then the tokens in the order generated; query rows,
        which hold no token, get their latest key's label, as TransformerLens labels a row by its
        own token), or per position in sequence order (axis "pos")."""
        if axis == "pos":
            return self.model.to_str_tokens(tokens)
        tokens = self.to_tokens(tokens)
        labels = self.model.to_str_tokens(tokens, axis="slot", order=self.order_for(tokens[:1]), stream="content" if self.stream == "query" else self.stream)
        return labels[: tokens.shape[1]]

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
        tokens, order = self.model.check_inputs(self.to_tokens(tokens), self.order if order is None else order)
        self._n_pos = tokens.shape[1]
        bridges = [
            (self.model_names[name], self._bridge(name, hook_point))
            for name, hook_point in self.hook_dict.items()
            if is_hooked(hook_point)
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

    def run_with_cache(
        self, *args, remove_batch_dim: bool = False, return_cache_object: bool = True, **kwargs
    ) -> tuple[Tensor, ViewCache | dict[str, Tensor]]:  # noqa: ANN002, ANN003
        """As TransformerLens's: (logits, ViewCache) with this view's names and shapes (a plain
        dict with return_cache_object=False)."""
        out, cache_dict = super().run_with_cache(*args, remove_batch_dim=remove_batch_dim, **kwargs)
        return out, ViewCache(cache_dict, self, has_batch_dim=not remove_batch_dim) if return_cache_object else cache_dict

    def cache_from(self, model_cache: dict[str, Tensor], has_batch_dim: bool = True) -> ViewCache:
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
        return ViewCache(out, self, has_batch_dim=has_batch_dim)

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

    def generate(self, tokens: Tensor | str | list[str], *args, return_cache: bool = False, names_filter=None, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        """`model.generate` under the view's order (left to right when `view.order` is None;
        another `order=` may be given). With return_cache, the per-step caches hold this stream's
        hooks under the view's names (`names_filter` in view names), in the decoder's shapes."""
        kwargs.setdefault("order", "left_to_right" if self.order is None else self.order)
        if not return_cache:
            return self.model.generate(tokens, *args, **kwargs)
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        for name in names_filter if isinstance(names_filter, list) else ():
            self.check_hook_name(name)
        wanted = {m: v for v, m in self.model_names.items() if names_filter is None
                  or (v in names_filter if isinstance(names_filter, list) else names_filter(v))}
        if not wanted:
            self._warn_nothing_matched("names_filter")
        out, caches = self.model.generate(tokens, *args, return_cache=True, names_filter=list(wanted) or None, **kwargs)
        rename = lambda cache: {wanted[m]: x for m, x in cache.items() if m in wanted}  # noqa: E731
        caches.prefill, caches.steps = rename(caches.prefill), [rename(c) for c in caches.steps]
        return out, caches

    def frame(self, values: Tensor, dims: tuple[str, ...], tokens: str | Tensor, value: str = "value"):  # noqa: ANN201
        """A tidy DataFrame of a per-slot result keyed by position and step (workbench.slot_frames)."""
        from workbench.slot_frames import slot_frame

        return slot_frame(values, dims, self, tokens, value)

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
