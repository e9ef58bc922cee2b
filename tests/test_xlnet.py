"""XLNet: exact parity with Hugging Face's XLNetLMHeadModel, the converter's checks, hooks,
decoding, and checkpoints. Hugging Face models are built from XLNetConfig with random weights
(nothing is downloaded).

Our `model(tokens, order)` maps onto HF's call with perm_mask[b, i, j] = rank[j] >= rank[i] (the
query stream; HF unmasks the diagonal for the content stream) and target_mapping = identity.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import XLNetConfig, XLNetLMHeadModel, XLNetModel  # noqa: E402

import workbench  # noqa: E402
from workbench import AOConfig, from_config, hook_name  # noqa: E402
from workbench.checkpoint import save  # noqa: E402
from workbench.convert import ConversionError, from_hf_xlnet  # noqa: E402
from workbench.decoding import Decoder  # noqa: E402
from workbench.models import HookedXLNet  # noqa: E402
from workbench.orders import ranks, slots_to_positions  # noqa: E402

ATOL = 1e-5  # the bar, float32
INIT = 0.1  # peaky enough that a wrong sign or term shows (~1e-2), small enough that fp32 round-off is ~1e-6

CONFIGS = {
    # name: XLNetConfig kwargs (+ "untie_r": False ties the r_*_bias of every layer, as old XLNet did)
    "one-layer": dict(vocab_size=11, d_model=16, n_layer=1, n_head=2, d_inner=24, ff_activation="gelu"),
    "relu-tied-r": dict(vocab_size=50, d_model=32, n_layer=3, n_head=4, d_inner=40, ff_activation="relu", untie_r=False),
    "odd-head-clamp": dict(vocab_size=97, d_model=24, n_layer=2, n_head=8, d_inner=7, clamp_len=3),
    "wide-eps": dict(vocab_size=30, d_model=48, n_layer=2, n_head=3, d_inner=64, layer_norm_eps=1e-5),
}
LENGTHS = (1, 2, 7, 13)


def make_hf(name: str, seed: int = 0) -> XLNetLMHeadModel:
    kwargs = dict(CONFIGS[name])
    untie_r = kwargs.pop("untie_r", True)
    torch.manual_seed(seed)
    hf = XLNetLMHeadModel(XLNetConfig(initializer_range=INIT, **kwargs)).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine and biases, so that no mapping hides behind ones/zeros
        for pname, p in hf.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.3)
        if not untie_r:
            first = hf.transformer.layer[0].rel_attn
            for layer in hf.transformer.layer[1:]:
                for b in ("r_w_bias", "r_r_bias", "r_s_bias"):
                    getattr(layer.rel_attn, b).copy_(getattr(first, b))
    return hf


def batch(vocab: int, batch_size: int, n_pos: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch_size, n_pos), generator=g)
    order = torch.stack([torch.randperm(n_pos, generator=g) for _ in range(batch_size)])
    order[0] = torch.arange(n_pos)  # one left-to-right sequence in every batch
    return tokens, order


def hf_forward(hf, tokens, order, segments=None, **kwargs):
    batch_size, n_pos = tokens.shape
    rank = ranks(order)
    perm_mask = (rank[:, None, :] >= rank[:, :, None]).float()  # [b, i, j]: i cannot see j
    target_mapping = torch.eye(n_pos).expand(batch_size, n_pos, n_pos)
    with torch.no_grad():
        return hf(tokens, perm_mask=perm_mask, target_mapping=target_mapping, token_type_ids=segments, use_mems=False, **kwargs)


def report(label: str, a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a - b).abs().max().item()
    print(f"{label}: max |diff| = {diff:.2e} (max |value| {b.abs().max().item():.2f})")
    return diff


@pytest.mark.parametrize("name", CONFIGS)
def test_parity_logits_and_both_streams(name):
    hf = make_hf(name)
    model = from_hf_xlnet(hf)
    cfg = model.cfg
    for n_pos in LENGTHS:
        tokens, order = batch(cfg.d_vocab, 3, n_pos, seed=n_pos)
        ref = hf_forward(hf, tokens, order, output_hidden_states=True)
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens, order)
        worst = report(f"{name} T={n_pos} logits", logits, ref.logits)
        # HF: (h_0, g_0, h_1, g_1, ..., h_L, g_L); ours: each block's resid_pre, then the last ln2 output.
        for layer in range(cfg.n_layers + 1):
            for i, stream in enumerate(("content", "query")):
                if layer < cfg.n_layers:
                    ours = cache[hook_name("resid_pre", layer, stream)]
                else:
                    ours = cache[f"blocks.{layer - 1}.{stream}.ln2.hook_normalized"]
                ours = slots_to_positions(ours, order, stream)
                worst = max(worst, report(f"  layer {layer} {stream}", ours, ref.hidden_states[2 * layer + i]))
        assert worst < ATOL


def test_parity_with_segments():
    hf = make_hf("relu-tied-r")
    model = from_hf_xlnet(hf)
    tokens, order = batch(model.cfg.d_vocab, 4, 13, seed=5)
    segments = torch.randint(0, 3, tokens.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens, order, token_type_ids=segments)
    ref = hf_forward(hf, tokens, order, segments=segments).logits
    assert report("segments logits", ours, ref) < ATOL
    assert (ref - hf_forward(hf, tokens, order).logits).abs().max() > 1e-3, "segments must matter in this test"
    zeros = torch.zeros_like(tokens)  # all-zero segments add a row constant, which softmax ignores
    with torch.no_grad():
        ours0 = model(tokens, order, token_type_ids=zeros)
    assert report("zero segments", ours0, hf_forward(hf, tokens, order, segments=zeros).logits) < ATOL


def test_attention_patterns_match_hf():
    """Patterns, slot -> position: equal to HF's except the first-generated query row (HF: uniform
    over every position; here: all mass on the null slot, which holds the mean of the content)."""
    hf = make_hf("odd-head-clamp")
    model = from_hf_xlnet(hf)
    tokens, order = batch(model.cfg.d_vocab, 3, 7, seed=2)
    ref = hf_forward(hf, tokens, order, output_attentions=True).attentions
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, order, names_filter=lambda n: n.endswith("hook_pattern"))
    for layer, (hf_h, hf_g) in enumerate(ref):
        for stream, hf_pattern in (("content", hf_h), ("query", hf_g)):
            pattern = cache[hook_name("pattern", layer, stream)]  # [b, head, row, key]
            if stream == "query":
                assert torch.equal(pattern[:, :, 0, 0], torch.ones_like(pattern[:, :, 0, 0]))
            else:
                assert pattern[:, :, 1:, 0].abs().max() == 0, "content rows never see the null slot"
            pattern = slots_to_positions(pattern, order, stream, "row", dim=2)
            pattern = slots_to_positions(pattern, order, stream, "key", dim=3)
            if stream == "query":  # drop the first-generated row, where the two differ by design
                first = order[:, 0]
                keep = torch.ones_like(pattern[:, 0, :, 0], dtype=torch.bool).scatter(1, first[:, None], False)
                pattern, hf_pattern = pattern.transpose(1, 2)[keep], hf_pattern.transpose(1, 2)[keep]
                assert torch.allclose(
                    hf_g.transpose(1, 2)[~keep], torch.full_like(hf_g.transpose(1, 2)[~keep], 1 / 7)
                ), "HF's first-generated query row is uniform over all positions"
            assert report(f"pattern layer {layer} {stream}", pattern, hf_pattern) < ATOL


def test_directory_round_trip_and_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf = make_hf("one-layer")
    hf.save_pretrained(tmp_path / "hf")
    vocab = {f"w{i}": i for i in range(hf.config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    model = from_hf_xlnet(tmp_path / "hf")
    assert model.tokenizer is not None and model.to_tokens("w3 w5").tolist() == [[3, 5]]
    tokens, order = batch(model.cfg.d_vocab, 2, 7, seed=3)
    with torch.no_grad():
        assert report("from directory", model(tokens, order), hf_forward(hf, tokens, order).logits) < ATOL
        # workbench checkpoint: safetensors + JSON, tokenizer included
        save(model, tmp_path / "ckpt")
        loaded = workbench.load(tmp_path / "ckpt")
        assert isinstance(loaded, HookedXLNet) and loaded.cfg == model.cfg
        assert torch.equal(loaded(tokens, order), model(tokens, order))
        assert loaded.to_tokens("w3 w5").tolist() == [[3, 5]]


def test_directory_without_tokenizer_warns(tmp_path):
    make_hf("one-layer").save_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"not read")
    with pytest.warns(UserWarning, match="no tokenizer.json.*spiece.model"):
        model = from_hf_xlnet(tmp_path)
    assert model.tokenizer is None


def test_convert_cli(tmp_path):
    from workbench.convert.xlnet import main

    make_hf("one-layer").save_pretrained(tmp_path / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main([str(tmp_path / "hf"), str(tmp_path / "out"), "--n-ctx", "64"])
    info = json.loads((tmp_path / "out" / "checkpoint.json").read_text())
    assert info["config"]["variant"] == "xlnet" and info["config"]["n_ctx"] == 64
    assert workbench.load(tmp_path / "out").cfg.n_ctx == 64


# ---- the converter refuses what it cannot convert, saying what and why -----------------------


def _tensors(hf):
    return {k: v.clone() for k, v in hf.state_dict().items()}


def test_missing_tensor_is_named():
    from workbench.convert.xlnet import convert_state_dict

    hf = make_hf("relu-tied-r")
    tensors = _tensors(hf)
    del tensors["transformer.layer.1.rel_attn.r_r_bias"]
    with pytest.raises(ConversionError, match=r"missing tensors \['transformer.layer.1.rel_attn.r_r_bias'\]"):
        convert_state_dict(tensors, hf.config)
    del tensors["lm_loss.bias"]
    with pytest.raises(ConversionError, match="lm_loss.bias"):
        convert_state_dict(tensors, hf.config)


def test_misshapen_tensor_says_expected_and_found(tmp_path):
    from safetensors.torch import save_file

    hf = make_hf("relu-tied-r")
    hf.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["transformer.layer.2.rel_attn.q"] = tensors["transformer.layer.2.rel_attn.q"][:, :, :-1].contiguous()
    tensors["transformer.layer.0.ff.layer_1.weight"] = torch.zeros(41, 32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError) as err:
        from_hf_xlnet(tmp_path, tokenizer=None)
    message = str(err.value)
    print(message)
    assert "transformer.layer.2.rel_attn.q: expected (32, 4, 8), found (32, 4, 7)" in message
    assert "transformer.layer.0.ff.layer_1.weight: expected (40, 32), found (41, 32)" in message


def test_unexpected_tensor_strict_and_lenient():
    from workbench.convert.xlnet import convert_state_dict

    hf = make_hf("one-layer")
    tensors = _tensors(hf) | {"sequence_summary.summary.weight": torch.zeros(3)}
    with pytest.raises(ConversionError, match="unexpected tensors.*sequence_summary"):
        convert_state_dict(tensors, hf.config)
    convert_state_dict(tensors, hf.config, strict=False)


def test_pickle_only_directory_is_refused(tmp_path):
    make_hf("one-layer").config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 never unpickled")
    with pytest.raises(ConversionError, match="pytorch_model.bin.*never loads.*save_pretrained"):
        from_hf_xlnet(tmp_path)


def test_unsupported_configs_and_sources(tmp_path):
    with pytest.raises(ConversionError, match="attn_type='uni'"):
        from_hf_xlnet(XLNetLMHeadModel(XLNetConfig(vocab_size=5, d_model=8, n_layer=1, n_head=2, d_inner=8, attn_type="uni")))
    with pytest.raises(ConversionError, match="ff_activation='silu'"):
        from_hf_xlnet(XLNetLMHeadModel(XLNetConfig(vocab_size=5, d_model=8, n_layer=1, n_head=2, d_inner=8, ff_activation="silu")))
    with pytest.raises(ConversionError, match="XLNetLMHeadModel"):
        from_hf_xlnet(XLNetModel(XLNetConfig(vocab_size=5, d_model=8, n_layer=1, n_head=2, d_inner=8)))
    with pytest.raises(ConversionError, match="no config.json"):
        from_hf_xlnet(tmp_path)
    with pytest.raises(TypeError, match="XLNetLMHeadModel or a directory"):
        from_hf_xlnet(42)


# ---- the workbench side: hooks, decoding, causality, config ------------------------------------


@pytest.fixture(scope="module")
def model():
    return from_hf_xlnet(make_hf("relu-tied-r"))


def test_hooks_shapes_and_edits(model):
    tokens, order = batch(model.cfg.d_vocab, 2, 7, seed=4)
    n_pos, heads = 7, model.cfg.n_heads
    with torch.no_grad():
        base, cache = model.run_with_cache(tokens, order)
    assert cache[hook_name("pattern", 0, "content")].shape == (2, heads, n_pos + 1, n_pos + 1)
    assert cache[hook_name("pattern", 0, "query")].shape == (2, heads, n_pos, n_pos + 1)
    assert cache[hook_name("resid_pre", 1, "content")].shape == (2, n_pos + 1, model.cfg.d_model)
    assert cache["blocks.1.query.attn.hook_score_position"].shape == (2, heads, n_pos, n_pos + 1)
    # the null slot is the mean of the content at each block's input
    h = cache[hook_name("resid_pre", 2, "content")]
    torch.testing.assert_close(h[:, 0], h[:, 1:].mean(1))
    # scores = (content + position) * scale, before masking
    layer = 1
    parts = cache[f"blocks.{layer}.query.attn.hook_score_content"] + cache[f"blocks.{layer}.query.attn.hook_score_position"]
    scores = cache[hook_name("attn_scores", layer, "query")]
    finite = scores.isfinite()
    torch.testing.assert_close(scores[finite], (parts * model.blocks[0].attn.scale)[finite])

    def ablate(z, hook):
        z[:, :, 1] = 0
        return z

    with torch.no_grad():
        edited = model.run_with_hooks(tokens, order, fwd_hooks=[(hook_name("z", 0, "query"), ablate)])
        again = model(tokens, order)
    assert not torch.allclose(edited, base, atol=1e-3)
    torch.testing.assert_close(again, base, atol=1e-6, rtol=0)  # hooks removed; cached run == plain run


def test_decoding_matches_forward_after_the_first_step(model):
    """Step-by-step decoding equals the full forward at every step but the first: there HF's
    full-sequence call lets the first-generated position see every token (the null slot holds
    their mean), while decoding has no token yet (the null slot is zero)."""
    tokens, order = batch(model.cfg.d_vocab, 3, 9, seed=6)
    with torch.no_grad():
        full = model(tokens, order)
    decoder = Decoder(model, 3)
    for t in range(9):
        logits = decoder.predict(order[:, t])
        expected = full[torch.arange(3), order[:, t]]
        if t > 0:
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
        else:
            assert not torch.allclose(logits, expected)
        decoder.append(order[:, t : t + 1], tokens.gather(1, order[:, t : t + 1]))
    sample = model.generate(tokens, order="random", generator=torch.Generator().manual_seed(0))
    assert sample.shape == tokens.shape


def test_causal_after_the_first_step(model):
    """Predictions at steps 1..t ignore tokens generated after step t; the first-generated
    position sees every token (Hugging Face's behaviour, kept for parity)."""
    tokens, order = batch(model.cfg.d_vocab, 2, 8, seed=7)
    with torch.no_grad():
        base = model(tokens, order)
        t = 3
        changed = tokens.clone()
        late = order[:, t + 1 :]
        changed.scatter_(1, late, (changed.gather(1, late) + 1) % model.cfg.d_vocab)
        out = model(changed, order)
    early = order[:, 1 : t + 1]
    rows = torch.arange(2)[:, None]
    torch.testing.assert_close(out[rows, early], base[rows, early], atol=1e-6, rtol=0)
    assert not torch.allclose(out[rows, order[:, :1]], base[rows, order[:, :1]])


def test_from_config_and_validation():
    cfg = AOConfig(variant="xlnet", n_layers=2, d_model=16, n_heads=4, d_head=3, d_mlp=8, n_ctx=10, d_vocab=7, seed=0, clamp_len=4)
    model = from_config(cfg)
    assert isinstance(model, HookedXLNet) and cfg.n_streams == 2
    assert model(torch.randint(0, 7, (2, 10)), torch.randperm(10)).shape == (2, 10, 7)
    with pytest.raises(ValueError, match="d_model=15 must be even"):
        AOConfig(variant="xlnet", n_layers=1, d_model=15, n_heads=3, d_head=5, d_mlp=8, n_ctx=10, d_vocab=7)
    with pytest.raises(ValueError, match="clamp_len=4 is XLNet's"):
        AOConfig(variant="two_stream", n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=8, n_ctx=10, d_vocab=7, clamp_len=4)
    with pytest.raises(ValueError, match="token_type_ids has shape"):
        model(torch.zeros(2, 10, dtype=torch.long), token_type_ids=torch.zeros(2, 9, dtype=torch.long))


def test_probe_reference_on_converted_xlnet(model):
    """The probe definition (`pattern_stats`) runs on XLNet's hooked patterns with the two-stream
    layout: every probed row counted once, and the null key takes all of the first-generated
    query row's mass and nothing else."""
    kernels = pytest.importorskip("workbench.kernels")
    from workbench.orders import probe_layout

    n_seq, n_pos = 3, 9
    tokens, order = batch(model.cfg.d_vocab, n_seq, n_pos, seed=8)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, order, names_filter=lambda n: n.endswith("hook_pattern"))
    for layer in range(model.cfg.n_layers):
        for stream in model.stream_names:
            layout = probe_layout(order, stream)
            stats = kernels.pattern_stats(
                cache[hook_name("pattern", layer, stream)], layout.key_pos, layout.row_ref, layout.row_own,
                recency_offset=layout.recency_offset, r=1, w=2,
            )
            assert stats.n_rows.item() == n_seq * n_pos  # content: the null row is not probed
            rows = torch.full((model.cfg.n_heads,), float(n_seq * n_pos), dtype=torch.float64)
            torch.testing.assert_close(stats.parts_mass.sum(-1), rows)
            torch.testing.assert_close(stats.sem_mass.sum(-1), rows)
            null_mass = stats.sem_mass[:, 0]  # bin 0: the null key
            torch.testing.assert_close(null_mass, torch.full_like(null_mass, n_seq if stream == "query" else 0.0))


