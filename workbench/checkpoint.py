"""Checkpoints: safetensors weights + one JSON of everything else. Nothing is ever pickled.

A checkpoint is a directory:

    model.safetensors   the weights (any float dtype; loaded as float32 unless asked)
    checkpoint.json     {"format", "config", "tokenizer", "data", "training", "metrics"}

`workbench.load(name_or_path)` finds bundled checkpoints (`checkpoints/` at the repository root)
by name, or loads any checkpoint directory; every mismatch gets an error that says what differs.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from workbench.config import AOConfig
from workbench.data.tokenizers import Tokenizer
from workbench.models import HookedAOModel, from_config

FORMAT = "aoarm-workbench/1"
WEIGHTS = "model.safetensors"
META = "checkpoint.json"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with the reason and the fix."""


@dataclass
class CheckpointInfo:
    """What `checkpoint.json` holds besides the config."""

    name: str
    path: Path
    config: AOConfig
    tokenizer: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def save(
    model: HookedAOModel,
    directory: str | Path,
    *,
    data: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write `model` (and its tokenizer) to `directory`, atomically: a reader never sees half a
    checkpoint. `dtype` stores the weights in another float type (e.g. float16 to halve the size).
    `extra_files` (name -> bytes) are written inside the same atomic swap: a training run's
    optimiser state (safetensors + JSON) and its validation text.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "config": model.cfg.to_dict(),
        "tokenizer": model.tokenizer.to_json() if model.tokenizer is not None else None,
        "data": data or {},
        "training": training or {},
        "metrics": metrics or {},
    }
    tensors = {
        name: (p.detach().to(dtype) if dtype else p.detach()).contiguous().cpu()
        for name, p in model.state_dict().items()
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
    save_file(tensors, str(staging / WEIGHTS), metadata={"format": FORMAT})
    (staging / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    for name, content in (extra_files or {}).items():
        (staging / name).write_bytes(content)
    if directory.exists():  # swap: move the old one aside, the new one in, then delete the old
        old = directory.with_name(f".{directory.name}.old")
        os.replace(directory, old)
        os.replace(staging, directory)
        for child in old.iterdir():
            child.unlink()
        old.rmdir()
    else:
        os.replace(staging, directory)
    return directory


def list_checkpoints(root: str | Path | None = None) -> list[str]:
    """Names of the checkpoints in `root` (default: the bundled `checkpoints/` directory)."""
    root = Path(root) if root is not None else BUNDLED_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / META).is_file() and not p.name.startswith("."))


def resolve(name_or_path: str | Path) -> Path:
    """The directory of a checkpoint given by bundled name or by path."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.is_file():
        if path.suffix in _PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{path} looks like a pickle file; pickled checkpoints are never loaded (they can run "
                "arbitrary code). Convert it to safetensors + checkpoint.json with workbench.checkpoint.save."
            )
        if path.name in (WEIGHTS, META):
            return path.parent
    bundled = BUNDLED_DIR / str(name_or_path)
    if bundled.is_dir():
        return bundled
    available = list_checkpoints()
    raise CheckpointError(
        f"no checkpoint called {str(name_or_path)!r}: it is neither a directory nor a bundled "
        f"checkpoint. Bundled: {', '.join(available) or 'none'}. Give a path to a directory holding "
        f"{WEIGHTS} and {META}."
    )


def read_info(name_or_path: str | Path) -> CheckpointInfo:
    """Read and validate `checkpoint.json` without loading the weights."""
    path = resolve(name_or_path)
    meta_file = path / META
    if not meta_file.is_file():
        pickles = [p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES]
        hint = (
            f" It holds {pickles}: pickled checkpoints are never loaded; convert them to safetensors."
            if pickles
            else ""
        )
        raise CheckpointError(f"{path} has no {META}, so it is not a workbench checkpoint.{hint}")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_file} is not valid JSON ({err}); the checkpoint is corrupt, save it again.") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{meta_file} has format {meta.get('format') if isinstance(meta, dict) else None!r}; "
            f"this version reads {FORMAT!r}."
        )
    try:
        config = AOConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{meta_file} has a bad config: {err}") from err
    return CheckpointInfo(
        name=path.name,
        path=path,
        config=config,
        tokenizer=meta.get("tokenizer"),
        data=meta.get("data", {}),
        training=meta.get("training", {}),
        metrics=meta.get("metrics", {}),
    )


def load(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedAOModel:
    """Load a checkpoint by bundled name or path; the model comes back in eval mode with its
    tokenizer attached and its `CheckpointInfo` as `model.checkpoint`."""
    info = read_info(name_or_path)
    weights_file = info.path / WEIGHTS
    if not weights_file.is_file():
        raise CheckpointError(f"{info.path} has no {WEIGHTS}; the checkpoint is incomplete, save it again.")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_file} is not a readable safetensors file ({err}); it is corrupt or truncated.") from err
    model = from_config(info.config)
    _check_tensors(tensors, model, weights_file)
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()})
    if info.tokenizer is not None:
        model.tokenizer = Tokenizer.from_json(info.tokenizer)
        if model.tokenizer.vocab_size != info.config.d_vocab:
            raise CheckpointError(
                f"{info.path}: tokenizer has {model.tokenizer.vocab_size} tokens but the model's "
                f"d_vocab is {info.config.d_vocab}; the tokenizer does not belong to these weights."
            )
    model.checkpoint = info
    return model.to(device=device, dtype=dtype).eval()


def _check_tensors(tensors: dict[str, torch.Tensor], model: HookedAOModel, where: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: file {tuple(tensors[k].shape)} vs config {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(tensors))
        if tensors[k].shape != expected[k].shape
    ]
    not_float = [f"{k}: {tensors[k].dtype}" for k in sorted(set(expected) & set(tensors)) if not tensors[k].is_floating_point()]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong))
    if not_float:
        problems.append("non-float tensors: " + "; ".join(not_float))
    if problems:
        raise CheckpointError(
            f"{where} does not match its config ({model.cfg.variant}, n_layers={model.cfg.n_layers}, "
            f"d_model={model.cfg.d_model}): " + "; ".join(problems)
            + ". Were the weights and checkpoint.json written together?"
        )
