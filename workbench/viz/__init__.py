"""Figure builders for the app: arrays, frames and strings in, `go.Figure` out (the sample
browser's text grid and prediction bars: an HTML fragment, since they change with every step).

Like CircuitsVis, nothing here sees a model: computing activations is the caller's job
(`workbench.app_data`), so every figure can be built and checked from plain data in a test.

- `heads`: layer x head maps per stream, the semantic/structural scatter, a head's histograms
  and its by-step curves;
- `sample`: one attention row over the text (HTML), the row as bars, a head's whole pattern, the
  model's prediction (HTML), NLL along the generation;
- `results`: the NLL table, causal effects, the divergence of the two orders;
- `study`: the length-effect study's gap against length, validation curves and head labels along
  training.
"""

from workbench.viz.heads import by_step_figure, head_maps, head_scatter, histogram_figure
from workbench.viz.results import (
    divergence_figure,
    divergence_strip,
    effect_bars,
    nll_bars,
    nll_fraction_figure,
)
from workbench.viz.sample import attention_bars, nll_steps_figure, pattern_heatmap, prediction_bars, text_grid
from workbench.viz.study import curves_figure, emergence_figure, gap_figure
from workbench.viz.style import PART_COLOURS, STREAM_COLOURS

__all__ = [
    "PART_COLOURS",
    "STREAM_COLOURS",
    "attention_bars",
    "by_step_figure",
    "curves_figure",
    "divergence_figure",
    "divergence_strip",
    "effect_bars",
    "emergence_figure",
    "gap_figure",
    "head_maps",
    "head_scatter",
    "histogram_figure",
    "nll_bars",
    "nll_fraction_figure",
    "nll_steps_figure",
    "pattern_heatmap",
    "prediction_bars",
    "text_grid",
]
