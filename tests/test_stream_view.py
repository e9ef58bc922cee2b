"""The stream view: TransformerLens's own tools (ActivationCache helpers, patching, detect_head) on
one stream of an any-order model, checked against hand computations on the model's own hooks."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching
from transformer_lens.head_detector import detect_head

from tests.conftest import VARIANTS, random_batch, tiny_config
from tests.tl_parity import parity
from workbench import from_config, hook_name
from workbench.detection import generation_order_detection_pattern
from workbench.stream_view import StreamView, canonical_name, slot_dims

STREAM_CASES = [(v, s) for v in VARIANTS for s in (("content", "query") if v == "two_stream" else ("main",))]


@pytest.fixture(params=STREAM_CASES, ids=[f"{v}-{s}" for v, s in STREAM_CASES])
def case(request):
    variant, stream = request.param
    torch.manual_seed(0)
    model = from_config(tiny_config(variant)).eval()
    with torch.no_grad():  # non-zero biases and LN affine, as in conftest.tiny_model
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.startswith("b_") or ".b_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model, stream


def in_slots(logits: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The model's position-coordinate logits in generation order (the view's coordinates)."""
    return logits.gather(1, order[..., None].expand(-1, -1, logits.shape[-1]))


def trim(x: torch.Tensor, name: str, n: int) -> torch.Tensor:
    for d in slot_dims(name):
        if x.shape[d] == n + 1:
            x = x.narrow(d, 0, n)
    return x


# ---- names, shapes, forward ------------------------------------------------------------------


def test_names_are_transformer_lens_names(case):
    model, stream = case
    view = StreamView(model, stream)
    expected = {canonical_name(n, stream, model.stream_names) for n in model.hook_dict} - {None}
    assert set(view.hook_dict) == expected
    for layer in range(model.cfg.n_layers):
        for act in ("resid_pre", "resid_post", "attn_out", "q", "k", "v", "pattern", "attn_scores", "z", "result", "post"):
            assert hook_name(act, layer) in view.hook_dict  # the single-stream (= TransformerLens) name
    assert "hook_embed" in view.hook_dict
    assert ("ln_final.hook_scale" in view.hook_dict) == (stream != "content"), "content never reaches ln_final"
    if stream != "main":
        assert not any(stream in n.split(".") for n in view.hook_dict), "the stream is out of the path"
    assert view.blocks[0].attn.W_O is model.blocks[0].attn.W_O, "weights are the model's, shared"


def test_unhooked_forward_is_the_model_in_generation_order(case):
    model, stream = case
    tokens, order = random_batch(model, 3, 9, seed=1)
    view = StreamView(model, stream, order)
    logits, loss = view(tokens, return_type="both")
    torch.testing.assert_close(logits, in_slots(model(tokens, order), order))
    torch.testing.assert_close(loss, model(tokens, order, return_type="loss"))
    # row i predicts the token generated at step i
    assert torch.equal(view.targets(tokens), tokens.gather(1, order))
    # default order: left to right
    torch.testing.assert_close(StreamView(model, stream)(tokens), model(tokens))


@parity("run_with_cache / ActivationCache", "model.run_with_cache(tokens) -> cache['pattern', l]", "view.run_with_cache(tokens): T slots per stream", "works")
def test_cache_is_the_models_trimmed_to_t_slots(case):
    model, stream = case
    n = 9
    tokens, order = random_batch(model, 2, n, seed=2)
    view = StreamView(model, stream, order)
    _, cache = view.run_with_cache(tokens)
    _, model_cache = model.run_with_cache(tokens, order)
    assert set(cache.keys()) == set(view.hook_dict), "every view hook fires once"
    for name, model_name in view.model_names.items():
        x = cache[name]
        for d in slot_dims(name):
            assert x.shape[d] == n, f"{name}: every slot axis of a view is T long, got {tuple(x.shape)}"
        torch.testing.assert_close(x, trim(model_cache[model_name], name, n), atol=1e-5, rtol=0)
    pattern = cache["pattern", 1]
    assert torch.all(pattern.triu(1) == 0)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, model.cfg.n_heads, n))  # nothing lost by the trim
    # the same cache from one model run
    from_model = view.cache_from(model_cache)
    assert set(from_model.keys()) == set(cache.keys())
    torch.testing.assert_close(from_model["blocks.1.attn.hook_pattern"], pattern, atol=1e-6, rtol=0)
    # one layer only
    _, one = view.run_with_cache(tokens, names_filter=lambda name: name.startswith("blocks.1.attn."))
    assert set(one.keys()) == {n for n in view.hook_dict if n.startswith("blocks.1.attn.")}
    # batch dim removed, as detect_head asks
    _, single = view.run_with_cache(tokens[:1], order=order[:1], remove_batch_dim=True)
    assert single["pattern", 0].shape == (model.cfg.n_heads, n, n)


