"""Attention knockout of a head's semantic or structural set, against a random set of the same size."""

import hashlib

import torch

from workbench.probing import Row, probe
from workbench.probing.causal import Intervention, sequence_bits, set_masks
from workbench.orders import probe_layout
from workbench.stats import window_mean

SETS = ("semantic", "structural")


def reaches_logits(model, layer, stream):
    """False for the content stream's last layer: the query stream reads content keys and values at
    each layer's input, so the content stream's last attention layer never reaches the logits (its
    knockouts change nothing, exactly)."""
    return not (stream == "content" and layer == model.cfg.n_layers - 1)


def chosen_heads(ctx):
    """(layer, stream, head, label): the heads asked for, else the labelled ones (max_heads each,
    among the heads that can reach the logits)."""
    labels = {(h.layer, h.stream, h.head): h.label for h in ctx.heads}
    if ctx.settings.heads is not None:
        return [(l, s, h, labels[(l, s, h)]) for l, s, h in ctx.settings.heads]
    chosen = []
    for stream in ctx.model.stream_names:
        heads = [h for h in ctx.heads if h.stream == stream and reaches_logits(ctx.model, h.layer, h.stream)]
        semantic = sorted((h for h in heads if h.label == "semantic"), key=lambda h: -h.index)
        structural = sorted((h for h in heads if h.label == "structural"), key=lambda h: h.index)
        for h in semantic[: ctx.settings.max_heads] + structural[: ctx.settings.max_heads]:
            chosen.append((h.layer, h.stream, h.head, h.label))
    return chosen


@probe("knockout", needs=("stats", "model"))
def knockout(ctx):
    """Knock out S_r or R_w of chosen heads (hook_attn_scores -> -inf) and a same-size random set:
    ΔNLL in bits/token with 95% CIs, and the excess over the random control, paired per sequence
    (CIs over blocks of contiguous windows: workbench.stats.window_mean)."""
    model, s = ctx.model, ctx.settings
    heads = chosen_heads(ctx)
    if not heads:
        return
    interventions = []
    for layer, stream, head, _ in heads:
        for key_set in SETS:
            interventions.append(Intervention("knockout", layer, stream, head, key_set))
            interventions.append(Intervention("knockout", layer, stream, head, f"random:{key_set}"))
    n_seq = min(s.causal_sequences, ctx.n_sequences)

    def run(i, tokens, order):
        bits = sequence_bits(model, tokens, order, interventions, r=s.r, w=s.w, generator=ctx.generator("knockout", i))
        sizes = []
        for stream in model.stream_names:  # mean set sizes per row, for context
            layout = probe_layout(order, stream)
            semantic, structural = set_masks(layout, layout.row_ref.shape[1], s.r, s.w)
            probed = (layout.row_ref >= 0).sum(-1).clamp(min=1)
            sizes.append(torch.stack([semantic.sum((-1, -2)) / probed, structural.sum((-1, -2)) / probed]))
        return {"bits": bits, "keys": torch.stack(sizes).double()}  # keys: [stream, set, batch]

    key = hashlib.sha256(repr([x.name for x in interventions]).encode()).hexdigest()[:10]
    shards = ctx.map_batches(f"knockout_{key}", run, n_sequences=n_seq, desc="knockout")
    bits = torch.cat([b["bits"] for b in shards], dim=1)
    keys = torch.cat([b["keys"] for b in shards], dim=-1).mean(-1)
    k = 1
    for layer, stream, head, label in heads:
        where = dict(layer=layer, stream=stream, head=head, label=label, n=bits.shape[1])
        for key_set in SETS:
            knocked, control = bits[k] - bits[0], bits[k + 1] - bits[0]
            k += 2
            effect, random, excess = window_mean(knocked), window_mean(control), window_mean(knocked - control)
            yield Row(metric=f"knockout_{key_set}", value=effect.mean, ci=effect.half_width, chance=random.mean, **where)
            yield Row(metric=f"knockout_{key_set}_random", value=random.mean, ci=random.half_width, **where)
            yield Row(metric=f"knockout_{key_set}_excess", value=excess.mean, ci=excess.half_width, chance=0.0, **where)
            size = keys[model.stream_names.index(stream), SETS.index(key_set)]
            yield Row(metric=f"knockout_{key_set}_keys", value=float(size), **where)
