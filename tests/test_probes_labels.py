"""Labels and normalised excesses of hand-built heads over a grid of (r, w, T), from patterns.

Each head is a pattern written down directly (no model), reduced by `pattern_stats` per sequence
and pooled by the probe engine:

    nearest      all mass on the non-null key nearest the row's reference position
    recent       all mass on the most recent key
    uniform      every visible key alike
    sink         all mass on the null key
    nearest+sink half on the null key, half on the nearest key

The old rules (fixed lift thresholds) labelled the perfect most-recent head "other" at T = 128,
w = 32, both perfect heads "other" at r = w = 64, and the perfect nearest-key head "mixed" at
T = 64, r = 1, w = 16; sink-first hid semantic heads that park half their mass on the null key.
"""

from __future__ import annotations

import pytest
import torch

from workbench.kernels import ProbeStats, pattern_stats
from workbench.probing.engine import Accumulator, Pooled, step_buckets, summarise_heads
from workbench.probing.specialisation import SINK_MASS

HEADS = ("nearest", "recent", "uniform", "sink", "nearest+sink")
EXPECTED = {"nearest": ("semantic", False), "recent": ("structural", False), "uniform": ("diffuse", False),
            "sink": ("sink", True), "nearest+sink": ("semantic", True)}
N_SEQ = 8


def layout(order: torch.Tensor, stream: str):
    """(key_pos, row_ref, recency offset) of the query stream or the single stream (docs/coordinates.md)."""
    bos = torch.full((order.shape[0], 1), -1)
    if stream == "query":
        return torch.cat([bos, order], 1), order, 1
    return torch.cat([bos, order[:, :-1]], 1), order, 0


def known_patterns(key_pos: torch.Tensor, row_ref: torch.Tensor) -> torch.Tensor:
    """[batch, head, row, key] patterns of HEADS (rows with no non-null key put everything on the null key)."""
    B, R = row_ref.shape
    K = key_pos.shape[1]
    i, j = torch.arange(R)[:, None], torch.arange(K)[None, :]
    visible = (j <= i)[None].expand(B, R, K)
    real = visible & (key_pos >= 0)[:, None, :]
    one_hot = lambda index: torch.nn.functional.one_hot(index, K).double()  # noqa: E731
    dist = (key_pos[:, None, :] - row_ref[:, :, None]).abs().double().masked_fill(~real, float("inf"))
    nearest = torch.where(real.any(-1), dist.argmin(-1), 0)  # ties: the first (least recent) key
    recent = torch.where(real.any(-1), torch.arange(R).expand(B, R), 0)
    sink = one_hot(torch.zeros(B, R, dtype=torch.long))
    uniform = visible.double() / visible.sum(-1, keepdim=True)
    heads = [one_hot(nearest), one_hot(recent), uniform, sink, 0.5 * sink + 0.5 * one_hot(nearest)]
    return torch.stack(heads, 1)


def pooled_heads(T: int, r: int, w: int, stream: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(T, generator=gen) for _ in range(N_SEQ)])
    key_pos, row_ref, offset = layout(order, stream)
    patterns = known_patterns(key_pos, row_ref)
    acc = Accumulator(T, len(HEADS), n_blocks=N_SEQ)
    acc.add_batch(ProbeStats.stack([
        pattern_stats(patterns[b : b + 1], key_pos[b : b + 1], row_ref[b : b + 1], recency_offset=offset, r=r, w=w)
        for b in range(N_SEQ)
    ]), blocks=torch.arange(N_SEQ))
    sums = acc.to_dict("x")
    pooled = Pooled(0, stream, step_buckets(T), sums["x.n_block"], sums["x.u_block"], sums["x.hist_block"],
                    sums["x.joint_block"])
    return {HEADS[h.head]: h for h in summarise_heads({(0, stream): pooled})}


GRID = [(T, r, w) for T in (16, 64, 128) for r in (1, 4, T // 2) for w in (1, 4, T // 4, T // 2)]


@pytest.mark.parametrize("stream", ["query", "main"])
def test_perfect_heads_get_their_labels_at_every_r_w_t(stream):
    """Over the grid, the normalised excess of a perfect head on its own set is exactly 1, uniform
    attention's exactly 0, and every head gets its label, with the sink flag where it parks >= half
    its mass on the null key (the semantic-with-a-sink head stays semantic)."""
    for T, r, w in GRID:
        heads = pooled_heads(T, r, w, stream, seed=T + r + w)
        summary = {name: (h.label, round(h.semantic_excess, 3), round(h.structural_excess, 3)) for name, h in heads.items()}
        print(stream, T, r, w, summary)
        for name, (label, flag) in EXPECTED.items():
            assert (heads[name].label, heads[name].sink_flag) == (label, flag), (stream, T, r, w, name, summary)
        for name in ("nearest", "nearest+sink"):
            assert heads[name].semantic_excess == pytest.approx(1.0, abs=1e-9)
        assert heads["recent"].structural_excess == pytest.approx(1.0, abs=1e-9)
        assert heads["uniform"].semantic_excess == pytest.approx(0.0, abs=1e-9)
        assert heads["uniform"].structural_excess == pytest.approx(0.0, abs=1e-9)
        assert heads["nearest+sink"].sink == pytest.approx(0.5 + 0.5 / T, abs=1e-9) and SINK_MASS <= 0.5


def test_excess_is_length_fair_where_lifts_are_not():
    """The perfect nearest-key head: its S-only lift grows with T (it is mostly the chance level
    shrinking), its normalised excess stays 1."""
    lifts, excesses = [], []
    for T in (32, 128, 512):
        heads = pooled_heads(T, 4, 4, "query", seed=1)
        lifts.append(heads["nearest"].lift_s_only)
        excesses.append(heads["nearest"].semantic_excess)
    print("S-only lift", lifts, "excess", excesses)
    assert lifts[0] < lifts[1] < lifts[2] and lifts[2] > 3 * lifts[0]
    assert excesses == pytest.approx([1.0, 1.0, 1.0], abs=1e-9)
