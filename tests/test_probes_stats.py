"""The probes' confidence intervals over blocks of contiguous windows (workbench/probing/engine.py
module doc): honest on correlated windows, the old per-sequence interval on independent ones, the
blocks contiguous in window order whatever the batches, and the unit written to the metadata."""

from __future__ import annotations

import torch

from tests.test_probes_runner import tiny
from tests.test_stats import ar1
from workbench.probing import run_probes
from workbench.probing.context import ProbeContext, ProbeSettings
from workbench.probing.engine import FIELDS, F, Pooled, index_fn
from workbench.probing.sources import ReferenceSource
from workbench.stats import DEFAULT_BLOCKS, block_index, window_blocks

N_SEQ, N_DRAWS = 256, 400


def pooled_draws(phi: float, n_blocks: int, seed: int = 0) -> Pooled:
    """N_DRAWS independent simulated runs side by side on the head axis, each of N_SEQ consecutive
    sequences with S-only mass 5 + a and R-only mass 3 + b per sequence, a and b AR(1) in the
    sequence index with coefficient `phi`: the index (S - R) / (S + R) of the mean is 0.25."""
    g = torch.Generator().manual_seed(seed)
    u = torch.zeros(N_SEQ, 1, N_DRAWS, len(FIELDS), dtype=torch.float64)  # [sequence, group, head, field]
    u[..., F["rows"]] = 10.0
    u[..., F["S_only_mass"]] = 5 + ar1(N_DRAWS, N_SEQ, phi, g).T[:, None]
    u[..., F["R_only_mass"]] = 3 + ar1(N_DRAWS, N_SEQ, phi, g).T[:, None]
    onehot = torch.nn.functional.one_hot(block_index(N_SEQ, n_blocks), n_blocks).double()  # [sequence, block]
    empty = torch.zeros(n_blocks, N_DRAWS, 6, 18, dtype=torch.float64)
    return Pooled(0, "main", [0], onehot.sum(0), torch.einsum("sk,sghf->kghf", onehot, u), empty,
                  torch.zeros(n_blocks, N_DRAWS, 2, 18, 18, dtype=torch.float64))


def coverage_and_width(phi: float) -> tuple[float, float, float]:
    """(coverage of the blocked interval, of the per-sequence one, mean width ratio blocked / per-sequence)."""
    value, blocked = pooled_draws(phi, window_blocks(N_SEQ)).estimate(index_fn("mass"))
    same, per_sequence = pooled_draws(phi, N_SEQ).estimate(index_fn("mass"))
    assert torch.equal(value, same)  # the blocks change the interval, never the value
    covered = lambda ci: ((value - 0.25).abs() <= ci).double().mean().item()  # noqa: E731
    ratio = (blocked.sum() / per_sequence.sum()).item()
    print(f"phi {phi}: coverage blocked {covered(blocked):.3f}, per sequence {covered(per_sequence):.3f}, width ratio {ratio:.2f}")
    return covered(blocked), covered(per_sequence), ratio


def test_blocked_index_interval_is_wider_and_covers_on_correlated_windows():
    """phi = 0.6 (the bundled validation windows' lag-1 autocorrelations are 0.41 and 0.64): the
    per-sequence interval is ~2x too narrow (sqrt((1 + phi) / (1 - phi)) = 2) and covers the true
    index ~2/3 of the time; 16 blocks of 16 windows cover it at about 95% (binomial sd 0.011)."""
    blocked, per_sequence, ratio = coverage_and_width(0.6)
    assert 0.91 <= blocked <= 0.98
    assert per_sequence < 0.8
    assert ratio > 1.7


def test_blocked_and_per_sequence_intervals_agree_on_independent_windows():
    """Independent windows: both cover at about 95%, and the blocked interval is only a little wider
    (t with 15 degrees of freedom, 2.13, against ~1.97; and a noisier standard error)."""
    blocked, per_sequence, ratio = coverage_and_width(0.0)
    assert 0.92 <= blocked <= 0.98 and 0.92 <= per_sequence <= 0.98
    assert 1.0 <= ratio <= 1.15


def test_block_sums_are_contiguous_windows_whatever_the_batches():
    """34 windows in batches of 3 (batches straddle block edges): each block holds the sums of its
    contiguous run of windows (block_index), the per-sequence sums of one batch of all 34 added up."""
    model, n = tiny(), 34
    windows = torch.randint(0, model.cfg.d_vocab, (n, 6), generator=torch.Generator().manual_seed(0))
    ctx = ProbeContext(model, windows, ProbeSettings(r=2, w=2, batch_size=3), progress=False)
    pooled = ctx.stats[(1, "query")]
    assert window_blocks(n) == DEFAULT_BLOCKS and pooled.n_blocks == DEFAULT_BLOCKS
    orders = torch.stack([ctx.order(s) for s in range(n)])
    one_batch = ReferenceSource().collect(model, windows, orders, r=2, w=2)["L1.query.u_block"]  # a block per sequence
    want = torch.zeros_like(pooled.u_block).index_add_(0, block_index(n, DEFAULT_BLOCKS), one_batch)
    torch.testing.assert_close(pooled.u_block, want, rtol=1e-5, atol=1e-5)  # float32 model: other batches
    assert pooled.n_block.tolist() == [3.0, 3.0] + [2.0] * 14


def test_metadata_says_the_unit_of_the_intervals():
    """32 windows or more: 16 blocks; fewer: every sequence its own unit, said as such."""
    model = tiny()
    data = torch.randint(0, model.cfg.d_vocab, (40, 6), generator=torch.Generator().manual_seed(1))
    args = dict(probes="parts", progress=False, device="cpu", r=2, w=2, batch_size=8)
    blocked = run_probes(model, data=data, causal_sequences=8, **args).metadata["ci_unit"]
    assert blocked == {"statistics": {"unit": "block", "n_units": 16, "n_sequences": 40},
                       "causal": {"unit": "sequence", "n_units": 8, "n_sequences": 8}}
    few = run_probes(model, data=data[:5], **args).metadata["ci_unit"]
    assert few["statistics"] == {"unit": "sequence", "n_units": 5, "n_sequences": 5}
