"""The training step: the slot-order loss, compiling it (graph-break-free, same numbers as eager,
a loud fall-back when compiling fails), and each step's batch."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import VARIANTS, random_batch, tiny_config
from workbench import from_config
from workbench.training import TrainSettings
from workbench.training.step import COMPILE_MODE, BatchSource, CompiledOrEager, SlotLoss

HAS_CUDA = torch.cuda.is_available()


def _grads(model) -> list[torch.Tensor]:
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("variant", VARIANTS)
def test_slot_loss_equals_the_models_loss(variant):
    model = from_config(tiny_config(variant))
    tokens, order = random_batch(model, 3, 24)
    expected = model(tokens, order, return_type="loss")
    torch.testing.assert_close(SlotLoss(model)(tokens, order), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_step_has_no_graph_break_and_matches_eager(variant):
    """fullgraph=True raises on any graph break; aot_eager traces forward and backward as
    Inductor would, without generating code (Inductor itself is tested on the GPU below)."""
    model = from_config(tiny_config(variant))
    tokens, order = random_batch(model, 3, 24)
    loss_fn = SlotLoss(model)
    eager = loss_fn(tokens, order)
    eager.backward()
    expected = _grads(model)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager", dynamic=False)(tokens, order)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=0)
    for got, want in zip(_grads(model), expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_a_failing_compile_falls_back_loudly(monkeypatch, capsys):
    model = from_config(tiny_config("two_stream"))
    tokens, order = random_batch(model, 2, 24)

    def broken_compile(module, **kwargs):
        def run(*args):
            model.W_E.grad = torch.ones_like(model.W_E)  # a half-done attempt leaves a gradient
            raise RuntimeError("InductorError: AssertionError (planted)")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    step = CompiledOrEager(SlotLoss(model), enabled=True)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*planted.*continues EAGER"):
        loss = step.run(lambda l: l.backward(), tokens, order)
    assert not step.compiled
    assert "WARNING: torch.compile failed" in capsys.readouterr().err
    expected = SlotLoss(model)(tokens, order)
    torch.testing.assert_close(loss, expected)
    model.zero_grad(set_to_none=True)
    expected.backward()
    want = model.W_E.grad.clone()
    model.zero_grad(set_to_none=True)
    step.run(lambda l: l.backward(), tokens, order)
    torch.testing.assert_close(model.W_E.grad, want)  # the planted gradient did not survive


def test_batches_depend_only_on_seed_and_step():
    settings = TrainSettings(variant="two_stream", seq_len=16, tokens_per_step=16 * 8, train_tokens=16 * 8 * 10,
                             warmup_tokens=0)
    stream = torch.randint(0, 9, (500,), generator=torch.Generator().manual_seed(0))
    source = BatchSource(settings, stream, 9, torch.device("cpu"))
    a, b = source(3), BatchSource(settings, stream, 9, torch.device("cpu"))(3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], source(4)[1])
    tokens, order = a
    assert tokens.shape == order.shape == (8, 16)
    assert torch.equal(order.sort(dim=1).values, torch.arange(16).expand(8, 16))  # permutations
    assert len({tuple(o.tolist()) for o in order}) == 8  # every sequence its own order
    starts = [int((stream.unfold(0, 16, 1) == t).all(dim=1).nonzero()[0]) for t in tokens]
    assert len(starts) == 8  # every row is a window of the stream


def test_the_token_stream_is_checked_once():
    settings = TrainSettings(variant="two_stream", seq_len=16, tokens_per_step=16 * 8, train_tokens=16 * 8 * 10,
                             warmup_tokens=0)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 9\)"):
        BatchSource(settings, torch.tensor([1, 2, 9, 3] * 10), 9, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("seq_len", [128, 1024])
@pytest.mark.parametrize("variant", VARIANTS)
def test_inductor_compiled_step_matches_eager_on_the_gpu(variant, seq_len):
    """Inductor (with CUDA graphs, as the trainer runs it) at both lengths compiles (no fall-back); in float32 it gives the eager loss and
    gradients to rounding; in bf16 autocast (as the trainer runs it) its gradients are no further
    from the float32 ones than eager bf16's are."""
    torch._dynamo.reset()
    model = from_config(tiny_config(variant, n_ctx=seq_len, d_model=64, d_head=16)).cuda()
    tokens, order = (t.cuda() for t in random_batch(model, 4, seq_len))
    loss_fn = SlotLoss(model)

    def eager(autocast: bool):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(tokens, order)
        loss.backward()
        return loss.detach(), _grads(model)

    def compiled(autocast: bool):
        step = CompiledOrEager(loss_fn, enabled=True, mode=COMPILE_MODE)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = step.run(lambda l: l.backward(), tokens, order)
        assert step.compiled, "torch.compile fell back to eager"
        return loss.detach(), _grads(model)

    ref_loss, ref = eager(False)
    loss32, grads32 = compiled(False)
    torch.testing.assert_close(loss32, ref_loss, atol=1e-5, rtol=0)
    for got, want in zip(grads32, ref):
        assert (got - want).norm() <= 1e-4 * want.norm() + 1e-7
    torch._dynamo.reset()
    eager_loss16, eager16 = eager(True)
    loss16, grads16 = compiled(True)
    assert abs(loss16 - ref_loss) <= 2 * abs(eager_loss16 - ref_loss) + 1e-3
    for (name, _), got, base, want in zip(model.named_parameters(), grads16, eager16, ref):
        error, eager_error = (got - want).norm(), (base - want).norm()
        assert error <= 2 * eager_error + 1e-3 * want.norm() + 1e-7, f"{name}: {error:.2e} vs eager bf16 {eager_error:.2e}"


def test_flops_per_token_counts_forward_and_backward_and_leaves_no_gradient():
    from workbench.training.step import flops_per_token

    model = from_config(tiny_config("decoupled_rope"))
    tokens, order = random_batch(model, 2, 24)
    per_token = flops_per_token(SlotLoss(model), tokens, order)
    cfg = model.cfg
    matmul_params = cfg.n_layers * (4 * cfg.n_heads * cfg.d_head * cfg.d_model + 2 * cfg.d_model * cfg.d_mlp) + cfg.d_model * cfg.d_vocab
    assert per_token >= 6 * matmul_params  # 2 (forward) + 4 (backward) FLOPs per weight, plus attention
    assert all(p.grad is None for p in model.parameters())
