"""The bundled checkpoints: they load on CPU, `workbench eval` reproduces results/nll.json within
its confidence intervals (on an evenly spaced subset of windows, to stay quick), and every interval
of results/nll.json is what workbench.stats gives on the per-window values saved beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import workbench
from workbench.evaluation import eval_windows, evaluate, evaluate_windows, paired_gaps
from workbench.stats import Estimate, blocked_mean, difference, paired_difference

ROOT = Path(__file__).resolve().parent.parent
TABLE = json.loads((ROOT / "results" / "nll.json").read_text())
BUNDLED = sorted(TABLE)

pytestmark = pytest.mark.slow


def test_six_bundled_checkpoints_are_listed():
    names = workbench.list_checkpoints()
    assert names == BUNDLED
    assert {n.rsplit("-", 1)[0] for n in names} == {"two_stream", "decoupled_rope", "sigma_gpt"}
    assert {n.rsplit("-", 1)[1] for n in names} == {"128", "1024"}


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_checkpoint_reproduces_results_table(name):
    model = workbench.load(name)
    assert model.cfg.n_ctx == int(name.rsplit("-", 1)[1])
    windows = eval_windows(model, None, max_windows=16).windows
    ours = Estimate(**evaluate(model, windows, n_orders=2, seed=1)["any_order_bits"])
    table = Estimate(**TABLE[name]["any_order_bits"])
    print(f"{name}: subset {ours} vs table {table} ({table.method}, {table.n_blocks} blocks)")
    assert table.method == "blocked" and table.n_blocks == 16
    assert abs(ours.mean - table.mean) <= ours.half_width + table.half_width


@pytest.mark.parametrize("length", [128, 1024])
def test_paired_gap_of_a_subset_agrees_with_the_table(length):
    """decoupled_rope - two_stream, paired, on 16 evenly spaced windows with other orders."""
    names = [f"two_stream-{length}", f"decoupled_rope-{length}"]
    values = {}
    for name in names:
        model = workbench.load(name)
        values[name] = evaluate_windows(model, eval_windows(model, None, max_windows=16).windows, 2, seed=1)
    ours = paired_gaps(values)[names[1]][names[0]]["any_order_bits"]
    table = Estimate(**TABLE[names[1]]["paired_differences"][names[0]]["any_order_bits"])
    print(f"gap at {length}: subset {ours} vs table {table}")
    assert abs(ours.mean - table.mean) <= ours.half_width + table.half_width


def test_committed_intervals_are_recomputed_from_the_per_window_file():
    tensors = load_file(str(ROOT / "results" / next(iter(TABLE.values()))["per_window_file"]))
    per_window = {k: (tensors[f"{k}/any_order"].mean(1), tensors[f"{k}/left_to_right"]) for k in TABLE}
    for key, entry in TABLE.items():
        assert tensors[f"{key}/any_order"].shape == (entry["n_windows"], entry["n_orders"])
        for measure, series in zip(("any_order_bits", "left_to_right_bits"), per_window[key]):
            assert_same(Estimate(**entry[measure]), blocked_mean(series))
        others = entry["paired_differences"]
        length = entry["seq_len"]
        assert set(others) == {k for k in TABLE if k != key and TABLE[k]["seq_len"] == length}
        for other, gap in others.items():
            want = paired_difference(per_window[key][0], per_window[other][0])
            assert_same(Estimate(**gap["any_order_bits"]), want)
    change = TABLE["decoupled_rope-1024"]["gap_change_with_length"]["two_stream-1024"]["128"]
    gaps = [Estimate(**TABLE[a]["paired_differences"][b]["any_order_bits"])
            for a, b in (("decoupled_rope-1024", "two_stream-1024"), ("decoupled_rope-128", "two_stream-128"))]
    assert change["minus"] == ["decoupled_rope-128", "two_stream-128"]
    assert_same(Estimate(**{k: v for k, v in change.items() if k != "minus"}), difference(*gaps))


def assert_same(got: Estimate, want: Estimate) -> None:
    assert (got.method, got.n, got.n_blocks) == (want.method, want.n, want.n_blocks)
    assert (got.mean, got.ci_low, got.ci_high, got.se, got.df) == pytest.approx(
        (want.mean, want.ci_low, want.ci_high, want.se, want.df), rel=1e-12)
