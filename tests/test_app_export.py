"""Issue 19, items 5 and 6: what a researcher takes away (frames as CSV / Parquet, a sample's row
and pattern as safetensors / .npz, figures, "copy as Python" that rebuilds the view) and brings
(checkpoint and results directories by path, an uploaded text file)."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load

from tests.app_support import figure, make_checkpoints, texts
from tests.test_app import env, open_page, results  # noqa: F401 (env and results are fixtures)
from workbench import app_data


def downloads(at) -> dict[str, str]:
    return {b.key: b.label for b in at.get("download_button")}


# ---- item 5: exports -----------------------------------------------------------------------------------------


def test_frames_round_trip_through_csv_and_parquet():
    frame = pd.DataFrame({"layer": [0, 1], "stream": ["query", "main"], "value": [0.25, np.nan], "label": ["semantic", ""]})
    back = pd.read_csv(io.BytesIO(app_data.frame_bytes(frame, "csv")), keep_default_na=False, na_values=[""])
    assert back["value"].iloc[0] == 0.25 and back["stream"].tolist() == ["query", "main"]
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(app_data.frame_bytes(frame, "parquet"))), frame)
    with pytest.raises(app_data.AppInputError, match="unknown table format"):
        app_data.frame_bytes(frame, "xlsx")


def test_figures_export_html_that_opens_offline():
    import plotly.graph_objects as go

    html = app_data.figure_bytes(go.Figure(go.Bar(x=[1], y=[2])), "html").decode()
    assert "<html>" in html and '<script src="http' not in html and len(html) > 1_000_000  # plotly.js embedded: opens offline
    with pytest.raises(app_data.AppInputError, match="unknown figure format 'eps'; use one of html, svg, pdf"):
        app_data.figure_bytes(go.Figure(), "eps")


def heads_map(results):
    """The head page's map of two_stream-128 (both streams), built through the API as the page does."""
    from workbench import viz

    heads = app_data.head_frame(app_data.load_probe_results("two_stream-128", results).table)
    grids = {("two_stream-128", s): app_data.head_grid(heads, s, "index") for s in ("content", "query")}
    return viz.head_maps(grids, title="two_stream-128", value_name=app_data.over_chance_name("index"))


@pytest.mark.browser
def test_a_map_exports_as_a_real_svg_and_pdf(results):
    """kaleido draws through the system Chromium (setup_env.sh installs both): a real vector file comes out."""
    problem = app_data.vector_export_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    fig = heads_map(results)
    svg = app_data.figure_bytes(fig, "svg").decode()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert 'width="1100"' in svg and "two_stream-128 · query stream" in svg and svg.count('class="hm"') == 2  # both heatmaps
    pdf = app_data.figure_bytes(fig, "pdf")
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:] and len(pdf) > 10_000


def test_without_a_browser_svg_and_pdf_are_disabled_and_say_how_to_fix(env, results, tmp_path):
    env.setenv("BROWSER_PATH", str(tmp_path / "no-chrome"))
    problem = app_data.vector_export_problem()
    assert "BROWSER_PATH" in problem and "apt-get install chromium" in problem
    with pytest.raises(app_data.AppInputError, match="apt-get install chromium"):
        app_data.figure_bytes(heads_map(results), "svg")
    at = open_page("heads")
    buttons = {b.key: b.proto for b in at.get("download_button")}
    assert buttons["dl_heads_maps_fig_svg"].disabled and buttons["dl_heads_maps_fig_pdf"].disabled
    assert problem in buttons["dl_heads_maps_fig_svg"].help and not buttons["dl_heads_maps_fig_html"].disabled
    assert any(problem in w.value for w in at.warning)