@pytest.mark.parametrize("what", ["z", "pattern", "k", "resid_mid"])
@parity("run_with_hooks edits", "model.run_with_hooks(tokens, fwd_hooks=[(name, fn)])", "the same on a view (bridged to the model's stream)", "works")
def test_an_edit_through_the_view_is_the_same_edit_on_the_model(case, what):
    model, stream = case
    n = 8
    tokens, order = random_batch(model, 2, n, seed=3)
    view = StreamView(model, stream, order)

    def edit(x, hook):  # a new tensor (not in place), scaling the first 5 slots / rows
        y = x.clone()
        if what == "pattern":
            y[:, 1, :5] = y[:, 1, :5] * 0.5
        elif what in ("z", "k"):
            y[:, :5, 2] = 0.0
        else:
            y[:, :5] = y[:, :5] * 1.5
        return y

    name = hook_name(what, 0)  # layer 0: the last layer's content stream feeds nothing
    edited = view.run_with_hooks(tokens, fwd_hooks=[(name, edit)])
    reference = model.run_with_hooks(tokens, order, fwd_hooks=[(view.model_names[name], edit)])
    torch.testing.assert_close(edited, in_slots(reference, order), atol=1e-5, rtol=0)
    assert not torch.allclose(edited, view(tokens), atol=1e-4), "the edit changes the output"


# ---- ActivationCache helpers -------------------------------------------------------------------


@parity("residual helpers and logit lens", "accumulated_resid / decompose_resid / logit_lens", "the same on a view cache", "works")
def test_accumulated_and_decomposed_resid_sum_to_the_final_residual(case):
    model, stream = case
    tokens, order = random_batch(model, 2, 9, seed=4)
    view = StreamView(model, stream, order)
    logits, cache = view.run_with_cache(tokens)
    final = cache["resid_post", model.cfg.n_layers - 1]
    accumulated, labels = cache.accumulated_resid(return_labels=True)
    assert labels == [f"{layer}_pre" for layer in range(model.cfg.n_layers)] + ["final_post"]
    torch.testing.assert_close(accumulated[-1], final)
    decomposed, parts = cache.decompose_resid(return_labels=True)
    if model.cfg.variant == "sigma_gpt":  # the target-position table is a component of its own
        assert parts[:3] == ["embed", "pos_embed", "target_embed"]
    torch.testing.assert_close(decomposed.sum(0), final, atol=1e-5, rtol=0)
    if stream != "content":  # logit lens: the last accumulated residual, through ln_final, is the logits
        lens = cache.accumulated_resid(apply_ln=True)[-1] @ view.W_U + view.b_U
        torch.testing.assert_close(lens, logits, atol=1e-4, rtol=0)
        readout = cache.logit_lens().readout  # TransformerLens's own tool, at its default pos -1: the last step
        last = logits[:, -1]
        expected = {"logits": last, "log_probs": last.log_softmax(-1), "probs": last.softmax(-1)}[readout.return_type]
        torch.testing.assert_close(readout.values[-1], expected, atol=1e-4, rtol=0)
        # logit_attrs: the cached-scale attribution is linear, so the components add up
        targets = view.targets(tokens)
        attrs = cache.logit_attrs(decomposed, tokens=targets)
        centred = final - final.mean(-1, keepdim=True)
        direct = (centred / cache["ln_final.hook_scale"] * view.tokens_to_residual_directions(targets)).sum(-1)
        torch.testing.assert_close(attrs.sum(0), direct, atol=1e-4, rtol=0)
    stacked = cache.stack_activation("pattern")
    assert stacked.shape == (model.cfg.n_layers, 2, model.cfg.n_heads, 9, 9)


@pytest.mark.parametrize("cached_result", [True, False])
def test_stack_head_results_sum_to_attn_out_minus_bias(case, cached_result):
    model, stream = case
    tokens, order = random_batch(model, 2, 9, seed=5)
    view = StreamView(model, stream, order)
    keep = (lambda name: True) if cached_result else (lambda name: not name.endswith("hook_result"))
    _, cache = view.run_with_cache(tokens, names_filter=keep)  # without hook_result: TL computes it from z
    heads, labels = cache.stack_head_results(layer=-1, return_labels=True)
    n_heads = model.cfg.n_heads
    assert labels[:n_heads] == [f"L0H{h}" for h in range(n_heads)]
    for layer in range(model.cfg.n_layers):
        per_layer = heads[layer * n_heads : (layer + 1) * n_heads].sum(0)
        expected = cache["attn_out", layer] - model.blocks[layer].attn.b_O
        torch.testing.assert_close(per_layer, expected, atol=1e-5, rtol=0)


