"""Sample-browser figures: where one attention row looks over the text, the row as bars in
generation order or in sequence positions, a head's whole pattern (downsampled when long), the
model's prediction and the NLL along the generation. Inputs are arrays and strings."""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Sequence

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from workbench.viz.style import OWN_COLOUR, PART_COLOURS, TARGET_COLOUR, base_layout

MAX_CELLS = 256
"""A drawn pattern has at most this many rows and columns; longer ones are block-averaged."""


def _visible_char(s: str) -> str:
    return s.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣") or "∅"


def _blues(t: np.ndarray) -> list[str]:
    """Plotly's "Blues" at t in [0, 1], as CSS colours (the heatmaps' scale)."""
    stops = np.array([[int(c) for c in s[4:-1].split(",")] for s in plotly.colors.sequential.Blues], dtype=float)
    x = np.linspace(0, 1, len(stops))
    rgb = np.stack([np.interp(t, x, stops[:, c]) for c in range(3)], axis=-1).round().astype(int)
    return [f"rgb({r},{g},{b})" for r, g, b in rgb]


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
) -> str:
    """The text laid out in lines of `columns` cells, each coloured by the attention the row puts on
    that token (grey: not a key of this row, i.e. not generated yet), as one self-contained HTML
    fragment (`st.html`, or `IPython.display.HTML` in a notebook). HTML rather than a Plotly
    figure: it changes with every step, and a browser lays out a few hundred cells far faster than
    Plotly draws a new figure. Cells are positions, or steps in generation order (then `positions`
    says which position each cell shows); `target` and `own` are cell indices. Hovering a cell
    shows its position, token, step, attention and sets; each cell carries its attention in
    `data-w` (empty: not a key) and its position in `data-pos`.

    Marked: the target position (magenta frame; its token is what the row predicts, hidden from
    the model), the semantic set S_r (green ring), the structural set R_w (orange inner ring) and,
    for single-stream rows, the position of the token the row holds (black dotted box).
    `window` = (start, stop) draws only those positions (long texts)."""
    n = len(tokens)
    start, stop = window if window is not None else (0, n)
    start, stop = max(0, start), min(n, stop)
    w = np.asarray(weight, dtype=float)[start:stop]
    finite = w[np.isfinite(w)]
    zmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fill = _blues(np.clip(np.nan_to_num(w, nan=0.0) / zmax, 0, 1))
    s_colour, r_colour = PART_COLOURS["S only"], PART_COLOURS["R only"]
    cells = []
    for k, p in enumerate(range(start, stop)):
        key = bool(np.isfinite(w[k]))
        char = _visible_char(tokens[p])
        status = target_note if p == target else "key of this row (generated)" if key else "not generated yet"
        sets = ", ".join(n for n, m in (("S_r", semantic[p]), ("R_w", structural[p])) if m) or "none"
        pos = int(positions[p]) if positions is not None else p
        tip = (f"pos {pos} {char!r}\n{status}" + (f"\ngenerated at step {int(steps[p])}" if steps is not None else "")
               + (f"\nattention {w[k]:.4f}" if key else "") + f"\nsets: {sets}")
        rings = [f"inset 0 0 0 2px {s_colour}"] if semantic[p] else []
        if structural[p]:
            rings += [f"inset 0 0 0 4px {fill[k] if key else '#f2f2f2'}", f"inset 0 0 0 6px {r_colour}"]
        style = f"background:{fill[k] if key else '#f2f2f2'};color:{'white' if key and w[k] > 0.55 * zmax else '#111' if key or p == target else '#9a9a9a'}"
        if rings:
            style += ";box-shadow:" + ",".join(rings)
        if p == target:
            style += f";outline:3px solid {TARGET_COLOUR};outline-offset:-1px;z-index:1"
        mark = '<i class="own"></i>' if p == own else ""
        cells.append(f'<div style="{style}" title="{html.escape(tip).replace(chr(10), "&#10;")}" data-pos="{pos}" '
                     f'data-w="{f"{w[k]:.7g}" if key else ""}">{html.escape(char)}{mark}</div>')
    legend = [("target position", f"outline:3px solid {TARGET_COLOUR};outline-offset:-3px"),
              ("semantic set S_r", f"box-shadow:inset 0 0 0 2px {s_colour}"),
              ("structural set R_w", f"box-shadow:inset 0 0 0 2px {r_colour}")]
    if own is not None:
        legend.append(("own position (token the row holds)", f"outline:2px dotted {OWN_COLOUR};outline-offset:-3px"))
    keys = "".join(f'<span><b style="{s}"></b>{html.escape(name)}</span>' for name, s in legend)
    scale = ",".join(_blues(np.linspace(0, 1, 9)))
    return (
        "<style>.tg{font:13px Inter,Helvetica,Arial,sans-serif}"
        f".tg .cells{{display:grid;grid-template-columns:repeat({columns},minmax(0,1fr));gap:1px}}"
        ".tg .cells div{position:relative;height:34px;line-height:34px;text-align:center;cursor:default;"
        "font:14px 'DejaVu Sans Mono',monospace}"
        f".tg .own{{position:absolute;inset:22%;outline:2px dotted {OWN_COLOUR}}}"
        ".tg .keys{display:flex;flex-wrap:wrap;gap:4px 16px;align-items:center;margin-top:6px}"
        ".tg .keys b{display:inline-block;width:13px;height:13px;margin-right:5px;vertical-align:-2px}"
        f".tg .bar{{display:inline-block;width:120px;height:10px;vertical-align:middle;margin:0 5px;"
        f"background:linear-gradient(to right,{scale})}}</style>"
        f'<div class="tg">' + (f'<div style="font-size:15px;font-weight:600;margin:4px 0 10px">{html.escape(title)}</div>' if title else "")
        + f'<div class="cells">{"".join(cells)}</div><div class="keys">{keys}'
        f'<span>attention 0<i class="bar"></i>{zmax:.3g}</span></div></div>'
    )


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


def prediction_bars(tokens: Sequence[str], probabilities: Sequence[float], true: Sequence[bool], *, title: str = "") -> str:
    """The model's top-k tokens at the target position as bars, the true token highlighted; an HTML
    fragment like `text_grid` (it changes with every step). Each bar carries its token in
    `data-token` and its probability in `data-p`."""
    top = max(probabilities, default=0.0) or 1.0
    rows = "".join(
        f'<div class="pb-row" data-token="{html.escape(tok, quote=True)}" data-p="{p:.7g}">'
        f'<span class="pb-tok">{html.escape(_visible_char(tok))}</span>'
        f'<span class="pb-bar"><b style="width:{80 * p / top:.2f}%;background:{TARGET_COLOUR if t else "#3b6ea5"}"></b>'
        f"<i>{p:.1%}</i></span></div>"
        for tok, p, t in zip(tokens, probabilities, true)
    )
    return (
        "<style>.pb{font:13px Inter,Helvetica,Arial,sans-serif}.pb-row{display:flex;align-items:center;height:22px}"
        ".pb-tok{width:2.5em;text-align:right;padding-right:8px;font:14px 'DejaVu Sans Mono',monospace}"
        ".pb-bar{flex:1;display:flex;align-items:center}.pb-bar b{display:inline-block;height:16px;min-width:1px}"
        ".pb-bar i{font-style:normal;color:#555;padding-left:5px;font-size:12px}</style>"
        '<div class="pb">' + (f'<div style="font-size:15px;font-weight:600;margin:4px 0 10px">{html.escape(title)}</div>' if title else "")
        + f"{rows}</div>"
    )


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
