"""The model family's contract: causality in generation order, left-to-right reduction, fast ==
hooked path, the one-matmul Q/K/V projection == three matmuls, KV-cached decoding == full forward,
and clear errors for bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import random_batch, tiny_config
from workbench import AOConfig, from_config
from workbench.components.attention import Attention
from workbench.decoding import Decoder
from workbench.orders import ranks

LENGTHS = (1, 2, 7, 17, 24)


@pytest.mark.parametrize("n_pos", LENGTHS)
def test_causal_in_generation_order(tiny_model, n_pos):
    """Changing tokens generated at or after step t leaves predictions at steps <= t unchanged
    (two-stream: the query stream at p never sees x_p); a later prediction does change."""
    tokens, order = random_batch(tiny_model, 3, n_pos, seed=n_pos)
    base = tiny_model(tokens, order)
    g = torch.Generator().manual_seed(1)
    for t in range(n_pos):
        changed = tokens.clone()
        late = order[:, t:]
        changed.scatter_(1, late, torch.randint(0, tiny_model.cfg.d_vocab, late.shape, generator=g))
        out = tiny_model(changed, order)
        early = order[:, : t + 1]  # predictions made at steps <= t
        idx = early[..., None].expand(-1, -1, out.shape[-1])
        torch.testing.assert_close(out.gather(1, idx), base.gather(1, idx), atol=1e-6, rtol=0)
        if t + 1 < n_pos and not torch.equal(changed.gather(1, order[:, t : t + 1]), tokens.gather(1, order[:, t : t + 1])):
            later = order[:, t + 1 :][..., None].expand(-1, -1, out.shape[-1])
            assert not torch.allclose(out.gather(1, later), base.gather(1, later)), "later steps must see the change"


def _reference_left_to_right(model, tokens):
    """An ordinary left-to-right transformer written in sequence positions, from the model's weights.

    Slot s of the causal stream is BOS (s = 0) or token s-1; it predicts token s. Two-stream adds
    a query row for each position p that attends to content slots 0..p.
    """
    cfg = model.cfg
    batch, n_pos = tokens.shape

    def ln(x, mod):
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + cfg.layer_norm_eps).sqrt() * mod.w + mod.b

    def rope(x, pos):  # x [b, s, h, e], pos [s] (-1: none)
        half = cfg.d_head // 2
        freqs = cfg.rope_base ** (-torch.arange(half, dtype=torch.float64) * 2 / cfg.d_head)
        ang = pos.clamp(min=0)[:, None].double() * freqs * (pos >= 0)[:, None]
        cos, sin = torch.cat([ang.cos()] * 2, -1).float(), torch.cat([ang.sin()] * 2, -1).float()
        flipped = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos[None, :, None] + flipped * sin[None, :, None]

    def attn(blk, xq, xkv, q_pos, k_pos, mask):
        a = blk.attn
        q = torch.einsum("bsd,hde->bshe", xq, a.W_Q) + a.b_Q
        k = torch.einsum("bsd,hde->bshe", xkv, a.W_K) + a.b_K
        v = torch.einsum("bsd,hde->bshe", xkv, a.W_V) + a.b_V
        if cfg.variant != "sigma_gpt":
            q, k = rope(q, q_pos), rope(k, k_pos)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(cfg.d_head)
        p = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        z = torch.einsum("bhqk,bkhe->bqhe", p, v)
        return torch.einsum("bqhe,hed->bqd", z, a.W_O) + a.b_O

    def mlp(blk, x):
        m = blk.mlp
        act = F.gelu if cfg.act_fn == "gelu" else F.relu
        return act(x @ m.W_in + m.b_in) @ m.W_out + m.b_out

    own = torch.arange(-1, n_pos)  # slot s stands for position s-1
    x = torch.cat([model.w_bos.expand(batch, 1, -1), model.W_E[tokens]], 1)  # [b, T+1, d]
    if cfg.variant != "two_stream":
        x, own = x[:, :n_pos], own[:n_pos]
        target = torch.arange(n_pos)
        if cfg.variant == "sigma_gpt":
            x = x + model.W_pos[own.clamp(min=0)] * (own >= 0)[:, None] + model.W_target[target]
        q_pos = target
    else:
        q_pos = own
        g = model.w_query.expand(batch, n_pos, -1)
    causal = torch.ones(len(own), len(own), dtype=torch.bool).tril()
    for blk in model.blocks:
        if cfg.variant == "two_stream":  # query row p sees content slots 0..p: BOS and x_<p
            xn_g = ln(g, blk.ln1)
            xn = ln(x, blk.ln1)
            g = g + attn(blk, xn_g, xn, torch.arange(n_pos), own, causal[:n_pos])
            g = g + mlp(blk, ln(g, blk.ln2))
        xn = ln(x, blk.ln1)
        x = x + attn(blk, xn, xn, q_pos, own, causal)
        x = x + mlp(blk, ln(x, blk.ln2))
    final = g if cfg.variant == "two_stream" else x
    return ln(final, model.ln_final) @ model.W_U + model.b_U


@pytest.mark.parametrize("n_pos", (1, 9, 24))
def test_left_to_right_is_ordinary_autoregressive(tiny_model, n_pos):
    tokens, _ = random_batch(tiny_model, 2, n_pos)
    with torch.no_grad():
        ours = tiny_model(tokens)  # default order: left-to-right
        ref = _reference_left_to_right(tiny_model, tokens)
        identity = tiny_model(tokens, torch.arange(n_pos))
    print("max |ours - reference|:", (ours - ref).abs().max().item())
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(identity, ours, atol=0, rtol=0)


@pytest.mark.parametrize("n_pos", LENGTHS)
def test_fast_path_equals_hooked_path(tiny_model, n_pos):
    tokens, order = random_batch(tiny_model, 3, n_pos, seed=3)
    fast = tiny_model(tokens, order)
    hooked, cache = tiny_model.run_with_cache(tokens, order)
    assert any("hook_pattern" in name for name in cache.keys())
    print("max |fast - hooked|:", (fast - hooked).abs().max().item())
    torch.testing.assert_close(fast, hooked, atol=1e-5, rtol=0)


def _three_matmuls(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The projection as it was before one matmul did it: q, k, v each from its own einsum."""
    return tuple(
        torch.einsum("bsd,hde->bshe", x, W) + b
        for W, b in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V))
    )


