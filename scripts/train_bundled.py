"""Train, export and evaluate the six bundled checkpoints (3 variants x seq_len 128 / 1024).

Same width, depth and training budget (tokens and steps) for every variant and length, so the
comparison is fair. Runs the six trainings in parallel on one GPU, exports each final model as
float16 into checkpoints/<variant>-<seq_len>/, then evaluates them with `workbench eval` and
writes docs/results.md's table source, results/nll.json.

    python scripts/train_bundled.py --data path/to/tinyshakespeare.txt --steps 4000 --runs runs/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from workbench import checkpoint as ckpt
from workbench.training.trainer import VAL_TEXT

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("two_stream", "decoupled_rope", "sigma_gpt")
SHAPES = {128: 64, 1024: 8}  # seq_len -> sequences per step: 8192 tokens per step at both lengths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--orders", type=int, default=4, help="random orders per window in the final eval")
    args = parser.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    jobs = []
    for seq_len, batch in SHAPES.items():
        for variant in VARIANTS:
            out = runs / f"{variant}-{seq_len}"
            cmd = [sys.executable, "-m", "workbench.cli", "train", "--variant", variant, "--data", args.data,
                   "--seq-len", str(seq_len), "--batch-size", str(batch), "--steps", str(args.steps),
                   "--lr", "2e-3", "--warmup-steps", "200", "--eval-every", "500",
                   "--checkpoint-every", "1000", "--out", str(out), "--no-progress"]
            log = open(runs / f"{variant}-{seq_len}.log", "w")
            jobs.append((out, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
    failed = [str(out) for out, job in jobs if job.wait() != 0]
    if failed:
        sys.exit(f"training failed for {failed}; see their .log files in {runs}")
    names = []
    for out, _ in jobs:
        model = ckpt.load(out / "checkpoint")
        info = model.checkpoint
        dest = ROOT / "checkpoints" / out.name
        val_text = (info.path / VAL_TEXT).read_bytes()
        ckpt.save(model, dest, data=info.data, training=info.training, metrics=info.metrics,
                  dtype=torch.float16, extra_files={VAL_TEXT: val_text})
        names.append(out.name)
    result = ROOT / "results" / "nll.json"
    subprocess.run([sys.executable, "-m", "workbench.cli", "eval", "--checkpoint", *names,
                    "--orders", str(args.orders), "--out", str(result)], check=True)
    print(json.dumps({n: json.loads(result.read_text())[n]["any_order_bits"] for n in names}, indent=1))


if __name__ == "__main__":
    main()
