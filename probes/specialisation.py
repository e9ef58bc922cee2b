"""Specialisation: index, the normalised excesses on S_r and R_w, the label and the sink flag."""

from workbench.probing import Row, probe


@probe("specialisation", needs=("stats",))
def specialisation(ctx):
    """Index (S only - R only) / (S only + R only) with its CI and chance value; the normalised
    excesses `semantic_excess`, `structural_excess` (length-fair: 1 = perfect head, 0 = chance);
    the label (rules: workbench.probing.specialisation) and `sink_flag` (1: null-key mass >= 0.5)."""
    for head in ctx.heads:
        rows = int(ctx.stats[(head.layer, head.stream)].total("rows")[head.head])
        where = dict(layer=head.layer, stream=head.stream, head=head.head, n=rows)
        yield Row(metric="index", value=head.index, chance=head.index_chance, ci=head.index_ci, **where)
        yield Row(metric="semantic_excess", value=head.semantic_excess, chance=0.0, ci=head.semantic_excess_ci, **where)
        yield Row(metric="structural_excess", value=head.structural_excess, chance=0.0, ci=head.structural_excess_ci,
                  **where)
        yield Row(metric="label", value=head.index, chance=head.index_chance, label=head.label, **where)
        yield Row(metric="sink_flag", value=float(head.sink_flag), label="sink" if head.sink_flag else "", **where)
