"""Log2-binned histograms of attention mass and chance mass (docs/coordinates.md, "Histogram bins")."""

from workbench.probing import Row, probe


@probe("histograms", needs=("stats",))
def histograms(ctx):
    """Mass per row over bins of semantic distance, recency and (single stream) own distance."""
    for pooled in ctx.stats.values():
        for which in ("semantic", "recency", "own"):
            if which == "own" and not pooled.has_own:
                continue
            attn, chance, ci, rows = pooled.histogram(which)
            for h in range(pooled.n_heads):
                for b in range(attn.shape[1]):
                    yield Row(
                        metric=f"{which}_hist", value=float(attn[h, b]), chance=float(chance[h, b]),
                        ci=float(ci[h, b]), layer=pooled.layer, stream=pooled.stream, head=h, n=int(rows), x=b,
                    )
