"""What every hooked any-order model shares: validation, embeddings, unembedding, the public API.

A variant subclass says how slots are fed (`_forward_slots`) and how one decoding step goes
(`workbench.decoding`); everything a user calls lives here.
"""

from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from workbench.components.block import Block
from workbench.components.kv_cache import KVCache
from workbench.components.layer_norm import LayerNorm
from workbench.components.rotary import Angles, Rotary
from workbench.config import AOConfig
from workbench.hook_names import CheckedHookNames
from workbench.models.weights import WeightsMixin
from workbench.orders import check_order, check_tokens, slot_positions, slots_to_positions, to_device

if TYPE_CHECKING:
    from workbench.data.tokenizers import Tokenizer
    from workbench.stream_view import StreamView

BOS_LABEL = "<BOS>"
"""How `to_str_tokens(..., axis="slot")` labels the BOS / null slot (it holds no token)."""


class ModelCache(dict):
    """A model's activation cache: a dict of hook name -> tensor whose missing keys say how to
    spell them (TransformerLens's `cache["pattern", 0]` is a StreamView cache's)."""

    def __missing__(self, key: object):
        if isinstance(key, tuple):
            raise KeyError(
                f"a model cache is keyed by full hook names, e.g. hook_name('pattern', 0, stream) -> "
                f"'blocks.0...attn.hook_pattern'; TransformerLens's cache[{key!r}] works on a stream view's "
                "cache: model.view(stream, order).run_with_cache(tokens)."
            ) from None
        close = difflib.get_close_matches(str(key), list(self), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"{key!r} is not in this cache ({len(self)} hooks cached).{hint}") from None


