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
    "m4": (4, 256, 8, 32, 1024),
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
            if args.micro_batch_tokens:
                cmd.append(f"--micro-batch-tokens={min(args.micro_batch_tokens, s.tokens_per_step)}")
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


EVAL_SEED = 12345  # the same orders for every run at a length: gaps between variants are paired


def evaluate_grid(args: argparse.Namespace) -> None:
    """Evaluate every finished run that has no `eval/` yet, then `report`. A run's evaluation is
    its `best/` model on the held-out windows that early stopping did not look at (the first
    `eval_windows` windows chose `best/`; the rest are the test windows), 8 random orders per
    window, the same orders for every run at a length."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for run in grid(args):
        run_dir = Path(args.runs) / run.name
        if (run_dir / "eval" / "row.json").is_file():
            continue
        state = progress(run_dir)
        if not state["finished"] and not (args.unfinished and (run_dir / "best" / "checkpoint.json").is_file()):
            print(f"{run.name}: not finished (step {state['step']} of {state['steps']}); left out")
            continue
        row = evaluate_run(run, run_dir, args, device, finished=state["finished"])
        print(f"{run.name}: any-order {row['any_order_bits']:.4f}, left-to-right {row['left_to_right_bits']:.4f}")
    report(args)


def evaluate_run(run: Run, run_dir: Path, args: argparse.Namespace, device: str, finished: bool) -> dict:
    """One run's row and per-window values, written to `run_dir/eval/` (row.json, values.safetensors).
    `finished` is False only under --unfinished: the best/ of a run cut short."""
    import torch
    from safetensors.torch import save

    from workbench import checkpoint as ckpt
    from workbench.data import sequential_windows
    from workbench.evaluation import evaluate_windows, summarise
    from workbench.results_io import write_bytes_atomic, write_json_atomic

    model = ckpt.load(run_dir / "best", device=device)
    training = model.checkpoint.training
    windows = sequential_windows(model.tokenizer.encode_tensor((run_dir / "best" / "val.txt").read_text()), run.seq_len)
    skip = training["eval_windows"]  # early stopping's windows
    if len(windows) <= skip + 1:
        raise ValueError(f"{run.name}: {len(windows)} held-out windows, {skip} of them used for early stopping; "
                         "hold out more text (val_fraction) or use fewer --eval-windows")
    starts = torch.arange(len(windows)) * run.seq_len
    test, starts = windows[skip:], starts[skip:]
    if args.max_windows:
        test, starts = test[: args.max_windows], starts[: args.max_windows]
    v = evaluate_windows(model, test, n_orders=args.orders, seed=EVAL_SEED, batch_size=args.batch_size, start=starts)
    summary, tokens = summarise(v), training["tokens_done"]
    row = {
        "variant": run.variant, "seq_len": run.seq_len, "seed": run.seed, "n_params": training["n_params"],
        "tokens": tokens, "flops": _flops_per_token(model, run.seq_len, device) * tokens,
        "any_order_bits": summary["any_order_bits"]["mean"], "any_order": summary["any_order_bits"],
        "left_to_right_bits": summary["left_to_right_bits"]["mean"], "left_to_right": summary["left_to_right_bits"],
        "by_fraction_revealed": summary["by_fraction_revealed"], "n_windows": v.n_windows, "n_orders": args.orders,
        "skipped_windows": skip, "windows_sha256": v.windows_sha256, "train_tokens": training["train_tokens"],
        "finished": finished,
    }
    out = run_dir / "eval"
    write_bytes_atomic(out / "values.safetensors", save({k: t.contiguous() for k, t in v.tensors().items()}))
    write_json_atomic(out / "row.json", row)
    return row


def load_eval(run: Run, run_dir: Path) -> tuple[dict, object]:
    """A run's evaluation row and its WindowValues, from `run_dir/eval/`."""
    from safetensors.torch import load_file

    from workbench.evaluation.core import WindowValues

    row = json.loads((run_dir / "eval" / "row.json").read_text())
    t = load_file(str(run_dir / "eval" / "values.safetensors"))
    values = WindowValues(any_order=t["any_order"], left_to_right=t["left_to_right"], by_fraction=t["by_fraction"],
                          fraction=t["fraction"], start=t["start"], seq_len=run.seq_len, seed=EVAL_SEED,
                          windows_sha256=row["windows_sha256"])
    return row, values


