"""The hooks API: names per stream, shapes, edits, caches, cleanup, coordinates."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_batch, tiny_config
from workbench import from_config
from workbench import hook_name
from workbench.components.hook_sets import ATTN_HOOKS, LN_HOOKS, MLP_HOOKS, RESID_HOOKS
from workbench.orders import positions_to_slots, ranks, slots_to_positions

ROOT_HOOKS = {
    "two_stream": ["hook_order", "content.hook_pos", "content.hook_embed", "query.hook_pos",
                   "query.hook_embed", "query.ln_final.hook_scale", "query.ln_final.hook_normalized"],
    "decoupled_rope": ["hook_order", "hook_pos", "hook_target_pos", "hook_embed",
                       "ln_final.hook_scale", "ln_final.hook_normalized"],
    "sigma_gpt": ["hook_order", "hook_pos", "hook_target_pos", "hook_embed", "hook_pos_embed",
                  "hook_target_embed", "ln_final.hook_scale", "ln_final.hook_normalized"],
}


def documented_names(model) -> set[str]:
    """Every hook name the docs promise for this model (docs/hooks.md lists the same)."""
    names = set(ROOT_HOOKS[model.cfg.variant])
    rotary = model.cfg.variant != "sigma_gpt"
    for layer in range(model.cfg.n_layers):
        for stream in model.stream_names:
            prefix = f"blocks.{layer}." + ("" if stream == "main" else f"{stream}.")
            names |= {prefix + h for h in RESID_HOOKS}
            names |= {prefix + f"{ln}.{h}" for ln in ("ln1", "ln2") for h in LN_HOOKS}
            names |= {prefix + f"attn.{h}" for h in ATTN_HOOKS if rotary or "rot" not in h}
            names |= {prefix + f"mlp.{h}" for h in MLP_HOOKS}
    return names


def test_every_documented_hook_exists_and_fires(tiny_model):
    tokens, order = random_batch(tiny_model, 2, 9)
    assert set(tiny_model.hook_dict) == documented_names(tiny_model)
    _, cache = tiny_model.run_with_cache(tokens, order)
    assert set(cache.keys()) == documented_names(tiny_model), "every hook point fires once in a forward"


def test_cached_shapes(tiny_model):
    cfg = tiny_model.cfg
    batch, n_pos = 2, 9
    tokens, order = random_batch(tiny_model, batch, n_pos)
    _, cache = tiny_model.run_with_cache(tokens, order)
    rows = {"content": n_pos + 1, "query": n_pos, "main": n_pos}
    keys = n_pos + 1 if cfg.variant == "two_stream" else n_pos
    for stream in tiny_model.stream_names:
        s = rows[stream]
        assert cache[hook_name("resid_pre", 1, stream)].shape == (batch, s, cfg.d_model)
        assert cache[hook_name("q", 0, stream)].shape == (batch, s, cfg.n_heads, cfg.d_head)
        assert cache[hook_name("k", 0, stream)].shape == (batch, keys, cfg.n_heads, cfg.d_head)
        assert cache[hook_name("pattern", 1, stream)].shape == (batch, cfg.n_heads, s, keys)
        assert cache[hook_name("attn_scores", 1, stream)].shape == (batch, cfg.n_heads, s, keys)
        assert cache[hook_name("z", 0, stream)].shape == (batch, s, cfg.n_heads, cfg.d_head)
        assert cache[hook_name("result", 0, stream)].shape == (batch, s, cfg.n_heads, cfg.d_model)
        assert cache[hook_name("post", 0, stream)].shape == (batch, s, cfg.d_mlp)
        assert cache[hook_name("scale1", 0, stream)].shape == (batch, s, 1)
        pattern = cache[hook_name("pattern", 0, stream)]
        torch.testing.assert_close(pattern.sum(-1), torch.ones(batch, cfg.n_heads, s))
        assert torch.all(pattern.triu(1) == 0), "slot i sees keys 0..i only"
    assert torch.equal(cache["hook_order"], order)


def test_result_sums_to_attn_out(tiny_model):
    tokens, order = random_batch(tiny_model, 2, 7)
    _, cache = tiny_model.run_with_cache(tokens, order)
    for stream in tiny_model.stream_names:
        result = cache[hook_name("result", 1, stream)].sum(2) + tiny_model.blocks[1].attn.b_O
        torch.testing.assert_close(result, cache[hook_name("attn_out", 1, stream)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("activation", ["pattern", "v", "q", "k", "rot_k", "resid_mid", "post", "embed"])
def test_editing_hooks_change_the_output_per_stream(tiny_model, activation):
    if activation == "rot_k" and tiny_model.cfg.variant == "sigma_gpt":
        activation = "pos_embed"  # no rotation, hence no hook_rot_k: edit its position input instead
    tokens, order = random_batch(tiny_model, 2, 9)
    base = tiny_model(tokens, order)
    for stream in tiny_model.stream_names:
        layer = None if activation in ("embed", "pos_embed") else 0  # content edits reach the logits from the next layer on
        name = hook_name(activation, layer, stream)

        def zero_head(x, hook):
            x = x.clone()
            if activation == "pattern":
                x[:, 0] = 0  # head 0 writes nothing
            elif x.ndim == 4:
                x[:, :, 0] = 0
            else:
                x[..., 0] = 0
            return x

        edited = tiny_model.run_with_hooks(tokens, order, fwd_hooks=[(name, zero_head)])
        changed = (edited - base).abs().max().item()
        assert changed > 1e-4, f"editing {name} did not change the output"


def test_query_edit_stays_in_query_stream():
    torch.manual_seed(0)
    tiny_model = from_config(tiny_config("two_stream")).eval()
    tokens, order = random_batch(tiny_model, 2, 9)
    _, base = tiny_model.run_with_cache(tokens, order)

    def double(x, hook):
        return 2 * x

    with tiny_model.hooks(fwd_hooks=[(hook_name("v", 0, "query"), double)]):
        _, edited = tiny_model.run_with_cache(tokens, order)
    # The query stream's own hook_v edits what the query stream sees, not the content stream.
    torch.testing.assert_close(edited[hook_name("resid_post", 1, "content")], base[hook_name("resid_post", 1, "content")])
    assert not torch.allclose(edited[hook_name("resid_post", 0, "query")], base[hook_name("resid_post", 0, "query")])


def test_names_filter_and_no_hook_survives(tiny_model):
    tokens, order = random_batch(tiny_model, 2, 6)
    _, cache = tiny_model.run_with_cache(tokens, order, names_filter=lambda n: n.endswith("hook_pattern"))
    assert cache.keys() and all(k.endswith("hook_pattern") for k in cache.keys())
    assert not any(hp.has_hooks() for hp in tiny_model.hook_dict.values())

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tiny_model.run_with_hooks(tokens, order, fwd_hooks=[(hook_name("z", 0, tiny_model.stream_names[0]), boom)])
    assert not any(hp.has_hooks() for hp in tiny_model.hook_dict.values())

    seen = []
    with tiny_model.hooks(fwd_hooks=[(lambda n: "hook_resid_post" in n, lambda x, hook: seen.append(hook.name))]):
        tiny_model(tokens, order)
    assert len(seen) == tiny_model.cfg.n_layers * len(tiny_model.stream_names)
    assert not any(hp.has_hooks() for hp in tiny_model.hook_dict.values())


def test_backward_hooks(tiny_model):
    tokens, order = random_batch(tiny_model, 2, 6)
    loss, cache = tiny_model.run_with_cache(tokens, order, return_type="loss", incl_bwd=True,
                                              names_filter=lambda n: "resid_pre" in n or "pattern" in n)
    stream = tiny_model.stream_names[-1]
    grad_name = hook_name("resid_pre", 0, stream) + "_grad"
    assert grad_name in cache.keys()
    assert cache[grad_name].shape == cache[hook_name("resid_pre", 0, stream)].shape
    assert cache[grad_name].abs().sum() > 0
    assert not any(hp.has_hooks() for hp in tiny_model.hook_dict.values())


def test_pattern_in_position_coordinates(tiny_model):
    """Converted patterns put no mass on keys generated at or after the row's step."""
    tokens, order = random_batch(tiny_model, 3, 11)
    _, cache = tiny_model.run_with_cache(tokens, order)
    rank = ranks(order)
    for stream in tiny_model.stream_names:
        pattern = cache[hook_name("pattern", 0, stream)]  # [batch, head, slot, key]
        by_pos = slots_to_positions(slots_to_positions(pattern, order, stream, "row", dim=2), order, stream, "key", dim=3)
        bos = pattern[..., 0]  # the null key's mass, per row slot
        row_rank = rank[:, None, :, None]
        key_rank = rank[:, None, None, :]
        later = key_rank > row_rank if stream == "content" else key_rank >= row_rank
        assert torch.all(by_pos.masked_select(later.expand_as(by_pos)) == 0)
        expected_rows = 1 - slots_to_positions(bos, order, stream, "row", dim=2)
        torch.testing.assert_close(by_pos.sum(-1), expected_rows)
        back = positions_to_slots(by_pos, order, stream, "row", dim=2)  # rows back to slots
        keys_by_pos = slots_to_positions(pattern, order, stream, "key", dim=3)
        real = slice(1, None) if stream == "content" else slice(None)  # the BOS row has no position
        torch.testing.assert_close(back[:, :, real], keys_by_pos[:, :, real])


