"""Train, export and evaluate the six bundled checkpoints (3 variants x seq_len 128 / 1024).

Same width, depth and training budget (tokens and steps) for every variant and length, so the
comparison is fair. Runs the six trainings in parallel on one GPU, exports each final model as
float16 into checkpoints/<variant>-<seq_len>/, then evaluates them with `workbench eval` and
writes docs/results.md's table source, results/nll.json.

    python scripts/train_bundled.py --data path/to/tinyshakespeare.txt --steps 3000 --runs runs/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from workbench import checkpoint as ckpt
from workbench.training.run_dir import VAL_TEXT

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("two_stream", "decoupled_rope", "sigma_gpt")
TOKENS_PER_STEP = 8192  # 64 x 128 or 8 x 1024, the bundled recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--orders", type=int, default=4, help="random orders per window in the final eval")
    args = parser.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    jobs = []
    step = TOKENS_PER_STEP
    for seq_len in (128, 1024):
        for variant in VARIANTS:
            out = runs / f"{variant}-{seq_len}"
            cmd = [sys.executable, "-m", "workbench.cli", "train", "--variant", variant, "--data", args.data,
                   "--seq-len", str(seq_len), "--tokens-per-step", str(step), "--train-tokens", str(args.steps * step),
                   "--lr", "2e-3", "--warmup-tokens", str(200 * step), "--eval-every-tokens", str(500 * step),
                   "--checkpoint-every-tokens", str(1000 * step), "--out", str(out), "--no-progress"]
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
