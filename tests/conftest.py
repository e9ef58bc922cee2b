"""Shared fixtures: tiny models of every variant, random orders at awkward lengths."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # The Triton kernel runs in Triton's interpreter on CPU. The variable must be set before
    # anything imports triton (transformers does, for one): triton decides at import whether its
    # own library functions (tl.sum, ...) are interpretable.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from workbench import AOConfig, from_config  # noqa: E402

VARIANTS = ("two_stream", "decoupled_rope", "sigma_gpt")


def tiny_config(variant: str, **overrides) -> AOConfig:
    fields = dict(
        variant=variant, n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=48, n_ctx=24, d_vocab=13, seed=0,
        init_range=0.2,  # peaky attention, so that no edit hides behind a near-uniform pattern
    )
    fields.update(overrides)
    return AOConfig(**fields)


@pytest.fixture(params=VARIANTS)
def variant(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(variant):
    torch.manual_seed(0)
    model = from_config(tiny_config(variant)).eval()
    # Non-zero biases and LN affine so that no path is hidden by a zero init.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.startswith("b_") or ".b_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def random_batch(model, batch: int, n_pos: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.d_vocab, (batch, n_pos), generator=g)
    order = torch.stack([torch.randperm(n_pos, generator=g) for _ in range(batch)])
    return tokens, order
