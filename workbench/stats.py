"""Confidence intervals of the workbench: 95% intervals of a mean, for the kinds of units met.

- **Independent replicates** (`iid_mean`): seeds of a study (one value per seed, e.g. each
  seed's paired gap), sequences drawn independently. Student t with n - 1 degrees of freedom: with 3-5 seeds the normal quantile
  (1.96) would be far too small (t is 4.30 at n = 3, 2.78 at n = 5).
- **A correlated series** (`blocked_mean`): per-window values of consecutive windows of one text.
  Adjacent windows share topic, speaker and style (lag-1 autocorrelation 0.41 at 128 tokens, 0.64
  at 1024 on the bundled validation text), so treating windows as independent makes the interval
  too narrow. Batch means: cut the series, in text order, into `n_blocks` contiguous blocks of
  near-equal length; block means are close to independent when blocks are much longer than the
  correlation, and the interval is t with n_blocks - 1 degrees of freedom on their spread.
  Default: `DEFAULT_BLOCKS` = 16 blocks (fewer only when there are fewer values). A fixed count,
  not a length, because the correlation lives in the text, not in the windows: 16 blocks of the
  bundled validation text are ~7,000 characters each at both lengths. Its correlation reaches
  further than that (the standard error still grows with 8 or 4 blocks, docs/results.md), so the
  interval of an absolute NLL is a lower bound on the text-to-text uncertainty; 16 blocks trade
  that bias against degrees of freedom (t = 2.13 against 1.96 at 15).
- **Two estimates** of the same quantity on the same windows and orders (`paired_difference`):
  the blocked mean of the per-window difference. Models evaluated on the same windows err
  together (per-window correlation 0.97-0.99 between the bundled models), so the difference is
  far more precise than the two intervals suggest. Estimates from independent data
  (`difference`, e.g. a gap at 1024 minus the gap at 128): variances add; Welch-Satterthwaite
  degrees of freedom.
- **Probed windows** (`window_mean`, `window_blocks`, `block_index`, `blocked_se`): the probes
  (workbench/probing) use the blocked rule on their per-window values with one difference, a
  floor: blocks of one window would leave the correlation in, so with fewer than
  `MIN_BLOCK_WINDOWS` x DEFAULT_BLOCKS windows each window is its own unit (t with n - 1 degrees
  of freedom), and the run's metadata says so (`ci_unit`).

Every function returns an `Estimate` (mean, 95% interval, standard error, degrees of freedom, n,
method), which is what results files store. `mean_and_ci` is the older normal interval of i.i.d.
values (the divergence probe's independent random orders); with few units it is too narrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

Z_95 = 1.959964  # two-sided 95% quantile of the standard normal
LEVEL = 0.95
DEFAULT_BLOCKS = 16
MIN_BLOCK_WINDOWS = 2  # the probes block only when every block holds at least this many windows


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% confidence interval: mean ± t(df) * se.

    `n` counts the values behind it (windows, seeds; for a difference, the smaller of the two);
    `method` says which rule made the interval
    ("iid", "blocked", "paired-blocked", "difference"); `n_blocks` is set for blocked ones.
    """

    mean: float
    ci_low: float
    ci_high: float
    n: int
    se: float = math.nan
    df: float = math.nan
    method: str = "iid"
    n_blocks: int | None = None

    @classmethod
    def of(cls, values: Tensor) -> Estimate:
        """The mean of independent `values` (see `iid_mean`)."""
        return iid_mean(values)

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.half_width:.4f}"


def t_quantile(df: float, level: float = LEVEL) -> float:
    """Two-sided `level` quantile of Student's t with `df` degrees of freedom (df = inf: normal)."""
    if not df > 0:
        return math.nan
    if math.isinf(df):
        return Z_95 if level == LEVEL else _bisect(lambda x: math.erf(x / math.sqrt(2)), level)
    return _bisect(lambda x: 1 - _betainc(df / 2, 0.5, df / (df + x * x)), level)


def iid_mean(values: Tensor) -> Estimate:
    """Mean of independent values (one per seed, or per independently drawn unit), t interval
    with n - 1 degrees of freedom. NaN interval for a single value."""
    values = _series(values, "values")
    n = values.numel()
    se = values.std().item() / math.sqrt(n) if n > 1 else math.nan
    return _estimate(values.mean().item(), se, n - 1, n, "iid")


def blocked_mean(values: Tensor, n_blocks: int | None = None, method: str = "blocked") -> Estimate:
    """Mean of a correlated series in its natural order (per-window values of consecutive
    windows), with a batch-means interval over `n_blocks` contiguous blocks (default
    `min(DEFAULT_BLOCKS, n)`), t with n_blocks - 1 degrees of freedom.

    Blocks differ in length by at most one value; the standard error is the cluster (block)
    estimate sqrt(B / (B - 1) * sum_b (n_b / n)^2 (m_b - mean)^2), which for equal blocks is the
    usual sd(block means) / sqrt(B).
    """
    values = _series(values, "values")
    n = values.numel()
    if n_blocks is None and n == 1:  # one value: no spread to measure
        return _estimate(values.item(), math.nan, 0, 1, method, n_blocks=1)
    blocks = min(DEFAULT_BLOCKS, n) if n_blocks is None else n_blocks
    if not 2 <= blocks <= n:
        raise ValueError(f"n_blocks must be between 2 and the number of values ({n}), got {blocks}")
    parts = values.tensor_split(blocks)
    sizes = torch.tensor([b.numel() for b in parts], dtype=torch.float64)
    se = blocked_se(torch.stack([b.mean() for b in parts]), sizes).item()
    return _estimate(values.mean().item(), se, blocks - 1, n, method, n_blocks=blocks)


