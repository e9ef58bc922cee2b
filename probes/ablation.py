"""Per-head ablation: the change in NLL when one head's output is zeroed or mean-replaced."""

import torch

from workbench.probing import Row, probe
from workbench.probing.causal import Intervention, mean_z, sequence_bits
from workbench.stats import window_mean


@probe("ablation", needs=("model",))
def ablation(ctx):
    """Zero and mean ablation of every head (hook_z), ΔNLL in bits/token with a 95% CI over blocks of windows."""
    model, s = ctx.model, ctx.settings
    n_seq = min(s.causal_sequences, ctx.n_sequences)
    # The mean of hook_z over the first batch's sequences and slots: the "mean" replacement.
    means = ctx.map_batches("ablation_means", lambda i, t, o: mean_z(model, t, o), n_sequences=min(n_seq, s.batch_size))[0]
    interventions = [
        Intervention(kind, layer, stream, head)
        for layer in range(model.cfg.n_layers)
        for stream in model.stream_names
        for head in range(model.cfg.n_heads)
        for kind in ("zero", "mean")
    ]

    def run(i, tokens, order):
        bits = sequence_bits(model, tokens, order, interventions, r=s.r, w=s.w, generator=ctx.generator("ablation", i), z_means=means)
        return {"bits": bits}

    bits = torch.cat([b["bits"] for b in ctx.map_batches("ablation", run, n_sequences=n_seq, desc="ablation")], dim=1)
    clean = window_mean(bits[0])
    yield Row(metric="clean_bits", value=clean.mean, ci=clean.half_width, n=clean.n)
    for k, intervention in enumerate(interventions, start=1):
        effect = window_mean(bits[k] - bits[0])
        yield Row(
            metric=f"{intervention.kind}_dnll", value=effect.mean, ci=effect.half_width, n=effect.n,
            layer=intervention.layer, stream=intervention.stream, head=intervention.head,
        )