@pytest.mark.parametrize("segments", [False, True])
def test_probe_qk_reproduces_the_pattern(model, segments):
    """`probe_qk` factorises XLNet's score into plain q.k, so the q/k-based probe path (the kernel
    and its PyTorch reference) sees exactly the hooked pattern."""
    n_seq, n_pos = 2, 40
    tokens, order = batch(model.cfg.d_vocab, n_seq, n_pos, seed=9)
    seg = torch.randint(0, 2, tokens.shape, generator=torch.Generator().manual_seed(2)) if segments else None
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, order, token_type_ids=seg)
    for layer in range(model.cfg.n_layers):
        for stream in model.stream_names:
            q, k, scale = model.probe_qk(cache, layer, stream, order, seg)
            n_rows, n_keys = q.shape[2], k.shape[2]
            scores = (q.double() @ k.double().transpose(-1, -2)) * scale
            causal = torch.arange(n_keys)[None, :] > torch.arange(n_rows)[:, None]
            pattern = scores.masked_fill(causal, float("-inf")).softmax(-1)
            assert report(f"probe_qk layer {layer} {stream}", pattern, cache[hook_name("pattern", layer, stream)].double()) < ATOL
    kernels = pytest.importorskip("workbench.kernels")
    from workbench.orders import probe_layout

    layout = probe_layout(order, "query")
    q, k, scale = model.probe_qk(cache, 1, "query", order, seg)
    from_qk = kernels.reference_probe_stats(
        q, k, layout.key_pos, layout.row_ref, recency_offset=layout.recency_offset, r=2, w=4, scale=scale
    )
    from_pattern = kernels.pattern_stats(
        cache[hook_name("pattern", 1, "query")], layout.key_pos, layout.row_ref, recency_offset=layout.recency_offset, r=2, w=4
    )
    torch.testing.assert_close(from_qk.parts_mass, from_pattern.parts_mass, atol=1e-4, rtol=0)
    torch.testing.assert_close(from_qk.sem_mass, from_pattern.sem_mass, atol=1e-4, rtol=0)


