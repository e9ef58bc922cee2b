"""The hooked any-order model variants and the factory that builds one from a config."""

from __future__ import annotations

from workbench.config import AOConfig
from workbench.models.base import HookedAOModel
from workbench.models.single_stream import SingleStreamModel
from workbench.models.two_stream import TwoStreamModel
from workbench.models.xlnet import HookedXLNet


def from_config(cfg: AOConfig) -> HookedAOModel:
    """A randomly initialised model of `cfg.variant` (seeded by `cfg.seed` when set)."""
    if cfg.variant == "two_stream":
        return TwoStreamModel(cfg)
    if cfg.variant == "xlnet":
        return HookedXLNet(cfg)
    return SingleStreamModel(cfg)


__all__ = ["HookedAOModel", "HookedXLNet", "SingleStreamModel", "TwoStreamModel", "from_config"]
