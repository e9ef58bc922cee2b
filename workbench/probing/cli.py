"""`workbench probe`: a scripted probe run (workbench.probing.runner.run_probes on the command line).

    workbench probe --checkpoint two_stream-128 --out results/probes/two_stream-128
    workbench probe --checkpoint runs/x/checkpoint --data stdlib --probes parts,specialisation \\
        --r 4 --w 4 --max-sequences 256 --batch-size 16 --device cuda --fast --out out/x
    workbench probe --list

Run it again with the same arguments after a kill and it resumes. On several GPUs:

    torchrun --nproc_per_node=2 -m workbench.cli probe --checkpoint two_stream-1024 --fast --radius 2 --out out/x

shares the batches out over the processes; rank 0 writes the table a one-process run writes.
(Under torchrun write --radius / --window: torchrun's own parser reads --r as one of its options.)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="attention probes (semantic vs structural, per head and stream) over a dataset",
        description="Run probes over a dataset and write a tidy table (probes.parquet) and metadata.json to --out. "
        "Resumes automatically when --out holds a partial run with the same arguments.",
    )
    p.add_argument("--checkpoint", help="bundled checkpoint name or checkpoint directory")
    p.add_argument("--data", default=None, help="corpus spec for workbench.data.load_corpus ('stdlib' or a path); default: the checkpoint's bundled validation text")
    p.add_argument("--split", default="val", choices=("val", "train", "all"), help="which part of --data (default val: its last 10%%)")
    p.add_argument("--probes", default=None, help="comma-separated probe names (default: all; see --list)")
    p.add_argument("--out", help="output directory")
    # --radius / --window: under torchrun, whose own parser takes --r for an abbreviation of its --rdzv-* options
    p.add_argument("--r", "--radius", dest="r", type=int, default=4, help="semantic radius: S_r = keys within r positions of the reference position (default 4)")
    p.add_argument("--w", "--window", dest="w", type=int, default=4, help="structural window: R_w = keys generated at most w steps ago (default 4)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the model's n_ctx)")
    p.add_argument("--max-sequences", type=int, default=64, help="probe the first N windows (default 64; 0 = all)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per batch (default: 64 with --fast on a GPU, where smaller batches leave it waiting on Python; 8 otherwise)")
    p.add_argument("--seed", type=int, default=0, help="seeds the generation orders and the random controls")
    p.add_argument("--orders", default="random", choices=("random", "left_to_right"))
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    p.add_argument("--fast", action="store_true", help="statistics from the fused Triton kernel (CUDA; falls back to the reference with a warning)")
    p.add_argument("--causal-sequences", type=int, default=32, help="sequences for the ablation / knockout probes (default 32)")
    p.add_argument("--heads", default=None, help="knockout targets, 'layer.head[.stream]' comma-separated (default: labelled heads)")
    p.add_argument("--max-heads", type=int, default=2, help="without --heads: knock out up to N semantic and N structural heads per stream")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="an option for user probes (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true", help="list the registered probes and exit")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    from workbench.probing import registry

    if args.list:
        for name, entry in registry.discover().items():
            print(f"{name:<16} needs {','.join(sorted(entry.needs)) or 'nothing':<12} {entry.description}")
        return
    missing = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--out", args.out)) if not value]
    if missing:
        raise ValueError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required (see workbench probe --help).")
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r} must be KEY=VALUE.")
        options[key] = value

    from workbench.probing.runner import run_probes

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads} must be a positive integer.")
        import torch

        torch.set_num_threads(args.threads)

    try:
        result = run_probes(
            args.checkpoint, data=args.data, probes=args.probes, out=args.out, r=args.r, w=args.w,
            seq_len=args.seq_len, max_sequences=args.max_sequences or None, batch_size=args.batch_size,
            seed=args.seed, device=args.device, fast=args.fast, split=args.split, orders=args.orders,
            causal_sequences=args.causal_sequences, heads=args.heads, max_heads=args.max_heads,
            options=options, progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        _interrupted(Path(args.out))
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 reports
    meta = result.metadata
    print(
        f"probed {meta['sequences_probed']} sequences of {meta['data']['seq_len']} tokens "
        f"({', '.join(f'{s}: {n} rows' for s, n in meta['rows_probed'].items()) or 'no attention rows'}); "
        f"{meta['n_table_rows']} table rows -> {result.out}"
    )
    labels = result.table[result.table.metric == "label"]
    if len(labels):
        counts = labels.groupby(["stream", "label"]).size()
        print("head labels: " + "; ".join(f"{s} {lab}: {n}" for (s, lab), n in counts.items()))


def _interrupted(out: Path) -> NoReturn:
    """Ctrl-C: say what was kept, and exit 130 (the shell's code for SIGINT)."""
    from workbench.probing.out_dir import saved_batches
    from workbench.probing.runner import PARTIAL_DIR

    n = saved_batches(out / PARTIAL_DIR)
    if int(os.environ.get("RANK", "0")) == 0:
        kept = f"{n} batches saved in {out / PARTIAL_DIR}, rerun the same command to resume" if n else "no batch was finished, nothing kept"
        print(f"workbench probe: interrupted: {kept}.", file=sys.stderr)
    raise SystemExit(130)
