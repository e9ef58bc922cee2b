"""The Overview's study section: the length-effect study's committed results as frames, and its
verdict in one sentence per variant (docs/study.md says how they are made).

- `results/study.json` (`scripts/study.py evaluate`): one row per (variant, length, seed), the paired
  gap of each variant to two_stream per (length, seed), the gap over seeds (t interval, seeds as
  replicates) and its change from the shortest to the longest length over seeds;
- `results/study-curves.json`, `results/study-emergence.json` (`scripts/study_results.py`): the
  validation curves of every run (and of the size sweep), and the per-stream head labels of each
  seed-0 run's snapshots along training.

Every loader raises `AppInputError` naming the missing file and how to make it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from workbench.app_data.common import AppInputError, results_dir, shown_path

__all__ = ["STUDY_FILES", "RESOLUTION", "PLATEAU", "study_runs", "study_seed_gaps", "study_gaps", "study_length_effect",
           "study_curves", "study_emergence", "study_verdict", "study_pending", "study_stalled", "stalled_note"]

STUDY_FILES = ("study.json", "study-curves.json", "study-emergence.json")
RESOLUTION = 0.03
"""bits/token: the change of the gap with length that the study must tell from zero (issue 16's
target: a 95% half-width below this)."""
PLATEAU = 0.25
"""A run that lowered its validation bits/token from its first evaluation by less than this
fraction of what the baseline (two_stream, same length and seed) achieved did not leave its
initial plateau (σ-GPT under the study's recipe, docs/study.md): it has not learned the task, so
its gaps say more about its optimisation than about length."""
_HOW = {"study.json": "`python scripts/study.py evaluate --runs runs/study --out results/study.json`",
        "study-curves.json": "`python scripts/study_results.py --runs runs/study`",
        "study-emergence.json": "`python scripts/study_results.py --runs runs/study`"}
_RUN_NAME = re.compile(r"^(?P<variant>.+)-(?P<length>\d+)-s(?P<seed>\d+)$")


def _read(name: str, root: Path | None):
    path = (results_dir() if root is None else Path(root)) / name
    if not path.is_file():
        raise AppInputError(f"no study results at {shown_path(path)}: the study has not reported yet. Make it with {_HOW[name]} "
                            "(docs/study.md).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AppInputError(f"{shown_path(path)} is not valid JSON ({err}); regenerate it with {_HOW[name]}.") from err


@contextmanager
def _format_of(name: str):
    """A missing or mistyped field of the study file `name` is an AppInputError naming the file."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise AppInputError(f"{name} is not in the format of the study's scripts ({err!r}); regenerate it with {_HOW[name]}.") from err


def _float(value) -> float:
    """A stored number; NaN for null (json writes a NaN interval, one seed, as NaN or null)."""
    return math.nan if value is None else float(value)


def _half(e: Mapping) -> float:
    """Half-width of a stored interval (NaN where there is none: one seed)."""
    return (_float(e["ci_high"]) - _float(e["ci_low"])) / 2


def study_runs(root: Path | None = None) -> pd.DataFrame:
    """One row per run: variant, length, seed, parameters, training tokens (at the best model),
    FLOPs, any-order and left-to-right bits/token on the held-out split with 95% half-widths."""
    study = _read("study.json", root)
    with _format_of("study.json"):
        rows = [{"variant": r["variant"], "length": int(r["seq_len"]), "seed": int(r["seed"]), "n_params": int(r["n_params"]),
                 "tokens": int(r["tokens"]), "flops": float(r["flops"]),
                 "any_order": r["any_order"]["mean"], "any_order_ci": _half(r["any_order"]),
                 "left_to_right": r["left_to_right"]["mean"], "left_to_right_ci": _half(r["left_to_right"])} for r in study["runs"]]
    frame = pd.DataFrame(rows, columns=["variant", "length", "seed", "n_params", "tokens", "flops", "any_order", "any_order_ci",
                                        "left_to_right", "left_to_right_ci"])
    return frame.sort_values(["length", "variant", "seed"]).reset_index(drop=True)


def study_seed_gaps(root: Path | None = None) -> pd.DataFrame:
    """The gap of each variant to its baseline per (length, seed): paired, both on the same windows
    and orders, with the 95% half-width over blocks of contiguous windows."""
    study = _read("study.json", root)
    with _format_of("study.json"):
        rows = [{"variant": g["variant"], "baseline": g["baseline"], "length": int(g["seq_len"]), "seed": int(g["seed"]),
                 "gap": g["mean"], "ci": _half(g)} for g in study["gaps"]]
    return pd.DataFrame(rows, columns=["variant", "baseline", "length", "seed", "gap", "ci"])


def study_gaps(root: Path | None = None) -> pd.DataFrame:
    """The gap to two_stream per (variant, length) over seeds (the seeds as replicates, t with
    n_seeds - 1 degrees of freedom): mean, 95% interval, half-width (NaN for one seed), n_seeds."""
    study = _read("study.json", root)
    with _format_of("study.json"):
        rows = [{"variant": g["variant"], "length": int(g["seq_len"]), "gap": g["mean"], "ci_low": _float(g["ci_low"]),
                 "ci_high": _float(g["ci_high"]), "ci": _half(g), "n_seeds": len(g["seeds"])} for g in study["gaps_over_seeds"]]
    return pd.DataFrame(rows, columns=["variant", "length", "gap", "ci_low", "ci_high", "ci", "n_seeds"])


def study_length_effect(root: Path | None = None) -> pd.DataFrame:
    """Per variant: the change of its gap to the baseline from the shortest length to the longest,
    one value per seed (`per_seed`, "seed: value"), their mean and 95% t interval over seeds."""
    study = _read("study.json", root)
    with _format_of("study.json"):
        rows = [{"variant": e["variant"], "baseline": e["baseline"], "from": int(e["from"]), "to": int(e["to"]),
                 "change": e["mean"], "ci_low": _float(e["ci_low"]), "ci_high": _float(e["ci_high"]), "ci": _half(e),
                 "n_seeds": len(e["per_seed"]),
                 "per_seed": ", ".join(f"{s}: {v:+.3f}" for s, v in sorted(e["per_seed"].items(), key=lambda i: int(i[0])))}
                for e in study["length_effect"]]
    return pd.DataFrame(rows, columns=["variant", "baseline", "from", "to", "change", "ci_low", "ci_high", "ci", "n_seeds", "per_seed"])


def study_curves(root: Path | None = None) -> pd.DataFrame:
    """Every validation evaluation of every run, long format: kind ("run", or "sweep" for the size
    sweep), run, variant, length, seed, tokens, any-order and left-to-right bits/token, and `best`
    (the evaluation whose model is the run's best/)."""
    curves = _read("study-curves.json", root)
    with _format_of("study-curves.json"):
        rows = [{"kind": kind, "run": name, "variant": c["variant"], "length": int(c["seq_len"]), "seed": int(c["seed"]),
                 "tokens": int(e["tokens"]), "any_order_bits": e["any_order_bits"], "left_to_right_bits": e["left_to_right_bits"],
                 "best": e["tokens"] == c["best_tokens"]}
                for kind, key in (("run", "runs"), ("sweep", "sweep")) for name, c in curves.get(key, {}).items() for e in c["evals"]]
    return pd.DataFrame(rows, columns=["kind", "run", "variant", "length", "seed", "tokens", "any_order_bits", "left_to_right_bits", "best"])


_SUMMARY_FIELDS = {"model", "tokens", "stream", "heads", "n_sequences", "median index − chance", "median e_S"}
"""The fields of an emergence row that are not a label's count."""


def study_emergence(root: Path | None = None) -> pd.DataFrame:
    """How many heads of each stream carry each label along training, long format: run, variant,
    length, seed, model ("step-NNNNNN" or "best"), tokens seen, stream, heads (of the stream),
    label (semantic, structural, sink, then any other label), count, median index − chance."""
    emergence = _read("study-emergence.json", root)
    rows = []
    with _format_of("study-emergence.json"):
        for run, models in emergence.items():
            name = _RUN_NAME.match(run)
            if name is None:
                raise ValueError(f"run name {run!r} is not <variant>-<length>-s<seed>")
            for m in models:
                rows += [{"run": run, "variant": name["variant"], "length": int(name["length"]), "seed": int(name["seed"]),
                          "model": m["model"], "tokens": int(m["tokens"]), "stream": m["stream"], "heads": int(m["heads"]),
                          "label": label, "count": int(m[label]), "median index − chance": m["median index − chance"]}
                         for label in m if label not in _SUMMARY_FIELDS]
    return pd.DataFrame(rows, columns=["run", "variant", "length", "seed", "model", "tokens", "stream", "heads", "label", "count",
                                       "median index − chance"])


def study_verdict(effect: Mapping) -> str:
    """One sentence on a variant's length effect (a row of `study_length_effect`): the change of its
    gap with its 95% interval over seeds, whether the interval excludes 0 (if not, which changes it
    still allows), and whether it is narrow enough to tell a change of `RESOLUTION` from zero.
    With fewer than two seeds there is no interval, and the sentence says so rather than read the
    mean as an effect."""
    n, half = int(effect["n_seeds"]), float(effect["ci"])
    what = f"{effect['variant']} − {effect['baseline']} changes by {effect['change']:+.3f}"
    where = f"bits/token from {effect['from']} to {effect['to']}"
    if n < 2 or not math.isfinite(half):
        return (f"{what} {where} ({n} seed): with fewer than two seeds there is no interval over seeds, so this cannot tell a "
                "length effect from run-to-run variation.")
    if effect["ci_low"] <= 0 <= effect["ci_high"]:
        reading = (f"the interval includes 0 — no length effect detected at this resolution (compatible with changes from "
                   f"{effect['ci_low']:+.3f} to {effect['ci_high']:+.3f}; larger ones either way are ruled out)")
    else:
        reading = f"the interval excludes 0 — the gap {'grows' if effect['change'] > 0 else 'shrinks'} with length"
    power = (f"it can tell a {RESOLUTION} bits/token change from zero (half-width {half:.3f} < {RESOLUTION})" if half < RESOLUTION else
             f"it is too wide to tell a {RESOLUTION} bits/token change from zero (half-width {half:.3f} ≥ {RESOLUTION}): more seeds would narrow it")
    return f"{what} ± {half:.3f} {where} ({n} seeds, 95% t interval over seeds): {reading}; {power}."


def study_stalled(curves: pd.DataFrame, baseline: str = "two_stream") -> pd.DataFrame:
    """The runs (of `study_curves`, kind "run") that did not leave their initial plateau: their
    drop in validation any-order bits/token, first evaluation to best, is less than `PLATEAU` x
    the drop of the `baseline` run of the same length and seed. Columns: variant, length, seed,
    first, best, drop, baseline_drop (bits/token)."""
    runs = curves[curves["kind"] == "run"].sort_values("tokens")
    by_run = runs.groupby(["variant", "length", "seed"])["any_order_bits"]
    frame = pd.DataFrame({"first": by_run.first(), "best": by_run.min()}).reset_index()
    frame["drop"] = frame["first"] - frame["best"]
    base = frame[frame["variant"] == baseline][["length", "seed", "drop"]].rename(columns={"drop": "baseline_drop"})
    frame = frame[frame["variant"] != baseline].merge(base, on=["length", "seed"])
    return frame[frame["drop"] < PLATEAU * frame["baseline_drop"]].reset_index(drop=True)


def stalled_note(variant: str, stalled: pd.DataFrame, runs: pd.DataFrame) -> str | None:
    """A warning for the verdict on `variant` when some of its runs did not learn (`stalled`:
    `study_stalled`; `runs`: `study_runs`, for how many runs each length has), else None."""
    mine = stalled[stalled["variant"] == variant]
    if mine.empty:
        return None
    per_length = ", ".join(f"{len(g)} of {int(((runs['variant'] == variant) & (runs['length'] == length)).sum())} at {length}"
                           for length, g in mine.groupby("length"))
    return (f"{variant}: {per_length} did not leave the initial plateau (its validation loss fell by less than {PLATEAU:.0%} of "
            "what two_stream's fell with the same seed): its gap measures a failure to learn under this recipe, not a length effect "
            "(docs/study.md).")


def study_pending(gaps: pd.DataFrame) -> str:
    """What the Overview says while the study has reported fewer than two lengths (`gaps`: the
    frame of `study_gaps`): which lengths are in, and that the verdict waits for another."""
    lengths = sorted(int(n) for n in gaps["length"].unique())
    have = ", ".join(map(str, lengths)) if lengths else "none"
    return (f"The study has reported length {have} only: the length effect is the change of a gap between two lengths, "
            "so there is no verdict yet. The gap at each reported length, with its interval over seeds, is below.")
