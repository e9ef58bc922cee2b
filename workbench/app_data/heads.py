"""The Head specialisation page's data: one row per head from a probe table, [layer, head] grids
of one metric, a head's histograms and by-step curves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["HEAD_METRICS", "SCATTER_PLANES", "head_frame", "head_grid", "head_record", "bin_labels", "head_histograms", "head_by_step"]


# What the head maps can show: key -> (probe metric, label for axes and menus).
HEAD_METRICS: dict[str, tuple[str, str]] = {
    "semantic_mass": ("semantic_set", "semantic mass (S_r)"),
    "structural_mass": ("structural_set", "structural mass (R_w)"),
    "semantic_lift": ("semantic_set_lift", "semantic lift (S_r mass / chance)"),
    "structural_lift": ("structural_set_lift", "structural lift (R_w mass / chance)"),
    "index": ("index", "specialisation index"),
    "S_only": ("S_only", "S-only mass"),
    "R_only": ("R_only", "R-only mass"),
    "both": ("both", "mass on both sets"),
    "neither": ("neither", "mass on neither set"),
    "S_only_lift": ("S_only_lift", "S-only lift"),
    "R_only_lift": ("R_only_lift", "R-only lift"),
    "entropy": ("entropy", "entropy (bits)"),
    "sink": ("sink", "null-key (sink) mass"),
}
SCATTER_PLANES: dict[str, tuple[str, str]] = {
    "exclusive masses (S only vs R only)": ("S_only", "R_only"),
    "set masses (S_r vs R_w)": ("semantic_mass", "structural_mass"),
    "lifts (S_r vs R_w)": ("semantic_lift", "structural_lift"),
}


def head_frame(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, stream, head): every HEAD_METRICS value with `<key>_ci` and
    `<key>_chance`, and the specialisation `label` ("" where the table has none)."""
    scalars = table[(table["layer"] >= 0) & (table["head"] >= 0) & (table.get("x", -1) == -1)]
    if "probe" in scalars:
        scalars = scalars[scalars["probe"] != "by_step"]
    keys = ["layer", "stream", "head"]
    heads = scalars[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    for key, (metric, _) in HEAD_METRICS.items():
        rows = scalars[scalars["metric"] == metric].drop_duplicates(keys, keep="last")
        part = rows[keys].copy()
        part[key] = rows["value"].to_numpy()
        part[f"{key}_ci"] = rows["ci"].to_numpy() if "ci" in rows else np.nan
        part[f"{key}_chance"] = rows["chance"].to_numpy() if "chance" in rows else np.nan
        heads = heads.merge(part, on=keys, how="left")
    labels = scalars[scalars["metric"] == "label"].drop_duplicates(keys, keep="last")
    if "label" in labels and len(labels):
        heads = heads.merge(labels[keys + ["label"]], on=keys, how="left")
        heads["label"] = heads["label"].fillna("")
    else:
        heads["label"] = ""
    return heads


def head_grid(heads: pd.DataFrame, stream: str, key: str, n_layers: int | None = None, n_heads: int | None = None) -> dict[str, np.ndarray]:
    """[layer, head] arrays of one metric of one stream: value, ci, chance, label (NaN / "" if absent)."""
    rows = heads[heads["stream"] == stream]
    n_layers = int(heads["layer"].max()) + 1 if n_layers is None else n_layers
    n_heads = int(heads["head"].max()) + 1 if n_heads is None else n_heads
    out = {name: np.full((n_layers, n_heads), np.nan) for name in ("value", "ci", "chance")}
    out["label"] = np.full((n_layers, n_heads), "", dtype=object)
    for row in rows.itertuples(index=False):
        at = (int(row.layer), int(row.head))
        out["value"][at] = getattr(row, key, np.nan)
        out["ci"][at] = getattr(row, f"{key}_ci", np.nan)
        out["chance"][at] = getattr(row, f"{key}_chance", np.nan)
        out["label"][at] = row.label
    return out


def head_record(heads: pd.DataFrame, layer: int, stream: str, head: int) -> dict[str, Any] | None:
    match = heads[(heads["layer"] == layer) & (heads["stream"] == stream) & (heads["head"] == head)]
    return None if match.empty else match.iloc[0].to_dict()


def bin_labels(n_bins: int | None = None) -> list[str]:
    """Labels of the log2 distance bins of docs/coordinates.md: null, 0, 1, 2, 3-4, 5-8, ..."""
    from workbench.kernels.contract import EDGES, N_BINS

    n_bins = N_BINS if n_bins is None else n_bins
    labels = ["null key", "0", "1"]
    for b in range(3, n_bins):
        if b - 1 < len(EDGES):
            lo, hi = EDGES[b - 2] + 1, EDGES[b - 1]
            labels.append(str(lo) if lo == hi else f"{lo}-{hi}")
        else:
            labels.append(f">{EDGES[-1]}")
    return labels[:n_bins]


def head_histograms(table: pd.DataFrame, layer: int, stream: str, head: int) -> dict[str, pd.DataFrame]:
    """Per histogram ("semantic", "recency", "own"): bin, label, attention, chance, ci; bins past
    the last one holding any mass are dropped (a 128-long window never reaches distance 16384)."""
    sel = table[(table["layer"] == layer) & (table["stream"] == stream) & (table["head"] == head)]
    labels = bin_labels()
    out = {}
    for which in ("semantic", "recency", "own"):
        rows = sel[sel["metric"] == f"{which}_hist"].sort_values("x")
        if rows.empty:
            continue
        frame = pd.DataFrame({
            "bin": rows["x"].to_numpy(int),
            "attention": rows["value"].to_numpy(float),
            "chance": rows["chance"].to_numpy(float),
            "ci": rows["ci"].to_numpy(float),
        })
        frame["label"] = [labels[b] if 0 <= b < len(labels) else str(b) for b in frame["bin"]]
        used = np.flatnonzero((frame["attention"].abs() > 1e-12) | (frame["chance"].abs() > 1e-12))
        out[which] = frame.iloc[: (used[-1] + 1) if len(used) else 0].reset_index(drop=True)
    return out


def head_by_step(table: pd.DataFrame, layer: int, stream: str, head: int, metrics: Sequence[str]) -> pd.DataFrame:
    """The by_step probe's rows of one head: step bucket start (x), metric, value, chance, ci."""
    if "probe" not in table:
        return pd.DataFrame(columns=["x", "metric", "value", "chance", "ci"])
    sel = table[(table["probe"] == "by_step") & (table["layer"] == layer) & (table["stream"] == stream)
                & (table["head"] == head) & table["metric"].isin(list(metrics))]
    return sel[["x", "metric", "value", "chance", "ci"]].sort_values(["metric", "x"]).reset_index(drop=True)
