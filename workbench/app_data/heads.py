"""The Head specialisation page's data: one row per head from a probe table, [layer, head] grids
of one metric, a head's histograms and by-step curves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from workbench.app_data.probes import HEAD_KEYS, JointHistogram, chance_of, head_labels, parts_at

__all__ = ["HEAD_METRICS", "SCATTER_PLANES", "over_chance", "over_chance_name", "head_frame", "READ_OUT", "PER_ROW", "head_frame_at", "SUMMARY_LABELS",
           "stream_summary", "MEDIANS", "takeaway", "head_grid", "head_record", "bin_labels", "head_histograms", "head_by_step"]


# What the head maps can show: key -> (probe metric, label for axes and menus).
HEAD_METRICS: dict[str, tuple[str, str]] = {
    "semantic_excess": ("semantic_excess", "semantic excess e_S (0 chance, 1 all on S_r)"),
    "structural_excess": ("structural_excess", "structural excess e_R (0 chance, 1 all on R_w)"),
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


def over_chance(key: str, value, chance):
    """How far a head is from uniform attention, 0 at chance: log2(value / chance) for a lift (a
    ratio, whose chance is 1), value - chance for everything else (masses, index, entropy)."""
    value, chance = np.asarray(value, float), np.asarray(chance, float)
    if key.endswith("lift"):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log2(value / chance)
    return value - chance


def over_chance_name(key: str) -> str:
    """Axis / colour-bar name of `over_chance` for a HEAD_METRICS key."""
    label = HEAD_METRICS[key][1]
    if key.endswith("_excess"):  # already 0 at chance
        return label
    return f"log2 {label}" if key.endswith("lift") else f"{label} − chance"


def head_frame(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, stream, head): every HEAD_METRICS value with `<key>_ci`, `<key>_chance`
    and `<key>_excess` (`over_chance`), and the specialisation `label` ("" where the table has none)."""
    scalars = table[(table["layer"] >= 0) & (table["head"] >= 0) & (table.get("x", -1) == -1)]
    if "probe" in scalars:
        scalars = scalars[scalars["probe"] != "by_step"]
    heads = scalars[HEAD_KEYS].drop_duplicates().sort_values(HEAD_KEYS).reset_index(drop=True)
    for key, (metric, _) in HEAD_METRICS.items():
        rows = scalars[scalars["metric"] == metric].drop_duplicates(HEAD_KEYS, keep="last")
        part = rows[HEAD_KEYS].copy()
        part[key] = rows["value"].to_numpy()
        part[f"{key}_ci"] = rows["ci"].to_numpy() if "ci" in rows else np.nan
        part[f"{key}_chance"] = chance_of(rows)
        part[f"{key}_excess"] = over_chance(key, part[key], part[f"{key}_chance"])
        heads = heads.merge(part, on=HEAD_KEYS, how="left")
    heads = heads.merge(head_labels(table), on=HEAD_KEYS, how="left")
    heads["label"] = heads["label"].fillna("")
    flags = scalars[scalars["metric"] == "sink_flag"].drop_duplicates(HEAD_KEYS, keep="last")
    heads = heads.merge(flags[HEAD_KEYS].assign(sink_flag=flags["value"].to_numpy()), on=HEAD_KEYS, how="left")
    return heads


READ_OUT = ("semantic_mass", "structural_mass", "semantic_lift", "structural_lift", "index", "S_only", "R_only", "both",
            "neither", "S_only_lift", "R_only_lift")
"""The HEAD_METRICS that depend on (r, w), and so are read out of the joint histogram at another (r, w)."""
PER_ROW = ("semantic_excess", "structural_excess")
"""The HEAD_METRICS that depend on (r, w) but need per-row quantities the joint histogram does not
hold (the normalised excesses pool each row's own chance and ceiling): NaN at another (r, w)."""


def head_frame_at(heads: pd.DataFrame, joints: dict[tuple[int, str, int], JointHistogram], r: int, w: int) -> pd.DataFrame:
    """`heads` with every (r, w)-dependent metric read out of the joint histograms at (r, w) instead.
    The read-out pools the histogram, so it has no interval (the `_ci` columns are NaN), and labels
    need per-row excesses the histogram does not hold: the label is "" (a probe run at that (r, w)
    gives it); so are the PER_ROW excesses (NaN)."""
    out = heads.copy()
    for key in PER_ROW:
        out[[key, f"{key}_ci", f"{key}_excess"]] = np.nan
    for i, row in enumerate(out.itertuples(index=False)):
        joint = joints.get((int(row.layer), row.stream, int(row.head)))
        if joint is None:
            continue
        parts = parts_at(joint, r, w)
        for key in READ_OUT:
            chance = parts.get(f"{key}_chance", 1.0 if key.endswith("lift") else np.nan)
            out.loc[out.index[i], [key, f"{key}_ci", f"{key}_chance", f"{key}_excess"]] = (
                parts[key], np.nan, chance, float(over_chance(key, parts[key], chance)))
        out.loc[out.index[i], "label"] = ""
    return out


