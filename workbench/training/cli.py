"""`workbench train`: every TrainSettings field is a flag; `--out` is the run directory."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from workbench.training.settings import TrainSettings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an any-order model (resumes if --out holds a run)")
    p.add_argument("--out", required=True, help="run directory (settings.json, metrics.jsonl, checkpoint/)")
    p.add_argument("--device", default=None, help="default: cuda if available (LOCAL_RANK under torchrun), else cpu")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-compile", action="store_true",
                   help="run the step eagerly (default on CUDA: torch.compile, falling back to eager loudly if it fails)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds: save a checkpoint and exit once this much time has passed (rerun to go on)")
    p.add_argument("--micro-batch-tokens", type=int, default=None,
                   help="tokens per forward pass per process; gradient accumulation makes up tokens_per_step "
                        "(default: the whole per-process share in one pass)")
    hints = typing.get_type_hints(TrainSettings)
    for field in dataclasses.fields(TrainSettings):
        flag = "--" + field.name.replace("_", "-")
        kind = _parser_type(hints[field.name])
        if field.default is dataclasses.MISSING:
            p.add_argument(flag, type=kind, required=True)
        else:
            p.add_argument(flag, type=kind, default=field.default, help=f"default: {field.default}")
    p.set_defaults(func=_run)


def _parser_type(hint: object) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return str
    if args:
        return _parser_type(args[0])
    return hint if hint in (int, float, str) else str


def _run(args: argparse.Namespace) -> None:
    from workbench.training.trainer import train

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)}
    result = train(TrainSettings(**fields), args.out, device=args.device, progress=not args.no_progress,
                   compile=False if args.no_compile else None, micro_batch_tokens=args.micro_batch_tokens, time_limit_s=args.time_limit)
    if result.interrupted:
        raise SystemExit(130)  # the loop said where the checkpoint is and how to resume
    print(f"checkpoint: {result.checkpoint}")
    for key, value in result.metrics.items():
        print(f"  {key}: {value}")
