"""Model-free divergence of the two orders: k nearest-by-position keys vs k most recent keys."""

from workbench.probing import Row, probe
from workbench.probing.divergence import DEFAULT_KS, default_lengths, order_divergence


@probe("divergence", needs=())
def divergence(ctx):
    """Overlap |A ∩ B| / k per length T (x) and k, under random orders; chance k/t averaged."""
    lengths = default_lengths(max(ctx.seq_len, 1024))
    n_orders = int(ctx.settings.extra.get("divergence_orders", 32))
    for point in order_divergence(lengths, DEFAULT_KS, n_orders=n_orders, seed=ctx.settings.seed):
        yield Row(
            metric=f"overlap_k{point.k}", value=point.overlap, chance=point.chance, ci=point.ci,
            n=point.n_orders, x=point.length,
        )
