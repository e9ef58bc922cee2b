"""Everything the Streamlit app shows, computed without Streamlit.

`app.py` and `app_pages/` are presentation only: they call these functions, hand the arrays and
strings to the figure builders of `workbench.viz` (the CircuitsVis seam: figures never see a
model), and turn the exceptions below into messages. Everything here is importable and testable
from plain Python or a notebook.

Where the probes (`workbench.probing`) already compute something, this module calls them:
`run_probes` for a quick estimate when no results are committed, `pattern_stats` for the four
parts of one displayed attention row, `set_masks` for the semantic and structural sets,
`intervention_hook` / `mean_z` / `Effect` for live causal checks, `order_divergence` and
`nearest_keys` for the model-free divergence.

Errors a user can cause (bad text, a bad custom order, missing results, a checkpoint that does
not load) raise `AppInputError` with a message meant to be shown as is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench.checkpoint import BUNDLED_DIR, META, CheckpointError, read_info
from workbench.hook_names import hook_name
from workbench.models import HookedAOModel
from workbench.orders import probe_layout, random_orders

REPO = Path(__file__).resolve().parent.parent
RESULTS_ENV = "WORKBENCH_RESULTS"
"""Directory holding `nll.json` and `probes/<checkpoint>/` (default: `results/` of the repo)."""
CHECKPOINTS_ENV = "WORKBENCH_CHECKPOINTS"
"""Directory of checkpoints the app lists (default: the bundled `checkpoints/`)."""

MAX_TEXT_CHARS = 200_000
"""Pasted text beyond this is cut before tokenising: the app never holds a book in a widget."""
STREAMS_OF = {"two_stream": ("content", "query"), "xlnet": ("content", "query")}
CLAIM = (
    "In any-order generation each step must attend both to semantically informative tokens "
    "(near the target position, to predict it) and to structurally recent ones (just generated, "
    "to summarise the history); in one stream these compete for attention, while two streams "
    "can specialise. Decoupled RoPE gives the target position without its content and is "
    "competitive at length 128 but degrades at 1024, where the two notions of \"near\" diverge "
    "(Pynadath and Zhang, 2026)."
)


class AppInputError(ValueError):
    """Something the user gave (or a file the app needs) is unusable; the message says what to do."""


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or REPO / "results")


def checkpoints_dir() -> Path:
    return Path(os.environ.get(CHECKPOINTS_ENV) or BUNDLED_DIR)


def streams_of(variant: str) -> tuple[str, ...]:
    return STREAMS_OF.get(variant, ("main",))


# ---- checkpoints and results on disk -------------------------------------------------------------


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


def load_model(name_or_path: str | Path) -> HookedAOModel:
    """`workbench.load`, with every failure (missing, corrupt, mismatched) as an AppInputError."""
    from workbench.checkpoint import load

    path = Path(name_or_path)
    if not path.is_dir():
        path = checkpoints_dir() / str(name_or_path)
    try:
        return load(path)
    except (CheckpointError, OSError, ValueError, RuntimeError, KeyError) as err:
        raise AppInputError(f"checkpoint {Path(name_or_path).name!r} could not be loaded: {err}") from err


@dataclass
class LoadedModel:
    """A model and the lock that serialises hooked runs on it (hooks are module state: two
    sessions adding hooks to the same model at once would see each other's)."""

    model: HookedAOModel
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        info = getattr(self.model, "checkpoint", None)
        return info.name if info is not None else "model"


# ---- the NLL table ---------------------------------------------------------------------------------


def nll_table(path: Path | None = None) -> pd.DataFrame:
    """results/nll.json as one row per checkpoint: variant, length, any-order and left-to-right
    bits/token with 95% half-widths, windows x orders. Sorted by length, then variant."""
    path = results_dir() / "nll.json" if path is None else Path(path)
    if not path.is_file():
        raise AppInputError(
            f"no NLL table at {path}. Make it with `workbench eval --checkpoint <names> --orders 4 "
            f"--out {path}` (docs/results.md)."
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
        raise AppInputError(f"{path} is not an NLL table written by `workbench eval --out` ({err!r}).") from err
    order = {"two_stream": 0, "decoupled_rope": 1, "sigma_gpt": 2}
    frame = pd.DataFrame(rows)
    frame["_v"] = frame["variant"].map(lambda v: order.get(v, 9))
    return frame.sort_values(["length", "_v", "checkpoint"]).drop(columns="_v").reset_index(drop=True)


def nll_gaps(frame: pd.DataFrame, baseline: str = "two_stream") -> pd.DataFrame:
    """Any-order bits/token of each variant minus `baseline` at the same length, with the 95%
    half-width of the difference (the two intervals combined in quadrature, as in docs/results.md)."""
    rows = []
    for length, group in frame.groupby("length", sort=True):
        base = group[group["variant"] == baseline]
        if base.empty:
            continue
        b = base.iloc[0]
        for r in group.itertuples(index=False):
            if r.variant == baseline:
                continue
            rows.append({"length": int(length), "variant": r.variant, "gap": r.any_order - b.any_order,
                         "ci": math.hypot(r.any_order_ci, b.any_order_ci)})
    return pd.DataFrame(rows, columns=["length", "variant", "gap", "ci"])


def nll_by_fraction(path: Path | None = None) -> pd.DataFrame:
    """The per-checkpoint curve of bits/token against the fraction of the text already revealed."""
    path = results_dir() / "nll.json" if path is None else Path(path)
    if not path.is_file():
        raise AppInputError(f"no NLL table at {path}.")
    rows = []
    for name, r in json.loads(path.read_text()).items():
        for point in r.get("by_fraction_revealed", []):
            rows.append({"checkpoint": name, "fraction": point["fraction"], "bits": point["mean"],
                         "ci": (point["ci_high"] - point["ci_low"]) / 2})
    return pd.DataFrame(rows, columns=["checkpoint", "fraction", "bits", "ci"])


# ---- probe results ------------------------------------------------------------------------------------


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
            f"--out {where}`, or compute a quick estimate here."
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


def ablation_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Per-head ablation results (metrics zero_dnll / mean_dnll): layer, stream, head, kind, dnll, ci."""
    rows = table[table["metric"].isin(["zero_dnll", "mean_dnll"])]
    frame = rows[["layer", "stream", "head", "metric", "value", "ci", "n"]].copy()
    frame["kind"] = frame.pop("metric").str.replace("_dnll", "", regex=False)
    return frame.rename(columns={"value": "dnll"}).reset_index(drop=True)


def knockout_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Knockout results: one row per (head, set) with the knockout ΔNLL, the random control and
    the paired excess, each with its CI, and the mean set size."""
    rows = table[table["metric"].str.startswith("knockout_")]
    out = []
    for (layer, stream, head), group in rows.groupby(["layer", "stream", "head"], sort=True):
        by = {m: g.iloc[0] for m, g in group.groupby("metric")}
        for key_set in ("semantic", "structural"):
            main = by.get(f"knockout_{key_set}")
            if main is None:
                continue
            get = lambda suffix, col="value": float(by[f"knockout_{key_set}{suffix}"][col]) if f"knockout_{key_set}{suffix}" in by else math.nan  # noqa: E731
            out.append({
                "layer": int(layer), "stream": stream, "head": int(head), "label": main.get("label", ""),
                "set": key_set, "dnll": float(main["value"]), "ci": float(main["ci"]),
                "random_dnll": get("_random"), "random_ci": get("_random", "ci"),
                "excess": get("_excess"), "excess_ci": get("_excess", "ci"), "keys": get("_keys"),
            })
    return pd.DataFrame(out, columns=["layer", "stream", "head", "label", "set", "dnll", "ci", "random_dnll",
                                      "random_ci", "excess", "excess_ci", "keys"])


def divergence_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The divergence probe's rows: length, k, overlap, chance, ci."""
    rows = table[table["metric"].str.match(r"^overlap_k\d+$")]
    frame = pd.DataFrame({
        "length": rows["x"].to_numpy(int), "k": rows["metric"].str[len("overlap_k"):].astype(int).to_numpy(),
        "overlap": rows["value"].to_numpy(float), "chance": rows["chance"].to_numpy(float), "ci": rows["ci"].to_numpy(float),
    })
    return frame.sort_values(["k", "length"]).reset_index(drop=True)


# ---- text, tokens and orders for the sample browser ----------------------------------------------------


def val_samples(checkpoint_path: Path, n_ctx: int, count: int = 12, max_chars: int = MAX_TEXT_CHARS) -> list[tuple[int, str]]:
    """(character offset, text) of `count` windows of `n_ctx` characters spread evenly over the
    checkpoint's validation text (`val.txt`); [] if it bundles none."""
    info = read_info(checkpoint_path)
    name = info.data.get("val_text") or "val.txt"
    path = info.path / name
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")[:max_chars]
    if len(text) <= n_ctx:
        return [(0, text)] if text else []
    starts = np.linspace(0, len(text) - n_ctx, count).astype(int)
    return [(int(s), text[s : s + n_ctx]) for s in dict.fromkeys(starts.tolist())]


@dataclass(frozen=True)
class PreparedText:
    """Text ready for the model: its token ids, per-token display strings, and notes for the user."""

    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    notes: tuple[str, ...] = ()
    n_total: int = 0
    """Tokens in the whole (possibly longer) text."""
    start: int = 0
    """First token of the window shown."""


def unknown_characters(text: str, tokenizer) -> list[str]:
    """The distinct characters a character tokenizer cannot encode ([] for other tokenizers)."""
    chars = getattr(tokenizer, "chars", None)
    if chars is None:
        return []
    known = set(chars)
    return sorted({c for c in text if c not in known})


def prepare_text(text: str, tokenizer, n_ctx: int, *, replace_unknown: bool = False, start: int = 0) -> PreparedText:
    """Tokenise `text` for a model of context `n_ctx`: empty text and unknown characters raise
    AppInputError (the latter unless `replace_unknown`); text longer than n_ctx tokens gives the
    window of n_ctx tokens starting at token `start` (clamped), with a note saying so."""
    if tokenizer is None:
        raise AppInputError("this checkpoint has no tokenizer, so text cannot be turned into tokens.")
    notes = []
    if len(text) > MAX_TEXT_CHARS:
        notes.append(f"The text has {len(text):,} characters; only the first {MAX_TEXT_CHARS:,} are used.")
        text = text[:MAX_TEXT_CHARS]
    if not text:
        raise AppInputError("The text is empty: paste some text or pick a validation sample.")
    unknown = unknown_characters(text, tokenizer)
    if unknown and not replace_unknown:
        shown = ", ".join(repr(c) for c in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise AppInputError(
            f"The text has {len(unknown)} character(s) this model's tokenizer does not know: {shown}. "
            "Tick 'replace unknown characters' to map them to a known one, or edit the text."
        )
    if unknown:
        tokenizer = dataclasses.replace(tokenizer, unknown="replace", replacement=None)
        notes.append(f"Replaced {len(unknown)} unknown character(s) ({', '.join(repr(c) for c in unknown[:8])}) "
                     f"by {tokenizer.replacement!r}.")
    try:
        ids = tokenizer.encode(text)
    except ValueError as err:
        raise AppInputError(f"The text cannot be tokenised: {err}") from err
    if not ids:
        raise AppInputError("The text gives no tokens: paste some text or pick a validation sample.")
    n_total = len(ids)
    if n_total > n_ctx:
        start = int(min(max(start, 0), n_total - n_ctx))
        ids = ids[start : start + n_ctx]
        notes.append(f"The text is {n_total:,} tokens long; the model reads at most {n_ctx}. "
                     f"Showing tokens {start:,}-{start + n_ctx - 1:,} (move the window to see others).")
    else:
        start = 0
    return PreparedText(tuple(ids), tuple(token_strings(tokenizer, ids)), tuple(notes), n_total, start)


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """One display string per token id (characters for a character tokenizer)."""
    chars = getattr(tokenizer, "chars", None)
    if chars is not None:
        return [chars[i] for i in ids]
    out = []
    for i in ids:
        try:
            out.append(tokenizer.decode([i]))
        except Exception:  # noqa: BLE001 (a byte that is not a whole character)
            out.append(f"<{i}>")
    return out


def display_char(s: str) -> str:
    """A token string made visible: newline, tab and space get symbols."""
    return s.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣") or "∅"


ORDER_KINDS = ("random", "left-to-right", "right-to-left", "custom")


def make_order(kind: str, length: int, seed: int = 0, custom: str = "") -> np.ndarray:
    """A generation order σ (σ[t] = position generated at step t) of `length` positions.

    random: uniformly random, seeded; custom: positions separated by commas or spaces, ranges
    `a-b` allowed (e.g. "0-9, 20, 10-19"), and positions left out are appended left to right."""
    if length < 1:
        raise AppInputError("there are no positions to order.")
    if kind == "random":
        generator = torch.Generator().manual_seed(int(seed))
        return random_orders(1, length, generator)[0].numpy()
    if kind == "left-to-right":
        return np.arange(length)
    if kind == "right-to-left":
        return np.arange(length)[::-1].copy()
    if kind == "custom":
        return parse_order(custom, length)
    raise AppInputError(f"unknown order kind {kind!r}; use one of {', '.join(ORDER_KINDS)}.")


def parse_order(text: str, length: int) -> np.ndarray:
    """A custom order from text (see `make_order`); every problem raises AppInputError."""
    items = [t for t in re.split(r"[,\s;]+", text.strip()) if t]
    if not items:
        raise AppInputError(f"The custom order is empty: give positions 0-{length - 1}, e.g. '0-9, 20, 10-19'.")
    positions: list[int] = []
    for item in items:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise AppInputError(f"{item!r} in the custom order is not a position or a range a-b.")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        positions.extend(range(a, b + 1) if a <= b else range(a, b - 1, -1))
        if len(positions) > 4 * length:
            break
    bad = sorted({p for p in positions if p >= length})
    if bad:
        raise AppInputError(f"The custom order names position(s) {bad[:5]} but the text has positions 0-{length - 1} only.")
    seen: set[int] = set()
    repeated = sorted({p for p in positions if p in seen or seen.add(p)})
    if repeated:
        raise AppInputError(f"The custom order repeats position(s) {repeated[:5]}: each position is generated once.")
    rest = [p for p in range(length) if p not in seen]
    return np.array(positions + rest, dtype=np.int64)


# ---- one sequence through the model: patterns and predictions ---------------------------------------------


@dataclass
class SampleRun:
    """Patterns of every (layer, stream) and the log-probabilities of one sequence under one order.

    patterns[(layer, stream)]: [head, row, key] attention probabilities in slot coordinates
    (docs/coordinates.md), float32, or float16 beyond 256 positions to halve the memory.
    log_probs: [pos, vocab] natural-log probabilities in sequence positions."""

    ids: np.ndarray
    order: np.ndarray
    tokens: list[str]
    vocab: list[str]
    patterns: dict[tuple[int, str], np.ndarray]
    log_probs: np.ndarray
    stream_names: tuple[str, ...]
    n_layers: int
    n_heads: int

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def bits(self) -> np.ndarray:
        """NLL of each position in bits, in sequence positions."""
        return -self.log_probs[np.arange(self.length), self.ids] / math.log(2)

    @property
    def bits_by_step(self) -> np.ndarray:
        """NLL in bits of the token generated at each step."""
        return self.bits[self.order]


@torch.no_grad()
def run_sample(loaded: LoadedModel, ids: Sequence[int], order: Sequence[int]) -> SampleRun:
    """One hooked forward pass (under the model's lock) keeping only the pattern hooks."""
    model = loaded.model
    tokens = torch.tensor([list(ids)], dtype=torch.long)
    sigma = torch.as_tensor(np.asarray(order), dtype=torch.long)[None]
    names = {hook_name("pattern", layer, s): (layer, s) for layer in range(model.cfg.n_layers) for s in model.stream_names}
    try:
        with loaded.lock:
            logits, cache = model.run_with_cache(tokens, sigma, names_filter=lambda n: n in names)
    except (ValueError, TypeError) as err:
        raise AppInputError(f"the model cannot run on this input: {err}") from err
    dtype = np.float32 if len(ids) <= 256 else np.float16
    patterns = {key: cache[name][0].float().numpy().astype(dtype, copy=False) for name, key in names.items()}
    tokenizer = model.tokenizer
    vocab = token_strings(tokenizer, range(model.cfg.d_vocab)) if tokenizer is not None else [str(i) for i in range(model.cfg.d_vocab)]
    return SampleRun(
        ids=np.asarray(ids, dtype=np.int64), order=np.asarray(order, dtype=np.int64),
        tokens=[vocab[i] for i in ids], vocab=vocab, patterns=patterns,
        log_probs=torch.log_softmax(logits[0].float(), -1).numpy(),
        stream_names=tuple(model.stream_names), n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads,
    )


@dataclass(frozen=True)
class RowView:
    """One attention row (layer, stream, head) at generation step t, ready to draw.

    Per key (slot coordinates: key 0 is the null key, key j >= 1 the token generated at step
    j-1): its position, step, attention weight, whether it is visible, in S_r, in R_w, its
    recency and semantic distance. `parts` are the row's masses on (S only, R only, both,
    neither) from the probe definition (`pattern_stats`), `chance` what uniform attention gives."""

    layer: int
    stream: str
    head: int
    step: int
    slot: int
    target: int
    """The row's reference position: the target position σ[t] (the content row of step t stands
    for σ[t] itself, the token it holds)."""
    own: int | None
    """Single stream: the position of the token the row holds, σ[t-1] (None at step 0)."""
    key_pos: np.ndarray
    key_step: np.ndarray
    weights: np.ndarray
    visible: np.ndarray
    semantic: np.ndarray
    structural: np.ndarray
    recency: np.ndarray
    distance: np.ndarray
    parts: dict[str, float]
    chance: dict[str, float]
    entropy: float
    r: int
    w: int

    @property
    def null_mass(self) -> float:
        return float(self.weights[0])

    def by_position(self, length: int) -> dict[str, np.ndarray]:
        """Per sequence position: weight (NaN where not a visible key), in_semantic, in_structural,
        step (rank), visible."""
        out = {
            "weight": np.full(length, np.nan), "semantic": np.zeros(length, bool), "structural": np.zeros(length, bool),
            "visible": np.zeros(length, bool), "recency": np.full(length, -1), "distance": np.full(length, -1),
        }
        keys = np.flatnonzero(self.visible & (self.key_pos >= 0))
        pos = self.key_pos[keys]
        out["weight"][pos] = self.weights[keys]
        out["semantic"][pos] = self.semantic[keys]
        out["structural"][pos] = self.structural[keys]
        out["visible"][pos] = True
        out["recency"][pos] = self.recency[keys]
        out["distance"][pos] = self.distance[keys]
        return out


def row_slot(stream: str, step: int) -> int:
    """The row of `stream` that belongs to generation step t: the query (and single-stream) row t
    predicts σ[t]; the content row t+1 holds the token generated at step t."""
    return step + 1 if stream == "content" else step


def attention_row(run: SampleRun, layer: int, stream: str, head: int, step: int, r: int = 4, w: int = 4) -> RowView:
    """The attention row of (layer, stream, head) at step t, with the sets of the probe contract."""
    from workbench.kernels.contract import pattern_stats
    from workbench.probing.causal import set_masks

    if stream not in run.stream_names:
        raise AppInputError(f"stream {stream!r} is not in this model; it has {', '.join(run.stream_names)}.")
    if not (0 <= layer < run.n_layers and 0 <= head < run.n_heads and 0 <= step < run.length):
        raise AppInputError(f"layer {layer}, head {head}, step {step} is outside the model or the text.")
    order = torch.as_tensor(run.order)[None]
    layout = probe_layout(order, stream)
    pattern = run.patterns[(layer, stream)]  # [head, row, key]
    i = row_slot(stream, step)
    n_rows, n_keys = pattern.shape[1], pattern.shape[2]
    semantic, structural = set_masks(layout, n_rows, r, w)
    keys = np.arange(n_keys)
    key_pos = layout.key_pos[0].numpy()
    target = int(layout.row_ref[0, i])
    row = torch.from_numpy(pattern[:, i : i + 1].astype(np.float32))[None]  # [1, head, 1, key]
    own = layout.row_own[0, i : i + 1] if layout.row_own is not None else None
    stats = pattern_stats(row, layout.key_pos, layout.row_ref[:, i : i + 1], None if own is None else own[None],
                          recency_offset=layout.recency_offset, r=r, w=w, row_start=i, n_steps=n_rows)
    names = ("S_only", "R_only", "both", "neither")
    own_pos = int(own[0]) if own is not None and int(own[0]) >= 0 else None
    return RowView(
        layer=layer, stream=stream, head=head, step=step, slot=i, target=target, own=own_pos,
        key_pos=key_pos, key_step=keys - 1, weights=pattern[head, i].astype(np.float64),
        visible=keys <= i, semantic=semantic[0, i].numpy(), structural=structural[0, i].numpy(),
        recency=i - keys + layout.recency_offset,
        distance=np.where(key_pos >= 0, np.abs(key_pos - target), -1),
        parts={n: float(v) for n, v in zip(names, stats.step_parts_mass[head, i].tolist())},
        chance={n: float(v) for n, v in zip(names, stats.step_parts_chance[head, i].tolist())},
        entropy=float(stats.step_entropy[head, i]), r=r, w=w,
    )


def head_pattern(run: SampleRun, layer: int, stream: str, head: int, coordinates: str = "generation") -> dict[str, Any]:
    """A head's whole pattern for drawing: "generation" keeps slot coordinates (rows and keys in
    the order they were generated); "sequence" puts rows at their reference position and keys at
    their position (the null key first, column -1). Returns z [row, key], row and key labels."""
    pattern = run.patterns[(layer, stream)][head].astype(np.float32)  # [row, key]
    order = torch.as_tensor(run.order)[None]
    layout = probe_layout(order, stream)
    key_pos = layout.key_pos[0].numpy()
    row_ref = layout.row_ref[0].numpy()
    n_rows, n_keys = pattern.shape
    visible = np.arange(n_keys)[None, :] <= np.arange(n_rows)[:, None]
    z = np.where(visible, pattern, np.nan)
    if coordinates == "generation":
        return {"z": z, "rows": np.arange(n_rows), "keys": np.arange(n_keys) - 1,
                "row_title": "row (slot, generation order)", "key_title": "key: step it was generated (-1 = null key)"}
    probed = np.flatnonzero(row_ref >= 0)
    rows = probed[np.argsort(row_ref[probed])]
    real = np.flatnonzero(key_pos >= 0)
    cols = np.concatenate([[0], real[np.argsort(key_pos[real])]])
    zz = z[rows][:, cols]
    key_labels = np.concatenate([[-1], np.sort(key_pos[real])])
    return {"z": zz, "rows": row_ref[rows], "keys": key_labels,
            "row_title": "row: reference (target) position", "key_title": "key position (-1 = null key)"}


def top_predictions(run: SampleRun, step: int, k: int = 10) -> pd.DataFrame:
    """The model's top-k tokens for the position generated at step t: token, probability, and
    whether it is the true token (the true token is added as an extra row if outside the top k)."""
    pos = int(run.order[step])
    probs = np.exp(run.log_probs[pos].astype(np.float64))
    top = np.argsort(-probs)[:k]
    truth = int(run.ids[pos])
    ranks = int((probs > probs[truth]).sum()) + 1
    rows = [{"token": run.vocab[i], "probability": float(probs[i]), "rank": n + 1, "true": int(i) == truth}
            for n, i in enumerate(top)]
    if truth not in top:
        rows.append({"token": run.vocab[truth], "probability": float(probs[truth]), "rank": ranks, "true": True})
    return pd.DataFrame(rows)


# ---- live causal checks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadRef:
    layer: int
    stream: str
    head: int

    @property
    def name(self) -> str:
        return f"L{self.layer}.{self.stream}.H{self.head}"

    @classmethod
    def parse(cls, text: str) -> HeadRef:
        m = re.fullmatch(r"L(\d+)\.(\w+)\.H(\d+)", text.strip())
        if not m:
            raise AppInputError(f"{text!r} is not a head name like 'L2.query.H3'.")
        return cls(int(m.group(1)), m.group(2), int(m.group(3)))


INTERVENTIONS = {
    "zero ablation": ("zero", ""),
    "mean ablation": ("mean", ""),
    "knock out semantic set S_r": ("knockout", "semantic"),
    "knock out structural set R_w": ("knockout", "structural"),
    "knock out random keys (as many as S_r)": ("knockout", "random:semantic"),
    "knock out random keys (as many as R_w)": ("knockout", "random:structural"),
}


@dataclass
class CausalRun:
    """Clean and intervened bits/token per sequence, and the effects with 95% CIs."""

    clean_bits: np.ndarray  # [sequence]
    effects: pd.DataFrame  # what, heads, dnll, ci, n, bits
    n_sequences: int
    seq_len: int


def val_windows(loaded: LoadedModel, n_sequences: int, seq_len: int | None = None) -> torch.Tensor:
    """The first `n_sequences` non-overlapping validation windows ([sequence, pos] token ids)."""
    from workbench.data import sequential_windows

    model = loaded.model
    info = getattr(model, "checkpoint", None)
    seq_len = model.cfg.n_ctx if seq_len is None else seq_len
    name = info.data.get("val_text") if info is not None else None
    if not name or not (info.path / name).is_file():
        raise AppInputError(f"checkpoint {loaded.name} bundles no validation text (val.txt), so there are no sequences to test on.")
    text = (info.path / name).read_text(encoding="utf-8")[: (n_sequences + 1) * seq_len * 4]
    tokens = model.tokenizer.encode_tensor(text)
    windows = sequential_windows(tokens, seq_len)
    if windows.shape[0] == 0:
        raise AppInputError(f"the validation text of {loaded.name} is shorter than one window of {seq_len} tokens.")
    return windows[:n_sequences]


@torch.no_grad()
def run_causal(
    loaded: LoadedModel,
    heads: Sequence[HeadRef],
    kinds: Sequence[str],
    *,
    n_sequences: int = 8,
    r: int = 4,
    w: int = 4,
    seed: int = 0,
    joint: bool = True,
) -> CausalRun:
    """ΔNLL (bits/token, intervened - clean, paired per sequence, 95% CI over sequences) of each
    intervention kind (keys of INTERVENTIONS) applied to `heads`: all heads at once (`joint`) or
    each head on its own. Sequences: validation windows under seeded random orders. The hooks
    are the probes' own (`workbench.probing.causal.intervention_hook`)."""
    from workbench.probing.causal import LN2, Effect, Intervention, intervention_hook, mean_z

    model = loaded.model
    if not heads:
        raise AppInputError("Pick at least one head.")
    if not kinds:
        raise AppInputError("Pick at least one intervention.")
    for h in heads:
        if h.stream not in model.stream_names or not (0 <= h.layer < model.cfg.n_layers and 0 <= h.head < model.cfg.n_heads):
            raise AppInputError(f"head {h.name} is not in {loaded.name} (streams {', '.join(model.stream_names)}, "
                                f"{model.cfg.n_layers} layers, {model.cfg.n_heads} heads).")
    tokens = val_windows(loaded, n_sequences)
    generator = torch.Generator().manual_seed(int(seed))
    order = random_orders(tokens.shape[0], tokens.shape[1], generator)
    groups = [list(heads)] if joint else [[h] for h in heads]
    rows = []
    with loaded.lock:
        clean = model.nll(tokens, order).double().mean(-1) / LN2
        z_means = mean_z(model, tokens, order) if any(INTERVENTIONS[k][0] == "mean" for k in kinds) else None
        masks: dict = {}
        for kind_name in kinds:
            kind, key_set = INTERVENTIONS[kind_name]
            for group in groups:
                hooks = [
                    intervention_hook(model, tokens, order, Intervention(kind, h.layer, h.stream, h.head, key_set),
                                      r=r, w=w, generator=torch.Generator().manual_seed(int(seed) + 1), z_means=z_means, masks=masks)
                    for h in group
                ]
                with model.hooks(fwd_hooks=hooks):
                    bits = model.nll(tokens, order).double().mean(-1) / LN2
                effect = Effect.of(bits - clean)
                rows.append({"intervention": kind_name, "heads": ", ".join(h.name for h in group), "dnll": effect.mean,
                             "ci": effect.ci, "n": effect.n, "bits": float(bits.mean())})
    return CausalRun(clean.numpy(), pd.DataFrame(rows), int(tokens.shape[0]), int(tokens.shape[1]))


# ---- order divergence (no model) ------------------------------------------------------------------------------------


def divergence_live(lengths: Sequence[int], ks: Sequence[int], n_orders: int = 16, seed: int = 0) -> pd.DataFrame:
    """`workbench.probing.divergence.order_divergence` as a frame: length, k, overlap, chance, ci."""
    from workbench.probing.divergence import order_divergence

    if n_orders < 2:
        raise AppInputError("Use at least 2 orders per length (the interval needs two).")
    points = order_divergence(list(lengths), tuple(ks), n_orders=n_orders, seed=seed)
    return pd.DataFrame([{"length": p.length, "k": p.k, "overlap": p.overlap, "chance": p.chance, "ci": p.ci}
                         for p in points], columns=["length", "k", "overlap", "chance", "ci"])


def divergence_example(length: int, step: int, k: int, seed: int = 0) -> dict[str, Any]:
    """For one random order of `length` positions and the row at `step`: the target position,
    the positions of the k visible keys nearest it and of the k most recent keys, and which
    positions are visible (generated before the step)."""
    from workbench.probing.divergence import nearest_keys

    if not 1 <= k < length:
        raise AppInputError(f"k={k} must be between 1 and the length - 1 = {length - 1}.")
    step = int(min(max(step, k), length - 1))
    order = make_order("random", length, seed)
    sigma = torch.as_tensor(order)[None]
    nearest_steps = nearest_keys(sigma, k)[0, step, :k].numpy()
    recent_steps = np.arange(step - k, step)
    near, recent = order[nearest_steps], order[recent_steps]
    return {
        "order": order, "step": step, "target": int(order[step]), "visible": np.sort(order[:step]),
        "nearest": np.sort(near), "recent": np.sort(recent), "overlap": len(set(near.tolist()) & set(recent.tolist())) / k,
    }


# ---- the displayed row in either coordinate system ------------------------------------------------------------

COORDINATES = ("sequence positions", "generation order")


def row_cells(run: SampleRun, row: RowView, coordinates: str = "sequence positions") -> dict[str, Any]:
    """What `viz.text_grid` draws for a row: per cell (a position, or a step in generation order)
    the token, attention (NaN: not a key of this row), set membership, and the cells of the
    target and of the row's own token; `positions` and `steps` label the cells."""
    by_pos = row.by_position(run.length)
    rank = np.empty(run.length, dtype=np.int64)
    rank[run.order] = np.arange(run.length)
    if coordinates == "generation order":
        cells = run.order  # cell s shows the position generated at step s
        target_cell = row.step
        own_cell = row.step - 1 if row.own is not None else None
    else:
        cells = np.arange(run.length)
        target_cell = row.target
        own_cell = row.own
    return {
        "tokens": [run.tokens[p] for p in cells],
        "weight": by_pos["weight"][cells],
        "semantic": by_pos["semantic"][cells],
        "structural": by_pos["structural"][cells],
        "positions": cells,
        "steps": rank[cells],
        "target": int(target_cell),
        "own": None if own_cell is None else int(own_cell),
    }


def row_bars(run: SampleRun, row: RowView, coordinates: str = "sequence positions") -> dict[str, Any]:
    """What `viz.attention_bars` draws: one bar per visible key at its position (or the step it was
    generated at), coloured by its part; the null key at -1; chance = 1 / |V|."""
    keys = np.flatnonzero(row.visible)
    x = row.key_pos[keys] if coordinates == "sequence positions" else row.key_step[keys]
    categories, hover = [], []
    for j in keys:
        if row.key_pos[j] < 0:
            categories.append("null key")
            hover.append(f"null key (BOS)<br>attention {row.weights[j]:.4f}")
            continue
        s, r_ = bool(row.semantic[j]), bool(row.structural[j])
        categories.append("both" if s and r_ else "S only" if s else "R only" if r_ else "neither")
        p = int(row.key_pos[j])
        hover.append(f"pos {p} {display_char(run.tokens[p])!r} · generated at step {int(row.key_step[j])}"
                     f"<br>distance to target {int(row.distance[j])} · recency {int(row.recency[j])}"
                     f"<br>attention {row.weights[j]:.4f}")
    return {"x": x, "weights": row.weights[keys], "categories": categories, "hover": hover, "chance": 1.0 / len(keys),
            "x_title": "key position (-1 = null key)" if coordinates == "sequence positions" else "step the key was generated (-1 = null key)"}


def row_summary(run: SampleRun, row: RowView) -> str:
    """One sentence on what the row is: which position it predicts or holds and what it sees."""
    t, target = row.step, row.target
    char = display_char(run.tokens[target])
    n_keys = int(row.visible.sum()) - 1
    if row.stream == "content":
        return (f"Step {t} generates position {target} ({char!r}). The content row of step {t} holds that token and sees "
                f"the {n_keys} tokens generated at steps ≤ {t} (itself included) plus the null key.")
    held = f" and holds the token at position {row.own} ({display_char(run.tokens[row.own])!r}, generated at step {t - 1})" if row.own is not None else ""
    return (f"Step {t} generates position {target} ({char!r}, hidden from the model). The {row.stream} row predicts it{held}; "
            f"it sees the {n_keys} tokens generated before step {t} plus the null key.")
