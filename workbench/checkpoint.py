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
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from workbench.config import AOConfig
from workbench.data.tokenizers import Tokenizer
from workbench.models import HookedAOModel, from_config
from workbench.results_io import errors_name, fsync_directory, remove_temporaries, temporary_name, write_file_durable

FORMAT = "aoarm-workbench/1"
WEIGHTS = "model.safetensors"
META = "checkpoint.json"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


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
    """Write `model` (and its tokenizer) to `directory`, crash-safe at every instant: a kill or a
    power cut at any point leaves the old checkpoint or the new one, which `recover` (run first
    by every save; a trainer runs it before deciding whether to resume) puts in place. `dtype` stores the weights
    in another float type (e.g. float16 to halve the size). `extra_files` (name -> bytes) are
    written inside the same swap: a training run's optimiser state and its validation text.

    The steps: write everything into `.NAME.tmp-XXXXXXXX` and flush it to disk; rename it to
    `.NAME.new` (the commit point); move the old `NAME` to `.NAME.old`, `.NAME.new` to `NAME`;
    delete `.NAME.old`. One writer per directory at a time.
    """
    directory = Path(directory)
    with errors_name(directory):
        directory.parent.mkdir(parents=True, exist_ok=True)
        recover(directory)
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
        files = {
            WEIGHTS: safetensors_bytes(tensors, metadata={"format": FORMAT}),
            META: (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(),
            **(extra_files or {}),
        }
        staging = temporary_name(directory)
        os.mkdir(staging, 0o777)  # the umask decides, as for any directory
        try:
            for name, content in files.items():
                write_file_durable(staging / name, content)
            fsync_directory(staging)
            os.replace(staging, _sibling(directory, "new"))  # the commit point
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_directory(directory.parent)
        _put_new_in_place(directory)
    return directory


def recover(directory: str | Path) -> str | None:
    """Finish or roll back a save of `directory` that was interrupted, and delete what it left.

    A save that reached its commit point (`.NAME.new` complete) is finished; one that did not is
    dropped, keeping the previous checkpoint; staging directories and `.NAME.old` are deleted
    (also those of the earlier, non-crash-safe save). Returns a one-line account of what was
    done, or None when there was nothing to do. Never call it while a save of the same directory
    runs in another process.
    """
    directory = Path(directory)
    removed = remove_temporaries(directory.parent, of=directory.name)
    new, old = _sibling(directory, "new"), _sibling(directory, "old")
    if new.is_dir():
        _put_new_in_place(directory)
        return f"{directory}: finished an interrupted checkpoint save"
    if old.is_dir():
        if directory.is_dir():  # the swap was done; only deleting the old copy was cut short
            shutil.rmtree(old)
            return f"{directory}: removed the previous checkpoint a save left behind"
        os.replace(old, directory)  # an interrupted save of an earlier version: roll back
        fsync_directory(directory.parent)
        return f"{directory}: rolled back an interrupted checkpoint save to the previous checkpoint"
    if removed:
        return f"{directory}: removed {len(removed)} unfinished checkpoint save(s)"
    return None


def _sibling(directory: Path, what: str) -> Path:
    return directory.with_name(f".{directory.name}.{what}")


def _put_new_in_place(directory: Path) -> None:
    """`.NAME.new` -> `NAME`, the old `NAME` moved aside and deleted; safe to redo from any step."""
    new, old = _sibling(directory, "new"), _sibling(directory, "old")
    if directory.is_dir():
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
    os.replace(new, directory)
    fsync_directory(directory.parent)
    if old.exists():
        shutil.rmtree(old)


def list_checkpoints(root: str | Path | None = None) -> list[str]:
    """Names of the checkpoints in `root` (default: the bundled `checkpoints/` directory)."""
    root = Path(root) if root is not None else BUNDLED_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / META).is_file() and not p.name.startswith("."))


