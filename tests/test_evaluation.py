"""`workbench eval` and workbench.evaluation on tiny saved checkpoints: blocked intervals, paired
gaps, the per-window side file, --split, --unknown, run-name keys, and every argument validated
before any compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config
from workbench import checkpoint as ckpt
from workbench import from_config
from workbench.cli import main
from workbench.data import CharTokenizer
from workbench.evaluation import evaluate, evaluate_windows, paired_gaps, per_window_bits
from workbench.models import HookedAOModel
from workbench.stats import blocked_mean, paired_difference

TEXT = "".join(f"line {i}: the {('cat', 'dog')[i % 2]} sat on the mat.\n" for i in range(60))
N_CTX = 24


def save_tiny(directory: Path, variant: str = "two_stream", seed: int = 0, val_text: str | None = None,
              n_ctx: int = N_CTX) -> Path:
    tokenizer = CharTokenizer.from_text(TEXT)
    model = from_config(tiny_config(variant, d_vocab=tokenizer.vocab_size, n_ctx=n_ctx, seed=seed, init_range=0.02))
    model.tokenizer = tokenizer
    extra = {} if val_text is None else {"val.txt": val_text.encode()}
    data = {"val_fraction": 0.1, **({"val_text": "val.txt"} if val_text is not None else {})}
    return ckpt.save(model, directory, data=data, extra_files=extra)


@pytest.fixture
def corpus(tmp_path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def run_eval(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["eval", *args])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- the numbers -----------------------------------------------------------------------------


def test_orders_do_not_depend_on_the_batch_size():
    """Pairing two models needs the same orders on every window, whatever batch size each used."""
    model = from_config(tiny_config("decoupled_rope")).eval()
    windows = torch.randint(0, 13, (7, 20), generator=torch.Generator().manual_seed(0))
    small, _ = per_window_bits(model, windows, n_orders=2, seed=3, batch_size=2)
    large, _ = per_window_bits(model, windows, n_orders=2, seed=3, batch_size=5)
    torch.testing.assert_close(small, large, rtol=0, atol=1e-12)


def test_summary_intervals_are_blocked_over_windows_in_text_order():
    model = from_config(tiny_config("sigma_gpt", init_range=0.02)).eval()
    windows = torch.randint(0, 13, (40, 20), generator=torch.Generator().manual_seed(0))
    values = evaluate_windows(model, windows, n_orders=3, seed=1, n_step_bins=5)
    result = evaluate(model, windows, n_orders=3, seed=1, n_step_bins=5)
    a = result["any_order_bits"]
    assert (a["method"], a["n_blocks"], a["df"], a["n"]) == ("blocked", 16, 15, 40)
    want = blocked_mean(values.any_order.mean(1))
    assert (a["mean"], a["ci_low"], a["ci_high"]) == pytest.approx((want.mean, want.ci_low, want.ci_high))
    assert [b["method"] for b in result["by_fraction_revealed"]] == ["blocked"] * 5
    assert values.any_order.shape == (40, 3) and values.by_fraction.shape == (40, 5)
    # The bins average to the whole: every step falls in exactly one bin of 4 steps.
    torch.testing.assert_close(values.by_fraction.mean(1), values.any_order.mean(1))


def test_gaps_are_paired_only_on_the_same_windows_and_orders():
    a = from_config(tiny_config("two_stream", seed=0)).eval()
    b = from_config(tiny_config("decoupled_rope", seed=1)).eval()
    windows = torch.randint(0, 13, (20, 16), generator=torch.Generator().manual_seed(0))
    va, vb = evaluate_windows(a, windows, 2, seed=0), evaluate_windows(b, windows, 2, seed=0)
    other_orders = evaluate_windows(b, windows, 2, seed=1)
    other_windows = evaluate_windows(b, windows.flip(0), 2, seed=0)
    gaps = paired_gaps({"a": va, "b": vb, "b_seed1": other_orders, "b_flipped": other_windows})
    assert set(gaps["a"]) == {"b"} and set(gaps["b"]) == {"a"}
    gap = gaps["b"]["a"]["any_order_bits"]
    assert gap == paired_difference(vb.any_order.mean(1), va.any_order.mean(1))
    assert gap.mean == pytest.approx(-gaps["a"]["b"]["any_order_bits"].mean)


# ---- the command -----------------------------------------------------------------------------


def test_eval_writes_summary_side_file_gaps_and_change_with_length(tmp_path, capsys, corpus):
    names = [str(save_tiny(tmp_path / f"{variant}-{length}", variant, n_ctx=n_ctx))
             for variant in ("two_stream", "decoupled_rope") for length, n_ctx in (("short", N_CTX), ("long", 2 * N_CTX))]
    out = tmp_path / "res" / "nll.json"
    rc, stdout, err = run_eval(capsys, "--checkpoint", *names, "--data", corpus, "--split", "all",
                               "--orders", "2", "--out", str(out))
    assert rc == 0, err
    table = json.loads(out.read_text())
    assert set(table) == {"two_stream-short", "two_stream-long", "decoupled_rope-short", "decoupled_rope-long"}
    short = table["decoupled_rope-short"]
    assert set(short["paired_differences"]) == {"two_stream-short"}  # not the long one: other windows
    change = table["decoupled_rope-long"]["gap_change_with_length"]["two_stream-long"][str(N_CTX)]
    gap_long = table["decoupled_rope-long"]["paired_differences"]["two_stream-long"]["any_order_bits"]
    gap_short = short["paired_differences"]["two_stream-short"]["any_order_bits"]
    assert change["minus"] == ["decoupled_rope-short", "two_stream-short"]
    assert change["mean"] == pytest.approx(gap_long["mean"] - gap_short["mean"])
    assert change["se"] == pytest.approx((gap_long["se"] ** 2 + gap_short["se"] ** 2) ** 0.5)
    assert "split all" in stdout and "paired gaps" in stdout and "change of the gap with length" in stdout
    # The side file holds what the summary was computed from.
    tensors = load_file(str(out.with_suffix(".windows.safetensors")))
    assert short["per_window_file"] == "nll.windows.safetensors"
    per_window = tensors["decoupled_rope-short/any_order"]
    assert per_window.shape == (short["n_windows"], 2) and per_window.dtype == torch.float64
    assert blocked_mean(per_window.mean(1)).mean == pytest.approx(short["any_order_bits"]["mean"])
    assert torch.equal(tensors["decoupled_rope-short/start"], torch.arange(short["n_windows"]) * N_CTX)


def test_runs_saved_as_checkpoint_dirs_are_keyed_by_run_name(tmp_path, capsys, corpus):
    a = save_tiny(tmp_path / "runs" / "a" / "checkpoint", seed=0)
    b = save_tiny(tmp_path / "runs" / "b" / "checkpoint", seed=1)
    out = tmp_path / "nll.json"
    rc, stdout, err = run_eval(capsys, "--checkpoint", str(a), str(b), "--data", corpus, "--orders", "1", "--out", str(out))
    assert rc == 0, err
    table = json.loads(out.read_text())
    assert set(table) == {"a", "b"} and table["a"]["any_order_bits"] != table["b"]["any_order_bits"]
    assert table["a"]["checkpoint_spec"] == str(a)


@pytest.mark.parametrize("second", ["same", "other"])
def test_colliding_run_names_are_refused_before_compute(tmp_path, capsys, corpus, monkeypatch, second):
    a = save_tiny(tmp_path / "x" / "a" / "checkpoint")
    b = a if second == "same" else save_tiny(tmp_path / "y" / "a" / "checkpoint")
    monkeypatch.setattr(HookedAOModel, "nll", _no_compute)
    rc, _, err = run_eval(capsys, "--checkpoint", str(a), str(b), "--data", corpus)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "would both be saved as 'a'" in err


def test_split_is_chosen_stated_and_saved(tmp_path, capsys, corpus):
    model_dir = save_tiny(tmp_path / "m")
    n_tokens = len(TEXT)
    n_val = round(0.1 * n_tokens)
    counts = {}
    for split in ("val", "train", "all"):
        out = tmp_path / f"{split}.json"
        rc, stdout, err = run_eval(capsys, "--checkpoint", str(model_dir), "--data", corpus, "--split", split,
                                   "--orders", "1", "--out", str(out))
        assert rc == 0, err
        assert f"split {split}" in stdout
        entry = json.loads(out.read_text())["m"]
        assert entry["split"] == split
        counts[split] = entry["n_windows"]
    assert counts == {"val": n_val // N_CTX, "train": (n_tokens - n_val) // N_CTX, "all": n_tokens // N_CTX}
    assert "default: val" in _eval_help()


def test_split_other_than_val_needs_data(tmp_path, capsys):
    model_dir = save_tiny(tmp_path / "m", val_text=TEXT[-300:])
    rc, _, err = run_eval(capsys, "--checkpoint", str(model_dir), "--split", "train")
    assert rc == 2 and "--split train needs --data" in err


def test_unknown_characters_error_or_replace(tmp_path, capsys):
    model_dir = save_tiny(tmp_path / "m")
    data = tmp_path / "accents.txt"
    data.write_text(TEXT.replace("cat", "cät"))
    n_unknown = TEXT.count("cat")
    rc, _, err = run_eval(capsys, "--checkpoint", str(model_dir), "--data", str(data), "--orders", "1")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"{n_unknown} character(s) outside the vocabulary" in err and "'ä' (U+00E4)" in err
    assert "--unknown replace" in err
    out = tmp_path / "nll.json"
    rc, stdout, err = run_eval(capsys, "--checkpoint", str(model_dir), "--data", str(data), "--unknown", "replace",
                               "--split", "all", "--orders", "1", "--out", str(out))
    assert rc == 0, err
    entry = json.loads(out.read_text())["m"]
    assert entry["unknown"] == "replace" and entry["n_unknown_replaced"] == n_unknown
    assert f"{n_unknown} unknown characters replaced" in stdout


def _no_compute(*args, **kwargs):
    raise AssertionError("compute started before the arguments were validated")


def _eval_help() -> str:
    from workbench.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["eval"].format_help()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--orders", "0"], "--orders must be >= 1"),
        (["--orders", "-1"], "--orders must be >= 1"),
        (["--max-windows", "-1"], "--max-windows must be >= 2"),
        (["--max-windows", "0"], "--max-windows must be >= 2"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--device", "banana"], "device='banana' is not a device the workbench runs on"),
        (["--out", "{tmp}"], "is a directory"),
        (["--out", "{tmp}/afile/nll.json"], "is a file, not a directory"),
        (["--checkpoint", "{model}", "no-such-checkpoint"], "no checkpoint called 'no-such-checkpoint'"),
    ],
)
def test_every_argument_is_validated_before_any_compute(tmp_path, capsys, corpus, monkeypatch, flags, message):
    model_dir = save_tiny(tmp_path / "m")
    (tmp_path / "afile").write_text("not a directory")
    flags = [f.format(tmp=tmp_path, model=model_dir) for f in flags]
    base = [] if "--checkpoint" in flags else ["--checkpoint", str(model_dir)]
    monkeypatch.setattr(HookedAOModel, "nll", _no_compute)
    rc, _, err = run_eval(capsys, *base, "--data", corpus, *flags)
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
