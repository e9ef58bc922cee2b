"""run_probes from a notebook (issue 18 item 8): the data tensor gives seq_len, an orders tensor
is probed as given, bad arguments get one short line, and the tidy table draws a head map."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import tiny_config
from tests.tl_parity import parity
from workbench import from_config
from workbench.probing.figures import head_map
from workbench.probing.runner import run_probes


@pytest.fixture(scope="module")
def setup():
    model = from_config(tiny_config("two_stream")).eval()
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, model.cfg.d_vocab, (3, 10), generator=g)  # shorter than n_ctx = 24
    order = torch.stack([torch.randperm(10, generator=g) for _ in range(3)])
    return model, data, order


def values(run) -> pd.Series:
    table = run.table
    return table[table.metric == "index"].set_index(["layer", "stream", "head"])["value"]


@parity("probing the order you studied", "(none)", "run_probes(model, data=tokens, orders=order): seq_len from the tensor", "ours")
def test_run_probes_takes_seq_len_from_the_data_and_an_orders_tensor(setup):
    model, data, order = setup
    run = run_probes(model, data=data, orders=order, probes=["specialisation"], progress=False)
    assert run.metadata["data"]["seq_len"] == 10 and run.metadata["spec"]["orders_fingerprint"]
    given = values(run_probes(model, data=data, orders=torch.arange(10), probes=["specialisation"], progress=False))
    named = values(run_probes(model, data=data, orders="left_to_right", probes=["specialisation"], progress=False))
    pd.testing.assert_series_equal(given, named)  # the identity order given = "left_to_right"
    assert not values(run).equals(named)


@pytest.mark.parametrize(
    ("orders", "message"),
    [
        (torch.zeros(5, 10, dtype=torch.long), "orders has 5 rows but the data has 3 sequences"),
        (torch.zeros(3, 10, dtype=torch.long), r"order\[0\] = \[0, 0, .* is not a permutation"),
        (torch.arange(12), r"pos = seq_len = 10, got shape \(12,\)"),
        (list(range(10)), "orders=a list is unknown"),
    ],
)
def test_bad_orders_get_one_short_line(setup, orders, message):
    model, data, _ = setup
    with pytest.raises(ValueError, match=message) as error:
        run_probes(model, data=data, orders=orders, probes=["specialisation"], progress=False)
    assert len(str(error.value)) < 250 and "tensor(" not in str(error.value)


def test_head_map_from_the_tidy_table(setup):
    model, data, order = setup
    run = run_probes(model, data=data, orders=order, probes=["specialisation"], progress=False)
    figure = head_map(run.table, "index")
    heatmaps = [trace for trace in figure.data if trace.type == "heatmap"]
    assert len(heatmaps) == 2  # one per stream
    excess = head_map(run.table, "semantic_excess")  # the labels' measure: centred at 0 (chance), on [-1, 1]
    assert (excess.layout.coloraxis.cmin, excess.layout.coloraxis.cmax) == (-1.0, 1.0)
    assert np.isfinite(np.array(excess.data[0].z, dtype=float)).all()
    with pytest.raises(ValueError, match="is not a head metric"):
        head_map(run.table, "indx")
