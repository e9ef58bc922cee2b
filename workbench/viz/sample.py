"""Sample-browser figures: where one attention row looks over the text, the row as bars in
generation order or in sequence positions, a head's whole pattern (downsampled when long), the
model's prediction and the NLL along the generation. Inputs are arrays and strings."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from workbench.viz.style import OWN_COLOUR, PART_COLOURS, TARGET_COLOUR, base_layout

MAX_CELLS = 256
"""A drawn pattern has at most this many rows and columns; longer ones are block-averaged."""


def _visible_char(s: str) -> str:
    return s.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣") or "∅"


def text_grid(
    tokens: Sequence[str],
    weight: np.ndarray,
    *,
    target: int,
    semantic: np.ndarray,
    structural: np.ndarray,
    positions: np.ndarray | None = None,
    steps: np.ndarray | None = None,
    own: int | None = None,
    target_note: str = "target: predicted, hidden from the model",
    columns: int = 64,
    window: tuple[int, int] | None = None,
    title: str = "",
) -> go.Figure:
    """The text laid out in lines of `columns` cells, each coloured by the attention the row puts on
    that token (grey: not a key of this row, i.e. not generated yet). Cells are positions, or
    steps in generation order (then `positions` says which position each cell shows); `target`
    and `own` are cell indices.

    Marked: the target position (magenta box; its token is what the row predicts, hidden from
    the model), the semantic set S_r (green box), the structural set R_w (orange inner box) and,
    for single-stream rows, the position of the token the row holds (black dotted box).
    `window` = (start, stop) draws only those positions (long texts)."""
    n = len(tokens)
    start, stop = window if window is not None else (0, n)
    start, stop = max(0, start), min(n, stop)
    count = stop - start
    n_rows = max(1, math.ceil(count / columns))
    z = np.full((n_rows, columns), np.nan)
    hover = np.full((n_rows, columns), "", dtype=object)
    xs, ys, chars, colours = [], [], [], []
    finite = weight[start:stop][np.isfinite(weight[start:stop])]
    zmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    for p in range(start, stop):
        k = p - start
        row, col = divmod(k, columns)
        w = weight[p]
        z[row, col] = w
        char = _visible_char(tokens[p])
        status = (target_note if p == target else "key of this row (generated)" if np.isfinite(w) else "not generated yet")
        sets = ", ".join(n for n, m in (("S_r", semantic[p]), ("R_w", structural[p])) if m) or "none"
        pos = int(positions[p]) if positions is not None else p
        hover[row, col] = (f"pos {pos} {char!r}<br>{status}"
                           + (f"<br>generated at step {int(steps[p])}" if steps is not None else "")
                           + (f"<br>attention {w:.4f}" if np.isfinite(w) else "") + f"<br>sets: {sets}")
        xs.append(col)
        ys.append(row)
        chars.append(char)
        dark = np.isfinite(w) and w > 0.55 * zmax
        colours.append("white" if dark else ("#111" if np.isfinite(w) or p == target else "#9a9a9a"))
    fig = go.Figure()
    fig.add_trace(go.Heatmap(
        z=z, zmin=0, zmax=zmax, colorscale="Blues", xgap=1, ygap=1, hovertext=hover, hoverinfo="text",
        colorbar=dict(title=dict(text="attention", side="right"), thickness=10, len=0.9), name="attention",
    ))
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="text", text=chars, textfont=dict(color=colours, size=14, family="DejaVu Sans Mono, monospace"),
        hoverinfo="skip", showlegend=False,
    ))

    shapes = []  # plain dicts, set once: add_shape per cell costs a validation pass each

    def box(p: int, colour: str, width: float, inset: float, dash: str = "solid") -> None:
        row, col = divmod(p - start, columns)
        shapes.append(dict(type="rect", x0=col - 0.5 + inset, x1=col + 0.5 - inset, y0=row - 0.5 + inset,
                           y1=row + 0.5 - inset, line=dict(color=colour, width=width, dash=dash), layer="above"))

    for p in range(start, stop):
        if semantic[p]:
            box(p, PART_COLOURS["S only"], 2, 0.04)
        if structural[p]:
            box(p, PART_COLOURS["R only"], 2, 0.17)
    if own is not None and start <= own < stop:
        box(own, OWN_COLOUR, 2, 0.24, "dot")
    if start <= target < stop:
        box(target, TARGET_COLOUR, 3.5, -0.02)
    legend = [("target position", TARGET_COLOUR, "square-open"), ("semantic set S_r", PART_COLOURS["S only"], "square-open"),
              ("structural set R_w", PART_COLOURS["R only"], "square-open")]
    if own is not None:
        legend.append(("own position (token the row holds)", OWN_COLOUR, "square-open"))
    for name, colour, symbol in legend:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker=dict(symbol=symbol, size=13, color=colour, line=dict(width=2.5, color=colour))))
    fig.update_xaxes(visible=False, range=[-0.5, columns - 0.5])
    fig.update_yaxes(visible=False, range=[n_rows - 0.5, -0.5])
    height = 110 + 34 * n_rows
    return base_layout(fig, title, height=height, legend=dict(orientation="h", y=-0.02, yanchor="top", x=0),
                       margin=dict(l=10, r=10, t=50 if title else 10, b=40), shapes=shapes, plot_bgcolor="#f2f2f2")


def attention_bars(
    x: Sequence[int],
    weights: np.ndarray,
    categories: Sequence[str],
    hover: Sequence[str],
    *,
    chance: float,
    x_title: str,
    title: str = "",
) -> go.Figure:
    """The row's attention on each visible key as bars, coloured by the key's part (S only, R only,
    both, neither, null key), with uniform attention 1/|V| as a dashed line."""
    x, weights = np.asarray(x), np.asarray(weights)
    cats = np.asarray(categories)
    hover = np.asarray(hover, dtype=object)
    fig = go.Figure()
    for cat in ("null key", "S only", "R only", "both", "neither"):
        m = cats == cat
        if not m.any():
            continue
        fig.add_trace(go.Bar(x=x[m], y=weights[m], name=cat, marker_color=PART_COLOURS[cat], hovertext=hover[m],
                             hoverinfo="text", marker_line_width=0))
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text="attention", rangemode="tozero")
    return base_layout(
        fig, title, height=300, barmode="overlay", bargap=0.1, legend=dict(orientation="h", y=1.15, x=1, xanchor="right"),
        shapes=[dict(type="line", xref="paper", x0=0, x1=1, y0=chance, y1=chance, line=dict(dash="dash", color="#777", width=1))],
        annotations=[dict(xref="paper", x=1, y=chance, yanchor="bottom", xanchor="right", showarrow=False,
                          text=f"uniform 1/|V| = {chance:.3f}", font=dict(size=11, color="#555"))],
    )


def _block_mean(z: np.ndarray, max_cells: int) -> tuple[np.ndarray, int, int]:
    """Average [rows, cols] over blocks so that neither side exceeds max_cells (NaN-aware)."""
    fr = max(1, math.ceil(z.shape[0] / max_cells))
    fc = max(1, math.ceil(z.shape[1] / max_cells))
    if fr == 1 and fc == 1:
        return z, 1, 1
    rows, cols = math.ceil(z.shape[0] / fr) * fr, math.ceil(z.shape[1] / fc) * fc
    padded = np.full((rows, cols), np.nan)
    padded[: z.shape[0], : z.shape[1]] = z
    blocks = padded.reshape(rows // fr, fr, cols // fc, fc)
    with warnings.catch_warnings():  # all-NaN blocks (above the diagonal) stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(blocks, axis=(1, 3)), fr, fc


def pattern_heatmap(
    z: np.ndarray,
    rows: np.ndarray,
    keys: np.ndarray,
    *,
    row_title: str,
    key_title: str,
    highlight_row: int | None = None,
    title: str = "",
    max_cells: int = MAX_CELLS,
) -> go.Figure:
    """A head's attention pattern [row, key] (NaN where a key is not visible). Longer than
    `max_cells` rows or keys, it is block-averaged and the title says by how much; the row
    `highlight_row` (an entry of `rows`) is marked with a line."""
    small, fr, fc = _block_mean(np.asarray(z, dtype=np.float64), max_cells)
    row_labels, key_labels = np.asarray(rows)[::fr][: small.shape[0]], np.asarray(keys)[::fc][: small.shape[1]]
    note = f" (averaged over {fr}x{fc} blocks)" if fr > 1 or fc > 1 else ""
    fig = go.Figure(go.Heatmap(
        z=small, x=np.arange(small.shape[1]), y=np.arange(small.shape[0]), colorscale="Blues", zmin=0,
        customdata=np.dstack(np.meshgrid(key_labels, row_labels)),
        hovertemplate=f"{row_title}: %{{customdata[1]}}<br>{key_title}: %{{customdata[0]}}<br>attention %{{z:.4f}}<extra></extra>",
        colorbar=dict(title=dict(text="attention", side="right"), thickness=10),
    ))
    ticks = np.linspace(0, small.shape[1] - 1, min(9, small.shape[1])).astype(int)
    rticks = np.linspace(0, small.shape[0] - 1, min(9, small.shape[0])).astype(int)
    fig.update_xaxes(title_text=key_title, tickvals=ticks, ticktext=[str(key_labels[t]) for t in ticks])
    fig.update_yaxes(title_text=row_title, tickvals=rticks, ticktext=[str(row_labels[t]) for t in rticks], autorange="reversed")
    shapes = []
    if highlight_row is not None:
        where = np.flatnonzero(np.asarray(rows) == highlight_row)
        if where.size:
            y = where[0] // fr
            shapes.append(dict(type="line", xref="paper", x0=0, x1=1, y0=y, y1=y, line=dict(color=TARGET_COLOUR, width=1.5)))
    return base_layout(fig, title + note, height=460, shapes=shapes, plot_bgcolor="#f2f2f2")


def prediction_bars(tokens: Sequence[str], probabilities: Sequence[float], true: Sequence[bool], *, title: str = "") -> go.Figure:
    """The model's top-k tokens at the target position, the true token highlighted."""
    labels = [f"{_visible_char(t)}" for t in tokens]
    colours = [TARGET_COLOUR if t else "#3b6ea5" for t in true]
    fig = go.Figure(go.Bar(
        x=list(probabilities), y=labels, orientation="h", marker_color=colours,
        text=[f"{p:.1%}" for p in probabilities], textposition="outside", cliponaxis=False,
        hovertemplate="%{y}: %{x:.2%}<extra></extra>", name="probability",
    ))
    fig.update_yaxes(autorange="reversed", type="category", title_text="token")
    fig.update_xaxes(title_text="probability", range=[0, min(1.0, max(probabilities, default=0) * 1.25 + 0.02)], tickformat=".0%")
    return base_layout(fig, title, height=90 + 24 * len(labels), margin=dict(l=50, r=50, t=50, b=40))


def nll_steps_figure(bits_by_step: np.ndarray, *, step: int | None = None, title: str = "") -> go.Figure:
    """NLL (bits) of the token generated at each step (the current step marked, if given)."""
    steps = np.arange(len(bits_by_step))
    # Markers too on short texts: a line through one point draws nothing.
    fig = go.Figure(go.Scatter(x=steps, y=bits_by_step, mode="lines+markers" if len(steps) <= 32 else "lines", name="bits",
                               line=dict(color="#3b6ea5", width=1), marker=dict(size=6),
                               hovertemplate="step %{x}<br>%{y:.2f} bits<extra></extra>"))
    fig.update_xaxes(title_text="generation step", range=[-0.5, max(len(steps) - 0.5, 0.5)] if len(steps) <= 2 else None)
    fig.update_yaxes(title_text="NLL (bits)", rangemode="tozero")
    return base_layout(fig, title, height=220, showlegend=False, margin=dict(l=60, r=20, t=40, b=40),
                       shapes=[] if step is None else
                       [dict(type="line", yref="paper", x0=step, x1=step, y0=0, y1=1, line=dict(color=TARGET_COLOUR, width=1.5))])