def _run_both(model, monkeypatch, run):
    """run(model) with the one-matmul projection, then with three matmuls."""
    fused = run(model)
    with monkeypatch.context() as patch:
        patch.setattr(Attention, "project", _three_matmuls)
        unfused = run(model)
    return fused, unfused


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_one_matmul_projection_equals_three(tiny_model, monkeypatch, dtype, atol):
    """Logits, the loss's gradients and every cached activation (hook_q / hook_k / hook_v
    included: same names, shapes and values) agree with three separate matmuls."""
    model = tiny_model.to(dtype)
    tokens, order = random_batch(model, 3, 17, seed=8)

    def run(m):
        m.zero_grad(set_to_none=True)
        logits, loss = m(tokens, order, return_type="both")
        loss.backward()
        _, cache = m.run_with_cache(tokens, order)
        return logits, {n: p.grad for n, p in m.named_parameters()}, cache

    (logits, grads, cache), (ref_logits, ref_grads, ref_cache) = _run_both(model, monkeypatch, run)
    print("max |fused - unfused| logits:", (logits - ref_logits).abs().max().item())
    torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=atol, rtol=0, msg=name)
    assert cache.keys() == ref_cache.keys() and any(n.endswith("attn.hook_q") for n in cache)
    for name, act in cache.items():
        torch.testing.assert_close(act, ref_cache[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("activation", ["q", "k", "v"])
def test_in_place_edits_of_q_k_v_change_the_output_as_with_three_matmuls(tiny_model, monkeypatch, activation):
    """Each of q, k, v reaches its hook as a tensor of its own: an in-place edit under autograd
    changes only what it edits, and the output as it did with three matmuls."""
    model = tiny_model.double()
    tokens, order = random_batch(model, 2, 9, seed=9)
    base = model(tokens, order)
    name = model.stream_names[0]
    hook = "blocks.0." + ("" if name == "main" else f"{name}.") + f"attn.hook_{activation}"

    def zero_head(x, hook):
        x[:, :, 0] = 0
        return x

    def run(m):
        edited = m.run_with_hooks(tokens, order, fwd_hooks=[(hook, zero_head)])
        edited.sum().backward()  # the edit is differentiable
        return edited

    edited, ref_edited = _run_both(model, monkeypatch, run)
    assert (edited - base).abs().max() > 1e-4, f"editing {hook} did not change the output"
    torch.testing.assert_close(edited, ref_edited, atol=1e-12, rtol=0)


@pytest.mark.parametrize("n_pos", (1, 5, 24))
def test_kv_cached_decoding_equals_full_forward(tiny_model, n_pos):
    tokens, order = random_batch(tiny_model, 2, n_pos, seed=5)
    full = tiny_model(tokens, order)
    decoder = Decoder(tiny_model, batch=2)
    for t in range(n_pos):
        pos = order[:, t]
        logits = decoder.predict(pos)
        expected = full.gather(1, pos[:, None, None].expand(-1, 1, full.shape[-1]))[:, 0]
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
        decoder.append(pos[:, None], tokens.gather(1, pos[:, None]))


def test_prefill_then_decode_equals_full_forward(tiny_model):
    tokens, order = random_batch(tiny_model, 2, 15, seed=6)
    full = tiny_model(tokens, order)
    decoder = Decoder(tiny_model, batch=2)
    decoder.append(order[:, :6], tokens.gather(1, order[:, :6]))  # a teacher-forced chunk
    t = 6
    while t < 15:
        pos = order[:, t]
        expected = full.gather(1, pos[:, None, None].expand(-1, 1, full.shape[-1]))[:, 0]
        torch.testing.assert_close(decoder.predict(pos), expected, atol=1e-5, rtol=0)
        n = 3 if t == 8 else 1  # a chunk right after a prediction
        decoder.append(order[:, t : t + n], tokens.gather(1, order[:, t : t + n]))
        t += n


def test_generate_infills_and_keeps_known_tokens(tiny_model):
    tokens, _ = random_batch(tiny_model, 3, 12, seed=7)
    known = torch.zeros_like(tokens, dtype=torch.bool)
    known[:, ::3] = True
    g1 = torch.Generator().manual_seed(0)
    g2 = torch.Generator().manual_seed(0)
    out1 = tiny_model.generate(tokens, known=known, generator=g1)
    out2 = tiny_model.generate(tokens, known=known, generator=g2)
    assert torch.equal(out1, out2), "generation must be deterministic for a seeded generator"
    assert torch.equal(out1[known], tokens[known])
    assert out1.min() >= 0 and out1.max() < tiny_model.cfg.d_vocab
    # Known positions placed mid-order are revealed, not sampled.
    order = torch.arange(12).flip(0)
    out3 = tiny_model.generate(tokens, known=known, order=order, temperature=0)
    assert torch.equal(out3[known], tokens[known])


def test_greedy_left_to_right_generation_matches_argmax(tiny_model):
    """Each greedy token is the argmax of the full forward on the generated sequence."""
    template = torch.zeros(2, 10, dtype=torch.long)
    out = tiny_model.generate(template, order="left_to_right", temperature=0)
    logits = tiny_model(out)
    assert torch.equal(logits.argmax(-1), out)


def test_single_stream_decoder_refuses_mismatched_append():
    model = from_config(tiny_config("decoupled_rope"))
    decoder = Decoder(model, batch=1)
    decoder.predict(torch.tensor([3]))
    with pytest.raises(ValueError, match="committed to positions"):
        decoder.append(torch.tensor([[4]]), torch.tensor([[1]]))


# ---- bad inputs ----------------------------------------------------------------------------


@pytest.fixture
def model():
    return from_config(tiny_config("two_stream"))


def test_order_not_a_permutation(model):
    with pytest.raises(ValueError, match="not a permutation.*exactly once"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.tensor([0, 1, 1, 3]))


def test_order_wrong_shape(model):
    with pytest.raises(ValueError, match=r"order must have shape"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.arange(5))


def test_order_float_dtype(model):
    with pytest.raises(TypeError, match="integer positions"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.arange(4.0))


def test_token_out_of_vocabulary(model):
    with pytest.raises(ValueError, match=r"must lie in \[0, 13\).*\[13\]"):
        model(torch.tensor([[1, 13, 2]]))
    with pytest.raises(ValueError, match=r"\[-1\]"):
        model(torch.tensor([[1, -1, 2]]))


def test_sequence_longer_than_context(model):
    with pytest.raises(ValueError, match="longer than the model's context n_ctx=24"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_wrong_token_dtype_and_shape(model):
    with pytest.raises(TypeError, match="integer ids.*tokens.long"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"shape \[batch, pos\]"):
        model(torch.zeros(1, 2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="to_tokens"):
        model([[1, 2, 3]])
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))


def test_unknown_variant_and_bad_fields():
    with pytest.raises(ValueError, match="variant='xlnet2' is unknown; use one of two_stream"):
        tiny_config("xlnet2")
    with pytest.raises(ValueError, match="d_head=7 must be even"):
        tiny_config("two_stream", d_head=7)
    with pytest.raises(ValueError, match="n_layers=0 must be a positive integer"):
        tiny_config("two_stream", n_layers=0)
    with pytest.raises(ValueError, match="unknown fields"):
        AOConfig.from_dict({**tiny_config("sigma_gpt").to_dict(), "n_experts": 4})


def test_config_round_trip():
    cfg = tiny_config("sigma_gpt", rotary_dim=4)
    assert AOConfig.from_dict(cfg.to_dict()) == cfg


def test_ranks_inverts_order():
    order = torch.stack([torch.randperm(9) for _ in range(4)])
    rank = ranks(order)
    assert torch.equal(order.gather(1, rank), torch.arange(9).expand(4, 9))
