"""Figures straight from a probe table (`run_probes(...).table`, tidy: one row per metric value),
for notebooks; the app draws the same maps (workbench.viz.heads).

    run = run_probes(model, data=tokens, orders=order, probes=["specialisation"])
    head_map(run.table, "semantic_excess").show()   # layer x head per stream, value ± CI on hover
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from workbench.app_data import HEAD_METRICS, head_frame, head_grid
from workbench.viz.heads import head_maps


def head_map(table: pd.DataFrame, metric: str = "index", title: str | None = None) -> go.Figure:
    """One layer x head heatmap per stream of a head metric of a probe table; `metric` is a key
    of workbench.app_data.HEAD_METRICS ("index", "semantic_mass", "structural_lift", "entropy", ...).
    Cells carry the head's specialisation label when the table has one."""
    if metric not in HEAD_METRICS:
        raise ValueError(f"metric={metric!r} is not a head metric; use one of {', '.join(HEAD_METRICS)}.")
    heads = head_frame(table)
    if heads.empty or heads[metric].isna().all():
        probes = sorted(table["probe"].unique()) if "probe" in table else []
        raise ValueError(f"the table has no {metric!r} values (probes run: {probes}); run the probe that measures it.")
    streams = list(dict.fromkeys(heads["stream"]))
    checkpoint = str(table["checkpoint"].iloc[0]) if "checkpoint" in table and len(table) else "model"
    grids = {(checkpoint, stream): head_grid(heads, stream, metric) for stream in streams}
    name = HEAD_METRICS[metric][1]
    signed = metric == "index" or metric.endswith("_excess")  # on [-1, 1]; the excesses are 0 at chance
    return head_maps(grids, title=title or name, value_name=name, colour="value", diverging=signed,
                     zmin=-1.0 if signed else None, zmax=1.0 if signed else None)
