"""Head-level figures: layer x head maps per stream, the semantic/structural plane, a head's
histograms and by-step curves. Inputs are arrays and frames from `workbench.app_data`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.viz.style import PART_COLOURS, SINK_COLOUR, STREAM_COLOURS, base_layout

LABEL_MARK = {"semantic": "S", "structural": "R", "mixed": "M", "diffuse": "d", "sink": "∅", "other": "o", "": ""}


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def head_maps(
    grids: Mapping[tuple[str, str], Mapping[str, np.ndarray]],
    *,
    title: str,
    value_name: str,
    colour: str = "excess",
    zmin: float | None = None,
    zmax: float | None = None,
    diverging: bool = True,
    digits: int = 2,
    columns: int = 2,
) -> go.Figure:
    """One heatmap per (checkpoint, stream) key of `grids`, layers down and heads across, wrapped
    `columns` to a row, all on ONE colour scale with one colour bar.

    Each grid holds [layer, head] arrays "value", "ci", "chance", "label" and the array named by
    `colour` ("excess": the value over chance, see `app_data.over_chance`; or "value"). Cells are
    coloured and printed by that array, with a letter for the head's label; the hover gives the
    value ± CI, chance, excess and label. `diverging` centres the scale at 0 (chance, for
    "excess"). An invisible marker per cell carries (checkpoint, layer, stream, head) as
    customdata, so that a click selects the head."""
    keys = list(grids)
    shown = np.concatenate([np.ravel(g[colour]) for g in grids.values()]) if grids else np.array([])
    finite = shown[np.isfinite(shown)]
    zmin = (float(finite.min()) if finite.size else 0.0) if zmin is None else zmin
    zmax = (float(finite.max()) if finite.size else 1.0) if zmax is None else zmax
    if diverging:
        bound = max(abs(zmin), abs(zmax), 1e-9)
        zmin, zmax = -bound, bound
    n_cols = max(1, min(columns, len(keys)))
    n_rows = max(1, math.ceil(len(keys) / n_cols))
    n_layers, n_heads = next(iter(grids.values()))["value"].shape if grids else (4, 6)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[f"{c} · {s} stream" for c, s in keys],
                        horizontal_spacing=0.07, vertical_spacing=min(0.3, 0.5 / n_rows) if n_rows > 1 else 0.1)
    for i, (checkpoint, stream) in enumerate(keys):
        row, col = i // n_cols + 1, i % n_cols + 1
        g = grids[(checkpoint, stream)]
        z, value, ci, chance, label = g[colour], g["value"], g["ci"], g["chance"], g["label"]
        text = [[f"{_fmt(z[l, h], digits)}{(' ' + LABEL_MARK.get(label[l, h], '?')) if label[l, h] else ''}"
                 for h in range(n_heads)] for l in range(n_layers)]
        hover = [[(f"<b>{checkpoint} · {stream} L{l} H{h}</b><br>value: {_fmt(value[l, h], 3)}"
                   f"{' ± ' + _fmt(ci[l, h], 3) if np.isfinite(ci[l, h]) else ''}"
                   f"<br>chance: {_fmt(chance[l, h], 3)}<br>{value_name}: {_fmt(z[l, h], 3)}<br>label: {label[l, h] or 'n/a'}")
                  for h in range(n_heads)] for l in range(n_layers)]
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(n_heads)), y=list(range(n_layers)), text=text, texttemplate="%{text}",
            textfont=dict(size=11), hoverinfo="skip", zmin=zmin, zmax=zmax, coloraxis="coloraxis",
            xgap=2, ygap=2, name=f"{checkpoint} {stream}",
        ), row=row, col=col)
        # Heatmap cells cannot be selected in Streamlit; an invisible marker on each cell can, and
        # carries (checkpoint, layer, stream, head) for the click.
        layers, heads = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        fig.add_trace(go.Scatter(
            x=heads.ravel(), y=layers.ravel(), mode="markers", name=f"{checkpoint} {stream} heads", showlegend=False,
            marker=dict(size=30, color="rgba(0,0,0,0)", symbol="square"),
            customdata=[[checkpoint, int(l), stream, int(h)] for l, h in zip(layers.ravel(), heads.ravel())],
            hovertext=[hover[l][h] for l, h in zip(layers.ravel(), heads.ravel())], hoverinfo="text",
            selected=dict(marker=dict(color="rgba(0,0,0,0)")), unselected=dict(marker=dict(opacity=0)),
        ), row=row, col=col)
        fig.update_xaxes(title_text="head" if row == n_rows else None, tickmode="linear", dtick=1,
                         range=[-0.5, n_heads - 0.5], row=row, col=col)
        fig.update_yaxes(title_text="layer" if col == 1 else None, tickmode="linear", dtick=1,
                         range=[n_layers - 0.5, -0.5], row=row, col=col)
    scale = "RdBu" if diverging else "Viridis"
    fig.update_layout(coloraxis=dict(colorscale=scale, reversescale=diverging, cmin=zmin, cmax=zmax,
                                     colorbar=dict(title=dict(text=value_name, side="right"), thickness=12)))
    return base_layout(fig, title, height=90 + n_rows * (60 + 44 * n_layers))


def head_scatter(
    points: pd.DataFrame,
    *,
    x: str,
    y: str,
    x_title: str,
    y_title: str,
    title: str,
    diagonal: bool = True,
) -> go.Figure:
    """Heads as points in the (x, y) plane, coloured by stream, one marker shape per checkpoint.

    `points` has columns checkpoint, layer, stream, head, label, x, y and optionally `<x>_ci`,
    `<y>_ci`, `<x>_chance`, `<y>_chance`. Chance (uniform attention) is drawn per stream as an
    open cross. customdata = (checkpoint, layer, stream, head) for click selection. The figure
    does not depend on which head is selected, and a click does not restyle it: a chart whose
    figure changes is drawn anew in the browser (0.3-0.4 s on 2 cores), and Plotly's own
    selection styling would go stale when a head is picked elsewhere."""
    symbols = ["circle", "diamond", "square", "triangle-up", "x", "star"]
    checkpoints = list(dict.fromkeys(points["checkpoint"])) if len(points) else []
    fig = go.Figure()
    for ci_, checkpoint in enumerate(checkpoints):
        for stream in dict.fromkeys(points["stream"]):
            sel = points[(points["checkpoint"] == checkpoint) & (points["stream"] == stream)]
            if sel.empty:
                continue
            name = f"{stream}" if len(checkpoints) == 1 else f"{checkpoint}: {stream}"
            hover = [
                f"<b>{checkpoint}</b><br>{stream} L{r.layer} H{r.head} ({r.label or 'no label'})"
                f"<br>{x_title}: {_fmt(getattr(r, x), 3)}<br>{y_title}: {_fmt(getattr(r, y), 3)}"
                for r in sel.itertuples(index=False)
            ]
            err_x = sel[f"{x}_ci"] if f"{x}_ci" in sel else None
            err_y = sel[f"{y}_ci"] if f"{y}_ci" in sel else None
            fig.add_trace(go.Scatter(
                x=sel[x], y=sel[y], mode="markers", name=name, legendgroup=name,
                marker=dict(size=11, color=STREAM_COLOURS.get(stream, "#555"), symbol=symbols[ci_ % len(symbols)],
                            line=dict(width=1, color="white")),
                error_x=dict(type="data", array=err_x, visible=err_x is not None, thickness=1, width=0),
                error_y=dict(type="data", array=err_y, visible=err_y is not None, thickness=1, width=0),
                customdata=np.stack([sel["checkpoint"], sel["layer"], sel["stream"], sel["head"]], axis=-1),
                hovertext=hover, hoverinfo="text",
                selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=1)),
            ))
            if f"{x}_chance" in sel and f"{y}_chance" in sel:
                cx, cy = float(np.nanmean(sel[f"{x}_chance"])), float(np.nanmean(sel[f"{y}_chance"]))
                if np.isfinite(cx) and np.isfinite(cy):
                    fig.add_trace(go.Scatter(
                        x=[cx], y=[cy], mode="markers", name=f"chance ({name})", legendgroup=name, showlegend=True,
                        marker=dict(size=14, symbol="x-thin-open", line=dict(width=2, color=STREAM_COLOURS.get(stream, "#555"))),
                        hovertext=[f"chance ({name}): uniform attention<br>{x_title}: {cx:.3f}<br>{y_title}: {cy:.3f}"],
                        hoverinfo="text",
                    ))

    def top(column: str) -> float:  # axis ranges from the heads (and chance), not from the diagonal
        cols = [c for c in (column, f"{column}_chance") if c in points]
        values = points[cols].to_numpy(float) + (points[[f"{column}_ci"]].fillna(0).to_numpy(float) if f"{column}_ci" in points else 0)
        finite = values[np.isfinite(values)]
        return float(finite.max()) * 1.1 if finite.size and finite.max() > 0 else 1.0

    shapes = []
    if diagonal and len(points):  # a shape up to the smaller axis end, so it stretches neither axis
        end = min(top(x), top(y))
        shapes.append(dict(type="line", x0=0, y0=0, x1=end, y1=end, xref="x", yref="y", layer="below",
                           line=dict(dash="dot", color="#999", width=1)))
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="equal masses (index 0)",
                                 line=dict(dash="dot", color="#999", width=1), hoverinfo="skip"))
    fig.update_xaxes(title_text=x_title, range=[0, top(x)] if len(points) else None)
    fig.update_yaxes(title_text=y_title, range=[0, top(y)] if len(points) else None)
    # No dragmode here: Streamlit turns a click into a selection only when the drag mode is not
    # select / lasso (it sets clickmode "event" then), so box select stays a toolbar button.
    return base_layout(fig, title, height=480, legend=dict(orientation="v", x=1.02, y=1), shapes=shapes)


def histogram_figure(frames: Mapping[str, pd.DataFrame], *, title: str, x_titles: Mapping[str, str]) -> go.Figure:
    """Attention mass per log2 bin (bars, with 95% CI) against chance (uniform attention, red
    dashes), one panel per histogram (semantic distance, recency, own distance): one figure, so
    selecting a head redraws one chart, not three."""
    names = list(frames)
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=names, horizontal_spacing=0.06)
    for c, name in enumerate(names, start=1):
        frame = frames[name]
        fig.add_trace(go.Bar(
            x=frame["label"], y=frame["attention"], name="attention mass", marker_color="#3b6ea5", showlegend=c == 1,
            legendgroup="attention", error_y=dict(type="data", array=frame["ci"], visible=bool(np.isfinite(frame["ci"]).any()), thickness=1),
            hovertemplate=f"{name}<br>bin %{{x}}<br>attention %{{y:.3f}}<extra></extra>",
        ), row=1, col=c)
        fig.add_trace(go.Scatter(
            x=frame["label"], y=frame["chance"], name="chance (uniform)", mode="markers", showlegend=c == 1, legendgroup="chance",
            marker=dict(symbol="line-ew-open", size=18, color="#d62728", line=dict(width=2.5, color="#d62728")),
            hovertemplate=f"{name}<br>bin %{{x}}<br>chance %{{y:.3f}}<extra></extra>",
        ), row=1, col=c)
        fig.update_xaxes(title_text=x_titles.get(name, "bin"), type="category", row=1, col=c)
    fig.update_yaxes(title_text="mass per row", rangemode="tozero", row=1, col=1)
    return base_layout(fig, title, height=380, legend=dict(orientation="h", y=1.0, yanchor="bottom", x=1, xanchor="right"),
                       margin=dict(l=60, r=20, t=100, b=60))


def bucket_label(start: int) -> str:
    """Step bucket labels: 0, 1, 2-3, 4-7, ... (the by_step probe's x is the bucket's first row)."""
    if start <= 1:
        return str(start)
    return f"{start}-{2 * start - 1}"


def by_step_figure(frame: pd.DataFrame, *, title: str, names: Mapping[str, str] | None = None) -> go.Figure:
    """Metric against the step bucket (rows 0, 1, 2-3, 4-7, ...: how many keys the row sees),
    one line per metric with its CI band and chance dashed."""
    names = dict(names or {})
    colours = {"S_only": PART_COLOURS["S only"], "R_only": PART_COLOURS["R only"], "both": PART_COLOURS["both"],
               "neither": PART_COLOURS["neither"], "index": "#222222", "sink": SINK_COLOUR}
    fig = go.Figure()
    for metric, rows in frame.groupby("metric", sort=False):
        rows = rows.sort_values("x")
        labels = [bucket_label(int(v)) for v in rows["x"]]
        colour = colours.get(metric, None)
        fig.add_trace(go.Scatter(
            x=labels, y=rows["value"], mode="lines+markers", name=names.get(metric, metric), line=dict(color=colour),
            error_y=dict(type="data", array=rows["ci"], visible=bool(np.isfinite(rows["ci"]).any()), thickness=1),
            hovertemplate=f"{names.get(metric, metric)}<br>rows %{{x}}<br>%{{y:.3f}}<extra></extra>",
        ))
        if np.isfinite(rows["chance"]).any():
            fig.add_trace(go.Scatter(
                x=labels, y=rows["chance"], mode="lines", name=f"chance: {names.get(metric, metric)}",
                line=dict(color=colour, dash="dot", width=1), showlegend=False,
                hovertemplate=f"chance of {names.get(metric, metric)}: %{{y:.3f}}<extra></extra>",
            ))
    if len(frame) and np.isfinite(frame["chance"].to_numpy(float)).any():  # one legend entry for every dotted chance line
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="chance (uniform attention), dotted",
                                 line=dict(color="#666", dash="dot", width=1), hoverinfo="skip"))
    fig.update_xaxes(title_text="row's step bucket (keys it sees)", type="category")
    fig.update_yaxes(title_text="value")
    return base_layout(fig, title, height=340, legend=dict(orientation="h", y=-0.3))


def label_legend(labels: Sequence[str]) -> str:
    """The letters the maps print after a value, spelled out."""
    return ", ".join(f"{LABEL_MARK[lab]} = {lab}" for lab in labels if LABEL_MARK.get(lab))
