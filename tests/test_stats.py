"""workbench.stats: t quantiles, blocked intervals of correlated series (coverage on AR(1)), paired
and independent differences, replicates over seeds."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch

from workbench.stats import (
    DEFAULT_BLOCKS, Estimate, block_index, blocked_mean, blocked_se, ci_unit, difference, iid_mean,
    lag1_autocorrelation, mean_and_ci, paired_difference, t_quantile, window_blocks, window_mean,
)


def ar1(n_series: int, n: int, phi: float, generator: torch.Generator) -> torch.Tensor:
    """[series, n] stationary AR(1) with mean 0 and unit innovations."""
    noise = torch.randn(n_series, n, generator=generator, dtype=torch.float64)
    x = torch.empty_like(noise)
    x[:, 0] = noise[:, 0] / math.sqrt(1 - phi**2)  # start in the stationary distribution
    for i in range(1, n):
        x[:, i] = phi * x[:, i - 1] + noise[:, i]
    return x


def test_t_quantile_matches_tables():
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 10: 2.2281, 15: 2.1314, 30: 2.0423, math.inf: 1.9600}
    for df, want in table.items():
        assert t_quantile(df) == pytest.approx(want, abs=1e-4), df
    assert math.isnan(t_quantile(0))


def test_blocked_interval_covers_ar1_mean_at_nominal_rate_and_is_wider_than_naive():
    """AR(1) with phi = 0.6 (between the 0.41 and 0.64 lag-1 autocorrelations of the bundled
    validation windows), 800 values, true mean 0: the default blocked interval (16 blocks of 50)
    covers 0 in about 95% of 1,000 series; the naive i.i.d. interval, 2x too narrow here
    (sqrt((1 + phi) / (1 - phi)) = 2), covers it in about 2 of 3."""
    series = ar1(1000, 800, 0.6, torch.Generator().manual_seed(0))
    blocked = [blocked_mean(s) for s in series]
    naive = [mean_and_ci(s) for s in series]
    coverage = sum(e.ci_low <= 0 <= e.ci_high for e in blocked) / len(blocked)
    naive_coverage = sum(abs(m) <= h for m, h in naive) / len(naive)
    width_ratio = sum(e.half_width for e in blocked) / sum(h for _, h in naive)
    print(f"blocked coverage {coverage:.3f}, naive {naive_coverage:.3f}, width ratio {width_ratio:.2f}")
    assert all(e.n_blocks == DEFAULT_BLOCKS and e.df == DEFAULT_BLOCKS - 1 for e in blocked)
    assert 0.92 <= coverage <= 0.975  # binomial sd 0.007; batch means of 50 lose ~4% of the variance
    assert naive_coverage < 0.8
    assert width_ratio > 1.7


def test_few_blocks_use_t_not_z():
    """Independent normal values in 4 blocks: block means are exactly i.i.d. normal, so the t(3)
    interval covers at exactly 95%; the normal quantile would cover ~86%."""
    values = torch.randn(4000, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    covered = [(e := blocked_mean(v, n_blocks=4)).ci_low <= 0 <= e.ci_high for v in values]
    assert sum(covered) / len(covered) == pytest.approx(0.95, abs=0.012)


def test_blocked_standard_error_is_batch_means():
    x = torch.arange(12, dtype=torch.float64) ** 1.5
    e = blocked_mean(x, n_blocks=4)  # equal blocks: sd(block means) / sqrt(B)
    means = x.view(4, 3).mean(1)
    assert e.se == pytest.approx(means.std().item() / 2)
    assert e.mean == pytest.approx(x.mean().item()) and (e.n, e.n_blocks, e.df, e.method) == (12, 4, 3, "blocked")
    assert e.ci_high - e.mean == pytest.approx(t_quantile(3) * e.se)
    # Unequal blocks (sizes 4, 4, 3, 3): the block-size-weighted (cluster) standard error.
    y = torch.arange(14, dtype=torch.float64) ** 1.5
    f = blocked_mean(y, n_blocks=4)
    blocks = y.tensor_split(4)
    want = math.sqrt(4 / 3 * sum((len(b) / 14 * (b.mean() - y.mean())).item() ** 2 for b in blocks))
    assert f.se == pytest.approx(want)
    with pytest.raises(ValueError, match="n_blocks must be between 2"):
        blocked_mean(x, n_blocks=13)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        blocked_mean(torch.zeros(2, 3))
    one = blocked_mean(torch.tensor([2.5]))
    assert one.mean == 2.5 and math.isnan(one.ci_low)


def test_iid_mean_over_seeds_is_t_with_n_minus_1():
    per_seed = torch.tensor([0.12, 0.15, 0.10])  # e.g. one gap per training seed
    e = iid_mean(per_seed)
    assert e.df == 2 and e.n == 3 and e.method == "iid"
    assert e.half_width == pytest.approx(4.3027 * per_seed.double().std().item() / math.sqrt(3), rel=1e-4)
    assert Estimate.of(per_seed) == e  # the older entry point, same rule
    assert Estimate(**asdict(e)) == e  # round trip through a results file


def test_paired_difference_removes_the_shared_variation():
    g = torch.Generator().manual_seed(2)
    shared = ar1(1, 400, 0.6, g)[0] * 0.5  # the text's difficulty, common to both models
    a = 2.5 + shared + 0.02 * torch.randn(400, generator=g, dtype=torch.float64)
    b = 2.6 + shared + 0.02 * torch.randn(400, generator=g, dtype=torch.float64)
    paired = paired_difference(b, a)
    unpaired = difference(blocked_mean(b), blocked_mean(a))
    assert paired.method == "paired-blocked" and paired.mean == pytest.approx((b - a).mean().item())
    assert paired.ci_low <= 0.1 <= paired.ci_high
    assert paired.half_width < unpaired.half_width / 5
    with pytest.raises(ValueError, match="aligned series"):
        paired_difference(a, b[:-1])


def test_difference_of_independent_estimates_adds_variances_with_welch_df():
    x = Estimate(1.0, 0, 0, 10, se=0.3, df=15.0, method="blocked")
    y = Estimate(0.4, 0, 0, 10, se=0.4, df=7.0, method="blocked")
    d = difference(x, y)
    assert d.mean == pytest.approx(0.6) and d.se == pytest.approx(0.5)
    assert d.df == pytest.approx(0.5**4 / (0.3**4 / 15 + 0.4**4 / 7))
    assert d.half_width == pytest.approx(t_quantile(d.df) * 0.5)


def test_lag1_autocorrelation_of_ar1():
    x = ar1(1, 20000, 0.6, torch.Generator().manual_seed(3))[0]
    assert lag1_autocorrelation(x) == pytest.approx(0.6, abs=0.02)


def test_window_rule_blocks_from_two_windows_per_block():
    """The probes' rule: 16 blocks once each holds two windows (n >= 32), else a unit per window."""
    assert [window_blocks(n) for n in (1, 8, 31, 32, 1000)] == [1, 8, 31, 16, 16]
    assert ci_unit(31) == {"unit": "sequence", "n_units": 31, "n_sequences": 31}
    assert ci_unit(64) == {"unit": "block", "n_units": 16, "n_sequences": 64}
    x = ar1(1, 50, 0.6, torch.Generator().manual_seed(4))[0]
    assert window_mean(x) == blocked_mean(x, DEFAULT_BLOCKS)
    assert window_mean(x[:20]) == iid_mean(x[:20]) and math.isnan(window_mean(x[:1]).half_width)
    # block_index cuts as blocked_mean does, and blocked_se from the block means is its standard error
    index = block_index(50, 16)
    assert [len(b) for b in torch.arange(50).tensor_split(16)] == torch.bincount(index).tolist()
    means = torch.stack([x[index == b].mean() for b in range(16)])
    assert blocked_se(means, torch.bincount(index).double()).item() == pytest.approx(blocked_mean(x, 16).se)
