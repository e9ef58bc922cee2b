"""The one config dataclass shared by every any-order model variant.

Saved verbatim (as JSON) in every checkpoint, so a model rebuilds from the file alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

Variant = Literal["two_stream", "decoupled_rope", "sigma_gpt", "xlnet"]
VARIANTS: tuple[str, ...] = ("two_stream", "decoupled_rope", "sigma_gpt", "xlnet")


@dataclass(frozen=True)
class AOConfig:
    """Shape and positional details of an any-order autoregressive transformer.

    Every variant is a transformer over generation-order slots (docs/coordinates.md); all are
    pre-LayerNorm except `xlnet`, which is post-LayerNorm like XLNet.
    """

    variant: Variant
    """`two_stream` (XLNet-style content + query streams), `decoupled_rope` (one stream, queries
    rotated by the target position), `sigma_gpt` (one stream, summed token / own-position /
    target-position embeddings; σ-GPT, Pannatier et al. 2024) or `xlnet` (two streams with
    XLNet's post-LN relative attention, Yang et al. 2019; built by `workbench.convert.from_hf_xlnet`
    from a Hugging Face XLNet, see docs/xlnet.md)."""
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    n_ctx: int
    """Longest sequence (in tokens) the model accepts; positions are 0..n_ctx-1."""
    d_vocab: int
    rope_base: float = 10000.0
    """RoPE frequency base (Su et al. 2021); unused by sigma_gpt, which has learned position tables."""
    rotary_dim: int | None = None
    """How many of each head's dimensions are rotated (even, <= d_head); None means all of them."""
    act_fn: Literal["gelu", "relu"] = "gelu"
    layer_norm_eps: float = 1e-5
    init_range: float = 0.02
    """Std of the normal init of every weight matrix (GPT-2's choice)."""
    seed: int | None = None
    """Seed for weight init when building a fresh model; None leaves torch's global RNG alone."""
    clamp_len: int = -1
    """xlnet only: relative distances are clamped to [-clamp_len, clamp_len] before XLNet's
    sinusoidal relative encoding; <= 0 means no clamping (Hugging Face's `XLNetConfig.clamp_len`)."""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.variant, str) or self.variant not in VARIANTS:
            problems.append(
                f"variant={self.variant!r} is unknown; use one of {', '.join(VARIANTS)}"
            )
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name}={value!r} must be a positive integer")
        if isinstance(self.d_head, int) and self.d_head % 2 and self.variant != "xlnet":
            problems.append(f"d_head={self.d_head} must be even (RoPE rotates pairs of dimensions)")
        if not isinstance(self.clamp_len, int) or isinstance(self.clamp_len, bool):
            problems.append(f"clamp_len={self.clamp_len!r} must be an integer (<= 0: no clamping)")
        elif self.variant != "xlnet" and self.clamp_len != -1:
            problems.append(f"clamp_len={self.clamp_len} is XLNet's; variant={self.variant!r} uses RoPE, leave it at -1")
        if self.variant == "xlnet":
            if isinstance(self.d_model, int) and self.d_model % 2:
                problems.append(f"d_model={self.d_model} must be even (XLNet's sinusoidal relative encoding has sin and cos halves)")
            if self.rotary_dim is not None:
                problems.append("rotary_dim must be None for xlnet, which has relative attention, not RoPE")
        if self.rotary_dim is not None and (
            not isinstance(self.rotary_dim, int)
            or self.rotary_dim <= 0
            or self.rotary_dim % 2
            or (isinstance(self.d_head, int) and self.rotary_dim > self.d_head)
        ):
            problems.append(
                f"rotary_dim={self.rotary_dim!r} must be an even integer in [2, d_head={self.d_head}]"
                " or None for all dimensions"
            )
        if not isinstance(self.act_fn, str) or self.act_fn not in ("gelu", "relu"):
            problems.append(f"act_fn={self.act_fn!r} is unknown; use 'gelu' or 'relu'")
        for name, low, strict in (("rope_base", 1.0, True), ("layer_norm_eps", 0.0, True), ("init_range", 0.0, False)):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < low or (strict and value == low):
                problems.append(f"{name}={value!r} must be a finite number {'>' if strict else '>='} {low:g}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            problems.append(f"seed={self.seed!r} must be a non-negative integer or None")
        if problems:
            raise ValueError("Invalid AOConfig: " + "; ".join(problems) + ".")

    def __getattr__(self, name: str) -> Any:
        """Only for attributes AOConfig lacks: TransformerLens's tools read `cfg.device`,
        `cfg.normalization_type`, ... off the model; say where they work instead."""
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"AOConfig has no {name!r}: this is the workbench model's own config, not a TransformerLens "
            "config. TransformerLens tools (patching, head_detector, ActivationCache helpers) run on a "
            "stream view: view = model.view(stream, order), then pass `view` (its .cfg has device, "
            "n_params, ...)."
        )

    @property
    def n_rotary(self) -> int:
        return self.d_head if self.rotary_dim is None else self.rotary_dim

    @property
    def n_streams(self) -> int:
        return 2 if self.variant in ("two_stream", "xlnet") else 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AOConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"Config has unknown fields {unknown}; known fields are {sorted(known)}. "
                "Was it written by a newer version of the workbench?"
            )
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ValueError(f"Config is missing required fields {missing}.")
        return cls(**data)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
