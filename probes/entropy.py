"""Entropy of each head's attention rows, in bits."""

from workbench.probing import probe
from workbench.probing.engine import per_row, scalar_rows


@probe("entropy", needs=("stats",))
def entropy(ctx):
    """Mean row entropy (bits); chance: the entropy of uniform attention, log2 |V|, averaged."""
    for pooled in ctx.stats.values():
        yield from scalar_rows(pooled, "entropy", per_row("entropy"), per_row("uniform_entropy"))