class HookedAOModel(CheckedHookNames, WeightsMixin, HookedRootModule):
    """Base class of the hooked any-order autoregressive models.

    `model(tokens, order)` returns logits in sequence-position coordinates: `logits[b, p]` is the
    distribution of `tokens[b, p]` given the tokens at the positions generated before p.
    Hooked activations are in slot (generation-order) coordinates; see docs/coordinates.md.
    """

    stream_names: tuple[str, ...]
    """The streams of this variant, as used in hook names (`content`, `query`; or `main`)."""
    logit_stream: str
    """The stream whose final residual gives the logits."""

    def __init__(self, cfg: AOConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer: Tokenizer | None = None
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.w_bos = nn.Parameter(torch.empty(cfg.d_model))  # the BOS / null slot's input
        self.rotary = (
            Rotary(cfg.n_rotary, cfg.n_ctx, cfg.rope_base) if cfg.variant != "sigma_gpt" else None
        )
        self.blocks = nn.ModuleList(Block(cfg, self.rotary) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.hook_order = HookPoint()  # [batch, step], σ: the position generated at each step

    def _init_weights(self) -> None:
        """GPT-2 init: N(0, init_range), residual-writing matrices scaled by 1/sqrt(2 n_layers)."""
        generator = None
        if self.cfg.seed is not None:
            generator = torch.Generator().manual_seed(self.cfg.seed)
        out_scale = 1.0 / math.sqrt(2 * self.cfg.n_layers)
        for name, param in self.named_parameters():
            if param.ndim >= 2 or name in ("w_bos", "w_query"):
                std = self.cfg.init_range * (out_scale if name.endswith(("W_O", "W_out")) else 1.0)
                with torch.no_grad():
                    param.copy_(torch.randn(param.shape, generator=generator) * std)

    # ---- the public API -------------------------------------------------------------------

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        order: Int[Tensor, "batch step"] | None = None,
        return_type: Literal["logits", "loss", "both"] = "logits",
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits [batch, pos, d_vocab] for every position under generation order `order`
        (default left-to-right); `return_type="loss"` gives the mean NLL in nats (a scalar, as
        TransformerLens's `run_with_cache(..., incl_bwd=True)` needs), "both" gives (logits, loss).
        """
        if return_type not in ("logits", "loss", "both"):
            raise ValueError(f"return_type must be 'logits', 'loss' or 'both', got {return_type!r}.")
        tokens, order = self.check_inputs(tokens, order)
        order = self.hook_order(order)
        logits = self._forward_slots(tokens.gather(1, order), order)  # [batch, step, d_vocab]
        logits = slots_to_positions(logits, order, self.logit_stream)
        if return_type == "logits":
            return logits
        loss = _token_nll(logits, tokens).mean()
        return loss if return_type == "loss" else (logits, loss)

    def nll(
        self,
        tokens: Int[Tensor, "batch pos"],
        order: Int[Tensor, "batch step"] | None = None,
    ) -> Float[Tensor, "batch pos"]:
        """Per-token negative log-likelihood in nats, in sequence-position coordinates."""
        tokens, order = self.check_inputs(tokens, order)
        return _token_nll(self(tokens, order), tokens)

    def check_inputs(self, tokens: object, order: object) -> tuple[Tensor, Tensor]:
        """Validate tokens and order (clear errors for every bad input); returns int64 tensors on
        the model's device. Inputs are checked where they are: CPU inputs cost the GPU no sync."""
        tokens = to_device(check_tokens(tokens, self.cfg.d_vocab, self.cfg.n_ctx), self.W_E.device)
        return tokens, check_order(order, tokens.shape[0], tokens.shape[1], tokens.device)

    def to_tokens(
        self,
        text: str | list[str] | Tensor,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> Int[Tensor, "batch pos"]:
        """Token ids [batch, pos] for `text` (a list of equal-length texts gives a batch); a tensor
        of ids is checked and passes through (as TransformerLens's tools expect).

        prepend_bos: only False / None: the BOS / null slot is a learned vector the model adds
        itself, not a token. padding_side: only None: there is no pad token (batch texts of equal
        token length)."""
        if prepend_bos:
            raise ValueError(
                "prepend_bos=True: there is no BOS token to prepend; the model adds its BOS / null slot "
                "(a learned vector) itself. Use prepend_bos=False or leave it None."
            )
        if padding_side is not None:
            raise ValueError(
                f"padding_side={padding_side!r}: the models have no pad token, so batches are never padded; "
                "batch texts of equal token length (or tokenise them one by one)."
            )
        if isinstance(text, Tensor):
            return self.check_inputs(text, None)[0]
        if not isinstance(text, (str, list)) or (isinstance(text, list) and not all(isinstance(t, str) for t in text)):
            raise TypeError(f"to_tokens takes a str, a list of str, or a tensor of token ids; got {type(text).__name__}.")
        tokenizer = self._need_tokenizer()
        texts = [text] if isinstance(text, str) else text
        ids = [tokenizer.encode(t) for t in texts]
        if len({len(i) for i in ids}) > 1:
            raise ValueError(
                f"texts tokenise to different lengths {[len(i) for i in ids]}; batch texts of "
                "equal token length, or call to_tokens on each text."
            )
        return torch.tensor(ids, dtype=torch.long, device=self.W_E.device)

    def to_string(self, tokens: Int[Tensor, "... pos"]) -> str | list[str]:
        """Text for a [pos] tensor, or a list of texts for a [batch, pos] tensor."""
        tokenizer = self._need_tokenizer()
        if tokens.ndim == 1:
            return tokenizer.decode(tokens.tolist())
        return [tokenizer.decode(row.tolist()) for row in tokens]

    def to_str_tokens(
        self,
        tokens: str | Tensor,
        axis: Literal["pos", "slot"] = "pos",
        order: Int[Tensor, "batch step"] | None = None,
        stream: str | None = None,
    ) -> list[str]:
        """One string per token of one sequence: in sequence-position order (axis "pos"), or as
        the slots of `stream` hold them under `order` (axis "slot"; "<BOS>" for the BOS slot):
        content T+1 slots, main T, and for the query stream its keys (the content slots, T+1),
        since query rows hold no token. A view's `to_str_tokens` gives its T slots."""
        tokens = self.to_tokens(tokens)
        if tokens.shape[0] != 1:
            raise ValueError(f"to_str_tokens takes one sequence, got a batch of {tokens.shape[0]}; index one row.")
        if axis == "pos":
            if order is not None or stream is not None:
                raise ValueError("order and stream label slots; pass axis='slot' with them.")
            return [self.to_string(t[None]) for t in tokens[0]]
        if axis != "slot":
            raise ValueError(f"axis must be 'pos' (sequence order) or 'slot' (generation-order slots), got {axis!r}.")
        stream = self.logit_stream if stream is None else stream
        if stream not in self.stream_names:
            raise ValueError(f"{self.cfg.variant} has streams {self.stream_names}, got {stream!r}.")
        order = check_order(order, 1, tokens.shape[1], tokens.device)
        held = slot_positions(order, stream, "key")[0].tolist()
        return [BOS_LABEL if p < 0 else self.to_string(tokens[0, p : p + 1]) for p in held]

    def to_single_token(self, text: str) -> int:
        """The id of `text`, which must be exactly one token."""
        ids = self.to_tokens(text)[0]
        if ids.numel() != 1:
            raise ValueError(f"{text!r} is {ids.numel()} tokens, not one: {ids.tolist()}.")
        return int(ids[0])

    def tokens_to_residual_directions(self, tokens: int | str | Int[Tensor, "..."]) -> Float[Tensor, "... d_model"]:
        """The unembedding direction of each token (a column of W_U), as TransformerLens's; after
        `fold_ln()` these are the directions that DLA projects onto."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        tokens = torch.as_tensor(tokens, device=self.W_U.device)
        return self.W_U[:, tokens].movedim(0, -1)

    def view(
        self, stream: str | None = None, order: Int[Tensor, "batch step"] | Int[Tensor, " step"] | None = None
    ) -> StreamView:
        """One stream under TransformerLens's names and coordinates (default: the logit stream),
        run under `order`: the object to hand to TransformerLens's tools. See workbench.stream_view."""
        from workbench.stream_view import StreamView

        return StreamView(self, stream, order)

    def run_with_cache(self, *args, return_cache_object: bool = True, **kwargs) -> tuple[Tensor, dict[str, Tensor]]:  # noqa: ANN002, ANN003
        """As TransformerLens's; the cache is a `ModelCache` (a dict keyed by this model's hook
        names), or a plain dict with return_cache_object=False."""
        out, cache = super().run_with_cache(*args, **kwargs)
        return out, ModelCache(cache) if return_cache_object else cache

    def _name_hint(self, name: str) -> str:
        """For a TransformerLens name on a two-stream model, the stream-qualified names."""
        from workbench.stream_view import canonical_name

        if self.cfg.n_streams == 2:
            options = [m for m in self.hook_dict if any(canonical_name(m, s, self.stream_names) == name for s in self.stream_names)]
            if options:
                return (
                    f" {self.cfg.variant}'s hook names carry the stream: {' or '.join(map(repr, options))} "
                    "(workbench.hook_name(activation, layer, stream)); TransformerLens's names work on "
                    "model.view(stream, order)."
                )
        return super()._name_hint(name)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "W_pos":
                raise AttributeError(
                    f"{self.cfg.variant} has no position table W_pos: positions enter through rotary "
                    "embeddings (model.rotary) applied to queries and keys."
                ) from None
            raise

    def generate(self, *args, **kwargs):  # noqa: ANN002, ANN003 (documented in decoding.generate)
        from workbench.decoding import generate

        return generate(self, *args, **kwargs)

    generate.__doc__ = "Any-order generation and infilling with a KV cache; see workbench.decoding.generate."

    # ---- for subclasses --------------------------------------------------------------------

    def _forward_slots(
        self, ordered: Int[Tensor, "batch step"], order: Int[Tensor, "batch step"]
    ) -> Float[Tensor, "batch step d_vocab"]:
        """Logits in generation order: row t predicts ordered[:, t]."""
        raise NotImplementedError

    def new_cache(self) -> KVCache:
        return KVCache.empty(self.cfg.n_layers)

    def unembed(self, x: Float[Tensor, "... d_model"], hooks: nn.Module | None = None) -> Tensor:
        """Logits of final residuals `x`: ln_final then W_U, b_U (through `hooks` when given)."""
        return self.ln_final(x, hooks) @ self.W_U + self.b_U

    def rope_angles(self, pos: Int[Tensor, "batch slot"]) -> Angles | None:
        """The rotation of each slot at positions `pos` (None without RoPE), gathered once per
        forward and shared by every layer."""
        return None if self.rotary is None else self.rotary.angles(pos)

    def embed_tokens(self, ids: Int[Tensor, "batch slot"], bos_first: bool) -> Tensor:
        """Token embeddings; the BOS slot's learned vector prepended when `bos_first`."""
        x = self.W_E[ids]
        if bos_first:
            x = torch.cat([self.w_bos.expand(ids.shape[0], 1, -1), x], dim=1)
        return x

    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer; load a checkpoint with workbench.load(...), or set "
                "model.tokenizer = workbench.data.ByteTokenizer() (or a CharTokenizer) first."
            )
        return self.tokenizer


def _token_nll(logits: Tensor, tokens: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), reduction="none").view(tokens.shape)
