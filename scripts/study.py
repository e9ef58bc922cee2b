"""The length-effect study (issue 16): train the grid of runs in time-limited chunks, then
evaluate every run into results/study.json.

Every run has the same settings but for variant, length and seed: the same corpus (held out by
document), model dims and token budget; `best/` (the validation minimum) is the run's model.
Training is resumable at any point: `train` gives every unfinished run at most `--seconds` more
(up to `--parallel` processes at a time on one GPU) and can be called again until `status` shows
every run finished.

    python scripts/build_study_corpus.py --shared ../shared/data --out runs/study-corpus.jsonl
    python scripts/study.py train --runs runs/study --corpus runs/study-corpus.jsonl --seconds 500
    python scripts/study.py status --runs runs/study
    python scripts/study.py evaluate --runs runs/study --out results/study.json
    python scripts/study_tables.py results/study.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.training import TrainSettings  # noqa: E402

VARIANTS = ("two_stream", "decoupled_rope", "sigma_gpt")
SIZES = {  # name -> (n_layers, d_model, n_heads, d_head, d_mlp)
    "xs": (2, 64, 4, 16, 256),
    "s": (4, 192, 6, 32, 768),
    "m": (6, 256, 8, 32, 1024),
    "l": (8, 320, 10, 32, 1280),
}


@dataclass(frozen=True)
class Run:
    variant: str
    seq_len: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.seq_len}-s{self.seed}"


def settings(run: Run, args: argparse.Namespace) -> TrainSettings:
    n_layers, d_model, n_heads, d_head, d_mlp = SIZES[args.size]
    return TrainSettings(
        variant=run.variant, n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp,
        data=str(Path(args.corpus).resolve()), seq_len=run.seq_len, split="documents", seed=run.seed,
        train_tokens=args.train_tokens, tokens_per_step=args.tokens_per_step, lr=args.lr,
        warmup_tokens=args.train_tokens // 50, eval_every_tokens=args.train_tokens // 40,
        checkpoint_every_tokens=args.train_tokens // 10, eval_windows=args.eval_windows,
        early_stop_evals=args.patience, snapshots=args.snapshots,
    )


def grid(args: argparse.Namespace) -> list[Run]:
    return [Run(v, t, s) for t in args.lengths for v in args.variants for s in args.seeds]


def progress(run_dir: Path) -> dict:
    """step, steps, finished, best validation bits of one run directory (from its files)."""
    state_file = run_dir / "checkpoint" / "trainer_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"step": 0, "stopped": False}
    saved = run_dir / "settings.json"
    steps = TrainSettings(**json.loads(saved.read_text())["settings"]).steps if saved.is_file() else None
    return {"step": state["step"], "steps": steps, "best_bits": state.get("best_bits"),
            "finished": bool(state["stopped"]) or (steps is not None and state["step"] >= steps)}


def train_grid(args: argparse.Namespace) -> None:
    """Give every unfinished run up to --seconds more, --parallel at a time."""
    runs_dir = Path(args.runs)
    runs_dir.mkdir(parents=True, exist_ok=True)
    pending = [r for r in grid(args) if not progress(runs_dir / r.name)["finished"]]
    deadline = time.monotonic() + args.seconds
    active: list[tuple[Run, subprocess.Popen]] = []
    while pending or active:
        while pending and len(active) < args.parallel and deadline - time.monotonic() > 30:
            run = pending.pop(0)
            s = settings(run, args)
            flags = [f"--{k.replace('_', '-')}={v}" for k, v in s.to_dict().items() if v is not None]
            cmd = [sys.executable, "-m", "workbench.cli", "train", "--out", str(runs_dir / run.name), "--no-progress",
                   f"--time-limit={max(deadline - time.monotonic() - 20, 10):.0f}", *flags]
            log = open(runs_dir / f"{run.name}.log", "a")
            active.append((run, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)))
        if not active:
            break
        time.sleep(2)
        for run, job in list(active):
            if job.poll() is not None:
                active.remove((run, job))
                if job.returncode:
                    print(f"{run.name} failed (exit {job.returncode}); see {runs_dir / run.name}.log")
    status(args)


def status(args: argparse.Namespace) -> None:
    runs_dir = Path(args.runs)
    print(f"{'run':<26} {'step':>12} {'best val bits':>14}  finished")
    for run in grid(args):
        p = progress(runs_dir / run.name)
        best = f"{p['best_bits']:.4f}" if isinstance(p["best_bits"], float) else "-"
        print(f"{run.name:<26} {p['step']:>5} / {p['steps'] or '?':<5} {best:>14}  {p['finished']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (("train", train_grid), ("status", status)):
        p = sub.add_parser(name)
        p.set_defaults(fn=fn)
        p.add_argument("--runs", required=True)
        p.add_argument("--corpus", default="runs/study-corpus.jsonl")
        p.add_argument("--variants", nargs="+", default=list(VARIANTS))
        p.add_argument("--lengths", type=int, nargs="+", default=[128, 1024])
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--size", choices=sorted(SIZES), default="m")
        p.add_argument("--train-tokens", type=int, default=131_072_000)
        p.add_argument("--tokens-per-step", type=int, default=65_536)
        p.add_argument("--lr", type=float, default=2e-3)
        p.add_argument("--eval-windows", type=int, default=256)
        p.add_argument("--patience", type=int, default=6, help="early stop after this many evals without improvement")
        p.add_argument("--snapshots", type=int, default=5)
        p.add_argument("--seconds", type=float, default=500)
        p.add_argument("--parallel", type=int, default=6)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
