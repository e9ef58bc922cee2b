"""`workbench` command line: train, eval, probe, checkpoints.

Each command lives in the module that does its work and exposes `register(subparsers)`, which
adds its parser and sets `func`; this file only gathers them. Errors a user can fix (bad
arguments, a bad --device, missing files, bad checkpoints, a full or read-only disk) print one
clear line, naming the file and the fix, and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import warnings

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
        bits = bits if isinstance(bits, (int, float)) else None
        subset = f" (first {windows} val windows x 2 orders)" if windows else ""
        print(
            f"{name:<28} {cfg.variant:<15} {cfg.n_ctx:>6} {info.training.get('n_params', '?'):>9}  "
            f"{'' if bits is None else f'{bits:.3f}{subset}'}"
        )
    print("The full evaluation (every validation window, more orders) is `workbench eval`: results/nll.json, shown by the app.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():  # a warning is one line too, not the warnings module's two
        warnings.showwarning = lambda message, *_, **__: print(f"workbench {args.command}: warning: {message}", file=sys.stderr)
        try:
            if getattr(args, "device", None) is not None:
                from workbench.devices import parse_device

                parse_device(args.device)  # --device banana, or cuda without CUDA: before any work
            args.func(args)
        except (ValueError, OSError) as err:
            print(f"workbench {args.command}: error: {describe_error(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # probe and train handle it themselves, keeping their work
            print(f"workbench {args.command}: interrupted; nothing was left half-written (writes are atomic), "
                  "rerun the same command", file=sys.stderr)
            return 130
    return 0


# What to do about an OS error, by errno; finished work (checkpoints, saved probe batches) is kept.
_OS_FIXES = {
    errno.ENOSPC: "the disk is full: free some space (or choose another location), then run the same command again",
    errno.EDQUOT: "the disk quota is used up: free some space (or choose another location), then run the same command again",
    errno.EROFS: "the file system is read-only: choose a writable location (e.g. another --out)",
    errno.EACCES: "permission denied: choose a location you can write (e.g. another --out), or fix its permissions",
    errno.EPERM: "operation not permitted: choose a location you can write (e.g. another --out), or fix its permissions",
    errno.ENOTDIR: "a part of this path is a file, not a directory: choose another path",
    errno.EEXIST: "it exists and is not a directory: choose another path",
    errno.EISDIR: "it is a directory, a file was expected: give a file",
    errno.ENOENT: "no such file or directory: check the path",
}


def describe_error(err: BaseException) -> str:
    """One line for an error a user can fix: an OS error names its file and what to do."""
    if not isinstance(err, OSError) or err.errno is None:
        return " ".join(str(err).split()) or type(err).__name__
    where = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 else "") if err.filename else ""
    fix = _OS_FIXES.get(err.errno, err.strerror or errno.errorcode.get(err.errno, "an OS error"))
    return f"{where + ': ' if where else ''}{fix} ([Errno {err.errno}] {err.strerror})."


if __name__ == "__main__":
    sys.exit(main())
