"""The length-effect study's figures: the gap to two_stream against length (each seed and the
interval over seeds), the validation curves, and head labels along training. Inputs are the
frames of `workbench.app_data.study`."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.viz.style import VARIANT_COLOURS, base_layout

STREAM_DASHES = {"content": "solid", "query": "dot", "main": "solid"}


def gap_figure(seed_gaps: pd.DataFrame, gaps: pd.DataFrame, *, baseline: str = "two_stream",
               title: str = "Gap to two_stream against length (each seed, and the mean with its 95% interval over seeds)") -> go.Figure:
    """One panel per variant, each with its own y range (a variant that failed to learn has gaps
    ten times another's): each seed's paired gap (small open markers, with its interval over
    windows) and the mean over seeds with its t interval (a diamond and error bar), joined across
    lengths. The lengths sit at equal spacing (they are log-spaced: 128, 1024)."""
    lengths = sorted(set(gaps["length"]) | set(seed_gaps["length"]))
    at = {length: i for i, length in enumerate(lengths)}
    variants = list(dict.fromkeys(gaps["variant"].tolist() + seed_gaps["variant"].tolist()))
    fig = make_subplots(rows=1, cols=max(1, len(variants)), subplot_titles=[f"{v} − {baseline}" for v in variants],
                        horizontal_spacing=0.1)
    for k, variant in enumerate(variants, start=1):
        colour = VARIANT_COLOURS.get(variant)
        seeds = seed_gaps[seed_gaps["variant"] == variant]
        fig.add_trace(go.Scatter(
            x=seeds["length"].map(at) - 0.08, y=seeds["gap"], mode="markers", name=f"{variant}, each seed",
            legendgroup=variant, marker=dict(color=colour, symbol="circle-open", size=8),
            error_y=dict(type="data", array=seeds["ci"], thickness=1, width=2),
            customdata=np.stack([seeds["length"], seeds["seed"], seeds["ci"]], axis=-1),
            hovertemplate=(f"{variant}, length %{{customdata[0]}}, seed %{{customdata[1]}}<br>gap %{{y:+.3f}} ± %{{customdata[2]:.3f}}"
                           " bits/token (paired, over windows)<extra></extra>"),
        ), row=1, col=k)
        mean = gaps[gaps["variant"] == variant].sort_values("length")
        fig.add_trace(go.Scatter(
            x=mean["length"].map(at) + 0.08, y=mean["gap"], mode="lines+markers", name=f"{variant}, mean over seeds",
            legendgroup=variant, line=dict(color=colour, width=2), marker=dict(color=colour, symbol="diamond", size=11),
            error_y=dict(type="data", symmetric=False, array=mean["ci_high"] - mean["gap"], arrayminus=mean["gap"] - mean["ci_low"],
                         thickness=2, width=6),
            customdata=np.stack([mean["length"], mean["ci"], mean["n_seeds"]], axis=-1),
            hovertemplate=(f"{variant}, length %{{customdata[0]}}<br>gap %{{y:+.3f}} ± %{{customdata[1]:.3f}} bits/token"
                           "<br>95% t interval over %{customdata[2]} seeds<extra></extra>"),
        ), row=1, col=k)
        fig.add_hline(y=0, line=dict(color="#444", width=1), row=1, col=k)
        fig.update_xaxes(title_text="sequence length", tickvals=list(range(len(lengths))), ticktext=[str(t) for t in lengths],
                         range=[-0.5, len(lengths) - 0.5], row=1, col=k)
    fig.update_yaxes(title_text=f"any-order bits/token, variant − {baseline}", zeroline=False, row=1, col=1)
    return base_layout(fig, title, height=420, legend=dict(orientation="h", y=-0.25, x=0.5, xanchor="center"),
                       margin=dict(l=60, r=20, t=80, b=110))


def curves_figure(curves: pd.DataFrame, *, title: str = "Validation curves (any-order bits/token; ★ the run's best model)") -> go.Figure:
    """Any-order validation bits/token against training tokens, one line per run coloured by
    variant, one panel per length (each with its own y range); the evaluation kept as best/ starred."""
    lengths = sorted(curves["length"].unique())
    fig = make_subplots(rows=1, cols=max(1, len(lengths)), subplot_titles=[f"length {t}" for t in lengths], horizontal_spacing=0.08)
    shown = set()
    for c, length in enumerate(lengths, start=1):
        for run, rows in curves[curves["length"] == length].groupby("run", sort=True):
            variant = rows["variant"].iloc[0]
            rows = rows.sort_values("tokens")
            fig.add_trace(go.Scatter(
                x=rows["tokens"], y=rows["any_order_bits"], mode="lines", name=variant, legendgroup=variant,
                showlegend=variant not in shown, line=dict(color=VARIANT_COLOURS.get(variant), width=1.5),
                hovertemplate=f"{run}<br>%{{x:.3s}} tokens<br>%{{y:.3f}} bits/token<extra></extra>",
            ), row=1, col=c)
            shown.add(variant)
            best = rows[rows["best"]]
            fig.add_trace(go.Scatter(
                x=best["tokens"], y=best["any_order_bits"], mode="markers", legendgroup=variant, showlegend=False,
                marker=dict(color=VARIANT_COLOURS.get(variant), symbol="star", size=10),
                hovertemplate=f"{run}: best/ at %{{x:.3s}} tokens<br>%{{y:.3f}} bits/token<extra></extra>",
            ), row=1, col=c)
    fig.update_xaxes(title_text="training tokens", type="log")
    fig.update_yaxes(title_text="any-order bits/token", row=1, col=1)
    return base_layout(fig, title, height=400, legend=dict(orientation="h", y=-0.25, x=0.5, xanchor="center"),
                       margin=dict(l=60, r=20, t=80, b=90))


def emergence_figure(emergence: pd.DataFrame, *, labels: tuple[str, ...] = ("semantic", "structural"),
                     title: str = "Heads labelled semantic / structural along training, per stream (★ best/)") -> go.Figure:
    """One panel per (label, length): how many heads of each (run, stream) carry the label against
    the tokens seen, colour by variant, dash by stream; the best/ model starred."""
    lengths = sorted(emergence["length"].unique())
    fig = make_subplots(rows=len(labels), cols=max(1, len(lengths)), shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=[f"{label}, length {t}" for label in labels for t in lengths],
                        horizontal_spacing=0.05, vertical_spacing=0.12)
    shown = set()
    for r, label in enumerate(labels, start=1):
        for c, length in enumerate(lengths, start=1):
            rows = emergence[(emergence["length"] == length) & (emergence["label"] == label)]
            for (run, stream), line in rows.groupby(["run", "stream"], sort=True):
                variant = line["variant"].iloc[0]
                line = line.sort_values("tokens")
                name, colour = f"{variant} · {stream}", VARIANT_COLOURS.get(variant)
                hover = f"{run}, {stream} stream<br>%{{customdata[0]}} at %{{x:.3s}} tokens<br>%{{y}} of %{{customdata[1]}} heads {label}<extra></extra>"
                # snapshots joined in training order; best/ (the validation minimum, maybe before the
                # last snapshot) a star apart
                for best, part in line.groupby(line["model"] == "best"):
                    fig.add_trace(go.Scatter(
                        x=part["tokens"], y=part["count"], mode="markers" if best else "lines+markers", name=name, legendgroup=name,
                        showlegend=not best and name not in shown,
                        line=dict(color=colour, dash=STREAM_DASHES.get(stream, "dash"), width=1.5),
                        marker=dict(symbol="star" if best else "circle", size=12 if best else 6, color=colour),
                        customdata=np.stack([part["model"], part["heads"]], axis=-1), hovertemplate=hover,
                    ), row=r, col=c)
                shown.add(name)
    fig.update_xaxes(type="log")
    fig.update_xaxes(title_text="training tokens", row=len(labels))
    top = max(1, int(emergence.loc[emergence["label"].isin(labels), "count"].max() if len(emergence) else 1))
    fig.update_yaxes(range=[-0.05 * top - 0.2, 1.08 * top + 0.2], dtick=math.ceil(top / 6))  # counts: whole-number ticks
    for r, label in enumerate(labels, start=1):
        fig.update_yaxes(title_text=f"{label} heads", row=r, col=1)
    return base_layout(fig, title, height=260 * len(labels) + 120, legend=dict(orientation="h", y=-0.12, x=0.5, xanchor="center"),
                       margin=dict(l=60, r=20, t=80, b=110))
