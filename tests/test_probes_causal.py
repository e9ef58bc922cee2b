"""Causal checks (ablation, knockout, random control) on the hand-built models of test_probes."""

from __future__ import annotations

import pytest
import torch

from tests.test_probes import KNOWN, R, T, W, hand_built, key_positions, rows_of, windows
from workbench.hook_names import hook_name
from workbench.orders import probe_layout
from workbench.probing import run_probes
from workbench.probing.causal import Intervention, intervention_hook, mean_z, random_like, sequence_bits, set_masks

RECENT, NEAREST, NULL, UNIFORM = (KNOWN.index(n) for n in ("recent", "nearest", "null", "uniform"))


@pytest.fixture(scope="module", params=["two_stream", "decoupled_rope"])
def model(request):
    return hand_built(request.param, n_layers=1)


def batch(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return windows(n, seed), torch.stack([torch.randperm(T, generator=g) for _ in range(n)])


def pattern_under(model, tokens, order, intervention, stream, seed=0):
    captured = {}
    hook = intervention_hook(model, tokens, order, intervention, r=R, w=W, generator=torch.Generator().manual_seed(seed))
    name = hook_name("pattern", 0, stream)
    with model.hooks(fwd_hooks=[hook, (name, lambda p, hook: captured.setdefault("p", p.detach().clone()))]):
        model(tokens, order)
    return captured["p"]


def test_set_masks_follow_the_contract(model):
    tokens, order = batch()
    for stream in model.stream_names:
        layout = probe_layout(order, stream)
        semantic, structural = set_masks(layout, layout.row_ref.shape[1], R, W)
        for b, o in enumerate(order.tolist()):
            keys = key_positions(o)
            for i, ref, _, offset in rows_of(o, stream):
                want_s = [j for j in range(1, i + 1) if abs(keys[j] - ref) <= R]
                want_r = [j for j in range(1, i + 1) if i - j + offset <= W]
                assert semantic[b, i].nonzero().flatten().tolist() == want_s
                assert structural[b, i].nonzero().flatten().tolist() == want_r


def test_knockout_removes_the_set_and_renormalises(model):
    """The recent head with its structural set knocked out: zero mass on R_w, and (its other keys
    all scoring -1e4) uniform over the visible keys left, the null key included."""
    tokens, order = batch()
    for stream in model.stream_names:
        pattern = pattern_under(model, tokens, order, Intervention("knockout", 0, stream, RECENT, "structural"), stream)
        layout = probe_layout(order, stream)
        _, structural = set_masks(layout, layout.row_ref.shape[1], R, W)
        for b in range(order.shape[0]):
            for i in range(layout.row_ref.shape[1]):
                row, blocked = pattern[b, RECENT, i, : i + 1], structural[b, i, : i + 1]
                left = (~blocked).sum().item()
                if blocked.any():
                    assert row[blocked].abs().max().item() == 0.0
                assert torch.allclose(row[~blocked], torch.full((left,), 1.0 / left), atol=1e-6), (stream, b, i)
        # the other heads are untouched
        clean = pattern_under(model, tokens, order, Intervention("knockout", 0, stream, NULL, "semantic"), stream)
        assert torch.equal(pattern[:, [NEAREST, NULL, UNIFORM]], clean[:, [NEAREST, NULL, UNIFORM]])


def test_random_control_has_the_same_size_per_row():
    tokens, order = batch(4)
    layout = probe_layout(order, "query")
    semantic, _ = set_masks(layout, T, R, W)
    a = random_like(semantic, torch.Generator().manual_seed(1))
    b = random_like(semantic, torch.Generator().manual_seed(1))
    c = random_like(semantic, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sum(-1), semantic.sum(-1))
    rows, keys = torch.arange(T)[:, None], torch.arange(T + 1)[None, :]
    assert not (a & ~((keys <= rows) & (keys >= 1))).any()  # only visible, non-null keys
    print("keys per row in S_r vs the random set:", semantic.sum(-1).float().mean().item(), a.sum(-1).float().mean().item())


def test_interventions_that_cannot_matter_change_nothing(model):
    """The null head's sets hold none of its mass, and head 3 writes nothing (W_O = 0): exact zeros.
    Knocking out the recent head's structural set does change the NLL."""
    tokens, order = batch()
    means = mean_z(model, tokens, order)
    stream = model.stream_names[-1]  # with one layer, only the query stream reaches two_stream's logits
    interventions = [
        Intervention("knockout", 0, stream, NULL, "semantic"),
        Intervention("knockout", 0, stream, NULL, "structural"),
        Intervention("knockout", 0, stream, NULL, "random:semantic"),
        Intervention("zero", 0, stream, UNIFORM),
        Intervention("mean", 0, stream, UNIFORM),
        Intervention("knockout", 0, stream, UNIFORM, "semantic"),
        Intervention("knockout", 0, stream, RECENT, "structural"),
    ]
    bits = sequence_bits(model, tokens, order, interventions, r=R, w=W, generator=torch.Generator().manual_seed(0), z_means=means)
    delta = bits[1:] - bits[0]
    print("ΔNLL (bits/token) per intervention:", delta.mean(-1).tolist())
    assert torch.equal(delta[:-1], torch.zeros_like(delta[:-1]))
    assert delta[-1].abs().max() > 1e-4


def test_ablation_replaces_z(model):
    tokens, order = batch()
    means = mean_z(model, tokens, order)
    stream = model.stream_names[-1]
    name = hook_name("z", 0, stream)
    for kind in ("zero", "mean"):
        captured = {}
        hook = intervention_hook(model, tokens, order, Intervention(kind, 0, stream, NEAREST), r=R, w=W,
                                 generator=torch.Generator(), z_means=means)
        with model.hooks(fwd_hooks=[hook, (name, lambda z, hook: captured.setdefault("z", z.clone()))]):
            model(tokens, order)
        expected = torch.zeros(4) if kind == "zero" else means[f"0.{stream}"][NEAREST]
        assert torch.allclose(captured["z"][:, :, NEAREST], expected.expand_as(captured["z"][:, :, NEAREST]))


def test_causal_probes_through_the_runner(model):
    result = run_probes(model, data=windows(6), probes="knockout,ablation", r=R, w=W, batch_size=3,
                        causal_sequences=6, progress=False)
    table = result.table
    knock = table[table.probe == "knockout"]
    print(knock[["layer", "stream", "head", "metric", "value", "chance", "ci", "label"]].to_string())
    # Heads chosen from the labels: the recent (structural) and nearest (semantic) heads per stream,
    # except in a two-stream model's last content layer (here the only one), which never reaches the logits.
    chosen = set(zip(knock.stream, knock["head"], knock.label))
    streams = [s for s in model.stream_names if s != "content"]
    assert chosen == {(s, h, lab) for s in streams for h, lab in ((RECENT, "structural"), (NEAREST, "semantic"))}
    assert (knock[knock.metric == "knockout_semantic"].chance.notna()).all()  # chance = the random control
    assert (knock[knock.metric.str.endswith("_keys")].value > 0).all()
    assert (knock.n == 6).all()
    ablation = table[(table.probe == "ablation") & (table["head"] == UNIFORM)]
    assert len(ablation) == 2 * len(model.stream_names) and (ablation.value == 0).all()
    ci = table[(table.probe == "ablation") & (table["head"] == NEAREST)].ci
    assert ci.notna().all() and (ci >= 0).all()


def test_unknown_interventions_fail_clearly(model):
    tokens, order = batch()
    with pytest.raises(ValueError, match="outside the model"):
        intervention_hook(model, tokens, order, Intervention("zero", 5, model.stream_names[0], 0), r=R, w=W, generator=torch.Generator())
    with pytest.raises(ValueError, match="unknown key set"):
        intervention_hook(model, tokens, order, Intervention("knockout", 0, model.stream_names[0], 0, "nearby"), r=R, w=W,
                          generator=torch.Generator())

