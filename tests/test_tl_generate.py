"""Decoding and generation as a TransformerLens user drives them: exception-safe KV-cache steps
(issue 17 item 3), clear messages for bad arguments (issue 17 item 12), and `generate` with text
prompts, max_new_tokens, do_sample / top_p and per-step caches (issue 18 item 6)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_batch, tiny_config
from tests.tl_parity import parity
from workbench import from_config, hook_name
from workbench.data.tokenizers import ByteTokenizer
from workbench.decoding import Decoder


def expected_row(full: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return full.gather(1, pos[:, None, None].expand(-1, 1, full.shape[-1]))[:, 0]


class Boom(Exception):
    pass


def boom(x, hook):
    raise Boom(hook.name)


def layer_one_hooks(model):
    """A raising hook on layer 1 of every stream: layer 0 has already extended the cache by then."""
    return [(hook_name("resid_pre", 1, stream), boom) for stream in model.stream_names]


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
@parity("KV-cached decoding survives a raising hook", "(none)", "Decoder steps roll back; a retry gives the right logits", "ours")
def test_a_step_that_raises_midway_leaves_the_decoder_as_it_was(tiny_model, error):
    tokens, order = random_batch(tiny_model, 2, 9, seed=3)
    full = tiny_model(tokens, order)
    decoder = Decoder(tiny_model, batch=2)

    def raise_it(x, hook):
        raise error("stop")

    hooks = [(name, raise_it) for name, _ in layer_one_hooks(tiny_model)]
    with pytest.raises(error):  # a prefill chunk (BOS and 3 slots) that fails in layer 1
        with tiny_model.hooks(fwd_hooks=hooks):
            decoder.append(order[:, :3], tokens.gather(1, order[:, :3]))
    assert decoder.cache.n_slots == 0 and decoder.n_steps == 0
    decoder.append(order[:, :3], tokens.gather(1, order[:, :3]))  # the retry
    for t in range(3, 9):
        pos = order[:, t]
        with pytest.raises(error):  # single stream: predict runs (and caches) the next slot
            with tiny_model.hooks(fwd_hooks=hooks):
                decoder.predict(pos)
        torch.testing.assert_close(decoder.predict(pos), expected_row(full, pos), atol=1e-5, rtol=0)  # the retry
        if tiny_model.cfg.n_streams == 2:  # two streams: append runs (and caches) the content slot
            with pytest.raises(error):
                with tiny_model.hooks(fwd_hooks=hooks):
                    decoder.append(pos[:, None], tokens.gather(1, pos[:, None]))
        decoder.append(pos[:, None], tokens.gather(1, pos[:, None]))
    assert decoder.n_steps == 9 and decoder.cache.n_slots == (10 if tiny_model.cfg.n_streams == 2 else 9)


def test_a_shape_mismatched_append_is_refused_before_anything_runs(tiny_model):
    tokens, order = random_batch(tiny_model, 2, 8, seed=4)
    full = tiny_model(tokens, order)
    decoder = Decoder(tiny_model, batch=2)
    decoder.append(order[:, :2], tokens.gather(1, order[:, :2]))
    with pytest.raises(ValueError, match=r"positions of shape \(2, 2\) but tokens of shape \(2, 3\)"):
        decoder.append(order[:, 2:4], tokens.gather(1, order[:, 2:5]))
    with pytest.raises(ValueError, match=r"pos must have shape \[batch, n\] with batch = 2"):
        decoder.append(order[:1, 2:4], tokens[:1, :2])
    for t in range(2, 8):
        pos = order[:, t]
        torch.testing.assert_close(decoder.predict(pos), expected_row(full, pos), atol=1e-5, rtol=0)
        decoder.append(pos[:, None], tokens.gather(1, pos[:, None]))


def test_decoder_refuses_float_positions(tiny_model):
    decoder = Decoder(tiny_model, batch=1)
    with pytest.raises(TypeError, match="target must hold integer positions, got dtype torch.float32"):
        decoder.predict(torch.tensor([2.7]))
    with pytest.raises(TypeError, match="pos must hold integer positions"):
        decoder.append(torch.tensor([[1.0]]), torch.tensor([[1]]))


@pytest.fixture
def model():
    m = from_config(tiny_config("two_stream", d_vocab=256)).eval()
    m.tokenizer = ByteTokenizer()
    return m


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(known=torch.ones(3, dtype=torch.bool)), ValueError, r"known must have the shape of tokens.*got \(3,\)"),
        (dict(known=torch.full((2, 6), 0.5)), TypeError, "known must be a bool tensor.*torch.float32"),
        (dict(top_k=0), ValueError, "top_k must be a positive integer"),
        (dict(top_k=-1), ValueError, "top_k must be a positive integer"),
        (dict(temperature=float("nan")), ValueError, "temperature must be a finite number"),
        (dict(temperature=-1.0), ValueError, "temperature must be a finite number"),
        (dict(top_p=0.0), ValueError, r"top_p must be a number in \(0, 1\]"),
        (dict(do_sample="yes"), TypeError, "do_sample must be True or False"),
        (dict(max_new_tokens=-2), ValueError, "max_new_tokens must be a non-negative integer"),
        (dict(max_new_tokens=100), ValueError, "exceed the model's context n_ctx=24"),
        (dict(order="backwards"), ValueError, "order must be a permutation tensor, 'random' or 'left_to_right'"),
    ],
)
def test_generate_refuses_bad_arguments_in_one_line(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        model.generate(torch.zeros(2, 6, dtype=torch.long), **kwargs)


@pytest.mark.parametrize("bad", [None, 5, b"abc", 2.5])
def test_to_tokens_refuses_what_is_not_text(model, bad):
    with pytest.raises(TypeError, match="to_tokens takes a str, a list of str, or a tensor of token ids"):
        model.to_tokens(bad)


def test_forward_with_a_string_order_says_what_to_use(model):
    with pytest.raises(TypeError, match="order must be None .* or a permutation tensor.*random_orders"):
        model(torch.zeros(1, 4, dtype=torch.long), order="random")


def test_an_empty_batch_is_refused_instead_of_a_nan_loss(model):
    with pytest.raises(ValueError, match="tokens has a batch of 0 sequences"):
        model(torch.zeros(0, 4, dtype=torch.long), return_type="loss")


def test_byte_tokenizer_encodes_a_lone_surrogate():
    tok = ByteTokenizer()
    ids = tok.encode("a\ud800b")
    assert all(0 <= i < 256 for i in ids) and ids[0] == ord("a") and ids[-1] == ord("b")
    assert tok.decode(ids).startswith("a") and tok.decode(ids).endswith("b")
    assert tok.decode(tok.encode("naïve ☃")) == "naïve ☃"


@parity("generate from text", "model.generate('ROMEO:', max_new_tokens=20)", "the same (any order: order='random' by default)", "works")
def test_generate_from_a_text_prompt(model):
    out = model.generate("ROMEO:", max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, str) and out.startswith("ROMEO:") and len(model.to_tokens(out)[0]) == 11
    batch = model.generate(["ab", "cd"], max_new_tokens=3, order="left_to_right", do_sample=False)
    assert isinstance(batch, list) and [b[:2] for b in batch] == ["ab", "cd"]


@parity("sampling options", "generate(do_sample=, temperature=, top_k=, top_p=)", "the same", "works")
def test_do_sample_false_is_greedy_and_a_tiny_top_p_is_greedy_too(tiny_model):
    template = torch.zeros(2, 10, dtype=torch.long)
    greedy = tiny_model.generate(template, order="left_to_right", temperature=0)
    assert torch.equal(tiny_model.generate(template, order="left_to_right", do_sample=False), greedy)
    nucleus = tiny_model.generate(template, order="left_to_right", top_p=1e-6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(nucleus, greedy)


def test_top_p_samples_only_from_the_nucleus():
    from workbench.decoding import _sample

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(4000, -1)
    drawn = _sample(logits, 1.0, None, 0.7, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {0, 1}  # 0.5 < 0.7 needs the second; 0.8 >= 0.7 stops there


@parity("activations while generating", "(none: run_with_cache per step by hand)", "generate(return_cache=True) -> StepCaches, one cache per step", "ours")
def test_per_step_caches_are_the_full_forwards_rows(tiny_model):
    """Step t's cache holds the row of step t of a full run_with_cache on the generated tokens."""
    tokens, _ = random_batch(tiny_model, 2, 8, seed=9)
    known = torch.zeros_like(tokens, dtype=torch.bool)
    known[:, :3] = True
    out, caches = tiny_model.generate(
        tokens, known=known, generator=torch.Generator().manual_seed(0), return_cache=True,
        names_filter=lambda name: name.endswith("hook_pattern"),
    )
    assert caches.n_prefill == 3 and len(caches.steps) == 5
    _, full = tiny_model.run_with_cache(out, caches.order)
    last = tiny_model.cfg.n_layers - 1
    for t in range(3, 8):
        step = caches.step(t)
        if tiny_model.cfg.n_streams == 2:
            torch.testing.assert_close(step[hook_name("pattern", last, "query")], full[hook_name("pattern", last, "query")][:, :, t : t + 1, : t + 1])
            content = hook_name("pattern", last, "content")
            torch.testing.assert_close(step[content], full[content][:, :, t + 1 : t + 2, : t + 2])
        else:
            name = hook_name("pattern", last)
            torch.testing.assert_close(step[name], full[name][:, :, t : t + 1, : t + 1])
    prefill_stream = "content" if tiny_model.cfg.n_streams == 2 else "main"
    name = hook_name("pattern", 0, prefill_stream)
    rows = 4 if prefill_stream == "content" else 3  # BOS + 3 known tokens; the single stream's 3 slots
    torch.testing.assert_close(caches.prefill[name], full[name][:, :, :rows, :rows])
    with pytest.raises(IndexError, match="step 2 was not sampled"):
        caches.step(2)


@parity("generate on a view", "(none)", "view.generate(...): the view's order, caches under the view's names", "ours")
def test_a_views_generate_uses_its_order_and_names(tiny_model):
    stream = tiny_model.logit_stream
    tokens, order = random_batch(tiny_model, 1, 7, seed=2)
    view = tiny_model.view(stream, order[0])
    out, caches = view.generate(tokens, do_sample=False, return_cache=True, names_filter="blocks.1.attn.hook_pattern")
    assert torch.equal(out, tiny_model.generate(tokens, order=order, do_sample=False))
    assert torch.equal(caches.order, order)
    assert set(caches.step(3)) == {"blocks.1.attn.hook_pattern"}
    _, full = view.run_with_cache(out)
    torch.testing.assert_close(caches.step(3)["blocks.1.attn.hook_pattern"], full["pattern", 1][:, :, 3:4, :4])