def resolve(name_or_path: str | Path) -> Path:
    """The directory of a checkpoint given by bundled name or by path.

    A string without a path separator that names a bundled checkpoint means that checkpoint,
    even when the working directory holds a directory of the same name (a warning says which was
    taken: write `./NAME` for the local one); anything else is a path.
    """
    path = Path(name_or_path)
    bundled = BUNDLED_DIR / str(name_or_path)
    if isinstance(name_or_path, str) and "/" not in name_or_path and os.sep not in name_or_path and (bundled / META).is_file():
        if path.is_dir() and path.resolve() != bundled.resolve():
            warnings.warn(
                f"{name_or_path!r} names both a bundled checkpoint and a directory here; took the bundled "
                f"one ({bundled}). Write ./{name_or_path} for the directory.",
                stacklevel=2,
            )
        return bundled
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
    if _sibling(path, "new").is_dir() or _sibling(path, "old").is_dir():
        raise CheckpointError(
            f"{path} is missing because a save of it was interrupted; workbench.checkpoint.recover({str(path)!r}) "
            "puts the saved checkpoint in place."
        )
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
        if not isinstance(meta.get("config"), dict):
            raise ValueError("'config' must be an object of AOConfig fields")
        config = AOConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{meta_file} has a bad config: {err}. Fix the file, or save the checkpoint again.") from err
    sections = {key: meta.get(key) or {} for key in ("data", "training", "metrics")}
    for key, value in sections.items():
        if not isinstance(value, dict):
            raise CheckpointError(f"{meta_file}: {key!r} must be an object, got {type(value).__name__}. Fix the file, or save the checkpoint again.")
    val_text = sections["data"].get("val_text")
    if val_text is not None and (not isinstance(val_text, str) or Path(val_text).name != val_text):
        raise CheckpointError(f"{meta_file}: data.val_text={val_text!r} must be a file name inside the checkpoint directory.")
    tokenizer = meta.get("tokenizer")
    if tokenizer is not None:
        try:
            if not isinstance(tokenizer, dict):
                raise TypeError(f"it must be an object, got {type(tokenizer).__name__}")
            vocab_size = Tokenizer.from_json(tokenizer).vocab_size
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            missing = f"field {err} is missing" if isinstance(err, KeyError) else str(err)
            raise CheckpointError(f"{meta_file} has a bad tokenizer: {missing}. Fix the file, or save the checkpoint again.") from err
        if vocab_size != config.d_vocab:
            raise CheckpointError(
                f"{meta_file}: the tokenizer has {vocab_size} tokens but the config's d_vocab is "
                f"{config.d_vocab}; the tokenizer does not belong to these weights."
            )
    return CheckpointInfo(name=path.name, path=path, config=config, tokenizer=tokenizer, **sections)


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
        with safe_open(str(weights_file), "pt") as f:
            stored = {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_file} is not a readable safetensors file ({err}); it is corrupt or truncated.") from err
    with torch.device("meta"):  # shapes without memory: the config is checked before anything is allocated
        skeleton = from_config(info.config)
    _check_tensors(stored, skeleton, weights_file)
    _check_fits_in_memory(skeleton, dtype, info)
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_file} is not a readable safetensors file ({err}); it is corrupt or truncated.") from err
    model = from_config(info.config)
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()})
    if info.tokenizer is not None:
        model.tokenizer = Tokenizer.from_json(info.tokenizer)
    model.checkpoint = info
    return model.to(device=device, dtype=dtype).eval()


def _check_fits_in_memory(skeleton: HookedAOModel, dtype: torch.dtype, info: CheckpointInfo) -> None:
    """Refuse a config whose model (weights and position tables) is larger than this machine's
    memory: position tables are not in the weights file, so a wrong n_ctx is caught only here."""
    sizes = {
        name: t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size())
        for name, t in (*skeleton.named_parameters(), *skeleton.named_buffers())
    }
    total = sum(sizes.values())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if total > memory:
        largest = max(sizes, key=sizes.get)
        cfg = info.config
        raise CheckpointError(
            f"{info.path / META}: this config (n_ctx={cfg.n_ctx}, d_vocab={cfg.d_vocab}, d_model={cfg.d_model}) "
            f"needs {total / 2**30:.1f} GiB ({largest}: {sizes[largest] / 2**30:.1f} GiB), more than this "
            f"machine's {memory / 2**30:.1f} GiB of memory; is n_ctx right?"
        )


def _check_tensors(stored: dict[str, tuple[tuple[int, ...], str]], model: HookedAOModel, where: Path) -> None:
    """`stored`: name -> (shape, safetensors dtype name) from the file's header."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong = [
        f"{k}: file {stored[k][0]} vs config {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(stored))
        if stored[k][0] != tuple(expected[k].shape)
    ]
    not_float = [f"{k}: {stored[k][1]}" for k in sorted(set(expected) & set(stored)) if stored[k][1] not in _FLOAT_DTYPES]
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
