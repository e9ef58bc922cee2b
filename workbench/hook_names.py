"""Hook names from (activation, layer, stream), like TransformerLens's `utils.get_act_name`.

Single-stream models (`decoupled_rope`, `sigma_gpt`; stream "main") use TransformerLens's own
names. Two-stream models put the stream in the module path, right before the hook or the
attn / mlp / ln module:

    hook_name("pattern", 3, "query")   -> "blocks.3.query.attn.hook_pattern"
    hook_name("resid_pre", 0, "content") -> "blocks.0.content.hook_resid_pre"
    hook_name("embed", stream="query")  -> "query.hook_embed"
    hook_name("pattern", 3)             -> "blocks.3.attn.hook_pattern"   (no stream: the
                                           single-stream / StreamView name)

`CheckedHookNames` makes a HookedRootModule refuse a hook name it does not have (naming the right
one) and warn when a filter matches nothing, instead of TransformerLens's bare KeyError and
empty cache.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable

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


def hook_name(activation: str, layer: int | None = None, stream: str | None = None) -> str:
    """The full hook name of `activation` at `layer` in `stream` (see the module docstring).

    stream None (or "main") gives TransformerLens's own name, which is the hook's name on a
    single-stream model and on any StreamView; a two-stream model's hooks need the stream."""
    stream = "main" if stream is None else stream
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


class UnknownHookName(KeyError):
    """A hook name the model does not have (a KeyError, as TransformerLens raises, with a message)."""

    def __str__(self) -> str:
        return str(self.args[0])


class CheckedHookNames:
    """Mixin for a HookedRootModule: every hook name given by string must exist, and a filter
    (a predicate or a list) that matches no hook is reported. `_name_hint(name)` may add advice
    for a name of another naming scheme."""

    hook_dict: dict

    def _name_hint(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self.hook_dict), n=3, cutoff=0.6)
        return f" Did you mean {', '.join(map(repr, close))}?" if close else ""

    def check_hook_name(self, name: str) -> None:
        if name not in self.hook_dict:
            raise UnknownHookName(f"{name!r} is not a hook of this {type(self).__name__}.{self._name_hint(name)}")

    def _warn_nothing_matched(self, what: str) -> None:
        some = ", ".join(list(self.hook_dict)[:2])
        warnings.warn(
            f"{what} matched no hook of this {type(self).__name__}, so nothing is hooked or cached; "
            f"names look like {some}, ... (list them with model.hook_dict).",
            stacklevel=4,
        )

    def _enable_hook(self, name: str | Callable[[str], bool], hook: Callable, dir: str) -> None:  # noqa: A002
        if isinstance(name, str):
            self.check_hook_name(name)
        elif not any(name(n) for n in self.hook_dict):
            self._warn_nothing_matched(f"the {dir} hook filter {getattr(name, '__name__', name)!r}")
        super()._enable_hook(name, hook, dir)  # type: ignore[misc]

    def add_hook(self, name, hook, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 (TransformerLens's signature)
        if isinstance(name, str):
            self.check_hook_name(name)
        elif not any(name(n) for n in self.hook_dict):
            self._warn_nothing_matched(f"the hook filter {getattr(name, '__name__', name)!r}")
        return super().add_hook(name, hook, *args, **kwargs)  # type: ignore[misc]

    def get_caching_hooks(self, names_filter=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if isinstance(names_filter, str):
            self.check_hook_name(names_filter)
        elif isinstance(names_filter, (list, tuple)):
            for name in names_filter:
                self.check_hook_name(name)
            names_filter = list(names_filter)
        cache, fwd, bwd = super().get_caching_hooks(names_filter, *args, **kwargs)  # type: ignore[misc]
        if not fwd:
            self._warn_nothing_matched("names_filter")
        return cache, fwd, bwd
