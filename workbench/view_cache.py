"""`ViewCache`: the ActivationCache of a StreamView, completed where an any-order stream needs it.

On top of TransformerLens's ActivationCache: sigma_gpt's target-position embedding (no
TransformerLens counterpart) is a component of `decompose_resid` and
`get_full_resid_decomposition` (label "target_embed"), so both sum to the residual; and on the
content view, which never reaches the final LayerNorm, helpers that need it refuse clearly.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice


class ViewCache(ActivationCache):
    """A view's ActivationCache. On top of TransformerLens's: sigma_gpt's target-position
    embedding is a component of `decompose_resid` / `get_full_resid_decomposition` (label
    "target_embed"), and the content view refuses helpers that need the final LayerNorm."""

    def apply_ln_to_stack(self, residual_stack: Tensor, layer: int | None = None, *args, **kwargs) -> Tensor:  # noqa: ANN002, ANN003
        if (layer is None or layer in (-1, self.model.cfg.n_layers)) and "ln_final.hook_scale" not in self.cache_dict:
            if self.model.stream != self.model.model.logit_stream:
                raise ValueError(
                    f"the {self.model.stream} stream never reaches the final LayerNorm or the unembedding, so "
                    "apply_ln at the final layer has no meaning; use a layer < n_layers, apply_ln=False, or the "
                    f"{self.model.model.logit_stream} stream's view."
                )
            raise KeyError("apply_ln at the final layer needs 'ln_final.hook_scale' in the cache; cache it too.")
        return super().apply_ln_to_stack(residual_stack, layer, *args, **kwargs)

    def _target_embed(self, pos_slice: object, apply_ln: bool, layer: int | None, mlp_input: bool) -> Tensor | None:
        if "hook_target_embed" not in self.cache_dict:
            return None
        part = Slice.unwrap(pos_slice).apply(self["hook_target_embed"], -2)[None]
        return self.apply_ln_to_stack(part, layer, mlp_input, pos_slice=pos_slice) if apply_ln else part

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice: object = None, incl_embeds: bool = True,
                        return_labels: bool = False):  # noqa: ANN201 (TransformerLens's return)
        stack, labels = super().decompose_resid(layer, mlp_input, mode, apply_ln, pos_slice, incl_embeds, return_labels=True)
        extra = self._target_embed(pos_slice, apply_ln, layer, mlp_input) if incl_embeds else None
        if extra is not None:
            at = labels.index("pos_embed") + 1
            stack, labels = torch.cat([stack[:at], extra, stack[at:]]), labels[:at] + ["target_embed"] + labels[at:]
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False, pos_slice: object = None,
                                     return_labels: bool = False, project_output_onto: Tensor | None = None):  # noqa: ANN201
        stack, labels = super().get_full_resid_decomposition(
            layer, mlp_input, expand_neurons, apply_ln, pos_slice, return_labels=True, project_output_onto=project_output_onto
        )
        extra = self._target_embed(pos_slice, apply_ln, layer, mlp_input)
        if extra is not None:
            if project_output_onto is not None:
                extra = extra @ project_output_onto
            at = labels.index("pos_embed") + 1
            stack, labels = torch.cat([stack[:at], extra, stack[at:]]), labels[:at] + ["target_embed"] + labels[at:]
        return (stack, labels) if return_labels else stack
