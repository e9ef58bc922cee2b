"""The Causal checks page's data: ablation and knockout results from a probe table, and live
interventions on validation windows (the probes' own hooks)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.app_data.common import AppInputError, LoadedModel
from workbench.orders import random_orders

__all__ = ["ablation_frame", "knockout_frame", "HeadRef", "INTERVENTIONS", "CausalRun", "val_windows", "run_causal", "EFFECT_COLUMNS", "effect_table"]


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
    effects: pd.DataFrame  # intervention, heads, dnll, ci, n, bits, excess, excess_ci
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
    """ΔNLL (bits/token, intervened - clean, paired per sequence, 95% CI over blocks of contiguous
    windows, or over sequences when there are fewer than 32: `workbench.stats.window_mean`) of each
    intervention kind (keys of INTERVENTIONS) applied to `heads`: all heads at once (`joint`) or
    each head on its own. Sequences: validation windows under seeded random orders. The hooks
    are the probes' own (`workbench.probing.causal.intervention_hook`)."""
    from workbench.probing.causal import LN2, Intervention, intervention_hook, mean_z
    from workbench.stats import window_mean

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
    rows, deltas = [], {}
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
                names = ", ".join(h.name for h in group)
                deltas[(kind, key_set, names)] = bits - clean
                effect = window_mean(bits - clean)
                rows.append({"intervention": kind_name, "heads": names, "dnll": effect.mean,
                             "ci": effect.half_width, "n": effect.n, "bits": float(bits.mean())})
    for row in rows:  # a set knockout's paired excess over the random keys of the same size, when both ran
        kind, key_set = INTERVENTIONS[row["intervention"]]
        control = deltas.get(("knockout", f"random:{key_set}", row["heads"])) if kind == "knockout" else None
        excess = window_mean(deltas[(kind, key_set, row["heads"])] - control) if control is not None else None
        row["excess"], row["excess_ci"] = (excess.mean, excess.half_width) if excess is not None else (math.nan, math.nan)
    return CausalRun(clean.numpy(), pd.DataFrame(rows), int(tokens.shape[0]), int(tokens.shape[1]))


EFFECT_COLUMNS = {
    "dnll": "ΔNLL (bits/token)", "ci": "± 95%", "random_dnll": "ΔNLL, random keys", "random_ci": "± 95% (random)",
    "excess": "excess over random (paired)", "excess_ci": "± 95% (excess)", "keys": "keys knocked out",
    "bits": "intervened bits/token", "n": "sequences",
}
"""Display names of the columns of `knockout_frame`, `ablation_frame` and `CausalRun.effects`."""


def effect_table(frame: pd.DataFrame) -> pd.DataFrame:
    """A causal frame with readable column names (EFFECT_COLUMNS) for tables and downloads."""
    return frame.rename(columns=EFFECT_COLUMNS)
