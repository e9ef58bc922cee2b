"""What a researcher can take away from a page: the frame behind a map or table (CSV, Parquet),
arrays (a sample's attention row and the head's pattern) as safetensors or .npz, figures (HTML
always; SVG and PDF through kaleido and a system Chrome or Chromium), and Python snippets that rebuild a view
through this API. Every function returns bytes (or text) and writes nothing."""

from __future__ import annotations

import html
import importlib.util
import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.app_data.common import REPO, AppInputError

__all__ = ["FRAME_FORMATS", "ARRAY_FORMATS", "frame_bytes", "array_bytes", "FIGURE_FORMATS", "VECTOR_FORMATS", "vector_export_problem", "figure_bytes", "html_page", "heads_snippet", "sample_snippet"]

FRAME_FORMATS = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}
ARRAY_FORMATS = {"safetensors": "application/octet-stream", "npz": "application/octet-stream"}


def frame_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """`frame` as CSV or Parquet (object columns of mixed types become strings for Parquet)."""
    if fmt == "csv":
        return frame.to_csv(index=False).encode("utf-8")
    if fmt == "parquet":
        buffer = io.BytesIO()
        clean = frame.copy()
        for column in clean.columns[clean.dtypes == object]:
            clean[column] = clean[column].astype(str)
        clean.to_parquet(buffer, index=False)
        return buffer.getvalue()
    raise AppInputError(f"unknown table format {fmt!r}; use one of {', '.join(FRAME_FORMATS)}.")


def array_bytes(arrays: Mapping[str, np.ndarray], fmt: str) -> bytes:
    """Named arrays as one safetensors file (contiguous, NaN kept) or one .npz archive."""
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    if fmt == "safetensors":
        from safetensors.numpy import save

        return save(arrays)
    if fmt == "npz":
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()
    raise AppInputError(f"unknown array format {fmt!r}; use one of {', '.join(ARRAY_FORMATS)}.")


VECTOR_FORMATS = {"svg": "image/svg+xml", "pdf": "application/pdf"}
FIGURE_FORMATS = {"html": "text/html", **VECTOR_FORMATS}
"""HTML always works (plotly.js embedded: it opens offline); SVG and PDF need what `vector_export_problem` checks."""
EXPORT_WIDTH = 1100
"""Width in px of an exported SVG / PDF (figures on screen take the page's width; kaleido's default is 700)."""


def vector_export_problem() -> str | None:
    """Why this environment cannot write SVG or PDF, with how to fix it; None when it can.
    kaleido (>= 1) renders through a Chrome or Chromium found on the system (or at $BROWSER_PATH)."""
    if importlib.util.find_spec("kaleido") is None:
        return ("SVG and PDF need kaleido, which is not installed in this environment: run `bash scripts/setup_env.sh` "
                "(or `pip install 'kaleido>=1.3'`) and restart the app.")
    from choreographer.browsers.chromium import Chromium

    browser = Chromium.find_browser(skip_local=False)
    if browser is None or not Path(browser).is_file():
        where = f" (BROWSER_PATH={os.environ['BROWSER_PATH']!r} is not a file)" if os.environ.get("BROWSER_PATH") else ""
        return (f"SVG and PDF need a Chrome or Chromium for kaleido to draw with, and none was found{where}: install "
                "Debian's with `sudo apt-get install chromium` (`bash scripts/setup_env.sh` does it when run as root), "
                "or set BROWSER_PATH to a Chrome or Chromium binary.")
    return None


def html_page(fragment: str, title: str) -> bytes:
    """An HTML fragment (the sample browser's text grid) as a standalone page that opens offline."""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
            f'<body style="margin:24px">{fragment}</body></html>').encode("utf-8")