def report(args: argparse.Namespace) -> None:
    """results/study.json from every evaluated run of the grid (no model needed): one row per run,
    the paired gaps per length and seed, the gaps and their change with length over seeds as
    replicates; the per-window values beside it."""
    from safetensors.torch import save_file

    from workbench.results_io import write_json_atomic

    if args.seeds is None:  # every seed with an evaluated run (seeds added in later calls included)
        args.seeds = sorted({int(d.parent.parent.name.rsplit("-s", 1)[1]) for d in Path(args.runs).glob("*-s*/eval/row.json")})
    rows, values = [], {}
    for run in grid(args):
        run_dir = Path(args.runs) / run.name
        if (run_dir / "eval" / "row.json").is_file():
            row, values[run] = load_eval(run, run_dir)
            rows.append(row)
    if not rows:
        raise SystemExit(f"no evaluated runs under {args.runs}: run `study.py evaluate` first")
    out = Path(args.out)
    write_json_atomic(out, {"runs": rows, **compare_runs(values), "eval_seed": EVAL_SEED})
    # the committed per-window values, what the paired gaps are computed from: per run the any-order NLL
    # per window (mean over its orders) and the left-to-right NLL, in float32 (study.json is computed in
    # float64), and each length's window starts once (every run of a length has the same windows). Per
    # order and by fraction revealed they stay in the runs' eval/ caches: the file travels in the
    # device's 64 MiB tree and grows with every seed.
    tensors = {f"{r.name}.{k}": t.float().contiguous() for r, v in values.items()
               for k, t in (("any_order_per_window", v.any_order_per_window), ("left_to_right", v.left_to_right))}
    tensors.update({f"start-{r.seq_len}": v.start.contiguous() for r, v in values.items()})
    save_file(tensors, str(out.with_suffix(".windows.safetensors")))
    print(f"wrote {out}: {len(rows)} runs")


STATS_PROBES = "histograms,parts,specialisation,sink,entropy,by_step"


def probe_grid(args: argparse.Namespace) -> None:
    """Probes of the --seeds runs (here seed 0 by default) on their whole held-out text through the fused
    kernel (`probe --fast`): every probe on `best/`, with the causal checks on
    --causal-sequences windows (its bundled copy in --dest if `bundle` made one); the attention
    statistics alone on each snapshot (the emergence question). Results in
    `<run>/probes/<best|step-NNNNNN>/`; finished ones are kept."""
    jobs = []
    for run in grid(args):
        run_dir = Path(args.runs) / run.name
        if not (run_dir / "best" / "checkpoint.json").is_file():
            print(f"{run.name}: no best/ yet; not probed")
            continue
        snapshots = sorted((run_dir / "snapshots").glob("step-*")) if (run_dir / "snapshots").is_dir() else []
        jobs += [(0, run, _bundled_copy(run, run_dir, args), run_dir / "probes" / "best")]
        jobs += [(1, run, snap, run_dir / "probes" / snap.name) for snap in snapshots]
    for kind, run, model_dir, out in sorted(jobs, key=lambda j: j[0]):  # every best/ first
        if (out / "metadata.json").is_file():
            continue
        extra = ["--causal-sequences", str(args.causal_sequences)] if kind == 0 else ["--probes", STATS_PROBES]
        cmd = [sys.executable, "-m", "workbench.cli", "probe", "--checkpoint", str(model_dir), "--out", str(out),
               "--fast", "--max-sequences", str(args.max_windows), "--r", "4", "--w", "4", "--seed", "0",
               "--no-progress", *extra]
        started = time.monotonic()
        subprocess.run(cmd, check=True, cwd=ROOT)
        print(f"{run.name}/{out.name}: probed in {time.monotonic() - started:.0f} s")


def _bundled_copy(run: Run, run_dir: Path, args: argparse.Namespace) -> Path:
    """`best/`, or its bundled float16 copy in --dest when there is one (probe results of a
    bundled checkpoint must be of its own weights)."""
    best, bundled = run_dir / "best", Path(args.dest) / f"{run.variant}-{run.seq_len}"
    training = lambda d: json.loads((d / "checkpoint.json").read_text()).get("training")  # noqa: E731
    return bundled if (bundled / "checkpoint.json").is_file() and training(bundled) == training(best) else best


def bundle(args: argparse.Namespace) -> None:
    """Export the `best/` model of every --seeds run (here seed 0 by default) as a float16 checkpoint
    `<dest>/<variant>-<seq_len>/` with its held-out text (the bundled checkpoints)."""
    import torch

    from workbench import checkpoint as ckpt
    from workbench.training.run_dir import VAL_TEXT

    for run in grid(args):
        best = Path(args.runs) / run.name / "best"
        model = ckpt.load(best)
        info = model.checkpoint
        dest = Path(args.dest) / f"{run.variant}-{run.seq_len}"
        ckpt.save(model, dest, data=info.data, training=info.training, metrics=info.metrics, dtype=torch.float16,
                  extra_files={VAL_TEXT: (best / VAL_TEXT).read_bytes()})
        print(f"{run.name} -> {dest}")


