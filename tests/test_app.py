"""AppTest tests of every page of the Streamlit app: what each page shows (figure data, tables,
metrics, messages) for known inputs, and a message rather than a traceback for bad ones.

Results come from a temporary directory holding the real NLL table and synthetic probe tables of
known values (tests/app_support.py), so the maps can be checked number by number."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests.app_support import (
    APP,
    bundled_gap_text,
    dnll,
    figure,
    make_checkpoints,
    make_results,
    no_exceptions,
    overlap,
    prediction_bars,
    synthetic_excess,
    synthetic_index,
    text_grid,
    texts,
)
from workbench import app_data, hook_name, viz

TIMEOUT = 180


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("results"))


@pytest.fixture
def env(monkeypatch, results):
    monkeypatch.setenv(app_data.RESULTS_ENV, str(results))
    monkeypatch.delenv(app_data.CHECKPOINTS_ENV, raising=False)
    return monkeypatch


def open_page(page: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page is not None:
        at.switch_page(f"app_pages/{page}.py").run()
    no_exceptions(at)
    return at


def metric(at, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return m.value
    raise AssertionError(f"no metric {label!r}; the page has {[m.label for m in at.metric]}")


# ---- overview --------------------------------------------------------------------------------------------------------


def test_overview_lists_checkpoints_results_and_the_nll_table(env, results):
    at = open_page()
    assert "where does each head look" in at.title[0].value
    assert "compete for attention" in texts(at)
    table = at.dataframe[0].value
    assert set(table["checkpoint"]) >= {"two_stream-128", "decoupled_rope-1024", "sigma_gpt-128"}
    probed = dict(zip(table["checkpoint"], table["probe results"]))
    assert probed["two_stream-128"] == "yes" and probed["sigma_gpt-128"] == "no"
    assert metric(at, "with probe results") == "3"
    nll = json.loads((results / "nll.json").read_text())
    fig = figure(at, "Bits per token")
    bars = {(t["name"], t["xaxis"]): dict(zip(t["x"], t["y"])) for t in fig["data"]}
    assert bars[("length 1024", "x")]["sigma_gpt"] == pytest.approx(nll["sigma_gpt-1024"]["any_order_bits"]["mean"])
    assert bars[("length 128", "x2")]["two_stream"] == pytest.approx(nll["two_stream-128"]["left_to_right_bits"]["mean"])
    assert bundled_gap_text(results) in texts(at)


def test_overview_draws_nll_by_fraction_only_once_its_expander_is_opened(env):
    at = open_page()
    assert not [f for f in at.get("plotly_chart") if "by fraction of the text revealed" in f.proto.spec]
    at.session_state["overview_fraction_open"] = True  # what opening the expander sets
    at.run()
    no_exceptions(at)
    figure(at, "Any-order NLL by fraction of the text revealed")


def test_overview_without_results_and_with_a_broken_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setenv(app_data.RESULTS_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv(app_data.CHECKPOINTS_ENV, str(make_checkpoints(tmp_path / "ckpts")))
    at = open_page()
    shown = texts(at)
    assert "no NLL table" in shown and "workbench eval" in shown
    assert "No probe results are committed yet" in shown
    assert any("broken-128 cannot be loaded" in e.value and "not valid JSON" in e.value for e in at.error)
    assert metric(at, "checkpoints") == "1 of 2 loadable"
    # the other pages say so too, without a traceback
    at.switch_page("app_pages/heads.py").run()
    no_exceptions(at)
    assert "no probe results for two_stream-128" in texts(at)
    assert any("quick estimate" in b.label for b in at.button)


def test_an_unexpected_error_is_a_message_not_a_traceback(monkeypatch, tmp_path):
    def broken(path=None):
        raise RuntimeError("simulated bug")

    monkeypatch.setenv(app_data.RESULTS_ENV, str(make_results(tmp_path / "results", checkpoints=())))
    monkeypatch.setattr(app_data, "nll_table", broken)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert any("unexpected error (RuntimeError: simulated bug)" in e.value for e in at.error)
    assert at.title and "where does each head look" in at.title[0].value  # what ran before the error is still shown


def test_a_checkpoint_whose_weights_are_corrupt_gives_a_message(monkeypatch, tmp_path, results):
    root = make_checkpoints(tmp_path / "ckpts", broken=None)
    (root / "two_stream-128" / "model.safetensors").write_bytes(b"not safetensors")
    monkeypatch.setenv(app_data.CHECKPOINTS_ENV, str(root))
    monkeypatch.setenv(app_data.RESULTS_ENV, str(results))
    for page in ("samples", "causal"):
        at = open_page(page)
        assert any("could not be loaded" in e.value and "safetensors" in e.value for e in at.error), texts(at)


# ---- head specialisation -------------------------------------------------------------------------------------------


def test_heads_maps_scatter_and_one_head(env):
    at = open_page("heads")
    assert at.selectbox(key="p_heads_metric").value == "semantic_excess"  # the labels' length-fair measure, 0 at chance
    content, query = [t for t in figure(at, "two_stream-128")["data"] if t["type"] == "heatmap"]
    for trace, stream in ((content, "content"), (query, "query")):
        expected = [[synthetic_excess(synthetic_index("two_stream-128", layer, stream, h), "S") for h in range(6)] for layer in range(4)]
        np.testing.assert_allclose(np.array(trace["z"], dtype=float), expected, atol=1e-12)
    at.selectbox(key="p_heads_metric").set_value("index").run()
    content, query = [t for t in figure(at, "two_stream-128")["data"] if t["type"] == "heatmap"]
    for trace, stream in ((content, "content"), (query, "query")):
        # centred at chance: the synthetic index's chance is 0.1 (tests/app_support.py)
        expected = [[synthetic_index("two_stream-128", layer, stream, h) - 0.1 for h in range(6)] for layer in range(4)]
        np.testing.assert_allclose(np.array(trace["z"], dtype=float), expected, atol=1e-12)
    assert "S" in content["text"][0][0] or "R" in content["text"][0][0] or "M" in content["text"][0][0]
    scatter = figure(at, "Each point is a head")
    points = [t for t in scatter["data"] if t["name"] in ("content", "query")]
    assert sum(len(t["x"]) for t in points) == 48
    assert points[0]["customdata"][0][:3] == ["two_stream-128", 0, "content"]
    assert metric(at, "specialisation index") == f"{synthetic_index('two_stream-128', 0, 'content', 0):+.3f}"
    hist = figure(at, "by log2 bins")
    assert hist["data"][0]["x"][:3] == ["null key", "0", "1"] and len(hist["data"]) == 4  # semantic and recency panels
    assert "Causal checks of this head" in texts(at)


def test_heads_select_a_head_and_compare_lengths(env):
    at = open_page("heads", p_head_ckpt="two_stream-128", p_head_layer=2, p_head_stream="query", p_head_head=5)
    assert metric(at, "specialisation index") == f"{synthetic_index('two_stream-128', 2, 'query', 5):+.3f}"
    assert "two_stream-128 · query stream · layer 2 · head 5" in texts(at)
    # the scatter is the same figure whichever head is selected, so the browser does not draw it anew
    scatter = figure(at, "Each point is a head")
    at.selectbox(key="p_head_head").set_value(3).run()
    assert "two_stream-128 · query stream · layer 2 · head 3" in texts(at)
    assert figure(at, "Each point is a head") == scatter
    at.selectbox(key="p_heads_metric").set_value("semantic_mass").run()
    at.selectbox(key="p_heads_compare").set_value("the other length").run()
    no_exceptions(at)
    maps = figure(at, "two_stream-128 vs two_stream-1024")
    heatmaps = [t for t in maps["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 4 and {t["coloraxis"] for t in heatmaps} == {"coloraxis"}  # one colour scale for all four
    assert [a["text"] for a in maps["layout"]["annotations"]] == [
        "two_stream-128 · content stream", "two_stream-128 · query stream", "two_stream-1024 · content stream", "two_stream-1024 · query stream"]
    assert np.array(heatmaps[3]["z"], dtype=float).shape == (4, 6)
    names = {t["name"] for t in figure(at, "Each point is a head")["data"]}
    assert {"two_stream-128: query", "two_stream-1024: query"} <= names
    at.selectbox(key="p_heads_compare").set_value("another variant, same length").run()
    assert figure(at, "decoupled_rope-128")["layout"]["annotations"][-1]["text"] == "decoupled_rope-128 · main stream"


def test_heads_selection_events_pick_heads():
    from app_pages.common import head_from_selection

    scatter = {"selection": {"points": [{"customdata": ["two_stream-128", 3, "query", 2], "curve_number": 1}]}}
    assert head_from_selection(scatter) == ("two_stream-128", 3, "query", 2)
    grid = {"value": np.zeros((4, 6)), "ci": np.zeros((4, 6)), "chance": np.zeros((4, 6)), "excess": np.zeros((4, 6)),
            "label": np.full((4, 6), "", dtype=object)}
    fig = viz.head_maps({("a-128", "content"): grid, ("b-128", "main"): grid}, title="t", value_name="v")
    cells = [t for t in fig.data if t.type == "scatter"][1]  # the second map's clickable cells
    cell = {"selection": {"points": [{"customdata": list(cells.customdata[1 * 6 + 4]), "curve_number": 3}]}}
    assert head_from_selection(cell) == ("b-128", 1, "main", 4)
    assert head_from_selection({"selection": {"points": []}}) is None and head_from_selection(None) is None


def test_heads_quick_estimate_when_results_are_missing(env):
    at = open_page("heads", p_heads_ckpt="sigma_gpt-128")
    assert "no probe results for sigma_gpt-128" in texts(at)
    [button] = [b for b in at.button if "quick estimate" in b.label]
    button.click().run()
    no_exceptions(at)
    fig = figure(at, "sigma_gpt-128")
    z = np.array(fig["data"][0]["z"], dtype=float)
    cfg = app_data.load_model("sigma_gpt-128").cfg
    assert z.shape == (cfg.n_layers, cfg.n_heads) and np.isfinite(z).all() and (np.abs(z) <= 2).all()  # index - chance
    assert "quick estimate: 4 validation windows" in texts(at)


def test_heads_open_head_in_sample_browser(env):
    at = open_page("heads", p_head_ckpt="two_stream-128", p_head_layer=1, p_head_stream="content", p_head_head=3)
    at.button(key="head_open_sample").click().run()
    no_exceptions(at)
    assert at.title[0].value == "Sample browser"
    assert "L1 content H3" in text_grid(at, "attention over the text")["title"]


# ---- sample browser ---------------------------------------------------------------------------------------------------


def test_samples_row_matches_the_model_and_steps(env):
    at = open_page("samples")
    grid = text_grid(at, "L0 query H0, step 64")
    model = app_data.load_model("two_stream-128")
    sample = app_data.val_samples(model.checkpoint.path, 128)[0][1]
    ids = model.to_tokens(sample)
    order = torch.as_tensor(app_data.make_order("random", 128, 0))
    logits, cache = model.run_with_cache(ids, order[None])
    row = cache[hook_name("pattern", 0, "query")][0, 0, 64].numpy()  # query row of step 64
    by_pos = np.full(128, np.nan)
    by_pos[order[:64].numpy()] = row[1:65]
    assert grid["pos"] == list(range(128))
    np.testing.assert_allclose(grid["weight"], by_pos, atol=1e-6)
    framed = [c["pos"] for c in grid["cells"] if "outline:3px solid #e7298a" in c["style"]]
    assert framed == [int(order[64])]  # the target is framed
    at.toggle(key="p_sample_bars").set_value(True).run()
    bars = figure(at, "The same row, key by key")
    assert sum(sum(t["y"]) for t in bars["data"]) == pytest.approx(1.0, abs=1e-5)
    assert {t["name"] for t in bars["data"]} <= {"null key", "S only", "R only", "both", "neither"}
    target = int(order[64])
    probs = torch.softmax(logits[0, target].detach().double(), -1)  # logits are in sequence positions
    top = torch.argsort(probs, descending=True)[:8]
    pred = prediction_bars(at, f"Prediction for position {target}")
    assert pred["tokens"][:8] == [model.tokenizer.chars[int(i)] for i in top]
    np.testing.assert_allclose(pred["p"][:8], probs[top].numpy(), rtol=1e-4)
    truth = model.tokenizer.chars[int(ids[0, target])]
    assert [tok == truth for tok in pred["tokens"]] == pred["true"] and sum(pred["true"]) == 1  # the true token, added if not in the top 8
    assert f"Step 64 generates position {target}" in texts(at)
    at.button(key="sample_next").click().run()
    assert "step 65" in text_grid(at, "attention over the text")["title"]
    at.selectbox(key="p_sample_stream").set_value("content").run()
    at.radio(key="p_sample_coords").set_value("generation order").run()
    at.radio(key="p_sample_order").set_value("left-to-right").run()
    no_exceptions(at)
    title = text_grid(at, "attention over the text")["title"]
    assert "content" in title and "generation order" in title
    assert "Step 65 generates position 65" in texts(at)
    nll = figure(at, "NLL along this order")
    assert len(nll["data"][0]["y"]) == 128


def test_samples_bad_text_and_orders(env):
    at = open_page("samples")
    at.radio(key="p_sample_source").set_value("your text").run()
    at.text_area(key="p_sample_text").input("").run()
    no_exceptions(at)
    assert any("empty" in e.value for e in at.error)
    at.text_area(key="p_sample_text").input("Good morrow, señor — naïf").run()
    assert any("'ñ'" in e.value and "replace unknown characters" in e.value for e in at.error)
    at.checkbox(key="p_sample_replace").check().run()
    no_exceptions(at)
    assert "Replaced 3 unknown" in texts(at)
    assert len(text_grid(at, "attention over the text")["chars"]) == 25
    at.text_area(key="p_sample_text").input("To be, or not to be: that is the question. " * 10).run()
    assert "430 tokens long" in texts(at) and at.slider(key="p_sample_window").value == 0
    at.slider(key="p_sample_window").set_value(160).run()
    assert "Showing tokens 160-287" in texts(at)
    at.radio(key="p_sample_order").set_value("custom").run()
    at.text_input(key="p_sample_custom").input("3, 3").run()
    no_exceptions(at)
    assert any("repeats position(s) [3]" in e.value for e in at.error)
    at.text_input(key="p_sample_custom").input("127-120").run()
    at.slider(key="p_sample_step").set_value(0).run()
    assert "Step 0 generates position 127" in texts(at)


def test_samples_long_sequence_is_windowed_and_downsampled(env):
    at = open_page("samples", p_sample_ckpt="decoupled_rope-1024")
    assert len(text_grid(at, "attention over the text")["pos"]) == 256
    at.toggle(key="p_sample_whole").set_value(True).run()
    assert text_grid(at, "attention over the text")["pos"] == list(range(1024))
    assert not [f for f in at.get("plotly_chart") if "every row" in f.proto.spec]  # the whole pattern only on demand
    at.toggle(key="p_sample_pattern").set_value(True).run()
    pattern = figure(at, "every row")
    assert max(np.array(pattern["data"][0]["z"], dtype=float).shape) <= 256
    assert "averaged over 4x4 blocks" in pattern["layout"]["title"]["text"]


# ---- causal checks ---------------------------------------------------------------------------------------------------------


def test_causal_committed_results_and_a_live_run(env):
    at = open_page("causal")
    ablation = figure(at, "mean-ablated")
    query = np.array(ablation["data"][2]["z"], dtype=float)
    np.testing.assert_allclose(query, [[dnll(layer, "query", h, "mean") for h in range(6)] for layer in range(4)])
    at.radio(key="p_causal_ablation_kind").set_value("zero").run()
    assert np.array(figure(at, "zero-ablated")["data"][0]["z"], dtype=float)[3, 5] == pytest.approx(dnll(3, "content", 5, "zero"))
    knock = figure(at, "knocking out a head's set")
    assert {t["name"] for t in knock["data"]} == {"semantic set", "structural set", "random set (same size)"}
    assert sum(len(t["x"]) for t in knock["data"]) == 8
    at.multiselect(key="p_causal_heads").set_value(["L0.query.H1", "L1.query.H2"])
    at.multiselect(key="p_causal_kinds").set_value(["zero ablation", "knock out structural set R_w"])
    at.slider(key="p_causal_n").set_value(2)
    [run] = [b for b in at.button if b.label == "Run"]
    run.click().run()
    no_exceptions(at)
    table = at.dataframe[-1].value
    assert list(table["intervention"]) == ["zero ablation", "knock out structural set R_w"]
    assert (table["heads"] == "L0.query.H1, L1.query.H2").all() and np.isfinite(table["ΔNLL (bits/token)"]).all()
    assert "Clean NLL" in texts(at) and len(figure(at, "Change in NLL")["data"]) == 2


# ---- order divergence ------------------------------------------------------------------------------------------------------


def test_divergence_committed_and_computed(env):
    at = open_page("divergence")
    fig = figure(at, "near the target")
    k4 = next(t for t in fig["data"] if t["name"] == "k = 4")
    assert k4["y"] == pytest.approx([overlap(t, 4) for t in (16, 32, 64, 128, 256, 512, 1024)])
    assert "k = 16: **" in texts(at)
    at.radio(key="p_div_source").set_value("compute here").run()
    at.select_slider(key="p_div_max").set_value(256).run()
    at.multiselect(key="p_div_ks").set_value([4]).run()
    at.slider(key="p_div_orders").set_value(2).run()
    no_exceptions(at)
    lines = [t for t in figure(at, "near the target")["data"] if t["name"].startswith("k = ")]
    assert [t["name"] for t in lines] == ["k = 4"] and len(lines[0]["x"]) == 5  # T = 16..256
    strip = figure(at, "T = 128, step 64")
    assert "overlap" in strip["layout"]["title"]["text"]
    assert len(next(t for t in strip["data"] if t["name"] == "target position")["x"]) == 1