def figure_bytes(fig, fmt: str) -> bytes:
    """`fig` as a file: HTML, or SVG / PDF drawn by kaleido (a headless browser start: seconds)."""
    if fmt == "html":
        return fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8")
    if fmt not in VECTOR_FORMATS:
        raise AppInputError(f"unknown figure format {fmt!r}; use one of {', '.join(FIGURE_FORMATS)}.")
    problem = vector_export_problem()
    if problem:
        raise AppInputError(problem)
    try:
        return fig.to_image(format=fmt, width=EXPORT_WIDTH)
    except Exception as err:  # noqa: BLE001 -- the browser can fail in many ways; say which and what to try
        raise AppInputError(f"{fmt.upper()} export failed while kaleido drew the figure in a headless browser ({type(err).__name__}: "
                            f"{err}). Download the HTML instead, or use the camera icon on the chart (it saves an SVG).") from err


def _root_arg(root: Path | None) -> str:
    return "" if root is None or Path(root).resolve() == (REPO / "results").resolve() else f", root={str(root)!r}"


def heads_snippet(checkpoints: list[str], metric: str, *, r: int, w: int, committed: tuple[int | None, int | None],
                  head: tuple[str, int, str, int] | None = None, root: Path | None = None) -> str:
    """Python that rebuilds the Head specialisation view: the per-head frames (at (r, w) when that
    is not the committed (r, w)), the maps of `metric` over chance, the per-stream summary and takeaway."""
    lines = ["from workbench import app_data, viz", "", "frames = {}"]
    lines.append(f"for name in {checkpoints!r}:")
    lines.append(f"    res = app_data.load_probe_results(name{_root_arg(root)})")
    lines.append("    heads = app_data.head_frame(res.table)")
    if (r, w) != tuple(committed):
        lines.append(f"    heads = app_data.head_frame_at(heads, app_data.joint_histograms(res.table), r={r}, w={w})")
    lines += ["    frames[name] = heads",
              f"    print(app_data.takeaway(name, app_data.stream_summary(heads), r={r}, w={w}))",
              f"grids = {{(name, s): app_data.head_grid(f, s, {metric!r}) for name, f in frames.items() for s in dict.fromkeys(f['stream'])}}",
              f"fig = viz.head_maps(grids, title='layer x head', value_name=app_data.over_chance_name({metric!r}))",
              "fig.show()"]
    if head is not None:
        lines.append(f"print(app_data.head_record(frames[{head[0]!r}], {head[1]}, {head[2]!r}, {head[3]}))")
    return "\n".join(lines) + "\n"


def sample_snippet(checkpoint: Path, *, text_source: tuple[str, object], n_ctx: int, replace_unknown: bool, start: int,
                   order: tuple[str, int, str], row: tuple[int, str, int, int, int, int]) -> str:
    """Python that rebuilds the Sample browser's view: the same text, order and attention row.
    `text_source` is ("validation", index) or ("text", the text); `order` (kind, seed, custom);
    `row` (layer, stream, head, step, r, w)."""
    kind, value = text_source
    if kind == "validation":
        text = f"text = app_data.val_samples(model.checkpoint.path, {n_ctx})[{int(value)}][1]  # validation window {int(value)}"
    else:
        text = f"text = {str(value)!r}"
    layer, stream, head, step, r, w = row
    return "\n".join([
        "from workbench import app_data", "",
        f"loaded = app_data.LoadedModel(app_data.load_model({str(checkpoint)!r}))",
        "model = loaded.model",
        text,
        f"prepared = app_data.prepare_text(text, model.tokenizer, {n_ctx}, replace_unknown={bool(replace_unknown)}, start={int(start)})",
        f"order = app_data.make_order({order[0]!r}, len(prepared.ids), seed={int(order[1])}, custom={order[2]!r})",
        "run = app_data.run_sample(loaded, prepared.ids, order)",
        f"row = app_data.attention_row(run, {layer}, {stream!r}, {head}, step={step}, r={r}, w={w})",
        "print(app_data.row_summary(run, row))",
        "print(row.parts, row.chance)",
        f"pattern = run.patterns[({layer}, {stream!r})][{head}]  # [row, key], slot coordinates (docs/coordinates.md)",
    ]) + "\n"
