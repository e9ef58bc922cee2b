"""The four exclusive parts of each head's attention: semantic only, structural only, both, neither."""

from workbench.kernels.contract import PARTS
from workbench.probing import probe
from workbench.probing.engine import lift, per_row, scalar_rows, summed


@probe("parts", needs=("stats",))
def parts(ctx):
    """Mass, chance and lift of S only / R only / both / neither, and of the whole sets S_r, R_w."""
    for pooled in ctx.stats.values():
        for part in PARTS:
            yield from scalar_rows(pooled, part, per_row(f"{part}_mass"), per_row(f"{part}_chance"))
            yield from scalar_rows(pooled, f"{part}_lift", lift(part), 1.0)
        for name, members in (("semantic_set", ["S_only", "both"]), ("structural_set", ["R_only", "both"])):
            yield from scalar_rows(
                pooled, name, summed([f"{p}_mass" for p in members]), summed([f"{p}_chance" for p in members])
            )
            yield from scalar_rows(pooled, f"{name}_lift", lift("+".join(members)), 1.0)