def test_without_kaleido_svg_and_pdf_say_how_to_install_it(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kaleido" else find_spec(name, *a))
    assert "kaleido, which is not installed" in app_data.vector_export_problem()
    assert "scripts/setup_env.sh" in app_data.vector_export_problem()


def test_heads_page_exports_and_its_python_rebuilds_the_view(env, results):
    at = open_page("heads", p_head_ckpt="two_stream-128", p_head_layer=2, p_head_stream="query", p_head_head=5)
    keys = downloads(at)
    assert {"dl_heads_maps_csv", "dl_heads_maps_parquet", "dl_heads_maps_fig_html", "dl_summary_two_stream-128_csv"} <= set(keys)
    code = next(c.value for c in at.code if "head_maps" in c.value)
    shown = figure(at, "two_stream-128")
    env.setattr("plotly.graph_objects.Figure.show", lambda self, *a, **k: None)
    scope: dict = {}
    exec(compile(code, "<snippet>", "exec"), scope)  # noqa: S102 -- the snippet the page offers
    z = [np.array(t.z, dtype=float) for t in scope["fig"].data if t.type == "heatmap"]
    from tests.app_support import decode

    want = [np.array(decode(t["z"]), dtype=float) for t in shown["data"] if t["type"] == "heatmap"]
    for a, b in zip(z, want):
        np.testing.assert_allclose(a, b)
    assert str(results) in code  # a results directory other than results/ is named in the snippet


def test_sample_row_exports_and_its_python_rebuilds_the_row(env):
    at = open_page("samples", p_sample_layer=1, p_sample_stream="query", p_sample_head=2)
    keys = downloads(at)
    stem = "sample_L1_query_H2_step64"
    assert {f"dl_{stem}_csv", f"dl_{stem}_safetensors", f"dl_{stem}_npz", f"dl_{stem}_page"} <= set(keys)
    grid = next(e.proto.body for e in at.get("html") if "attention over the text" in e.proto.body)
    page = app_data.html_page(grid, stem).decode()
    assert page.startswith("<!doctype html>") and grid in page and f"<title>{stem}</title>" in page
    code = next(c.value for c in at.code if "attention_row" in c.value)
    scope: dict = {}
    exec(compile(code, "<snippet>", "exec"), scope)  # noqa: S102
    row, run = scope["row"], scope["run"]
    assert row.step == 64 and app_data.row_summary(run, row) in texts(at)
    arrays = load(app_data.array_bytes(app_data.row_arrays(run, row), "safetensors"))
    assert arrays["pattern"].shape == run.patterns[(1, "query")][2].shape
    np.testing.assert_allclose(arrays["row"][: row.slot + 1], row.weights[: row.slot + 1], atol=1e-6)
    npz = np.load(io.BytesIO(app_data.array_bytes(app_data.row_arrays(run, row), "npz")))
    np.testing.assert_array_equal(npz["order"], run.order)
    frame = app_data.row_frame(run, row)
    assert frame["attention"].sum() == pytest.approx(1.0, abs=1e-5) and frame["position"].iloc[0] == -1


def test_causal_tables_can_be_downloaded(env):
    at = open_page("causal")
    assert {"dl_ablation_csv", "dl_knockout_parquet", "dl_ablation_fig_html"} <= set(downloads(at))


# ---- item 6: bring your own -------------------------------------------------------------------------------------


def test_source_dir_checks_what_it_is_given(tmp_path, results):
    ckpts = make_checkpoints(tmp_path / "ckpts", broken=None)
    assert app_data.source_dir("checkpoints", str(ckpts)) == ckpts
    assert app_data.source_dir("checkpoints", str(ckpts / "two_stream-128")) == ckpts  # a checkpoint stands for its parent
    assert app_data.source_dir("results", str(results)) == results
    with pytest.raises(app_data.AppInputError, match="is not a directory"):
        app_data.source_dir("results", str(tmp_path / "nowhere"))
    with pytest.raises(app_data.AppInputError, match="holds no checkpoint"):
        app_data.source_dir("checkpoints", str(results))
    with pytest.raises(app_data.AppInputError, match="not a results directory"):
        app_data.source_dir("results", str(ckpts))


def test_sidebar_directories_switch_what_every_page_reads(env, tmp_path, results):
    mine = make_checkpoints(tmp_path / "mine", names=("decoupled_rope-128",), broken=None)
    shutil.copytree(mine / "decoupled_rope-128", mine / "my_model-128")
    at = open_page()
    at.text_input(key="p_source_checkpoints").input(str(mine)).run()
    table = at.dataframe[0].value
    assert set(table["checkpoint"]) == {"decoupled_rope-128", "my_model-128"}
    at.text_input(key="p_source_results").input(str(tmp_path / "missing")).run()
    assert any("is not a directory" in e.value and "Using" in e.value for e in at.error)
    assert f"Using {mine}" in "\n".join(c.value for c in at.caption)
    at.switch_page("app_pages/heads.py").run()
    assert "decoupled_rope-128 at r = 4, w = 4" in texts(at)  # the results stayed the default (the bad path is not used)


def test_uploaded_text_is_read_or_refused_with_a_reason():
    assert app_data.read_text_upload("\ufeffTo be".encode("utf-8"), "a.txt") == "To be"
    with pytest.raises(app_data.AppInputError, match="not UTF-8"):
        app_data.read_text_upload("café".encode("latin-1"), "b.txt")
    with pytest.raises(app_data.AppInputError, match="looks binary"):
        app_data.read_text_upload(b"\x00\x01\x02", "c.bin")
    with pytest.raises(app_data.AppInputError, match="is empty"):
        app_data.read_text_upload(b"  \n", "d.txt")


def test_sample_browser_offers_an_upload(env):
    at = open_page("samples")
    at.radio(key="p_sample_source").set_value("your text").run()
    assert [e for e in at.get("file_uploader")], "no file uploader on the sample browser"
