"""The Sample browser's data: one sequence through the model (patterns and predictions), one
attention row with the probe contract's sets, and what the figures draw of it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench.app_data.common import AppInputError, LoadedModel
from workbench.app_data.text import display_char, token_strings
from workbench.hook_names import hook_name
from workbench.orders import probe_layout

__all__ = ["SampleRun", "run_sample", "RowView", "row_slot", "attention_row", "head_pattern", "top_predictions", "COORDINATES", "row_cells", "row_bars", "row_summary", "row_frame", "row_arrays"]


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


def row_frame(run: SampleRun, row: RowView) -> pd.DataFrame:
    """The displayed row as a table, one line per visible key (the null key first): slot, position
    (-1: null key), step it was generated at, token, attention, in S_r, in R_w, distance, recency."""
    keys = np.flatnonzero(row.visible)
    pos = row.key_pos[keys]
    return pd.DataFrame({
        "slot": keys, "position": pos, "step": row.key_step[keys],
        "token": ["<null>" if p < 0 else run.tokens[p] for p in pos], "attention": row.weights[keys],
        "in_S_r": row.semantic[keys], "in_R_w": row.structural[keys], "distance": row.distance[keys], "recency": row.recency[keys],
    })


def row_arrays(run: SampleRun, row: RowView) -> dict[str, np.ndarray]:
    """The row and its head's whole pattern as arrays (slot coordinates, docs/coordinates.md):
    `row` [key] attention (0 past the row's last visible key), `pattern` [row, key], `key_pos`,
    `order` (σ), `token_ids`, `semantic` / `structural` [key] set masks."""
    return {
        "row": np.where(row.visible, row.weights, 0.0).astype(np.float32),
        "pattern": run.patterns[(row.layer, row.stream)][row.head].astype(np.float32),
        "key_pos": row.key_pos.astype(np.int64), "order": run.order.astype(np.int64), "token_ids": run.ids.astype(np.int64),
        "semantic": row.semantic.astype(np.uint8), "structural": row.structural.astype(np.uint8),
    }
