"""Hook names from (activation, layer, stream), like TransformerLens's `utils.get_act_name`.

Single-stream models (`decoupled_rope`, `sigma_gpt`; stream "main") use TransformerLens's own
names. Two-stream models put the stream in the module path, right before the hook or the
attn / mlp / ln module:

    hook_name("pattern", 3, "query")   -> "blocks.3.query.attn.hook_pattern"
    hook_name("resid_pre", 0, "content") -> "blocks.0.content.hook_resid_pre"
    hook_name("embed", stream="query")  -> "query.hook_embed"
    hook_name("pattern", 3)             -> "blocks.3.attn.hook_pattern"
"""

from __future__ import annotations

# activation -> (sub-module inside a block or at the root, hook suffix)
_BLOCK = {
    "resid_pre": ("", "hook_resid_pre"),
    "resid_mid": ("", "hook_resid_mid"),
    "resid_post": ("", "hook_resid_post"),
    "attn_out": ("", "hook_attn_out"),
    "mlp_out": ("", "hook_mlp_out"),
    "q": ("attn", "hook_q"),
    "k": ("attn", "hook_k"),
    "v": ("attn", "hook_v"),
    "rot_q": ("attn", "hook_rot_q"),
    "rot_k": ("attn", "hook_rot_k"),
    "attn_scores": ("attn", "hook_attn_scores"),
    "scores": ("attn", "hook_attn_scores"),
    "pattern": ("attn", "hook_pattern"),
    "attn": ("attn", "hook_pattern"),
    "z": ("attn", "hook_z"),
    "result": ("attn", "hook_result"),
    "pre": ("mlp", "hook_pre"),
    "post": ("mlp", "hook_post"),
    "scale1": ("ln1", "hook_scale"),
    "normalized1": ("ln1", "hook_normalized"),
    "scale2": ("ln2", "hook_scale"),
    "normalized2": ("ln2", "hook_normalized"),
}
_ROOT = {
    "order": "hook_order",
    "embed": "hook_embed",
    "pos": "hook_pos",
    "target_pos": "hook_target_pos",
    "pos_embed": "hook_pos_embed",
    "target_embed": "hook_target_embed",
    "scale": "ln_final.hook_scale",
    "normalized": "ln_final.hook_normalized",
}
_STREAMS = ("main", "content", "query")


def hook_name(activation: str, layer: int | None = None, stream: str = "main") -> str:
    """The full hook name of `activation` at `layer` in `stream` (see the module docstring)."""
    if stream not in _STREAMS:
        raise ValueError(f"stream must be one of {_STREAMS}, got {stream!r}.")
    activation = activation.removeprefix("hook_")
    if activation in _BLOCK:
        if layer is None:
            raise ValueError(f"activation {activation!r} lives in a block; give its layer.")
        module, suffix = _BLOCK[activation]
        parts = ["blocks", str(layer)] + ([stream] if stream != "main" else []) + ([module] if module else [])
        return ".".join(parts + [suffix])
    if activation in _ROOT:
        if layer is not None:
            raise ValueError(f"activation {activation!r} is not in a block; leave layer=None.")
        if activation == "order":
            return "hook_order"
        return _ROOT[activation] if stream == "main" else f"{stream}.{_ROOT[activation]}"
    known = sorted(_BLOCK) + sorted(_ROOT)
    raise ValueError(f"unknown activation {activation!r}; known: {', '.join(known)}.")
