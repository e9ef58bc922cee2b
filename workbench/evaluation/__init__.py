"""Evaluation in bits per token: any-order NLL (Monte Carlo over orders), left-to-right NLL, NLL
as a function of the generation step, and gaps between models, each with a 95% interval.

The any-order NLL of a sequence is E_σ[-log2 p(x | σ)] / T, estimated with `n_orders` uniformly
random orders per window. Intervals (`workbench.stats`):

- **one model**: windows are consecutive pieces of one text and are correlated (lag-1
  autocorrelation 0.35-0.41 at 128 tokens, 0.62-0.64 at 1024 on the bundled validation text), so the unit
  is a block: the per-window values, in text order, are cut into 16 contiguous blocks and the
  interval is t with 15 degrees of freedom on the block means (batch means). It covers the order
  noise and the choice of text at the scale of a block.
- **two models on the same windows and orders** (the same token hash, seed and order count):
  the gap is paired, the blocked mean of the per-window difference. The per-window values of
  two models move together (correlation 0.97-0.99), so this interval is about ten times
  narrower than combining the two models' own intervals.
- **the change of a gap with length** (gap at 1024 minus gap at 128): the two gaps come from
  different models on different windows, so their variances add (Welch degrees of freedom;
  conservative when, as here, both lengths cut the same text and the two gaps correlate).

`evaluate_windows` gives the per-window values (`WindowValues`), `summarise` the JSON summary,
`evaluate` both in one call; `compare` pairs models. CLI (`workbench eval`, `cli.py`):
`--checkpoint NAMES --data SPEC --split val|train|all --unknown error|replace --orders K
--out FILE.json` writes the summary and FILE.windows.safetensors with the per-window values.
"""

from workbench.evaluation.cli import eval_windows, register, run_name
from workbench.evaluation.compare import gap_changes, paired_gaps
from workbench.evaluation.core import WindowValues, evaluate, evaluate_windows, per_window_bits, summarise
from workbench.stats import Estimate

__all__ = [
    "Estimate", "WindowValues", "eval_windows", "evaluate", "evaluate_windows", "gap_changes", "paired_gaps",
    "per_window_bits", "register", "run_name", "summarise",
]
