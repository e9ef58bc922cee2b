"""Every scalar of the other probes as a function of the generation step."""

from workbench.kernels.contract import PARTS
from workbench.probing import probe
from workbench.probing.engine import excess, index_fn, lift, per_row, step_rows


@probe("by_step", needs=("stats",))
def by_step(ctx):
    """Parts, lifts, index, normalised excesses, sink and entropy per step bucket; x = the bucket's first slot index
    (buckets 0, 1, 2-3, 4-7, ...: the row's slot i, i.e. how many tokens it sees)."""
    for pooled in ctx.stats.values():
        for part in PARTS:
            yield from step_rows(pooled, part, per_row(f"{part}_mass"), per_row(f"{part}_chance"))
        for part in ("S_only", "R_only", "both"):
            yield from step_rows(pooled, f"{part}_lift", lift(part), 1.0)
        yield from step_rows(pooled, "index", index_fn("mass"), index_fn("chance"))
        yield from step_rows(pooled, "semantic_excess", excess("S"), 0.0)
        yield from step_rows(pooled, "structural_excess", excess("R"), 0.0)
        yield from step_rows(pooled, "entropy", per_row("entropy"), per_row("uniform_entropy"))
        if pooled.has_step_sink:  # statistics built without per-row null-key mass (step_null_mass) lack it
            yield from step_rows(pooled, "sink", per_row("sink_mass"), per_row("sink_chance"))
