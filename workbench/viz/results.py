"""Result figures: the NLL table by variant and length, causal effects, and the divergence of the
two notions of "near" as the length grows. Inputs are frames from `workbench.app_data`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.viz.style import PART_COLOURS, TARGET_COLOUR, VARIANT_COLOURS, base_layout

LENGTH_COLOURS = ["#6baed6", "#08519c", "#fd8d3c", "#a63603"]


def nll_bars(frame: pd.DataFrame, *, title: str = "NLL by variant and length") -> go.Figure:
    """Bits/token (95% CI) of every variant, one bar per length, any-order and left-to-right side
    by side. `frame`: variant, length, any_order(_ci), left_to_right(_ci) (app_data.nll_table)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["any order (random σ)", "left to right (σ = identity)"],
                        shared_yaxes=True, horizontal_spacing=0.06)
    lengths = sorted(frame["length"].unique())
    for i, length in enumerate(lengths):
        rows = frame[frame["length"] == length]
        for c, (col, name) in enumerate((("any_order", "any order"), ("left_to_right", "left to right")), start=1):
            fig.add_trace(go.Bar(
                x=rows["variant"], y=rows[col], name=f"length {length}", legendgroup=str(length), showlegend=c == 1,
                marker_color=LENGTH_COLOURS[i % len(LENGTH_COLOURS)],
                error_y=dict(type="data", array=rows[f"{col}_ci"], thickness=1.2),
                text=[f"{v:.3f}" for v in rows[col]], textposition="outside", cliponaxis=False,
                customdata=np.stack([rows[f"{col}_ci"], rows["windows"], rows["orders"]], axis=-1),
                hovertemplate=(f"%{{x}}, length {length}, {name}<br>%{{y:.3f}} ± %{{customdata[0]:.3f}} bits/token"
                               "<br>%{customdata[1]} windows x %{customdata[2]} orders<extra></extra>"),
            ), row=1, col=c)
    low = float(np.nanmin(frame[["any_order", "left_to_right"]].to_numpy())) if len(frame) else 0
    high = float(np.nanmax(frame[["any_order", "left_to_right"]].to_numpy())) if len(frame) else 1
    fig.update_yaxes(title_text="bits per token (lower is better)", row=1, col=1)
    fig.update_yaxes(range=[max(0.0, low - 0.4), high + 0.25])
    fig.update_xaxes(title_text="variant")
    return base_layout(fig, title, height=420, barmode="group", legend=dict(orientation="h", y=-0.22, x=0.5, xanchor="center"),
                       margin=dict(l=60, r=20, t=80, b=90))


def nll_fraction_figure(frame: pd.DataFrame, *, title: str = "Any-order NLL by fraction of the text revealed") -> go.Figure:
    """Bits/token against how much of the text is already generated, one line per checkpoint."""
    fig = go.Figure()
    for checkpoint, rows in frame.groupby("checkpoint", sort=True):
        variant, _, length = checkpoint.rpartition("-")
        dash = "solid" if length == "128" else "dash"
        fig.add_trace(go.Scatter(
            x=rows["fraction"], y=rows["bits"], mode="lines+markers", name=checkpoint,
            line=dict(color=VARIANT_COLOURS.get(variant, None), dash=dash),
            error_y=dict(type="data", array=rows["ci"], thickness=1, width=0),
            hovertemplate=f"{checkpoint}<br>revealed %{{x:.0%}}<br>%{{y:.3f}} bits/token<extra></extra>",
        ))
    fig.update_xaxes(title_text="fraction of positions already generated", tickformat=".0%")
    fig.update_yaxes(title_text="bits per token")
    return base_layout(fig, title, height=380)


def effect_bars(
    names: Sequence[str],
    values: Sequence[float],
    cis: Sequence[float],
    *,
    groups: Sequence[str] | None = None,
    title: str = "",
    x_title: str = "ΔNLL (bits/token), intervened − clean",
) -> go.Figure:
    """Horizontal bars of effects with 95% CIs, one colour per group (e.g. set vs random control)."""
    frame = pd.DataFrame({"name": list(names), "value": list(values), "ci": list(cis),
                          "group": list(groups) if groups is not None else ["effect"] * len(names)})
    palette = {"semantic": PART_COLOURS["S only"], "structural": PART_COLOURS["R only"], "random": "#999999",
               "effect": "#3b6ea5", "ablation": "#3b6ea5"}
    fig = go.Figure()
    for group, rows in frame.groupby("group", sort=False):
        colour = next((c for key, c in palette.items() if key in str(group)), None)
        fig.add_trace(go.Bar(
            y=rows["name"], x=rows["value"], orientation="h", name=str(group), marker_color=colour,
            error_x=dict(type="data", array=rows["ci"], thickness=1.2),
            customdata=rows["ci"], hovertemplate="%{y}<br>%{x:+.4f} ± %{customdata:.4f} bits/token<extra>" + str(group) + "</extra>",
        ))
    fig.add_vline(x=0, line=dict(color="#444", width=1))
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(autorange="reversed", type="category")
    # The legend sits below the x axis title, where no bar can be (above, it covered the top bar).
    return base_layout(fig, title, height=170 + 28 * len(frame), barmode="group",
                       legend=dict(orientation="h", y=0.01, yanchor="bottom", yref="container", x=0),
                       margin=dict(l=60, r=20, t=60 if title else 30, b=100))


