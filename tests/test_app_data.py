"""The app's compute (workbench.app_data) and figure builders (workbench.viz), without Streamlit:
bad inputs give AppInputError messages, the displayed row matches the model's own pattern and the
probe contract, and figures carry exactly the numbers they are given."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tests.app_support import make_checkpoints, make_results, parse_text_grid, synthetic_index
from workbench import app_data, hook_name, viz
from workbench.app_data import AppInputError, LoadedModel


@pytest.fixture(scope="module")
def loaded():
    return LoadedModel(app_data.load_model("two_stream-128"))


@pytest.fixture(scope="module")
def single():
    return LoadedModel(app_data.load_model("decoupled_rope-128"))


TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"


# ---- text and orders ------------------------------------------------------------------------------------------


def test_prepare_text_errors_and_notes(loaded):
    tok = loaded.model.tokenizer
    with pytest.raises(AppInputError, match="empty"):
        app_data.prepare_text("", tok, 128)
    with pytest.raises(AppInputError, match="'ï'.*'ü'|'ü'.*'ï'") as err:
        app_data.prepare_text("naïf über", tok, 128)
    assert "replace unknown characters" in str(err.value)
    fixed = app_data.prepare_text("naïf über", tok, 128, replace_unknown=True)
    assert len(fixed.ids) == 9 and any("Replaced 2 unknown" in n for n in fixed.notes)
    long = app_data.prepare_text("abc " * 100, tok, 128, start=50)
    assert len(long.ids) == 128 and long.start == 50 and long.n_total == 400
    assert "400 tokens long" in long.notes[0]
    clamped = app_data.prepare_text("abc " * 100, tok, 128, start=10_000)
    assert clamped.start == 400 - 128
    huge = app_data.prepare_text("a" * (app_data.MAX_TEXT_CHARS + 10), tok, 128)
    assert "only the first" in huge.notes[0]


def test_orders():
    assert app_data.make_order("left-to-right", 5).tolist() == [0, 1, 2, 3, 4]
    assert app_data.make_order("right-to-left", 4).tolist() == [3, 2, 1, 0]
    a, b = app_data.make_order("random", 50, seed=3), app_data.make_order("random", 50, seed=3)
    assert (a == b).all() and sorted(a.tolist()) == list(range(50))
    assert app_data.parse_order("3-5, 0 9-8", 10).tolist() == [3, 4, 5, 0, 9, 8, 1, 2, 6, 7]
    for bad, message in (("", "empty"), ("1, 1", "repeats"), ("12", "positions 0-9"), ("x", "not a position")):
        with pytest.raises(AppInputError, match=message):
            app_data.parse_order(bad, 10)


# ---- the displayed row against the model and the probe contract ---------------------------------------------------


def test_attention_row_matches_model_and_contract(loaded):
    model = loaded.model
    prepared = app_data.prepare_text(TEXT[:60], model.tokenizer, 128)
    order = app_data.make_order("random", 60, seed=1)
    run = app_data.run_sample(loaded, prepared.ids, order)
    _, cache = model.run_with_cache(torch.tensor([prepared.ids]), torch.tensor(order)[None])
    r, w, step = 3, 5, 30
    for stream in ("content", "query"):
        row = app_data.attention_row(run, 2, stream, 4, step, r, w)
        slot = step + 1 if stream == "content" else step
        expected = cache[hook_name("pattern", 2, stream)][0, 4, slot].numpy()
        np.testing.assert_allclose(row.weights, expected, atol=1e-6)
        assert row.target == order[step]
        keys = np.flatnonzero(row.visible)
        assert keys.max() == slot and abs(row.weights[keys].sum() - 1) < 1e-5
        # semantic and structural sets exactly as docs/coordinates.md defines them
        key_pos = np.concatenate([[-1], order])
        step_of = np.arange(len(key_pos)) - 1
        row_step = step
        sem = {j for j in keys if j >= 1 and abs(key_pos[j] - order[step]) <= r}
        rec = {j for j in keys if j >= 1 and row_step - step_of[j] <= w}
        assert set(np.flatnonzero(row.semantic)) == sem
        assert set(np.flatnonzero(row.structural)) == rec
        # the four parts from the probe definition add up the row's mass on those sets
        assert abs(sum(row.parts.values()) - 1) < 1e-6
        s_only = sum(row.weights[j] for j in sem - rec)
        assert abs(row.parts["S_only"] - s_only) < 1e-6
        if stream == "content":  # the content row holds the token it stands for; the query row never sees it
            assert 0 in row.distance[keys[1:]]
        else:
            assert 0 not in row.distance[keys[1:]]


def test_single_stream_row_and_views(single):
    model = single.model
    prepared = app_data.prepare_text(TEXT[:40], model.tokenizer, 128)
    order = app_data.make_order("left-to-right", 40)
    run = app_data.run_sample(single, prepared.ids, order)
    row = app_data.attention_row(run, 0, "main", 1, 10, 2, 2)
    assert row.target == 10 and row.own == 9
    cells = app_data.row_cells(run, row, "sequence positions")
    assert cells["target"] == 10 and cells["own"] == 9
    visible = np.isfinite(cells["weight"])
    assert visible[:10].all() and not visible[10:].any()
    gen = app_data.row_cells(run, row, "generation order")
    assert gen["target"] == 10 and gen["tokens"][0] == run.tokens[order[0]]
    bars = app_data.row_bars(run, row, "generation order")
    assert bars["categories"][0] == "null key" and len(bars["x"]) == 11 and bars["chance"] == pytest.approx(1 / 11)
    assert "predicts it and holds the token at position 9" in app_data.row_summary(run, row)
    pat = app_data.head_pattern(run, 0, "main", 1, "sequence")
    assert pat["z"].shape == (40, 40) and pat["keys"][0] == -1
    top = app_data.top_predictions(run, 10, k=5)
    assert top["true"].sum() == 1 and (top["probability"].diff().dropna()[:4] <= 1e-12).all()
    assert run.bits.shape == (40,) and np.isfinite(run.bits).all()


# ---- results on disk --------------------------------------------------------------------------------------------


def test_results_tables(tmp_path):
    with pytest.raises(AppInputError, match="no NLL table"):
        app_data.nll_table(tmp_path / "nll.json")
    (tmp_path / "bad.json").write_text(json.dumps({"x-128": {"any_order_bits": {}}}))
    with pytest.raises(AppInputError, match="not an NLL table"):
        app_data.nll_table(tmp_path / "bad.json")
    results = make_results(tmp_path / "results", checkpoints=("two_stream-128",))
    nll = app_data.nll_table(results / "nll.json")
    assert list(nll["length"]) == [128, 128, 128, 1024, 1024, 1024]
    gaps = app_data.nll_gaps(nll)
    assert set(gaps["variant"]) == {"decoupled_rope", "sigma_gpt"}
    with pytest.raises(AppInputError, match="no probe results for sigma_gpt-128"):
        app_data.load_probe_results("sigma_gpt-128", results)
    res = app_data.load_probe_results("two_stream-128", results)
    heads = app_data.head_frame(res.table)
    assert len(heads) == 2 * 4 * 6
    rec = app_data.head_record(heads, 2, "query", 5)
    assert rec["index"] == pytest.approx(synthetic_index("two_stream-128", 2, "query", 5))
    grid = app_data.head_grid(heads, "content", "index")
    assert grid["value"].shape == (4, 6) and grid["value"][1, 3] == pytest.approx(synthetic_index("two_stream-128", 1, "content", 3))
    hists = app_data.head_histograms(res.table, 0, "query", 0)
    assert list(hists["semantic"]["label"][:5]) == ["null key", "0", "1", "2", "3-4"]
    assert len(app_data.knockout_frame(res.table)) == 4
    assert set(app_data.divergence_frame(res.table)["k"]) == {1, 4, 16}


def test_catalog_and_broken_checkpoint(tmp_path):
    root = make_checkpoints(tmp_path / "ckpts")
    entries = {e.name: e for e in app_data.catalog(root, tmp_path / "none")}
    assert entries["two_stream-128"].streams == ("content", "query") and entries["two_stream-128"].has_val_text
    assert entries["broken-128"].error and "not valid JSON" in entries["broken-128"].error
    with pytest.raises(AppInputError, match="could not be loaded"):
        app_data.load_model(root / "broken-128")


# ---- causal and divergence ----------------------------------------------------------------------------------------


def test_run_causal(loaded):
    heads = [app_data.HeadRef(0, "query", 1), app_data.HeadRef.parse("L1.content.H2")]
    kinds = ["zero ablation", "knock out semantic set S_r"]
    joint = app_data.run_causal(loaded, heads, kinds, n_sequences=2, seed=0)
    assert list(joint.effects["intervention"]) == kinds and joint.effects["dnll"].abs().min() > 0
    alone = app_data.run_causal(loaded, heads, ["zero ablation"], n_sequences=2, joint=False)
    assert list(alone.effects["heads"]) == ["L0.query.H1", "L1.content.H2"]
    with pytest.raises(AppInputError, match="not in two_stream-128"):
        app_data.run_causal(loaded, [app_data.HeadRef(0, "main", 0)], kinds, n_sequences=2)
    with pytest.raises(AppInputError, match="at least one head"):
        app_data.run_causal(loaded, [], kinds)


def test_divergence_example():
    ex = app_data.divergence_example(128, 64, 16, seed=0)
    assert len(ex["nearest"]) == len(ex["recent"]) == 16 and 0 <= ex["overlap"] <= 1
    assert set(ex["recent"]) <= set(ex["visible"]) and ex["target"] not in set(ex["visible"])
    gaps = np.abs(ex["visible"] - ex["target"])
    assert np.abs(ex["nearest"] - ex["target"]).max() <= np.sort(gaps)[15]


# ---- figures carry the numbers they are given ----------------------------------------------------------------------


def test_figures_carry_their_data():
    value = np.arange(24, dtype=float).reshape(4, 6) / 24
    grid = {"value": value, "ci": value * 0, "chance": value * 0 + 0.1, "excess": value - 0.1,
            "label": np.full((4, 6), "semantic", dtype=object)}
    fig = viz.head_maps({("m-128", "content"): grid, ("m-128", "query"): grid}, title="t", value_name="v")
    maps = [t for t in fig.data if t.type == "heatmap"]
    assert len(maps) == 2 and np.allclose(np.array(maps[1].z, dtype=float), value - 0.1)  # coloured by the excess
    assert fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax  # centred at chance
    cells = fig.data[3]  # the query map's clickable cells
    assert list(cells.customdata[2 * 6 + 3]) == ["m-128", 2, "query", 3]  # (checkpoint, layer, stream, head) of the cell
    tokens = list("hello world")
    weight = np.array([0.1, 0.2, np.nan, 0.3, 0.4, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan])
    sem = np.zeros(11, bool)
    sem[[3, 4]] = True
    rec = np.zeros(11, bool)
    rec[[1, 4]] = True
    grid = parse_text_grid(viz.text_grid(tokens, weight, target=5, semantic=sem, structural=rec, own=3, columns=4, title="a <b>"))
    assert grid["title"] == "a <b>" and grid["chars"] == list("hello␣world")
    np.testing.assert_array_equal(grid["weight"], weight)  # NaN: not a key of this row
    cells = grid["cells"]
    assert ["#1b9e77" in c["style"] for c in cells] == list(sem)  # S_r ring
    assert ["#d95f02" in c["style"] for c in cells] == list(rec)  # R_w ring
    assert ["#e7298a" in c["style"] for c in cells] == [p == 5 for p in range(11)]  # the target's frame
    assert [c["own"] for c in cells] == [p == 3 for p in range(11)]
    assert "attention 0.4000" in cells[4]["tip"] and "not generated yet" in cells[6]["tip"] and "sets: S_r, R_w" in cells[4]["tip"]
    window = parse_text_grid(viz.text_grid(tokens, weight, target=5, semantic=sem, structural=rec, columns=4, window=(4, 8)))
    assert window["pos"] == [4, 5, 6, 7]
    bars = viz.prediction_bars(["<", '"', " "], [0.5, 0.3, 0.01], [False, True, False], title="p")
    assert re.findall(r'data-token="([^"]*)" data-p="([^"]*)"', bars) == [("&lt;", "0.5"), ("&quot;", "0.3"), (" ", "0.01")]
    assert bars.count("#e7298a") == 1 and "␣" in bars and "30.0%" in bars
    big = np.random.default_rng(0).random((1024, 1025))
    fig = viz.pattern_heatmap(big, np.arange(1024), np.arange(1025) - 1, row_title="r", key_title="k", title="p")
    z = np.array(fig.data[0].z, dtype=float)
    assert max(z.shape) <= viz.sample.MAX_CELLS and "averaged over 4x5 blocks" in fig.layout.title.text