def test_probe_qk_refuses_a_biting_clamp():
    model = from_hf_xlnet(make_hf("odd-head-clamp"))  # clamp_len=3
    tokens, order = batch(model.cfg.d_vocab, 1, 7, seed=0)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, order)
    with pytest.raises(NotImplementedError, match="clamp_len=3.*hook_pattern"):
        model.probe_qk(cache, 0, "query", order)


def test_probe_engine_reference_on_converted_xlnet(model):
    """The probe runner's reference source (patterns through hooks) on a converted XLNet: every
    head summarised; the null key ("sink") holds exactly the first-generated query row's mass."""
    engine = pytest.importorskip("workbench.probing.engine")
    sources = pytest.importorskip("workbench.probing.sources")
    n_seq, n_pos = 4, 16
    tokens, order = batch(model.cfg.d_vocab, n_seq, n_pos, seed=10)
    with torch.no_grad():  # as the runner's batch map calls it
        shard = sources.ReferenceSource().collect(model, tokens, order, r=2, w=2)
    heads = engine.summarise_heads(engine.pool(shard, model, n_pos))
    assert len(heads) == model.cfg.n_layers * 2 * model.cfg.n_heads
    for head in heads:
        assert head.sink == pytest.approx(1 / n_pos if head.stream == "query" else 0.0, abs=1e-9)