def compare_runs(values: dict[Run, object], baseline: str = "two_stream") -> dict[str, list[dict]]:
    """Paired gaps to the baseline per (length, seed); per (variant, length) the gap over seeds as
    replicates (t, n - 1 df); per variant the change of the gap from the shortest to the longest
    length, one value per seed, over seeds. Pairs need the same windows and orders."""
    from dataclasses import asdict

    import torch

    from workbench.stats import iid_mean, paired_difference

    gaps = []
    for run, v in values.items():
        base = values.get(Run(baseline, run.seq_len, run.seed))
        if run.variant == baseline or base is None:
            continue
        if not v.pairable_with(base):
            raise ValueError(f"{run.name} and its {baseline} run were not evaluated on the same windows and orders")
        e = paired_difference(v.any_order_per_window, base.any_order_per_window)
        gaps.append({"variant": run.variant, "baseline": baseline, "seq_len": run.seq_len, "seed": run.seed, **asdict(e)})
    over_seeds, effects = [], []
    for variant in sorted({g["variant"] for g in gaps}):
        by_length = {}
        for seq_len in sorted({g["seq_len"] for g in gaps}):
            per_seed = {g["seed"]: g["mean"] for g in gaps if (g["variant"], g["seq_len"]) == (variant, seq_len)}
            by_length[seq_len] = per_seed
            e = iid_mean(torch.tensor(list(per_seed.values()), dtype=torch.float64))
            over_seeds.append({"variant": variant, "seq_len": seq_len, "seeds": sorted(per_seed), **asdict(e)})
        if len(by_length) >= 2:
            short, long_ = min(by_length), max(by_length)
            seeds = sorted(set(by_length[short]) & set(by_length[long_]))
            change = {s: by_length[long_][s] - by_length[short][s] for s in seeds}
            e = iid_mean(torch.tensor([change[s] for s in seeds], dtype=torch.float64))
            effects.append({"variant": variant, "baseline": baseline, "from": short, "to": long_,
                            "per_seed": change, **asdict(e)})
    return {"gaps": gaps, "gaps_over_seeds": over_seeds, "length_effect": effects}


def _flops_per_token(model, seq_len: int, device: str) -> float:
    """Training FLOPs per token of one run's model (workbench.training.step.flops_per_token)."""
    import torch

    from workbench.orders import random_orders
    from workbench.training.step import SlotLoss, flops_per_token

    tokens = torch.zeros(2, seq_len, dtype=torch.long, device=device)
    order = random_orders(2, seq_len, torch.Generator().manual_seed(0)).to(device)
    model.train()
    try:
        return flops_per_token(SlotLoss(model), tokens, order)
    finally:
        model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (("train", train_grid), ("status", status), ("evaluate", evaluate_grid), ("report", report),
                     ("probe", probe_grid), ("bundle", bundle)):
        p = sub.add_parser(name)
        p.set_defaults(fn=fn)
        p.add_argument("--runs", required=True)
        p.add_argument("--corpus", default="runs/study-corpus.jsonl")
        p.add_argument("--variants", nargs="+", default=list(VARIANTS))
        p.add_argument("--lengths", type=int, nargs="+", default=[128, 1024])
        p.add_argument("--seeds", type=int, nargs="+", default={"probe": [0], "bundle": [0], "report": None}.get(name, [0, 1, 2]),
                       help="default: 0 for probe and bundle, every evaluated seed for report, else 0 1 2")
        p.add_argument("--size", choices=sorted(SIZES), default="m4")
        p.add_argument("--train-tokens", type=int, default=32_768_000)
        p.add_argument("--tokens-per-step", type=int, default=16_384)
        p.add_argument("--lr", type=float, default=2e-3)
        p.add_argument("--eval-windows", type=int, default=256)
        p.add_argument("--patience", type=int, default=6, help="early stop after this many evals without improvement")
        p.add_argument("--snapshots", type=int, default=5)
        p.add_argument("--seconds", type=float, default=500)
        p.add_argument("--micro-batch-tokens", type=int, default=0,
                       help="train: tokens per forward pass (gradient accumulation; bounds the memory of runs sharing a GPU)")
        p.add_argument("--parallel", type=int, default=6)
        p.add_argument("--out", default=str(ROOT / "results" / "study.json"))
        p.add_argument("--orders", type=int, default=8, help="random orders per held-out window")
        p.add_argument("--max-windows", type=int, default=0, help="evaluate only the first N windows (0: all)")
        p.add_argument("--batch-size", type=int, default=128)
        p.add_argument("--unfinished", action="store_true",
                       help="evaluate: also the best/ of runs cut short (their rows say finished: false)")
        p.add_argument("--causal-sequences", type=int, default=256, help="probe: windows for the causal checks")
        p.add_argument("--dest", default=str(ROOT / "checkpoints"), help="bundle: where the checkpoints go; probe: where best/'s bundled copy is")
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
