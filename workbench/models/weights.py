"""TransformerLens's weight surface on the models: stacked weights, QK / OV circuits, fold_ln.

    model.W_Q                       # [n_layers, n_heads, d_model, d_head], as HookedTransformer's
    model.OV[layer, head]           # a transformer_lens.FactoredMatrix, W_V @ W_O
    model.fold_ln()                 # LayerNorm weights folded into the next weights, in place

Every weight is shared between a two-stream model's streams, so these are the same for every
stream (and a StreamView reads them from the model).

**QK and RoPE.** `QK` is the bilinear form of *unrotated* queries and keys. With rotary
embeddings (`two_stream`, `decoupled_rope`) the real score of a query rotated to position p and a
key rotated to position q is `q R(q - p) k^T`: `QK` is that score at offset q - p = 0 only (and a
decoupled_rope row never sees a key at its own target position). For sigma_gpt (no rotation) the
scores are exactly `x_q QK x_k^T` of the LayerNormed residuals.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformer_lens import FactoredMatrix


class WeightsMixin:
    """For HookedAOModel: read-only stacks of the blocks' weights, TransformerLens's names."""

    def _stack(self, module: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(block, module), name) for block in self.blocks])

    @property
    def W_Q(self) -> Tensor:
        return self._stack("attn", "W_Q")

    @property
    def W_K(self) -> Tensor:
        return self._stack("attn", "W_K")

    @property
    def W_V(self) -> Tensor:
        return self._stack("attn", "W_V")

    @property
    def W_O(self) -> Tensor:
        return self._stack("attn", "W_O")

    @property
    def b_Q(self) -> Tensor:
        return self._stack("attn", "b_Q")

    @property
    def b_K(self) -> Tensor:
        return self._stack("attn", "b_K")

    @property
    def b_V(self) -> Tensor:
        return self._stack("attn", "b_V")

    @property
    def b_O(self) -> Tensor:
        return self._stack("attn", "b_O")

    @property
    def W_in(self) -> Tensor:
        return self._stack("mlp", "W_in")

    @property
    def W_out(self) -> Tensor:
        return self._stack("mlp", "W_out")

    @property
    def b_in(self) -> Tensor:
        return self._stack("mlp", "b_in")

    @property
    def b_out(self) -> Tensor:
        return self._stack("mlp", "b_out")

    @property
    def QK(self) -> FactoredMatrix:
        """[n_layers, n_heads, d_model, d_model] W_Q @ W_K^T; with RoPE, the offset-0 form (module doc)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """[n_layers, n_heads, d_model, d_model] W_V @ W_O (rotation never touches values)."""
        return FactoredMatrix(self.W_V, self.W_O)

    @torch.no_grad()
    def fold_ln(self):  # noqa: ANN201 (returns self)
        """Fold every LayerNorm's weight and bias into the weights that read its output, in place,
        as TransformerLens's `fold_ln=True`: ln1 into W_Q / W_K / W_V (and their biases), ln2 into
        W_in / b_in, ln_final into W_U / b_U; the LayerNorms are left with w = 1, b = 0. Logits are
        unchanged (up to float rounding), and a cache's cached-scale helpers (`apply_ln_to_stack`,
        `logit_attrs`, `decompose_resid(apply_ln=True)`) then give exactly what reaches the logits.
        Returns the model."""
        if self.cfg.variant == "xlnet":
            raise ValueError("fold_ln needs a pre-LN model; xlnet is post-LN (its LayerNorms read the residual sum).")
        for block in self.blocks:
            w, b = block.ln1.w.clone(), block.ln1.b.clone()
            for name in ("Q", "K", "V"):
                W, bias = getattr(block.attn, f"W_{name}"), getattr(block.attn, f"b_{name}")
                bias.add_(torch.einsum("d,hde->he", b, W))
                W.mul_(w[None, :, None])
            w, b = block.ln2.w.clone(), block.ln2.b.clone()
            block.mlp.b_in.add_(b @ block.mlp.W_in)
            block.mlp.W_in.mul_(w[:, None])
        w, b = self.ln_final.w.clone(), self.ln_final.b.clone()
        self.b_U.add_(b @ self.W_U)
        self.W_U.mul_(w[:, None])
        for ln in [self.ln_final] + [m for block in self.blocks for m in (block.ln1, block.ln2)]:
            ln.w.fill_(1.0)
            ln.b.zero_()
        return self