def blocked_se(block_means: Tensor, sizes: Tensor) -> Tensor:
    """The cluster standard error of `blocked_mean` from the blocks alone, elementwise over any
    trailing dimensions: block_means [block, ...] (each block's mean), sizes [block] (its values).
    sqrt(B / (B - 1) * sum_b (n_b / n)^2 (m_b - mean)^2), mean = sum_b (n_b / n) m_b; NaN for B < 2."""
    blocks = block_means.shape[0]
    if blocks < 2:
        return torch.full(block_means.shape[1:], math.nan, dtype=block_means.dtype)
    weights = (sizes / sizes.sum()).to(block_means).reshape(-1, *[1] * (block_means.ndim - 1))
    mean = (weights * block_means).sum(0)
    return (blocks / (blocks - 1) * (weights * (block_means - mean)).pow(2).sum(0)).sqrt()


def window_blocks(n: int) -> int:
    """How many units the probes cut `n` consecutive windows into: DEFAULT_BLOCKS contiguous blocks
    when each then holds at least MIN_BLOCK_WINDOWS windows, else n (each window its own unit: too
    few windows to block, and the interval ignores their correlation)."""
    return DEFAULT_BLOCKS if n >= MIN_BLOCK_WINDOWS * DEFAULT_BLOCKS else n


def block_index(n: int, n_blocks: int) -> Tensor:
    """[n] int64: the block of each of `n` values in order, cut as `blocked_mean` cuts them
    (`tensor_split`: the first n % n_blocks blocks one value longer)."""
    return torch.cat([torch.full((len(part),), b) for b, part in enumerate(torch.arange(n).tensor_split(n_blocks))])


def ci_unit(n: int) -> dict[str, object]:
    """What a probe interval over `n` consecutive windows is made of, for a run's metadata."""
    blocks = window_blocks(n)
    return {"unit": "block" if blocks < n else "sequence", "n_units": blocks, "n_sequences": n}


def window_mean(values: Tensor) -> Estimate:
    """Mean of per-window values of consecutive windows, by the probes' rule (`window_blocks`):
    `blocked_mean` over DEFAULT_BLOCKS blocks, or `iid_mean` when there are too few windows. A
    paired comparison is the window_mean of the per-window difference."""
    values = _series(values, "values")
    blocks = window_blocks(values.numel())
    return blocked_mean(values, blocks) if blocks < values.numel() else iid_mean(values)


def paired_difference(a: Tensor, b: Tensor, n_blocks: int | None = None) -> Estimate:
    """Mean of a - b for two aligned per-window series (the same windows, in the same order, with
    the same generation orders), as the blocked mean of the per-window difference."""
    a, b = _series(a, "a"), _series(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs aligned series of one length, got {a.numel()} and {b.numel()} values")
    return blocked_mean(a - b, n_blocks, method="paired-blocked")


def difference(x: Estimate, y: Estimate) -> Estimate:
    """x - y for estimates from independent data: standard errors add in quadrature, degrees of
    freedom by Welch-Satterthwaite. (Conservative when the two are positively correlated.)"""
    se = math.hypot(x.se, y.se)
    df = se**4 / (x.se**4 / x.df + y.se**4 / y.df) if se > 0 else min(x.df, y.df)
    return _estimate(x.mean - y.mean, se, df, min(x.n, y.n), "difference")


def mean_and_ci(values: Tensor) -> tuple[float, float]:
    """(mean, half-width of the normal 95% interval) of i.i.d. `values`; NaN half-width for n < 2."""
    values = values.double().flatten()
    n = values.numel()
    half = Z_95 * values.std().item() / math.sqrt(n) if n > 1 else math.nan
    return values.mean().item(), half


def lag1_autocorrelation(values: Tensor) -> float:
    """Lag-1 autocorrelation of a series (a diagnostic: how far neighbouring windows move together)."""
    x = _series(values, "values")
    x = x - x.mean()
    return ((x[1:] * x[:-1]).sum() / x.pow(2).sum()).item() if x.numel() > 1 else math.nan


# ---- helpers -------------------------------------------------------------------------------


def _series(values: Tensor, name: str) -> Tensor:
    values = torch.as_tensor(values).double()
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D series, got shape {tuple(values.shape)}")
    return values


def _estimate(mean: float, se: float, df: float, n: int, method: str, n_blocks: int | None = None) -> Estimate:
    half = t_quantile(df) * se
    return Estimate(mean, mean - half, mean + half, n, se=se, df=float(df), method=method, n_blocks=n_blocks)


def _bisect(cdf_two_sided, level: float) -> float:
    """x with cdf_two_sided(x) = P(|T| < x) = level."""
    lo, hi = 0.0, 1.0
    while cdf_two_sided(hi) < level:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf_two_sided(mid) < level else (lo, mid)
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) (continued fraction, Numerical Recipes 6.4)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return front * f / a
