"""`workbench` command line: train, eval, probe, checkpoints.

Each command lives in the module that does its work and exposes `register(subparsers)`, which
adds its parser and sets `func`; this file only gathers them. Errors a user can fix (bad
arguments, missing files, bad checkpoints) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "workbench.training.cli",
    "workbench.evaluation",
    "workbench.probing.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench", description="Interpretability workbench for any-order autoregressive models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    checkpoints = sub.add_parser("checkpoints", help="list the bundled checkpoints and their metrics")
    checkpoints.add_argument("--root", default=None, help="a directory of checkpoints (default: bundled)")
    checkpoints.set_defaults(func=_list_checkpoints)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def _list_checkpoints(args: argparse.Namespace) -> None:
    from workbench.checkpoint import BUNDLED_DIR, list_checkpoints, read_info

    root = args.root or BUNDLED_DIR
    names = list_checkpoints(root)
    if not names:
        print(f"no checkpoints in {root}")
        return
    # The bits here are the trainer's last quick evaluation (the first validation windows, 2 orders
    # each), not the full evaluation of `workbench eval` (results/nll.json, which the app shows).
    print(f"{'name':<28} {'variant':<15} {'n_ctx':>6} {'params':>9}  any-order val bits/token, training-time subset")
    for name in names:
        info = read_info(f"{root}/{name}")
        cfg = info.config
        bits, windows = info.metrics.get("val_any_order_bits"), info.metrics.get("val_windows")
        subset = f" (first {windows} val windows x 2 orders)" if windows else ""
        print(
            f"{name:<28} {cfg.variant:<15} {cfg.n_ctx:>6} {info.training.get('n_params', '?'):>9}  "
            f"{'' if bits is None else f'{bits:.3f}{subset}'}"
        )
    print("The full evaluation (every validation window, more orders) is `workbench eval`: results/nll.json, shown by the app.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        print(f"workbench {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
