"""Specialisation index (S only - R only) / (S only + R only) and the head's label."""

from workbench.probing import Row, probe


@probe("specialisation", needs=("stats",))
def specialisation(ctx):
    """Index with its CI and chance value, and the label (thresholds: workbench.probing.specialisation)."""
    for head in ctx.heads:
        rows = int(ctx.stats[(head.layer, head.stream)].total("rows")[head.head])
        where = dict(layer=head.layer, stream=head.stream, head=head.head, n=rows)
        yield Row(metric="index", value=head.index, chance=head.index_chance, ci=head.index_ci, **where)
        yield Row(metric="label", value=head.index, chance=head.index_chance, label=head.label, **where)

