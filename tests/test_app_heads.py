"""Issue 19, items 1, 3 and 4 on the Head specialisation page: maps centred at chance, the
per-stream summary and its takeaway, r and w read out of a joint histogram (and a note when the
results have none), the comparison on one wrapped figure with one colour scale, and legends."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.app_support import figure, joint_from_pattern, joint_rows, make_results, random_pattern, synthetic_index, texts
from tests.test_app import metric, open_page
from workbench import app_data, viz

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def joint_results(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("results"), joint=("two_stream-128", "two_stream-1024"))


@pytest.fixture
def env(monkeypatch, joint_results):
    monkeypatch.setenv(app_data.RESULTS_ENV, str(joint_results))
    monkeypatch.delenv(app_data.CHECKPOINTS_ENV, raising=False)
    return monkeypatch


# ---- item 1: centred at chance, summary, takeaway ------------------------------------------------------------


def test_over_chance_is_zero_at_chance_for_masses_and_lifts():
    assert app_data.over_chance("index", -0.46, -0.46) == 0
    assert app_data.over_chance("semantic_lift", 1.0, 1.0) == 0  # a lift's chance is 1: log2(1) = 0
    assert app_data.over_chance("semantic_lift", 8.0, 1.0) == pytest.approx(3.0)
    assert app_data.over_chance("sink", 0.3, 0.1) == pytest.approx(0.2)


def test_committed_single_stream_heads_at_chance_are_white_not_blue():
    # decoupled_rope-128 layers 1-3 attend almost uniformly ("diffuse"): their raw index is about -0.5,
    # which a map centred at 0 draws as strongly "structural" blue (issue 19, item 1); centred at
    # chance (-0.46 at 128) they sit near 0, white.
    res = app_data.load_probe_results("decoupled_rope-128")
    heads = app_data.head_frame(res.table)
    late = heads[(heads["layer"] >= 1) & (heads["label"] == "diffuse")]
    assert len(late) >= 8
    np.testing.assert_allclose(late["index_excess"], late["index"] - late["index_chance"])
    assert late["index"].median() < -0.3  # raw: far below 0
    assert late["index_excess"].abs().median() < 0.15  # over chance: near 0


def test_stream_summary_counts_labels_and_the_takeaway_follows_the_data():
    heads = pd.DataFrame({
        "layer": [0, 0, 1, 1, 0, 1], "stream": ["content"] * 4 + ["query"] * 2, "head": [0, 1, 0, 1, 0, 0],
        "label": ["semantic", "structural", "sink", "semantic", "structural", "structural"],
        "index_excess": [1.0, -0.2, 0.5, 0.9, -0.4, -0.6],
    })
    summary = app_data.stream_summary(heads)
    assert summary.set_index("stream").loc["content", ["heads", "semantic", "structural", "sink"]].tolist() == [4, 2, 1, 1]
    assert summary.set_index("stream").loc["query", ["semantic", "structural", "sink"]].tolist() == [0, 2, 0]
    line = app_data.takeaway("m-128", summary, 4, 4)
    assert line.startswith("m-128 at r = 4, w = 4: 2 semantic, 3 structural, 1 with a sink of 6 heads")
    assert "query stream: 0 semantic, 2 structural, 0 with a sink of 2 heads (median index -0.50 over chance)" in line
    heads["semantic_excess"] = [0.9, 0.1, 0.0, 0.7, np.nan, 0.2]  # the length-fair median leads where the frame has it
    line = app_data.takeaway("m-128", app_data.stream_summary(heads), 4, 4)
    assert "content stream: 2 semantic, 1 structural, 1 with a sink of 4 heads (median e_S +0.40)" in line
    assert "query stream: 0 semantic, 2 structural, 0 with a sink of 2 heads (median e_S +0.20)" in line
    heads["label"] = "semantic"
    assert app_data.takeaway("m-128", app_data.stream_summary(heads)).startswith("m-128: 6 semantic, 0 structural, 0 with a sink of 6 heads")


def test_heads_page_shows_summary_takeaway_and_centred_maps(env):
    at = open_page("heads")
    summary = at.dataframe[0].value
    frame = app_data.head_frame(app_data.load_probe_results("two_stream-128").table)
    expected = app_data.stream_summary(frame)
    pd.testing.assert_frame_equal(summary.reset_index(drop=True), expected, check_dtype=False)
    assert app_data.takeaway("two_stream-128", expected, 4, 4) in texts(at)
    maps = figure(at, "two_stream-128")
    assert maps["layout"]["coloraxis"]["cmin"] == -maps["layout"]["coloraxis"]["cmax"]  # 0 = chance in the middle
    assert "centred at chance" in texts(at)


def test_overview_lists_each_checkpoint_takeaway(env):
    at = open_page()
    for name in ("two_stream-128", "two_stream-1024", "decoupled_rope-128"):
        assert f"{name} at r = 4, w = 4: " in texts(at)


# ---- item 3: r and w from the joint histogram ------------------------------------------------------------------


@pytest.mark.parametrize("stream", ["content", "query", "main"])
def test_parts_read_out_of_the_joint_histogram_equal_the_probe_definition(stream):
    from workbench.kernels.contract import pattern_stats
    from workbench.orders import probe_layout, random_orders

    order = random_orders(1, 97, torch.Generator().manual_seed(3))
    layout = probe_layout(order, stream)
    pattern = random_pattern(3, layout.row_ref.shape[1], layout.key_pos.shape[1], seed=5)
    mass, chance = joint_from_pattern(pattern, layout)
    for r, w in ((1, 1), (4, 4), (2, 16), (32, 8)):
        stats = pattern_stats(torch.as_tensor(pattern)[None], layout.key_pos, layout.row_ref, layout.row_own,
                              recency_offset=layout.recency_offset, r=r, w=w)
        want = (stats.parts_mass / stats.n_rows).numpy()  # [head, part]
        want_chance = (stats.parts_chance / stats.n_rows).numpy()[0]
        for head in range(3):
            got = app_data.parts_at(app_data.JointHistogram(mass[head], chance), r, w)
            np.testing.assert_allclose([got[p] for p in ("S_only", "R_only", "both", "neither")], want[head], atol=1e-12)
            np.testing.assert_allclose([got[f"{p}_chance"] for p in ("S_only", "R_only", "both", "neither")], want_chance, atol=1e-12)


def test_parts_at_refuses_r_between_bin_edges():
    joint = app_data.JointHistogram(np.eye(18) / 18, np.eye(18) / 18)
    with pytest.raises(app_data.AppInputError, match="r = 3, w = 4: r=3 is not on a bin edge"):
        app_data.parts_at(joint, 3, 4)
    assert app_data.readable_widths(128) == [1, 2, 4, 8, 16, 32, 64]


def test_joint_histograms_read_the_documented_format():
    rows, used = joint_rows("two_stream-128")
    from workbench.probing.table import rows_to_table

    table = rows_to_table(rows).to_pandas()
    joints = app_data.joint_histograms(table)
    assert len(joints) == 2 * 4 * 6
    pattern, layout = used[(2, "query")]
    mass, chance = joint_from_pattern(pattern, layout)
    np.testing.assert_allclose(joints[(2, "query", 5)].mass, mass[5])
    np.testing.assert_allclose(joints[(2, "query", 5)].chance, chance)
    bad = table.assign(x=table["x"] + 18 * 18)
    with pytest.raises(app_data.AppInputError, match="not in the format"):
        app_data.joint_histograms(bad)


def test_heads_page_r_and_w_controls_read_the_joint_histogram(env):
    at = open_page("heads", p_head_ckpt="two_stream-128", p_head_layer=2, p_head_stream="query", p_head_head=5)
    r_slider = at.select_slider(key="p_heads_r")
    assert not r_slider.disabled and r_slider.value == 4
    assert metric(at, "specialisation index") == f"{synthetic_index('two_stream-128', 2, 'query', 5):+.3f}"  # committed
    at.select_slider(key="p_heads_r").set_value(16).run()
    at.select_slider(key="p_heads_w").set_value(2).run()
    joints = app_data.joint_histograms(app_data.load_probe_results("two_stream-128").table)
    parts = app_data.parts_at(joints[(2, "query", 5)], 16, 2)
    assert metric(at, "specialisation index") == f"{parts['index']:+.3f}"
    assert "labels at r = 16, w = 2 need a probe run there" in texts(at)
    table = at.table[0].value
    np.testing.assert_allclose(table["attention mass"].astype(float), [parts[p] for p in ("S_only", "R_only", "both", "neither")], atol=5e-4)
    assert "two_stream-128 at r = 16, w = 2" in texts(at)
    # the default map, the normalised excess, needs per-row quantities: blank away from the committed (r, w), and said so
    assert at.selectbox(key="p_heads_metric").value == "semantic_excess"
    assert all(np.isnan(np.array(t["z"], dtype=float)).all() for t in figure(at, "two_stream-128")["data"] if t["type"] == "heatmap")
    assert any("exists at the committed r = 4, w = 4 only" in i.value for i in at.info)
    at.selectbox(key="p_heads_metric").set_value("semantic_mass").run()
    assert not any("exists at the committed" in i.value for i in at.info)


def test_heads_page_without_a_joint_histogram_says_why_r_and_w_are_fixed(monkeypatch, tmp_path):
    monkeypatch.setenv(app_data.RESULTS_ENV, str(make_results(tmp_path / "results", checkpoints=("two_stream-128",))))
    at = open_page("heads")
    assert at.select_slider(key="p_heads_r").disabled
    assert "no joint semantic x recency histogram" in texts(at) and "r = 4, w = 4" in texts(at)


# ---- item 4: comparison, selection, legends -----------------------------------------------------------------------


def test_comparison_is_one_wrapped_figure_with_one_colour_bar(env):
    at = open_page("heads")
    at.selectbox(key="p_heads_compare").set_value("the other length").run()
    fig = figure(at, "two_stream-128 vs two_stream-1024")
    heatmaps = [t for t in fig["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 4 and all(t["coloraxis"] == "coloraxis" for t in heatmaps)
    axes = {k: v for k, v in fig["layout"].items() if k.startswith("xaxis")}
    assert len({round(v["domain"][0], 3) for v in axes.values()}) == 2  # two columns, so two rows of two
    assert all(v["range"] == [-0.5, 5.5] for v in axes.values())  # heads 0..5, not -1..6


def test_map_cells_and_scatter_points_carry_the_head_the_click_callback_reads(env):
    # The click itself is tested in a real browser (tests/test_browser.py); here: both figures hand
    # the one callback (head_from_selection -> select_head) the same (checkpoint, layer, stream, head).
    from app_pages.common import head_from_selection

    at = open_page("heads")
    maps, scatter = figure(at, "two_stream-128"), figure(at, "Each point is a head")
    cell = next(t for t in maps["data"] if t["name"] == "two_stream-128 query heads")["customdata"][2 * 6 + 3]
    point = next(t for t in scatter["data"] if t["name"] == "query")["customdata"][0]
    for custom, want in ((cell, ("two_stream-128", 2, "query", 3)), (point, ("two_stream-128", 0, "query", 0))):
        assert head_from_selection({"selection": {"points": [{"customdata": custom}]}}) == want


def test_legends_name_every_line_and_have_distinct_colours():
    steps = pd.DataFrame({"x": [0, 1, 0, 1], "metric": ["index", "index", "sink", "sink"], "value": [0.1, 0.2, 0.3, 0.4],
                          "chance": [0.0, 0.0, 0.1, 0.1], "ci": [0.01] * 4})
    fig = viz.by_step_figure(steps, title="t", names={"index": "index", "sink": "null-key mass"})
    colours = {t.name: t.line.color for t in fig.data if t.showlegend is not False and t.mode == "lines+markers"}
    assert colours["index"] != colours["null-key mass"]
    assert any("chance" in (t.name or "") and t.showlegend is not False for t in fig.data)
    hist = viz.histogram_figure({"semantic": pd.DataFrame({"label": ["0"], "attention": [0.5], "chance": [0.2], "ci": [0.01]})},
                                title="t", x_titles={"semantic": "bin"})
    chance = next(t for t in hist.data if t.name == "chance (uniform)")
    assert chance.marker.color == chance.marker.line.color  # the legend swatch is the colour drawn
    assert hist.layout.legend.y >= 1  # above the panels, off the axis title
    bars = viz.effect_bars(["a", "b"], [0.1, 0.2], [0.01, 0.01], groups=["semantic", "random"], title="t")
    assert bars.layout.legend.yref == "container" and bars.layout.legend.y < 0.1  # under the axis, not over the top bar
