"""The Overview page's data: the checkpoint catalog (read from JSON, weights untouched) and the
NLL table of `results/nll.json` with the gaps between variants."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workbench.app_data.common import AppInputError, checkpoints_dir, results_dir, shown_path, streams_of
from workbench.checkpoint import META, CheckpointError, read_info

__all__ = ["CLAIM", "CheckpointEntry", "catalog", "catalog_frame", "nll_table", "nll_gaps", "gap_change", "nll_by_fraction"]

CLAIM = (
    "In any-order generation each step must attend both to semantically informative tokens "
    "(near the target position, to predict it) and to structurally recent ones (just generated, "
    "to summarise the history); in one stream these compete for attention, while two streams "
    "can specialise. Decoupled RoPE gives the target position without its content and is "
    "competitive at length 128 but degrades at 1024, where the two notions of \"near\" diverge "
    "(Pynadath and Zhang, 2026)."
)
"""The paper's claim: the hypothesis the workbench tests, never shown as a finding."""


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint directory as the overview lists it (read from its JSON, weights untouched)."""

    name: str
    path: Path
    variant: str = "?"
    n_ctx: int = 0
    n_layers: int = 0
    n_heads: int = 0
    n_params: int | None = None
    val_bits: float | None = None
    has_val_text: bool = False
    probes: Path | None = None
    error: str | None = None

    @property
    def streams(self) -> tuple[str, ...]:
        return streams_of(self.variant)


def catalog(root: Path | None = None, results: Path | None = None) -> list[CheckpointEntry]:
    """Every checkpoint directory under `root` (a directory with checkpoint.json), readable or not."""
    root = checkpoints_dir() if root is None else Path(root)
    results = results_dir() if results is None else Path(results)
    if not root.is_dir():
        return []
    entries = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (path / META).is_file():
            continue
        table = results / "probes" / path.name / "probes.parquet"
        probes = table if table.is_file() else None
        try:
            info = read_info(path)
        except (CheckpointError, OSError) as err:
            entries.append(CheckpointEntry(path.name, path, probes=probes, error=str(err)))
            continue
        cfg = info.config
        val_text = info.data.get("val_text")
        entries.append(
            CheckpointEntry(
                name=path.name,
                path=path,
                variant=cfg.variant,
                n_ctx=cfg.n_ctx,
                n_layers=cfg.n_layers,
                n_heads=cfg.n_heads,
                n_params=info.training.get("n_params"),
                val_bits=info.metrics.get("val_any_order_bits"),
                has_val_text=bool(val_text) and (path / val_text).is_file(),
                probes=probes,
            )
        )
    return entries


def catalog_frame(entries: Sequence[CheckpointEntry]) -> pd.DataFrame:
    rows = []
    for e in entries:
        rows.append(
            {
                "checkpoint": e.name,
                "variant": e.variant,
                "length (n_ctx)": e.n_ctx or None,
                "layers x heads": f"{e.n_layers} x {e.n_heads}" if e.n_layers else "",
                "streams": ", ".join(e.streams) if not e.error else "",
                "parameters (M)": round(e.n_params / 1e6, 2) if e.n_params else None,
                "val text": "yes" if e.has_val_text else "no",
                "probe results": "yes" if e.probes else "no",
                "status": "ok" if not e.error else f"cannot load: {e.error}",
            }
        )
    return pd.DataFrame(rows)


def nll_table(path: Path | None = None) -> pd.DataFrame:
    """results/nll.json as one row per checkpoint: variant, length, any-order and left-to-right
    bits/token with 95% half-widths, windows x orders. Sorted by length, then variant."""
    path = results_dir() / "nll.json" if path is None else Path(path)
    if not path.is_file():
        raise AppInputError(
            f"no NLL table at {shown_path(path)}. Make it with `workbench eval --checkpoint <names> --orders 4 "
            f"--out {shown_path(path)}` (docs/results.md)."
        )
    try:
        table = json.loads(path.read_text())
        rows = []
        for name, r in table.items():
            a, l2r = r["any_order_bits"], r["left_to_right_bits"]
            rows.append(
                {
                    "checkpoint": name,
                    "variant": r.get("variant", name.rsplit("-", 1)[0]),
                    "length": int(r.get("seq_len", name.rsplit("-", 1)[-1])),
                    "any_order": a["mean"],
                    "any_order_ci": (a["ci_high"] - a["ci_low"]) / 2,
                    "left_to_right": l2r["mean"],
                    "left_to_right_ci": (l2r["ci_high"] - l2r["ci_low"]) / 2,
                    "windows": int(r.get("n_windows", a.get("n", 0))),
                    "orders": int(r.get("n_orders", 0)),
                }
            )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise AppInputError(f"{shown_path(path)} is not an NLL table written by `workbench eval --out` ({err!r}).") from err
    order = {"two_stream": 0, "decoupled_rope": 1, "sigma_gpt": 2}
    frame = pd.DataFrame(rows)
    frame["_v"] = frame["variant"].map(lambda v: order.get(v, 9))
    return frame.sort_values(["length", "_v", "checkpoint"]).drop(columns="_v").reset_index(drop=True)


def nll_gaps(frame: pd.DataFrame, baseline: str = "two_stream", path: Path | None = None) -> pd.DataFrame:
    """Any-order bits/token of each variant minus `baseline` at the same length, with the 95%
    half-width of the PAIRED difference (`paired_differences` in nll.json: both models on the same
    windows and orders, blocked over contiguous windows). `paired` is False, and the half-width
    NaN, where the two were not evaluated on the same windows and orders."""
    table = _nll_json(path)
    rows = []
    for length, group in frame.groupby("length", sort=True):
        base = group[group["variant"] == baseline]
        if base.empty:
            continue
        b = base.iloc[0]
        for r in group.itertuples(index=False):
            if r.variant == baseline:
                continue
            paired = table.get(r.checkpoint, {}).get("paired_differences", {}).get(b.checkpoint, {}).get("any_order_bits")
            rows.append({"length": int(length), "variant": r.variant, "checkpoint": r.checkpoint, "baseline": b.checkpoint,
                         "gap": paired["mean"] if paired else r.any_order - b.any_order,
                         "ci": (paired["ci_high"] - paired["ci_low"]) / 2 if paired else math.nan, "paired": bool(paired)})
    return pd.DataFrame(rows, columns=["length", "variant", "checkpoint", "baseline", "gap", "ci", "paired"])


def gap_change(gaps: pd.DataFrame, path: Path | None = None) -> pd.DataFrame:
    """Per variant: the gap to the baseline at the longest length minus that at the shortest, with
    the 95% half-width of that difference (`gap_change_with_length` in nll.json when present: the
    lengths are separate models on separate windows, so the two paired gaps' variances add, Welch
    t; else the two half-widths in quadrature). The paper's claim is about this change."""
    table = _nll_json(path) if "checkpoint" in gaps else {}
    rows = []
    for variant, group in gaps.groupby("variant", sort=False):
        if group["length"].nunique() < 2:
            continue
        short, long_ = group.loc[group["length"].idxmin()], group.loc[group["length"].idxmax()]
        stored = (table.get(long_["checkpoint"], {}).get("gap_change_with_length", {})
                  .get(long_["baseline"], {}).get(str(int(short["length"])))) if table else None
        ci = (stored["ci_high"] - stored["ci_low"]) / 2 if stored else math.hypot(short["ci"], long_["ci"])
        rows.append({"variant": variant, "from": int(short["length"]), "to": int(long_["length"]),
                     "change": float(long_["gap"] - short["gap"]), "ci": ci})
    return pd.DataFrame(rows, columns=["variant", "from", "to", "change", "ci"])


def _nll_json(path: Path | None) -> dict:
    path = results_dir() / "nll.json" if path is None else Path(path)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AppInputError(f"{shown_path(path)} is not an NLL table written by `workbench eval --out` ({err!r}).") from err


def nll_by_fraction(path: Path | None = None) -> pd.DataFrame:
    """The per-checkpoint curve of bits/token against the fraction of the text already revealed."""
    path = results_dir() / "nll.json" if path is None else Path(path)
    if not path.is_file():
        raise AppInputError(f"no NLL table at {shown_path(path)}.")
    rows = []
    for name, r in json.loads(path.read_text()).items():
        for point in r.get("by_fraction_revealed", []):
            rows.append({"checkpoint": name, "fraction": point["fraction"], "bits": point["mean"],
                         "ci": (point["ci_high"] - point["ci_low"]) / 2})
    return pd.DataFrame(rows, columns=["checkpoint", "fraction", "bits", "ci"])
