"""The bundled checkpoints: they load on CPU, and `workbench eval` reproduces results/nll.json
within its confidence intervals (on an evenly spaced subset of windows, to stay quick)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import workbench
from workbench.evaluation import evaluate, validation_windows

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
    torch.manual_seed(0)
    windows = validation_windows(model, None, max_windows=16)
    ours = evaluate(model, windows, n_orders=2, seed=1)["any_order_bits"]
    table = TABLE[name]["any_order_bits"]
    half_ours = (ours["ci_high"] - ours["ci_low"]) / 2
    half_table = (table["ci_high"] - table["ci_low"]) / 2
    print(f"{name}: subset {ours['mean']:.4f} ± {half_ours:.4f} vs table {table['mean']:.4f} ± {half_table:.4f}")
    assert abs(ours["mean"] - table["mean"]) <= half_ours + half_table
