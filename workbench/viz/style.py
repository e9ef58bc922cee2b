"""Colours and layout shared by every figure, so that a set or a stream looks the same everywhere."""

from __future__ import annotations

import plotly.graph_objects as go

STREAM_COLOURS = {"content": "#1f77b4", "query": "#ff7f0e", "main": "#2ca02c"}
VARIANT_COLOURS = {"two_stream": "#1f77b4", "decoupled_rope": "#d62728", "sigma_gpt": "#9467bd"}
PART_COLOURS = {
    "S only": "#1b9e77",  # semantic set only: near the target position
    "R only": "#d95f02",  # structural set only: recently generated
    "both": "#7570b3",
    "neither": "#b0b0b0",
    "null key": "#333333",
}
SINK_COLOUR = "#8c564b"  # null-key (sink) mass in line charts, apart from the black index line
TARGET_COLOUR = "#e7298a"
OWN_COLOUR = "#222222"
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)


def base_layout(fig: go.Figure, title: str | None = None, height: int | None = None, **kwargs) -> go.Figure:
    """Title, font, margins and a white plot area; returns the figure for chaining."""
    # No template: Streamlit's theme restyles the figure anyway, and resolving a template costs
    # ~20 ms per figure, a tenth of the interaction budget.
    layout = dict(
        font=FONT,
        plot_bgcolor="white",
        title=dict(text=title, x=0.0, xanchor="left") if title else None,
        margin=dict(l=60, r=20, t=60 if title else 30, b=50),
        height=height,
        hoverlabel=dict(font_size=12),
    )
    layout.update(kwargs)
    fig.update_layout(**layout)
    return fig


def part_of(semantic: bool, structural: bool) -> str:
    if semantic and structural:
        return "both"
    if semantic:
        return "S only"
    if structural:
        return "R only"
    return "neither"
