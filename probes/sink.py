"""Attention-sink mass: the share of attention on the null key (BOS)."""

from workbench.probing import probe
from workbench.probing.engine import per_row, scalar_rows


@probe("sink", needs=("stats",))
def sink(ctx):
    """Null-key mass per row; chance 1/|V| averaged over rows."""
    for pooled in ctx.stats.values():
        yield from scalar_rows(pooled, "sink", per_row("sink_mass"), per_row("sink_chance"))
