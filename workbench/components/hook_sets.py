"""Hook-point sets: the HookPoints one stream exposes at each place in the network.

A two-stream model shares its weights between streams but gives each stream its own HookPoints
(a HookPoint that fires twice per forward would keep only the last value in a cache), so hook
points live in these weight-free modules under `blocks.{l}.{stream}`. A single-stream model
attaches the same sets straight onto its weight modules, which gives exactly TransformerLens's
names (`blocks.{l}.attn.hook_pattern`).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules import module as torch_module
from transformer_lens.hook_points import HookPoint

LN_HOOKS = ("hook_scale", "hook_normalized")
ATTN_HOOKS = (
    "hook_q",  # [batch, slot, head, d_head], before rotation
    "hook_k",  # [batch, key, head, d_head], before rotation
    "hook_v",  # [batch, key, head, d_head]
    "hook_rot_q",  # [batch, slot, head, d_head], rotated by the row's reference position
    "hook_rot_k",  # [batch, key, head, d_head], rotated by the key's own position
    "hook_attn_scores",  # [batch, head, slot, key], masked entries -inf
    "hook_pattern",  # [batch, head, slot, key]
    "hook_z",  # [batch, slot, head, d_head]
    "hook_result",  # [batch, slot, head, d_model], per-head output (only when hooked)
)
MLP_HOOKS = ("hook_pre", "hook_post")  # [batch, slot, d_mlp]
RESID_HOOKS = (
    "hook_resid_pre",  # [batch, slot, d_model]
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_resid_post",
)


def is_hooked(hook_point: HookPoint) -> bool:
    """Whether anything will see `hook_point`'s tensor: a TransformerLens hook (a cache counts), a
    plain `register_forward_hook` / pre-hook / backward hook on it, or a global module hook.

    Reads only the module's hook dicts (no tensor), so it costs nothing on the unhooked path and
    torch.compile guards on it like on any module attribute."""
    return bool(
        hook_point._forward_hooks
        or hook_point._forward_pre_hooks
        or hook_point._backward_hooks
        or hook_point._backward_pre_hooks
        or torch_module._global_forward_hooks
        or torch_module._global_forward_pre_hooks
        or torch_module._global_backward_hooks
    )


def add_hook_points(module: nn.Module, names: tuple[str, ...]) -> None:
    for name in names:
        setattr(module, name, HookPoint())


class HookSet(nn.Module):
    """A weight-free module holding the HookPoints `names`."""

    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        add_hook_points(self, names)


class StreamHooks(nn.Module):
    """All the HookPoints of one stream in one block: resid hooks, ln1, ln2, attn, mlp."""

    def __init__(self, rotary: bool):
        super().__init__()
        add_hook_points(self, RESID_HOOKS)
        self.ln1 = HookSet(LN_HOOKS)
        self.ln2 = HookSet(LN_HOOKS)
        self.attn = HookSet(attn_hook_names(rotary))
        self.mlp = HookSet(MLP_HOOKS)


def attn_hook_names(rotary: bool) -> tuple[str, ...]:
    return ATTN_HOOKS if rotary else tuple(n for n in ATTN_HOOKS if "rot" not in n)
