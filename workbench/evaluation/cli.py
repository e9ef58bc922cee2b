"""`workbench eval`: every argument, checkpoint and data file is checked before any compute, then
each model is evaluated, gaps are paired, and the summary (JSON) and the per-window values
(safetensors, beside it) are written atomically."""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from workbench.evaluation.compare import gap_changes, paired_gaps
from workbench.evaluation.core import WindowValues, evaluate_windows, summarise
from workbench.results_io import write_bytes_atomic, write_json_atomic
from workbench.stats import DEFAULT_BLOCKS, Estimate

SPLITS = ("val", "train", "all")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="any-order and left-to-right NLL of checkpoints, in bits per token",
        description="Any-order (Monte Carlo over random orders) and left-to-right NLL in bits/token, "
        f"with 95% intervals over {DEFAULT_BLOCKS} contiguous blocks of windows, and the gaps between "
        "models paired over the same windows and orders (docs/results.md).")
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="checkpoint names or paths; results are keyed by run name (a directory called "
                   "'checkpoint', as in runs/<x>/checkpoint, is named after its parent <x>)")
    p.add_argument("--data", default=None, help="corpus spec (default: the checkpoint's bundled validation text)")
    p.add_argument("--split", choices=SPLITS, default="val",
                   help="part of --data to evaluate: val = its last val_fraction of tokens (the "
                   "checkpoint's training split, 10%% by default), train = the rest, all = the whole text "
                   "(default: val). Without --data only val exists (the bundled validation text)")
    p.add_argument("--unknown", choices=("error", "replace"), default="error",
                   help="characters outside a character tokenizer's vocabulary: error (default) names them "
                   "and stops before any compute; replace maps each to the tokenizer's replacement ('?' or "
                   "' ') and counts them. Byte and HF tokenizers encode any text")
    p.add_argument("--orders", type=int, default=4, help="random orders per window (Monte Carlo), >= 1")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate N >= 2 evenly spaced windows")
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass, >= 1")
    p.add_argument("--seed", type=int, default=0, help="seed of the random orders (the same seed pairs models)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None,
                   help="write the summary as JSON here, and the per-window values beside it (FILE with "
                   "the suffix .windows.safetensors)")
    p.set_defaults(func=_run)


@dataclass(frozen=True)
class EvalData:
    """The windows one model is evaluated on, and where they came from."""

    windows: Tensor  # [window, pos]
    start: Tensor  # [window], first token of each window in the evaluated part
    source: str
    n_replaced: int  # characters replaced under --unknown replace


def eval_windows(model, text: str | None, split: str = "val", unknown: str = "error",
                 max_windows: int | None = None, source: str | None = None) -> EvalData:
    """Windows of n_ctx tokens from the checkpoint's bundled validation text (`text` None, split
    "val" only) or from `split` of `text` (named `source`) tokenised with the checkpoint's
    tokenizer and cut as in training (`workbench.data.train_val_split`, the checkpoint's
    val_fraction); `max_windows` keeps that many evenly spaced."""
    from workbench.data import CharTokenizer, sequential_windows, train_val_split

    info, seq_len, tokenizer = model.checkpoint, model.cfg.n_ctx, model.tokenizer
    if tokenizer is None:
        raise ValueError(f"checkpoint {info.path} has no tokenizer, so it cannot read text")
    bundled = text is None
    if bundled:
        val_text = info.data.get("val_text")
        if split != "val":
            raise ValueError(f"--split {split} needs --data: checkpoint {info.name} bundles only its validation "
                             f"text; pass --data with the corpus it was trained on")
        if val_text is None or not (info.path / val_text).is_file():
            raise ValueError(
                f"checkpoint {info.name} bundles no validation text; pass --data with the corpus it "
                f"was trained on ({info.data.get('corpus', {}).get('source', 'unknown')}).")
        text, source = (info.path / val_text).read_text(encoding="utf-8"), f"{info.name}/{val_text}"  # bundled
    n_replaced = 0
    if isinstance(tokenizer, CharTokenizer):
        known = set(tokenizer.chars)
        missing = [c for c in text if c not in known]
        if missing and unknown == "error":
            shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in sorted(set(missing))[:5])
            raise ValueError(f"{source}: {len(missing)} character(s) outside the vocabulary of {info.name}'s "
                             f"tokenizer ({tokenizer.name}), e.g. {shown}; pass --unknown replace to map them "
                             f"to a known character, or evaluate text the tokenizer covers")
        n_replaced = len(missing)
        tokenizer = dataclasses.replace(tokenizer, unknown="replace" if missing else "raise", replacement=None)
    tokens = tokenizer.encode_tensor(text)
    if not bundled and split != "all":
        parts = train_val_split(tokens, seq_len, info.data.get("val_fraction", 0.1))
        tokens = parts.val if split == "val" else parts.train
    windows = sequential_windows(tokens, seq_len)
    index = torch.arange(len(windows))
    if max_windows and max_windows < len(windows):  # evenly spaced: an unbiased subset of the text
        index = torch.linspace(0, len(windows) - 1, max_windows).round().long()
    return EvalData(windows[index], index * seq_len, source, n_replaced)


def run_name(path: Path) -> str:
    """The key of a checkpoint's results: its directory name, or for runs/<x>/checkpoint, <x>."""
    path = path.resolve()
    return path.parent.name if path.name == "checkpoint" else path.name


