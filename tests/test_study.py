"""The study pipeline end to end on a tiny grid (CPU): train in time-limited chunks, evaluate
into study.json with paired gaps and the length effect over seeds, render the tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    g = torch.Generator().manual_seed(0)
    words = ["the cat", "a dog", "sat on", "the mat", "ran to", "a log"]
    docs = [" ".join(words[i] for i in torch.randint(0, 6, (60,), generator=g)) for _ in range(40)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    grid = ["--runs", str(tmp_path / "runs"), "--corpus", str(corpus), "--size", "xs", "--variants", "two_stream",
            "decoupled_rope", "--lengths", "16", "32", "--seeds", "0", "1", "--train-tokens", "8192",
            "--tokens-per-step", "512", "--eval-windows", "8", "--snapshots", "2"]
    study = [sys.executable, str(ROOT / "scripts" / "study.py")]
    done = subprocess.run([*study, "train", *grid, "--seconds", "600", "--parallel", "2"], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("True") == 8, done.stdout  # every run finished
    out = tmp_path / "study.json"
    done = subprocess.run([*study, "evaluate", *grid, "--out", str(out), "--orders", "2"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["runs"]) == 8
    for row in result["runs"]:
        assert {"variant", "seq_len", "seed", "n_params", "tokens", "flops", "any_order_bits",
                "left_to_right_bits"} <= set(row)
        assert row["flops"] > 0 and 0 < row["any_order_bits"] < 8
    assert len(result["gaps"]) == 4  # decoupled_rope vs two_stream at 2 lengths x 2 seeds, paired
    assert all(g["method"] == "paired-blocked" for g in result["gaps"])
    [effect] = result["length_effect"]
    assert effect["variant"] == "decoupled_rope" and (effect["from"], effect["to"]) == (16, 32)
    assert effect["df"] == 1 and set(effect["per_seed"]) == {"0", "1"}
    assert all(row["skipped_windows"] == 8 for row in result["runs"])  # early stopping's windows are not test windows
    from safetensors.torch import load_file

    from workbench.stats import paired_difference

    per_window = load_file(str(out.with_suffix(".windows.safetensors")))  # the committed file reproduces the gaps
    assert set(per_window) == {f"{v}-{n}-s{s}.{k}" for v in ("two_stream", "decoupled_rope") for n in (16, 32) for s in (0, 1)
                               for k in ("any_order_per_window", "left_to_right")} | {"start-16", "start-32"}
    for g in result["gaps"]:
        name = f"-{g['seq_len']}-s{g['seed']}.any_order_per_window"
        again = paired_difference(per_window[g["variant"] + name].double(), per_window["two_stream" + name].double())
        assert again.mean == pytest.approx(g["mean"], abs=1e-6) and again.se == pytest.approx(g["se"], rel=1e-4)
    again = tmp_path / "again.json"  # report rebuilds the same file from the runs' eval/ caches, no model needed
    subprocess.run([*study, "report", *grid, "--out", str(again)], check=True, capture_output=True, cwd=ROOT)
    assert json.loads(again.read_text()) == result
    no_seeds = [a for a in grid if a not in ("--seeds", "0", "1")]  # report finds every evaluated seed itself
    subprocess.run([*study, "report", *no_seeds, "--out", str(again)], check=True, capture_output=True, cwd=ROOT)
    assert json.loads(again.read_text()) == result
    dest = tmp_path / "bundle"
    subprocess.run([*study, "bundle", *grid, "--seeds", "0", "--dest", str(dest)], check=True, capture_output=True, cwd=ROOT)
    from safetensors import safe_open

    from workbench import checkpoint as ckpt

    assert ckpt.load(dest / "decoupled_rope-32").cfg.n_ctx == 32
    with safe_open(str(dest / "decoupled_rope-32" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert (dest / "decoupled_rope-32" / "val.txt").read_text() == (
        tmp_path / "runs" / "decoupled_rope-32-s0" / "best" / "val.txt").read_text()
    assert (tmp_path / "runs" / "two_stream-16-s0" / "snapshots").is_dir()
    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "study_tables.py"), str(out)],
                           capture_output=True, text=True, check=True).stdout
    assert "| decoupled_rope | 16 | 32 |" in table and table.count("| two_stream |") == 4