def divergence_figure(frame: pd.DataFrame, *, title: str = "How often 'near the target' is also 'recent'",
                      marks: Sequence[int] = (128, 1024)) -> go.Figure:
    """Overlap of the k keys nearest the target and the k most recent keys against the length T,
    one line per k with its 95% band, chance (k/t averaged) dotted. The x axis is log2(T) on a
    linear scale with T as tick labels (so marks and bands live in the same coordinates)."""
    fig = go.Figure()
    colours = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#666666"]
    for i, (k, rows) in enumerate(frame.groupby("k", sort=True)):
        rows = rows.sort_values("length")
        colour = colours[i % len(colours)]
        x = np.log2(rows["length"].to_numpy(float))
        ci = rows["ci"].fillna(0).to_numpy(float)
        upper, lower = rows["overlap"].to_numpy(float) + ci, rows["overlap"].to_numpy(float) - ci
        fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([upper, lower[::-1]]), mode="lines", fill="toself",
                                 fillcolor=colour, opacity=0.18, line=dict(width=0), hoverinfo="skip", showlegend=False,
                                 name=f"k={k} 95% band"))
        fig.add_trace(go.Scatter(
            x=x, y=rows["overlap"], mode="lines+markers", name=f"k = {k}", line=dict(color=colour, width=2),
            customdata=np.stack([rows["length"], rows["ci"], rows["chance"]], axis=-1),
            hovertemplate=(f"k = {k}, T = %{{customdata[0]:.0f}}<br>overlap %{{y:.3f}} ± %{{customdata[1]:.3f}}"
                           "<br>chance %{customdata[2]:.3f}<extra></extra>"),
        ))
        fig.add_trace(go.Scatter(x=x, y=rows["chance"], mode="lines", name=f"chance, k = {k}",
                                 line=dict(color=colour, dash="dot", width=1), hoverinfo="skip"))
    lengths = sorted(frame["length"].unique()) if len(frame) else []
    for mark in marks:
        if lengths and lengths[0] <= mark <= lengths[-1]:
            fig.add_vline(x=float(np.log2(mark)), line=dict(color="#888", dash="dash", width=1),
                          annotation_text=f"T = {mark}", annotation_position="top")
    fig.update_xaxes(title_text="sequence length T (log scale)", tickvals=np.log2(lengths).tolist() if lengths else None,
                     ticktext=[str(int(t)) for t in lengths])
    fig.update_yaxes(title_text="overlap |A ∩ B| / k", range=[0, 1.02])
    return base_layout(fig, title, height=440)


def divergence_strip(length: int, target: int, visible: np.ndarray, nearest: np.ndarray, recent: np.ndarray,
                     *, title: str = "") -> go.Figure:
    """One row at one step, over the positions 0..T-1: the target, the visible keys, the k nearest
    of them (A) and the k most recent (B); keys in both are purple."""
    near, rec = set(np.asarray(nearest).tolist()), set(np.asarray(recent).tolist())
    both = sorted(near & rec)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=visible, y=np.zeros(len(visible)), mode="markers", name="visible (generated) keys",
                             marker=dict(symbol="line-ns-open", size=10, color="#bbbbbb"), hovertemplate="pos %{x}<extra>visible</extra>"))
    for name, items, colour, y in (("nearest to the target (A)", sorted(near - rec), PART_COLOURS["S only"], 0),
                                   ("most recent (B)", sorted(rec - near), PART_COLOURS["R only"], 0),
                                   ("both", both, PART_COLOURS["both"], 0)):
        fig.add_trace(go.Scatter(x=items, y=[y] * len(items), mode="markers", name=name,
                                 marker=dict(size=11, color=colour, line=dict(width=1, color="white")),
                                 hovertemplate="pos %{x}<extra>" + name + "</extra>"))
    fig.add_trace(go.Scatter(x=[target], y=[0], mode="markers", name="target position",
                             marker=dict(size=18, symbol="star", color=TARGET_COLOUR), hovertemplate="target pos %{x}<extra></extra>"))
    fig.update_yaxes(visible=False, range=[-1, 1])
    fig.update_xaxes(title_text="position", range=[-0.02 * length, 1.02 * length])
    return base_layout(fig, title, height=220, legend=dict(orientation="h", y=-0.45), margin=dict(l=20, r=20, t=50, b=40))