def check_args(args: argparse.Namespace) -> None:
    """Every plain argument, before anything is loaded; raises ValueError with a one-line message.
    (`--device` is checked for every command by workbench.cli before this runs.)"""
    if args.orders < 1:
        raise ValueError(f"--orders must be >= 1 random orders per window, got {args.orders}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1 window per forward pass, got {args.batch_size}")
    if args.max_windows is not None and args.max_windows < 2:
        raise ValueError(f"--max-windows must be >= 2 (an interval needs two windows), got {args.max_windows}")
    if args.out is not None:
        check_out(Path(args.out))


def side_file(out: Path) -> Path:
    """Where the per-window values of `--out FILE.json` go: FILE.windows.safetensors."""
    return out.with_suffix(".windows.safetensors")


def check_out(out: Path) -> None:
    """--out names a file (not a directory) in a directory this process can write to."""
    if out.suffix == ".safetensors":
        raise ValueError(f"--out {out}: give the JSON file name (such as results/nll.json); the per-window values go beside it")
    for path in (out, side_file(out)):
        if path.is_dir():
            raise ValueError(f"--out {out}: {path} is a directory; give a file name such as {path / 'nll.json'}")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {out}: {parent} is a file, not a directory")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as err:
        raise ValueError(f"--out {out}: cannot write in {parent} ({err.strerror})") from None


def _run(args: argparse.Namespace) -> None:
    from workbench.checkpoint import load, read_info
    from workbench.data import load_corpus

    check_args(args)
    paths: dict[str, Path] = {}
    specs: dict[str, str] = {}
    for name in args.checkpoint:
        info = read_info(name)  # every name resolved (and its checkpoint.json read) before any load
        key = run_name(info.path)
        if key in paths:
            raise ValueError(
                f"checkpoints {paths[key]} and {info.path} would both be saved as {key!r}"
                + (" (the same checkpoint given twice)" if paths[key].resolve() == info.path.resolve() else
                   "; evaluate them in separate runs or rename one directory"))
        paths[key], specs[key] = info.path, name
    text = None if args.data is None else load_corpus(args.data).text
    models = {key: load(path, device=args.device) for key, path in paths.items()}
    data = {key: eval_windows(m, text, args.split, args.unknown, args.max_windows, args.data)
            for key, m in models.items()}

    print(f"data: {args.data or 'the bundled validation text of each checkpoint'}, split {args.split}"
          + ("" if args.data is None or args.split == "all" else " (the checkpoint's train/val cut of --data)"))
    print(f"95% intervals: t over {DEFAULT_BLOCKS} contiguous blocks of windows (windows are correlated); "
          "gaps paired over the same windows and orders")
    print(f"{'checkpoint':<26} {'any-order bits/token':>22} {'left-to-right':>18} {'windows':>8} {'lag-1':>6}")
    values: dict[str, WindowValues] = {}
    results: dict[str, dict[str, Any]] = {}
    for key, model in models.items():
        d = data[key]
        values[key] = evaluate_windows(model, d.windows, args.orders, args.seed, args.batch_size, start=d.start)
        r = summarise(values[key])
        r.update(checkpoint=key, checkpoint_spec=specs[key], variant=model.cfg.variant, data=d.source,
                 split=args.split, unknown=args.unknown, n_unknown_replaced=d.n_replaced)
        results[key] = r
        a, l2r = Estimate(**r["any_order_bits"]), Estimate(**r["left_to_right_bits"])
        print(f"{key:<26} {str(a):>22} {str(l2r):>18} {r['n_windows']:>8} {r['lag1_autocorrelation']['any_order']:>6.2f}"
              + (f"  ({d.n_replaced} unknown characters replaced)" if d.n_replaced else ""), flush=True)
    _add_gaps(results, values, {k: m.cfg.variant for k, m in models.items()})
    if args.out:
        out = Path(args.out)
        tensors = {f"{key}/{name}": t.contiguous() for key, v in values.items() for name, t in v.tensors().items()}
        write_bytes_atomic(side_file(out), safetensors_bytes(tensors, metadata={"summary": out.name}))
        for key, r in results.items():
            r.update(per_window_file=side_file(out).name, per_window_tensors=f"{key}/")
        write_json_atomic(out, results)
        print(f"wrote {out} and {side_file(out)}")


def _add_gaps(results: dict[str, dict[str, Any]], values: dict[str, WindowValues], variants: dict[str, str]) -> None:
    """Paired gaps and their change with length into each model's entry, and printed once each."""
    gaps = paired_gaps(values)
    changes = gap_changes(values, variants, gaps)
    keys = list(results)
    printed = False
    for key, others in gaps.items():
        results[key]["paired_differences"] = {o: {m: asdict(e) for m, e in g.items()} for o, g in others.items()}
        for other, g in others.items():
            if keys.index(other) < keys.index(key):
                if not printed:
                    print("paired gaps, bits/token (95% blocked interval of the per-window difference):")
                    printed = True
                print(f"  {key} - {other}: any-order {_signed(g['any_order_bits'])}, "
                      f"left-to-right {_signed(g['left_to_right_bits'])}")
    for key, others in changes.items():
        results[key]["gap_change_with_length"] = {
            o: {str(length): {"minus": list(pair), **asdict(e)} for length, (pair, e) in by_len.items()}
            for o, by_len in others.items()}
        for other, by_len in others.items():
            for pair, e in by_len.values():
                if keys.index(other) < keys.index(key):
                    print(f"  change of the gap with length: ({key} - {other}) - ({pair[0]} - {pair[1]}) = {_signed(e)}")


def _signed(e: Estimate) -> str:
    return f"{e.mean:+.4f} ± {e.half_width:.4f}"
