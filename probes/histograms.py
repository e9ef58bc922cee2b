"""Log2-binned histograms of attention mass and chance mass (docs/coordinates.md, "Histogram bins")."""

from workbench.probing import Row, probe


@probe("histograms", needs=("stats",))
def histograms(ctx):
    """Mass per row over bins of semantic distance, recency and (single stream) own distance, and the
    joint semantic x recency histogram (x = semantic bin, y = recency bin; cells that no key can
    reach are left out), from which `workbench.probing.readout` reads the parts at any r, w."""
    for pooled in ctx.stats.values():
        where = dict(layer=pooled.layer, stream=pooled.stream)
        for which in ("semantic", "recency", "own"):
            if which == "own" and not pooled.has_own:
                continue
            attn, chance, ci, rows = pooled.histogram(which)
            for h in range(pooled.n_heads):
                for b in range(attn.shape[1]):
                    yield Row(
                        metric=f"{which}_hist", value=float(attn[h, b]), chance=float(chance[h, b]),
                        ci=float(ci[h, b]), head=h, n=int(rows), x=b, **where,
                    )
        attn, chance, ci, rows = pooled.joint()
        cells = (chance[0] > 0).nonzero().tolist()  # the same cells for every head
        for h in range(pooled.n_heads):
            a, c, e = attn[h].tolist(), chance[h].tolist(), ci[h].tolist()
            for x, y in cells:
                yield Row(metric="joint_hist", value=a[x][y], chance=c[x][y], ci=e[x][y], head=h, n=int(rows),
                          x=x, y=y, **where)