# ---- patching ------------------------------------------------------------------------------------


def corrupt(tokens: torch.Tensor, d_vocab: int) -> torch.Tensor:
    corrupted = tokens.clone()
    corrupted[:, 2] = (corrupted[:, 2] + 1) % d_vocab
    corrupted[:, 5] = (corrupted[:, 5] + 3) % d_vocab
    return corrupted


def hand_patch(model, stream, clean, corrupted, order, act, layer, slot, head, metric):
    """The same patch straight on the model's own hook: slot `slot` (None: all) and `head` (None:
    all) from the clean run."""
    name = hook_name(act, layer, stream)
    _, clean_cache = model.run_with_cache(clean, order, names_filter=name)

    def patch(x, hook):
        x = x.clone()
        index = (slice(None), slice(None) if slot is None else slot) + (() if head is None else (head,))
        x[index] = clean_cache[name][index]
        return x

    return metric(in_slots(model.run_with_hooks(corrupted, order, fwd_hooks=[(name, patch)]), order))


@parity("activation patching", "transformer_lens.patching.get_act_patch_*(model, ...)", "the same functions on a view", "works (pos axis = slots)")
def test_transformer_lens_patching_matches_a_hand_patch(case):
    model, stream = case
    n = 6
    clean, order = random_batch(model, 2, n, seed=6)
    corrupted = corrupt(clean, model.cfg.d_vocab)
    view = StreamView(model, stream, order)
    targets = view.targets(clean)

    def metric(logits):  # mean log-prob of the clean tokens, read in the view's slot coordinates
        return logits.log_softmax(-1).gather(-1, targets[..., None]).mean()

    _, clean_cache = view.run_with_cache(clean)
    resid = patching.get_act_patch_resid_pre(view, corrupted, clean_cache, metric)
    heads = patching.get_act_patch_attn_head_out_all_pos(view, corrupted, clean_cache, metric)
    assert resid.shape == (model.cfg.n_layers, n) and heads.shape == (model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for slot in range(n):
            expected = hand_patch(model, stream, clean, corrupted, order, "resid_pre", layer, slot, None, metric)
            torch.testing.assert_close(resid[layer, slot], expected, atol=1e-5, rtol=0)
        for head in range(model.cfg.n_heads):
            expected = hand_patch(model, stream, clean, corrupted, order, "z", layer, None, head, metric)
            torch.testing.assert_close(heads[layer, head], expected, atol=1e-5, rtol=0)
    corrupted_metric = metric(view(corrupted))
    assert (resid - corrupted_metric).abs().max() > 1e-3, "some patch moves the metric"
    # patching every slot of layer 0's input at once: the single stream becomes the clean run; the
    # query stream starts from the same content-free vector in both runs, so nothing changes
    all_slots = patching.generic_activation_patch(
        view, corrupted, clean_cache, metric,
        patch_setter=lambda act, index, clean_act: clean_act, activation_name="resid_pre",
        index_axis_names=("layer",),
    )
    if stream == "main":
        torch.testing.assert_close(all_slots[0], metric(view(clean)), atol=1e-5, rtol=0)
    if stream == "query":
        torch.testing.assert_close(all_slots[0], corrupted_metric, atol=1e-5, rtol=0)


def test_patching_insists_on_eval_mode(case):
    model, stream = case
    tokens, order = random_batch(model, 1, 5)
    view = StreamView(model, stream, order)
    _, cache = view.run_with_cache(tokens)
    view.train()
    try:
        assert model.training, "the view's mode is the model's"
        with pytest.raises(ValueError, match="evaluation"):
            patching.get_act_patch_resid_pre(view, tokens, cache, lambda logits: logits.sum())
    finally:
        view.eval()
    assert not model.training


# ---- detect_head ---------------------------------------------------------------------------------


def hand_detection(rule: str, tokens: list[int], order: list[int], stream: str) -> torch.Tensor:
    """The [slot, key] detection pattern by explicit loops over the slot layout of
    docs/coordinates.md (independent of workbench.orders)."""
    n = len(tokens)
    d = torch.zeros(n, n)
    for i in range(n):
        if stream == "content":
            ref = order[i - 1] if i >= 1 else None  # the position the row holds
        else:
            ref = order[i]  # the position the row predicts
        for j in range(1, i + 1):  # visible real keys
            key = order[j - 1]
            if rule == "previous_step":
                hit = j == (i if stream == "query" else i - 1)
            elif ref is None:
                hit = False
            elif rule == "previous_position":
                hit = key == ref - 1
            elif rule == "duplicate_token":
                hit = key != ref and tokens[key] == tokens[ref]
            else:
                raise AssertionError(rule)
            d[i, j] = float(hit)
    return d


@pytest.mark.parametrize("rule", ["previous_step", "previous_position", "duplicate_token"])
@parity("head detection", "detect_head(model, tokens, pattern)", "detect_head(view, tokens, view.detection_pattern(rule, tokens))", "works (rules in generation order)")
def test_detect_head_matches_a_hand_computation(case, rule):
    model, stream = case
    tokens = torch.tensor([[3, 5, 3, 7, 5, 3, 1, 7, 2, 5]])  # repeats for duplicate_token
    order = torch.tensor([4, 0, 8, 2, 9, 5, 1, 7, 3, 6])
    n = tokens.shape[1]
    view = StreamView(model, stream, order)
    expected_pattern = hand_detection(rule, tokens[0].tolist(), order.tolist(), stream)
    assert expected_pattern.sum() > 0
    pattern = view.detection_pattern(rule, tokens)
    torch.testing.assert_close(pattern, expected_pattern)
    assert torch.equal(pattern, pattern.tril()), "lower triangular in generation order"

    _, model_cache = model.run_with_cache(tokens, order)
    for exclude_bos in (False, True):
        scores = detect_head(view, tokens, pattern, exclude_bos=exclude_bos)
        assert scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
        for layer in range(model.cfg.n_layers):
            p = model_cache[hook_name("pattern", layer, stream)][0, :, :n, :n].clone()  # [head, slot, key]
            if exclude_bos:
                p[:, :, 0] = 0
            hand = (p * expected_pattern).sum((-1, -2)) / p.sum((-1, -2))
            torch.testing.assert_close(scores[layer], hand, atol=1e-5, rtol=0)


def test_transformer_lens_named_previous_token_pattern_is_the_previous_step(case):
    """TransformerLens's own "previous_token_head" (key i-1 of row i) runs unchanged; on a content or
    main view it is our previous_step plus row 1 -> null key."""
    model, stream = case
    tokens = torch.tensor([[3, 5, 3, 7, 5, 3, 1, 7]])
    order = torch.tensor([4, 0, 2, 7, 5, 1, 3, 6])
    view = StreamView(model, stream, order)
    ours = view.detection_pattern("previous_step", tokens)
    tl = torch.zeros(8, 8)
    tl[1:, :-1] = torch.eye(7)
    if stream != "query":
        assert torch.equal(tl - ours, torch.zeros(8, 8).index_put_((torch.tensor([1]), torch.tensor([0])), torch.tensor(1.0)))
    _, model_cache = model.run_with_cache(tokens, order)
    scores = detect_head(view, tokens, "previous_token_head")
    for layer in range(model.cfg.n_layers):
        p = model_cache[hook_name("pattern", layer, stream)][0, :, :8, :8]
        torch.testing.assert_close(scores[layer], (p * tl).sum((-1, -2)) / p.sum((-1, -2)), atol=1e-5, rtol=0)


def test_position_rules_follow_the_order():
    """Under left-to-right, "previous_position" is a fixed diagonal: a main row predicts position i
    and key i holds position i-1 (its own token); a content row holds i-1 and key i-1 holds i-2."""
    tokens = torch.zeros(1, 6, dtype=torch.long)
    order = torch.arange(6)[None]
    main = generation_order_detection_pattern("previous_position", tokens, order, "main")
    assert torch.equal(main[0], torch.diag((torch.arange(6) >= 1).float()))
    content = generation_order_detection_pattern("previous_position", tokens, order, "content")
    assert torch.equal(content[0], torch.diag((torch.arange(5) >= 1).float(), -1))
    query = generation_order_detection_pattern("previous_position", tokens, order, "query")
    assert torch.equal(query[0], main[0])


def test_moving_the_view_moves_the_model():
    model = from_config(tiny_config("sigma_gpt")).eval()
    view = StreamView(model).to(torch.float64)
    assert model.W_E.dtype == torch.float64 and view.cfg.dtype == torch.float64
    assert view(torch.zeros(1, 5, dtype=torch.long)).dtype == torch.float64


def test_bad_inputs_are_refused():
    model = from_config(tiny_config("two_stream"))
    with pytest.raises(ValueError, match="streams"):
        StreamView(model, "main")
    xlnet = from_config(tiny_config("xlnet", rope_base=10000.0))
    with pytest.raises(ValueError, match="xlnet"):
        StreamView(xlnet)
    view = StreamView(model.eval(), "query")
    with pytest.raises(ValueError, match="one sequence"):
        view.detection_pattern("previous_step", torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="query rows"):
        view.slot_positions(torch.zeros(1, 5, dtype=torch.long), "own")
