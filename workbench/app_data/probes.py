"""Probe results as the app reads them: the committed table of a checkpoint, or a quick estimate
computed here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.app_data.common import AppInputError, checkpoints_dir, results_dir, shown_path
from workbench.checkpoint import CheckpointError

__all__ = ["ProbeResults", "probe_results_path", "load_probe_results", "QUICK_PROBES", "quick_probe_results", "chance_of",
           "head_labels", "JOINT_METRIC", "JointHistogram", "joint_histograms", "has_joint_histogram",
           "readable_widths", "parts_at"]


@dataclass
class ProbeResults:
    """A probe run's tidy table (pandas) and metadata; `source` says where it came from."""

    checkpoint: str
    table: pd.DataFrame
    metadata: dict[str, Any]
    source: str

    @property
    def r(self) -> int | None:
        return self.metadata.get("r")

    @property
    def w(self) -> int | None:
        return self.metadata.get("w")

    def ci_over(self, kind: str) -> str:
        """What the table's `ci` of `kind` ("statistics" or "causal") rows is over, in words (results
        written before the metadata said it treated sequences as independent)."""
        unit = self.metadata.get("ci_unit", {}).get(kind)
        if unit is None:
            return "sequences (treated as independent)"
        if unit["unit"] == "block":
            return f"{unit['n_units']} blocks of contiguous windows"
        return f"{unit['n_units']} sequences (too few to block)"


def probe_results_path(checkpoint: str, root: Path | None = None) -> Path:
    return (results_dir() if root is None else Path(root)) / "probes" / checkpoint


def load_probe_results(checkpoint: str, root: Path | None = None) -> ProbeResults:
    """The committed probe results of a checkpoint (results/probes/<checkpoint>/)."""
    from workbench.probing import read_table

    where = probe_results_path(checkpoint, root)
    shown = shown_path(where)
    try:
        table = read_table(where)
    except FileNotFoundError as err:
        raise AppInputError(
            f"no probe results for {checkpoint} in {shown}. Run `workbench probe --checkpoint {checkpoint} "
            f"--out {shown}`."
        ) from err
    except Exception as err:  # noqa: BLE001 (pyarrow raises many kinds for a damaged file)
        raise AppInputError(f"the probe table in {shown} cannot be read ({err}); run the probes again.") from err
    missing = {"layer", "stream", "head", "metric", "value"} - set(table.columns)
    if missing:
        raise AppInputError(f"the probe table in {shown} lacks columns {sorted(missing)}; it is not a workbench probe table.")
    meta_file = where / "metadata.json"
    try:
        metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    except json.JSONDecodeError:
        metadata = {}
    return ProbeResults(checkpoint, table, metadata, shown)


QUICK_PROBES = ("parts", "specialisation", "histograms", "entropy", "sink", "by_step")


def quick_probe_results(checkpoint: str, n_sequences: int = 8, r: int = 4, w: int = 4, seed: int = 0) -> ProbeResults:
    """A small probe run (the probes' own runner, on CPU, nothing written) for a checkpoint that has
    no committed results: the same table, from fewer sequences, so wider intervals."""
    from workbench.probing import run_probes

    path = Path(checkpoint) if Path(checkpoint).is_dir() else checkpoints_dir() / checkpoint
    try:
        run = run_probes(path, probes=list(QUICK_PROBES), max_sequences=n_sequences, r=r, w=w, seed=seed,
                         out=None, progress=False, device="cpu", batch_size=min(8, n_sequences))
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        raise AppInputError(f"the quick probe run on {checkpoint} failed: {err}") from err
    return ProbeResults(Path(checkpoint).name, run.table, run.metadata, f"quick estimate: {n_sequences} validation windows")


# ---- the one reader of each column whose meaning the statistics work may change -------------------------------
# Labels and chance values are read here and nowhere else, so that moving to new columns (a
# length-fair measure, the label of the non-null mass) is a change to one line.

HEAD_KEYS = ["layer", "stream", "head"]