def test_hook_name_helper():
    assert hook_name("pattern", 3, "query") == "blocks.3.query.attn.hook_pattern"
    assert hook_name("resid_pre", 0, "content") == "blocks.0.content.hook_resid_pre"
    assert hook_name("embed", stream="query") == "query.hook_embed"
    assert hook_name("pattern", 3) == "blocks.3.attn.hook_pattern"
    assert hook_name("hook_z", 1) == "blocks.1.attn.hook_z"
    assert hook_name("order", stream="content") == "hook_order"
    with pytest.raises(ValueError, match="unknown activation 'patern'"):
        hook_name("patern", 0)
    with pytest.raises(ValueError, match="give its layer"):
        hook_name("pattern")
    with pytest.raises(ValueError, match="stream must be one of"):
        hook_name("pattern", 0, "contents")


@pytest.mark.parametrize("what", ["pattern", "attn_scores", "result"])
def test_plain_forward_hooks_see_patterns_and_results(tiny_model, what):
    """A plain torch `register_forward_hook` (nnsight-style tracing) on hook_pattern / hook_attn_scores
    / hook_result fires with the tensor a TransformerLens cache holds (issue 18 item 7)."""
    tokens, order = random_batch(tiny_model, 2, 7)
    stream = tiny_model.stream_names[-1]
    name = hook_name(what, 1, stream)
    _, cache = tiny_model.run_with_cache(tokens, order, names_filter=name)
    seen = []
    handle = tiny_model.hook_dict[name].register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        tiny_model(tokens, order)
    finally:
        handle.remove()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], cache[name])