def head_grid(heads: pd.DataFrame, stream: str, key: str, n_layers: int | None = None, n_heads: int | None = None) -> dict[str, np.ndarray]:
    """[layer, head] arrays of one metric of one stream: value, ci, chance, excess (over chance,
    NaN where there is no chance value) and label (NaN / "" if absent)."""
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
    out["excess"] = over_chance(key, out["value"], out["chance"])
    return out


# ---- what a checkpoint's heads add up to ------------------------------------------------------------------

SUMMARY_LABELS = ("semantic", "structural", "sink")
"""The counts a summary leads with. "sink" counts the heads with a sink (null-key mass >= 0.5,
the `sink_flag` of the results, whatever the label of the rest of their mass: "semantic, with a
sink"); results written before the flag existed count the heads labelled "sink"."""

MEDIANS = {"median index − chance": "index_excess", "median e_S": "semantic_excess"}
"""The summary's medians over a stream's heads: column -> head-frame column."""


def stream_summary(heads: pd.DataFrame) -> pd.DataFrame:
    """Per stream: how many heads, how many carry each label (semantic and structural first, then
    any other label the table uses), how many have a sink, the median index over chance and the
    median normalised semantic excess e_S (length-fair; NaN where the frame has none: old results,
    or a read-out at another r, w)."""
    rows = []
    flagged = "sink_flag" in heads and heads["sink_flag"].notna().any()
    for stream, group in heads.groupby("stream", sort=False):
        counts = group["label"].replace("", "no label").value_counts()
        row = {"stream": stream, "heads": len(group)}
        row.update({lab: int(counts.get(lab, 0)) for lab in SUMMARY_LABELS})
        if flagged:
            row["sink"] = int((group["sink_flag"] == 1).sum())
        row.update({lab: int(n) for lab, n in counts.items() if lab not in SUMMARY_LABELS})
        for name, column in MEDIANS.items():
            values = group[column] if column in group else pd.Series(dtype=float)
            row[name] = float(np.nanmedian(values)) if values.notna().any() else np.nan
        rows.append(row)
    frame = pd.DataFrame(rows)
    counts = [c for c in frame.columns if c not in ("stream", "heads", *MEDIANS)]
    frame[counts] = frame[counts].fillna(0).astype(int)
    return frame[["stream", "heads", *counts, *MEDIANS]]


def takeaway(checkpoint: str, summary: pd.DataFrame, r: int | None = None, w: int | None = None) -> str:
    """One sentence on what the checkpoint's heads do, computed from `stream_summary`."""
    at = f" at r = {r}, w = {w}" if r is not None else ""
    parts = []
    for row in summary.to_dict("records"):
        n = int(row["heads"])
        counts = ", ".join(f"{int(row[lab])} {_named(lab)}" for lab in SUMMARY_LABELS)
        e_s = row["median e_S"]
        median = (f"median e_S {e_s:+.2f}" if np.isfinite(e_s) else f"median index {row['median index − chance']:+.2f} over chance")
        parts.append(f"{row['stream']} stream: {counts} of {n} heads ({median})")
    total = {lab: int(summary[lab].sum()) for lab in SUMMARY_LABELS}
    verdict = ", ".join(f"{total[lab]} {_named(lab)}" for lab in SUMMARY_LABELS) + f" of {int(summary['heads'].sum())} heads"
    if len(parts) == 1:
        return f"{checkpoint}{at}: {parts[0].split(': ', 1)[1]}."
    return f"{checkpoint}{at}: {verdict}. " + "; ".join(parts) + "."


def _named(label: str) -> str:
    return "with a sink" if label == "sink" else label


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
            "chance": chance_of(rows),
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
    out = sel[["x", "metric", "value", "ci"]].assign(chance=chance_of(sel))
    return out[["x", "metric", "value", "chance", "ci"]].sort_values(["metric", "x"]).reset_index(drop=True)
