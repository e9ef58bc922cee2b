"""One parser for every `--device` / `device=` argument: a clear error before any work starts."""

from __future__ import annotations

import torch


def parse_device(device: str | torch.device) -> torch.device:
    """`auto` (CUDA if available, else CPU), `cpu`, `cuda` or `cuda:N`, checked against this machine."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device={str(device)!r} is not a device the workbench runs on; use cpu, cuda, cuda:N or auto.")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for but no CUDA device is available; use cpu (or auto).")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}."
            )
    return parsed
