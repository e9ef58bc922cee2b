"""The one confidence-interval rule of the workbench: a normal 95% interval over independent units."""

from __future__ import annotations

import math

from torch import Tensor

Z_95 = 1.959964  # two-sided 95% quantile of the standard normal


def mean_and_ci(values: Tensor) -> tuple[float, float]:
    """(mean, half-width of the 95% interval) of i.i.d. `values`; the half-width is NaN for n < 2."""
    values = values.double().flatten()
    n = values.numel()
    half = Z_95 * values.std().item() / math.sqrt(n) if n > 1 else math.nan
    return values.mean().item(), half
