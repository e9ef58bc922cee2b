"""Probe results as the app reads them: the committed table of a checkpoint, or a quick estimate
computed here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.app_data.common import AppInputError, checkpoints_dir, results_dir
from workbench.checkpoint import CheckpointError

__all__ = ["ProbeResults", "probe_results_path", "load_probe_results", "QUICK_PROBES", "quick_probe_results", "chance_of",
           "head_labels", "JOINT_METRIC", "JointHistogram", "joint_histograms", "has_joint_histogram",
           "readable_widths", "parts_at", "label_at"]


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


def probe_results_path(checkpoint: str, root: Path | None = None) -> Path:
    return (results_dir() if root is None else Path(root)) / "probes" / checkpoint


def load_probe_results(checkpoint: str, root: Path | None = None) -> ProbeResults:
    """The committed probe results of a checkpoint (results/probes/<checkpoint>/)."""
    from workbench.probing import read_table

    where = probe_results_path(checkpoint, root)
    try:
        table = read_table(where)
    except FileNotFoundError as err:
        raise AppInputError(
            f"no probe results for {checkpoint} in {where}. Run `workbench probe --checkpoint {checkpoint} "
            f"--out {where}`."
        ) from err
    except Exception as err:  # noqa: BLE001 (pyarrow raises many kinds for a damaged file)
        raise AppInputError(f"the probe table in {where} cannot be read ({err}); run the probes again.") from err
    missing = {"layer", "stream", "head", "metric", "value"} - set(table.columns)
    if missing:
        raise AppInputError(f"the probe table in {where} lacks columns {sorted(missing)}; it is not a workbench probe table.")
    meta_file = where / "metadata.json"
    try:
        metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    except json.JSONDecodeError:
        metadata = {}
    return ProbeResults(checkpoint, table, metadata, str(where))


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
"""Expected format of the joint histogram in a probe table (issue 15, item 5), one row per cell:

- `metric` = "joint_hist", `layer` / `stream` / `head` the head, any `probe` name;
- `x` = semantic_bin * N_BINS + recency_bin, both bins of `workbench.kernels.contract.distance_bin`
  (bin 0 the null key, 1 distance 0, 2 distance 1, b >= 3: 2^(b-3) < d <= 2^(b-2); N_BINS = 18);
- `value` = attention mass in the cell per probed row (a head's cells sum to 1), `chance` = the
  same for uniform attention over the visible keys; `ci` optional. Missing cells count as 0.

The null key sits in cell (0, 0). Non-null keys never have bin 0 on either axis."""


@dataclass(frozen=True)
class JointHistogram:
    """A head's attention (and chance) mass per (semantic-distance bin, recency bin)."""

    mass: np.ndarray  # [semantic_bin, recency_bin]
    chance: np.ndarray  # [semantic_bin, recency_bin]


def has_joint_histogram(table: pd.DataFrame) -> bool:
    return bool((table["metric"] == JOINT_METRIC).any())


def joint_histograms(table: pd.DataFrame) -> dict[tuple[int, str, int], JointHistogram]:
    """Every head's joint histogram (format: JOINT_METRIC), keyed by (layer, stream, head); {} if none."""
    from workbench.kernels.contract import N_BINS

    rows = table[table["metric"] == JOINT_METRIC]
    out = {}
    for (layer, stream, head), group in rows.groupby(HEAD_KEYS, sort=True):
        cells = group["x"].to_numpy(int)
        if cells.min() < 0 or cells.max() >= N_BINS * N_BINS:
            raise AppInputError(f"the joint histogram of L{layer}.{stream}.H{head} has cells outside 0..{N_BINS * N_BINS - 1}: "
                                "it is not in the format the app reads (workbench/app_data/probes.py, JOINT_METRIC).")
        mass, chance = np.zeros(N_BINS * N_BINS), np.zeros(N_BINS * N_BINS)
        np.add.at(mass, cells, group["value"].fillna(0).to_numpy(float))
        np.add.at(chance, cells, np.nan_to_num(chance_of(group)))
        out[(int(layer), str(stream), int(head))] = JointHistogram(mass.reshape(N_BINS, N_BINS), chance.reshape(N_BINS, N_BINS))
    return out


def readable_widths(n_ctx: int) -> list[int]:
    """The r (or w) a joint histogram can be read at: the upper edges of its log2 bins below n_ctx."""
    from workbench.kernels.contract import EDGES

    return [e for e in EDGES if 1 <= e < max(n_ctx, 2)]


def parts_at(joint: JointHistogram, r: int, w: int) -> dict[str, float]:
    """The four parts (S only, R only, both, neither), the two set masses, their lifts and the
    index at (r, w), read out of the joint histogram: S_r = semantic bins 1..bin(r), R_w = recency
    bins 1..bin(w) (docs/coordinates.md). r and w must be bin edges (`readable_widths`)."""
    from workbench.kernels.contract import EDGES

    if r not in EDGES or w not in EDGES:
        raise AppInputError(f"r = {r}, w = {w}: a log2 histogram can be read only at r, w in {list(EDGES[1:8])}, ...")
    b_r, b_w = EDGES.index(r) + 1, EDGES.index(w) + 1  # the bin whose upper edge is r (or w)
    out: dict[str, float] = {}
    for name, cells in (("mass", joint.mass), ("chance", joint.chance)):
        s_all, r_all = cells[1 : b_r + 1, 1:].sum(), cells[1:, 1 : b_w + 1].sum()
        both = cells[1 : b_r + 1, 1 : b_w + 1].sum()
        values = {"S_only": s_all - both, "R_only": r_all - both, "both": both, "neither": cells.sum() - s_all - r_all + both,
                  "semantic_mass": s_all, "structural_mass": r_all}
        for key, v in values.items():
            out[key if name == "mass" else f"{key}_chance"] = float(v)
    for key in ("S_only", "R_only", "both", "neither", "semantic_mass", "structural_mass"):
        lift = out[key] / out[f"{key}_chance"] if out[f"{key}_chance"] > 0 else float("nan")
        out[key.replace("_mass", "") + "_lift" if key.endswith("_mass") else f"{key}_lift"] = lift
    for suffix in ("", "_chance"):
        s, r_ = out[f"S_only{suffix}"], out[f"R_only{suffix}"]
        out[f"index{suffix}"] = (s - r_) / (s + r_) if s + r_ > 0 else float("nan")
    return out


def label_at(parts: dict[str, float], *, sink: float, entropy: float, uniform_entropy: float) -> str:
    """A head's label from parts read out at another (r, w), by the probes' own rules."""
    from workbench.probing.specialisation import label

    return label(index=parts["index"], sink_mass=sink, lift_s_only=parts["S_only_lift"], lift_r_only=parts["R_only_lift"],
                 lift_both=parts["both_lift"], entropy=entropy, uniform_entropy=uniform_entropy)
