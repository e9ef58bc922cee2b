"""A NaN or inf in a later slot's activations never reaches an earlier row: masked keys cannot
contribute non-finite values (0 * NaN) through the scores or the values, on the fused path and
the hooked path of every variant, and both paths agree on the poisoned run too."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_batch, tiny_config
from workbench import hook_name
from workbench.models import from_config

POISON_SLOT = 5


def _model(variant: str):
    return from_config(tiny_config(variant, seed=0)).eval()


def _poison(value: float):
    def hook(x, hook):
        x = x.clone()
        x[:, POISON_SLOT] = value
        return x

    return hook


def _run(model, tokens, order, poison: float | None, hooked: bool):
    stream = "content" if model.cfg.n_streams == 2 else "main"
    hooks = []
    if poison is not None:  # the content stream (or the one stream) of every layer, from slot 5 on
        hooks += [(hook_name("resid_pre", layer, stream), _poison(poison)) for layer in range(model.cfg.n_layers)]
    if hooked:  # a hook on the pattern makes every attention take the materialised path
        streams = ("content", "query") if model.cfg.n_streams == 2 else ("main",)
        hooks += [(hook_name("pattern", layer, s), lambda x, hook: x) for layer in range(model.cfg.n_layers) for s in streams]
    with torch.no_grad():
        return model.run_with_hooks(tokens, order, fwd_hooks=hooks)


@pytest.mark.parametrize("variant", ["two_stream", "decoupled_rope", "sigma_gpt", "xlnet"])
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_a_poisoned_later_slot_does_not_reach_earlier_rows(variant, poison):
    model = _model(variant)
    tokens, order = random_batch(model, 3, 12, seed=1)
    rank = order.argsort(dim=1)  # rank[b, p]: the step at which position p is generated
    early = rank < POISON_SLOT  # rows generated before the poisoned slot's token was seen
    if variant == "xlnet":  # XLNet's first row sees its null slot, the mean of all content slots (docs/xlnet.md)
        early &= rank >= 1
    for hooked in (False, True):
        clean = _run(model, tokens, order, None, hooked)
        poisoned = _run(model, tokens, order, poison, hooked)
        assert torch.isfinite(poisoned[early]).all(), f"hooked={hooked}: the poison reached earlier rows"
        torch.testing.assert_close(poisoned[early], clean[early], rtol=0, atol=0)
        assert not torch.isfinite(poisoned[~early]).all(), "rows that see the poisoned slot must show it"
    fast, slow = (_run(model, tokens, order, poison, hooked) for hooked in (False, True))
    torch.testing.assert_close(fast, slow, equal_nan=True, rtol=1e-5, atol=1e-5)
