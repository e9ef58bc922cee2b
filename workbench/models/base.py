"""What every hooked any-order model shares: validation, embeddings, unembedding, the public API.

A variant subclass says how slots are fed (`_forward_slots`) and how one decoding step goes
(`workbench.decoding`); everything a user calls lives here.
"""

from __future__ import annotations

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
from workbench.components.rotary import Rotary
from workbench.config import AOConfig
from workbench.orders import check_order, check_tokens, slots_to_positions, to_device

if TYPE_CHECKING:
    from workbench.data.tokenizers import Tokenizer


class HookedAOModel(HookedRootModule):
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

    def to_tokens(self, text: str | list[str]) -> Int[Tensor, "batch pos"]:
        """Token ids for `text` (a list of equal-length texts gives a batch)."""
        tokenizer = self._need_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
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

    def unembed(self, x: Float[Tensor, "batch slot d_model"], hooks: nn.Module) -> Tensor:
        return self.ln_final(x, hooks) @ self.W_U + self.b_U

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
