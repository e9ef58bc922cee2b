"""What the benchmarks share: the device's name, and where and how results are written
(`benchmarks/results/<name>-<device>-<date>[-<suffix>].{json,md}`, device and date in both)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python benchmarks/<script>.py` from anywhere imports this tree's workbench


def device_name(device: torch.device | str | None = None) -> str:
    """The accelerator's name (the CUDA device's, or "cpu")."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def result_stem(out_dir: str | Path, name: str, device: str, date: str, suffix: str = "") -> Path:
    """out_dir / "<name>-<device>-<date>[-<suffix>]" (spaces in the device's name made underscores)."""
    return Path(out_dir) / "-".join([name, device.replace(" ", "_"), date] + ([suffix] if suffix else []))


def write_results(stem: Path, payload: dict, markdown: str, indent: int = 2) -> None:
    """stem.json (the payload) and stem.md (the table)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_name(stem.name + ".json").write_text(json.dumps(payload, indent=indent, default=str))
    stem.with_name(stem.name + ".md").write_text(markdown.rstrip("\n") + "\n")
