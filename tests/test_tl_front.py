"""The TransformerLens user's front door (issue 18): `model.view`, clear errors for TransformerLens
tools on the raw model, hook-name validation, the coordinate toolkit, exact attribution after
`fold_ln`, and the rest of TransformerLens's model surface.

Tests marked `@parity(...)` make the TransformerLens parity table of docs/hooks.md
(`scripts/hooks_table.py` collects them from every tests/test_tl_*.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformer_lens import FactoredMatrix, patching
from transformer_lens.head_detector import detect_head

from tests.conftest import VARIANTS, random_batch, tiny_config
from tests.tl_parity import parity
from workbench import from_config, hook_name
from workbench.data.tokenizers import ByteTokenizer
from workbench.orders import slots_to_positions
from workbench.stream_view import StreamView

LOGIT_CASES = [(v, "query" if v == "two_stream" else "main") for v in VARIANTS]
ALL_CASES = [(v, s) for v in VARIANTS for s in (("content", "query") if v == "two_stream" else ("main",))]


def build(variant: str, d_vocab: int = 13):
    torch.manual_seed(0)
    model = from_config(tiny_config(variant, d_vocab=d_vocab)).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm affine, so that folding has work to do
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.startswith("b_") or ".b_" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture
def text_model():
    model = build("two_stream", d_vocab=256)
    model.tokenizer = ByteTokenizer()
    return model


# ---- the front door and the raw model -----------------------------------------------------------


@parity("one object for TransformerLens's tools", "HookedTransformer", "model.view(stream, order) (a StreamView)", "works")
def test_model_view_is_the_front_door():
    model = build("two_stream")
    tokens, order = random_batch(model, 1, 7)
    view = model.view("query", order)
    assert isinstance(view, StreamView) and view.stream == "query" and view.order is order
    assert model.view().stream == model.logit_stream
    _, cache = view.run_with_cache(tokens)
    assert cache["pattern", 0].shape == (1, model.cfg.n_heads, 7, 7)


@parity("TransformerLens tools on the raw model", "patching / detect_head / cache['pattern', 0]",
        "refused, naming model.view", "refused: slots are not positions")
def test_transformer_lens_tools_on_the_raw_model_name_the_view():
    model = build("two_stream")
    tokens, order = random_batch(model, 1, 7)
    _, cache = model.run_with_cache(tokens, order)
    with pytest.raises(AttributeError, match=r"AOConfig has no 'device'.*model\.view\(stream, order\)"):
        patching.get_act_patch_resid_pre(model, tokens, cache, lambda logits: logits.sum())
    with pytest.raises(AttributeError, match=r"model\.view\(stream, order\)"):
        detect_head(model, tokens, torch.eye(7))
    with pytest.raises(KeyError, match=r"cache\[\('pattern', 0\)\] works on a stream view's cache: model\.view"):
        cache["pattern", 0]
    with pytest.raises(KeyError, match=r"'blocks\.1\.content\.attn\.hook_z' or 'blocks\.1\.query\.attn\.hook_z'.*model\.view"):
        model.run_with_hooks(tokens, order, fwd_hooks=[("blocks.1.attn.hook_z", lambda x, hook: x)])


@parity("hook-name validation", "model.run_with_cache(names_filter=...)", "unknown names refused with a suggestion; a filter matching nothing warns", "stricter than TL")
def test_unknown_names_are_refused_and_empty_filters_warn():
    model = build("decoupled_rope")
    tokens, order = random_batch(model, 1, 6)
    with pytest.raises(KeyError, match=r"Did you mean 'blocks\.0\.attn\.hook_pattern'"):
        model.run_with_cache(tokens, order, names_filter="blocks.0.attn.hook_patern")
    with pytest.raises(KeyError, match="not a hook"):
        model.run_with_cache(tokens, order, names_filter=["blocks.0.attn.hook_z", "blocks.9.attn.hook_z"])
    with pytest.warns(UserWarning, match="names_filter matched no hook"):
        _, cache = model.run_with_cache(tokens, order, names_filter=lambda name: "query" in name)
    assert not cache
    with pytest.warns(UserWarning, match="hook filter .* matched no hook"):
        model.run_with_hooks(tokens, order, fwd_hooks=[(lambda name: False, lambda x, hook: x)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a filter that matches warns nothing
        model.run_with_cache(tokens, order, names_filter=lambda name: name.endswith("hook_z"))
    two = build("two_stream")
    view = two.view("query", order)
    with pytest.raises(KeyError, match=r"model's name; in this query view it is 'blocks\.0\.attn\.hook_z'"):
        view.run_with_cache(tokens, names_filter="blocks.0.query.attn.hook_z")
    assert hook_name("pattern", 0) in view.hook_dict  # no stream: TransformerLens's (the view's) name


# ---- exact attribution ------------------------------------------------------------------------------


def logit_of_targets(view, logits, tokens):
    return logits.gather(-1, view.targets(tokens)[..., None])[..., 0]  # [batch, slot]


@pytest.mark.parametrize(("variant", "stream"), LOGIT_CASES)
@parity("DLA sums to the logit", "HookedTransformer(fold_ln=True); cache.logit_attrs / decompose_resid(apply_ln=True)",
        "model.fold_ln() (or view.fold_ln()), then the same calls", "exact: sum + b_U[token] = logit")
def test_attributions_sum_to_the_logit_after_fold_ln(variant, stream):
    model = build(variant)
    tokens, order = random_batch(model, 2, 9, seed=1)
    before = model(tokens, order)
    view = model.view(stream, order)
    _, cache = view.run_with_cache(tokens)
    logit = logit_of_targets(view, view(tokens), tokens)
    targets = view.targets(tokens)
    unfolded = cache.logit_attrs(cache.decompose_resid(), tokens=targets).sum(0) + view.b_U[targets]
    assert (unfolded - logit).abs().max() > 0.05, "without folding the cached-scale DLA misses ln_final's w and b"

    view.fold_ln()
    torch.testing.assert_close(model(tokens, order), before, atol=1e-4, rtol=0)  # folding keeps the logits
    logits, cache = view.run_with_cache(tokens)
    logit = logit_of_targets(view, logits, tokens)
    bias = view.b_U[targets]
    stack = cache.decompose_resid()
    torch.testing.assert_close(cache.logit_attrs(stack, tokens=targets).sum(0) + bias, logit, atol=1e-4, rtol=0)
    per_part = (cache.apply_ln_to_stack(stack) * view.tokens_to_residual_directions(targets)).sum(-1)
    torch.testing.assert_close(per_part.sum(0) + bias, logit, atol=1e-4, rtol=0)
    for expand_neurons in (True, False):
        full = cache.get_full_resid_decomposition(apply_ln=True, expand_neurons=expand_neurons)
        attrs = (full * view.tokens_to_residual_directions(targets)).sum(-1)
        torch.testing.assert_close(attrs.sum(0) + bias, logit, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("variant", "stream"), ALL_CASES)
@parity("full residual decomposition", "cache.get_full_resid_decomposition()", "view cache, with view.accumulated_bias",
        "works on every stream (sigma_gpt adds a target_embed row)")
def test_full_decomposition_sums_to_the_residual(variant, stream):
    model = build(variant)
    tokens, order = random_batch(model, 2, 8, seed=2)
    view = model.view(stream, order)
    _, cache = view.run_with_cache(tokens)
    last = model.cfg.n_layers - 1
    for layer, mlp_input, expected in ((model.cfg.n_layers, False, cache["resid_post", last]), (1, True, cache["resid_mid", 1])):
        for expand_neurons in (True, False):
            full = cache.get_full_resid_decomposition(layer, mlp_input=mlp_input, expand_neurons=expand_neurons)
            torch.testing.assert_close(full.sum(0), expected, atol=1e-4, rtol=0)


@parity("final LayerNorm on the content stream", "cache.accumulated_resid(apply_ln=True)", "refused on the content view (it never reaches ln_final)", "refused: no logits")
def test_the_content_view_refuses_the_final_layernorm():
    model = build("two_stream")
    tokens, order = random_batch(model, 1, 6)
    _, cache = model.view("content", order).run_with_cache(tokens)
    with pytest.raises(ValueError, match="content stream never reaches the final LayerNorm"):
        cache.accumulated_resid(apply_ln=True)
    cache.accumulated_resid(layer=1, apply_ln=True)  # a block's LayerNorm is fine


# ---- TransformerLens's model surface -----------------------------------------------------------------


@parity("token helpers", "to_tokens / to_str_tokens / to_single_token / tokens_to_residual_directions",
        "the same on model and view; to_str_tokens(axis='slot'|'pos')", "works (axis: ours)")
def test_token_helpers(text_model):
    model = text_model
    tokens = model.to_tokens("abcde")
    assert torch.equal(model.to_tokens(tokens), tokens)  # a tensor passes through
    assert model.to_str_tokens(tokens) == list("abcde")
    order = torch.tensor([[3, 0, 4, 1, 2]])
    assert model.to_str_tokens(tokens, axis="slot", order=order, stream="content") == ["<BOS>", "d", "a", "e", "b", "c"]
    view = model.view("query", order)
    assert view.to_str_tokens(tokens) == ["<BOS>", "d", "a", "e", "b"]  # the view's T slots (the default axis)
    assert view.to_str_tokens(tokens, axis="pos") == list("abcde")
    assert model.to_single_token("a") == ord("a")
    with pytest.raises(ValueError, match="is 2 tokens, not one"):
        model.to_single_token("ab")
    torch.testing.assert_close(model.tokens_to_residual_directions("a"), model.W_U[:, ord("a")])
    assert view.tokens_to_residual_directions(tokens).shape == (1, 5, model.cfg.d_model)
    with pytest.raises(ValueError, match="prepend_bos=True: there is no BOS token"):
        model.to_tokens("ab", prepend_bos=True)
    with pytest.raises(ValueError, match="padding_side='left': the models have no pad token"):
        model.to_tokens(["ab", "c"], padding_side="left")
    assert torch.equal(model.to_tokens("ab", prepend_bos=False), model.to_tokens("ab"))


@pytest.mark.parametrize("variant", VARIANTS)
@parity("stacked weights and circuits", "model.W_Q / W_O / QK / OV / W_pos", "the same (QK: offset-0 form under RoPE)", "works")
def test_stacked_weights_and_circuits(variant):
    model = build(variant)
    cfg = model.cfg
    assert model.W_Q.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head)
    assert torch.equal(model.W_O[1], model.blocks[1].attn.W_O) and torch.equal(model.b_in[0], model.blocks[0].mlp.b_in)
    view = model.view()
    assert isinstance(view.OV, FactoredMatrix)
    torch.testing.assert_close(view.OV.AB, model.W_V @ model.W_O)
    torch.testing.assert_close(model.QK.AB, model.W_Q @ model.W_K.transpose(-2, -1))
    if variant == "sigma_gpt":
        assert model.W_pos.shape == (cfg.n_ctx, cfg.d_model)
    else:
        with pytest.raises(AttributeError, match="no position table W_pos: positions enter through rotary"):
            view.W_pos


@pytest.mark.parametrize(("variant", "stream"), LOGIT_CASES)
@parity("unembed / ln_final as functions", "model.unembed(x), model.ln_final(x)", "the same, no hooks argument", "works")
def test_unembed_and_ln_final_without_hooks(variant, stream):
    model = build(variant)
    tokens, order = random_batch(model, 2, 6)
    logits, cache = model.view(stream, order).run_with_cache(tokens)
    final = cache["resid_post", model.cfg.n_layers - 1]
    torch.testing.assert_close(model.unembed(final), logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.ln_final(final), cache["ln_final.hook_normalized"], atol=1e-5, rtol=0)


@parity("config and cache options", "cfg.device, cfg.n_params, run_with_cache(return_cache_object=False)", "on the view; the model's cache is a ModelCache dict", "works")
def test_config_and_cache_options():
    model = build("sigma_gpt")
    tokens, order = random_batch(model, 1, 5)
    view = model.view("main", order)
    assert view.cfg.device == "cpu"
    cfg = model.cfg
    assert view.cfg.n_params == cfg.n_layers * (4 * cfg.d_model * cfg.d_head * cfg.n_heads + 2 * cfg.d_model * cfg.d_mlp)
    _, plain = view.run_with_cache(tokens, return_cache_object=False)
    assert type(plain) is dict and "blocks.0.attn.hook_pattern" in plain
    _, plain = model.run_with_cache(tokens, order, return_cache_object=False)
    assert type(plain) is dict


# ---- coordinates -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "stream"), ALL_CASES)
@parity("slot -> position conversion", "(none: TL positions are slots)", "slots_to_positions on model- and view-shaped tensors", "ours")
def test_slots_to_positions_takes_view_shapes(variant, stream):
    model = build(variant)
    tokens, order = random_batch(model, 2, 7, seed=3)
    _, model_cache = model.run_with_cache(tokens, order)
    _, view_cache = model.view(stream, order).run_with_cache(tokens)
    pattern_name = hook_name("pattern", 1, None if stream == "main" else stream)
    def by_position(pattern):  # rows, then keys, to positions: [batch, head, pos, pos]
        rows = slots_to_positions(pattern, order, stream, "row", dim=2)
        return slots_to_positions(rows, order, stream, "key", dim=3)

    from_model, from_view = by_position(model_cache[pattern_name]), by_position(view_cache["pattern", 1])
    keep = torch.ones_like(from_model, dtype=torch.bool)
    if stream == "content":  # the view dropped the row (and key) of the last generated position
        keep[torch.arange(2), :, order[:, -1]] = False
    torch.testing.assert_close(from_view[keep], from_model[keep])
    assert keep.float().mean() > 0.8
    with pytest.raises(ValueError, match="is dim the slot axis"):
        slots_to_positions(view_cache["pattern", 1], order, stream, "row", dim=1)


@parity("patching results as a table", "patching.get_act_patch_resid_pre -> [layer, pos]", "view.frame(result, ('layer', 'slot'), tokens): keyed by step and position", "ours")
def test_patching_results_as_a_frame_keyed_by_position_and_step(text_model):
    tokens = text_model.to_tokens("abcd")
    order = torch.tensor([2, 0, 3, 1])
    for stream in ("content", "query"):
        view = text_model.view(stream, order)
        corrupted = tokens.clone()
        corrupted[0, 0] = ord("z")
        _, clean = view.run_with_cache(tokens)
        result = patching.get_act_patch_resid_pre(view, corrupted, clean, lambda logits: logits[:, -1].max())
        frame = view.frame(result, ("layer", "slot"), tokens)
        assert len(frame) == text_model.cfg.n_layers * 4
        one = frame[(frame.layer == 1) & (frame.slot == 2)].iloc[0]
        assert one.value == pytest.approx(float(result[1, 2]))
        if stream == "content":  # slot 2 holds the token generated at step 1: position 0, "a"
            assert (one.holds_step, one.holds_pos, one.holds_token) == (1, 0, "a")
            assert frame.predicts_pos.isna().all()
        else:  # query row 2 predicts step 2: position 3, "d"
            assert (one.predicts_step, one.predicts_pos, one.predicts_token) == (2, 3, "d")
            assert frame.holds_pos.isna().all()
    main = build("decoupled_rope", d_vocab=256)
    main.tokenizer = ByteTokenizer()
    frame = main.view("main", order).frame(torch.zeros(4), ("slot",), tokens)
    assert list(frame.holds_token) == ["<BOS>", "c", "a", "d"] and list(frame.predicts_token) == ["c", "a", "d", "b"]
    scores = detect_head(main.view("main", order), tokens, main.view("main", order).detection_pattern("previous_step", tokens))
    assert list(main.view("main", order).frame(scores, ("layer", "head"), tokens).columns) == ["layer", "head", "value"]


@parity("plain torch hooks (nnsight-style)", "hook_point.register_forward_hook(fn)", "fires, patterns formed for it", "works")
def test_plain_forward_hooks_on_a_view_fire():
    model = build("two_stream")
    tokens, order = random_batch(model, 1, 6)
    view = model.view("query", order)
    _, cache = view.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
    seen = []
    handle = view.hook_dict["blocks.1.attn.hook_pattern"].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        view(tokens)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0], cache["pattern", 1])


def test_fold_ln_refuses_the_post_ln_xlnet():
    model = from_config(tiny_config("xlnet"))
    with pytest.raises(ValueError, match="fold_ln needs a pre-LN model; xlnet is post-LN"):
        model.fold_ln()