def chance_of(rows: pd.DataFrame) -> np.ndarray:
    """What uniform attention gives for each of `rows` (the table's `chance` column; NaN if absent)."""
    return rows["chance"].to_numpy(float) if "chance" in rows else np.full(len(rows), np.nan)


def head_labels(table: pd.DataFrame) -> pd.DataFrame:
    """The specialisation label of every head: layer, stream, head, label ("" where none), from the
    specialisation probe's `label` rows."""
    rows = table[(table["metric"] == "label") & (table["head"] >= 0)].drop_duplicates(HEAD_KEYS, keep="last")
    if "label" not in rows or rows.empty:
        return pd.DataFrame(columns=HEAD_KEYS + ["label"])
    out = rows[HEAD_KEYS + ["label"]].copy()
    out["label"] = out["label"].fillna("").astype(str)
    return out.reset_index(drop=True)


# ---- the joint semantic-distance x recency histogram ---------------------------------------------------------

JOINT_METRIC = "joint_hist"
"""The joint histogram's rows in a probe table (written by the `histograms` probe; read by
`workbench.probing.readout`): one row per reachable cell, `x` the semantic-distance bin, `y` the
recency bin (bins of `workbench.kernels.contract.distance_bin`, the null key in cell (0, 0)),
`value` the attention mass per probed row, `chance` the same for uniform attention."""


@dataclass(frozen=True)
class JointHistogram:
    """A head's attention (and chance) mass per (semantic-distance bin, recency bin)."""

    mass: np.ndarray  # [semantic_bin, recency_bin]
    chance: np.ndarray  # [semantic_bin, recency_bin]


def has_joint_histogram(table: pd.DataFrame) -> bool:
    return bool((table["metric"] == JOINT_METRIC).any())


def joint_histograms(table: pd.DataFrame) -> dict[tuple[int, str, int], JointHistogram]:
    """Every head's joint histogram, keyed by (layer, stream, head); {} if the table has none."""
    from workbench.probing.readout import joint_arrays

    if not has_joint_histogram(table):
        return {}
    try:
        heads, mass, chance = joint_arrays(table)
    except IndexError as err:
        raise AppInputError(f"the table's {JOINT_METRIC} rows have bins outside the histogram ({err}): it is not in the "
                            "format workbench.probing.readout reads.") from err
    return {(int(h.layer), str(h.stream), int(h.head)): JointHistogram(mass[i], chance[i])
            for i, h in enumerate(heads.itertuples(index=False))}


def readable_widths(n_ctx: int) -> list[int]:
    """The r (or w) a joint histogram can be read at: the upper edges of its log2 bins below n_ctx."""
    from workbench.kernels.contract import EDGES

    return [e for e in EDGES if 1 <= e < max(n_ctx, 2)]


def parts_at(joint: JointHistogram, r: int, w: int) -> dict[str, float]:
    """The four parts (S only, R only, both, neither), the two set masses, their lifts and the
    index at (r, w), read out of the joint histogram (`workbench.probing.readout.parts_at`); r and
    w must be bin edges (`readable_widths`)."""
    from workbench.probing.readout import parts_at as read_parts

    try:
        mass, chance = read_parts(joint.mass, r, w), read_parts(joint.chance, r, w)
    except ValueError as err:
        raise AppInputError(f"r = {r}, w = {w}: {err}") from err
    names = {"S_only": "S_only", "R_only": "R_only", "both": "both", "neither": "neither",
             "semantic_set": "semantic_mass", "structural_set": "structural_mass"}
    out: dict[str, float] = {}
    for key, name in names.items():
        out[name], out[f"{name}_chance"] = float(mass[key]), float(chance[key])
    for name in names.values():
        lift = out[name] / out[f"{name}_chance"] if out[f"{name}_chance"] > 0 else float("nan")
        out[name.replace("_mass", "") + "_lift" if name.endswith("_mass") else f"{name}_lift"] = lift
    for suffix in ("", "_chance"):
        s, r_ = out[f"S_only{suffix}"], out[f"R_only{suffix}"]
        out[f"index{suffix}"] = (s - r_) / (s + r_) if s + r_ > 0 else float("nan")
    return out
