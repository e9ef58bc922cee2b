"""A training run's directory: what is saved (the resumable checkpoint, best/, snapshots), what a
resume reads back, and the checks that refuse a directory holding another run.

    settings.json       the settings and the corpus fingerprint (check_run_dir compares both)
    metrics.jsonl       one JSON line per log step and per evaluation
    checkpoint/         model + optimiser moments + progress + val.txt: what `resume` starts from
    best/, snapshots/   models only (Saver.model_only)

Every save goes through `workbench.checkpoint.save` (crash-safe); `recover_saves` finishes or
rolls back one a kill interrupted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from workbench import checkpoint as ckpt
from workbench.results_io import write_bytes_atomic
from workbench.training.settings import TrainSettings

VAL_TEXT = "val.txt"  # the validation split as text, so `workbench eval` needs no corpus
TRAINER_TENSORS = "trainer_state.safetensors"  # optimiser moments
TRAINER_JSON = "trainer_state.json"  # step, optimiser hyper-parameters, early-stopping state


@dataclass
class Progress:
    """What a resume needs besides weights and optimiser: where the run is and its best eval."""

    step: int = 0
    best_bits: float = math.inf
    evals_since_best: int = 0
    stopped: bool = False
    """The run ended early (validation stopped improving): a rerun does not train further."""


@dataclass
class Saver:
    out_dir: Path
    settings: TrainSettings
    data_meta: dict[str, Any]
    n_params: int
    val_tokens: torch.Tensor
    tokenizer: Any

    def _training(self, step: int) -> dict[str, Any]:
        return {**self.settings.to_dict(), "n_params": self.n_params, "steps_done": step,
                "tokens_done": step * self.settings.tokens_per_step}

    def full(self, model, optimizer, state: Progress, metrics) -> None:
        """The resumable checkpoint: model, optimiser moments, progress, validation text."""
        tensors, opt_state = _optimizer_to_flat(optimizer)
        opt_state.update(step=state.step, best_bits=state.best_bits, evals_since_best=state.evals_since_best,
                         stopped=state.stopped)
        ckpt.save(model, self.out_dir / "checkpoint", data=self.data_meta, training=self._training(state.step),
                  metrics=metrics, extra_files={TRAINER_TENSORS: safetensors_bytes(tensors),
                                                TRAINER_JSON: json.dumps(opt_state, indent=2).encode(),
                                                VAL_TEXT: self.tokenizer.decode(self.val_tokens).encode("utf-8")})

    def model_only(self, model, path: Path, step: int, metrics, dtype: torch.dtype | None = None) -> None:
        ckpt.save(model, path, data=self.data_meta, training=self._training(step), metrics=metrics, dtype=dtype,
                  extra_files={VAL_TEXT: self.tokenizer.decode(self.val_tokens).encode("utf-8")})


def check_run_dir(out_dir: Path, run_record: dict[str, Any]) -> None:
    """Refuse a directory that holds another run (other settings or other data), before any work."""
    path = out_dir / "settings.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a run directory; choose a directory path.")
    if not path.is_file():
        if (out_dir / "checkpoint").exists():
            raise ValueError(f"{out_dir} has a checkpoint/ but no settings.json, so it cannot be resumed "
                             "safely; choose a new --out directory.")
        return
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); it is not a run this trainer wrote. "
                         "Choose a new --out directory.") from None
    if "settings" not in saved:  # written before the corpus fingerprint was recorded
        raise ValueError(f"{out_dir} holds a run in an older format (no corpus fingerprint in settings.json); "
                         "it cannot be resumed safely. Choose a new --out directory.")
    mine, theirs = run_record["settings"], saved["settings"]
    if theirs != mine:
        diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
        raise ValueError(
            f"{out_dir} holds a run with different settings (differing: {diff}); resume with the same "
            "settings, or choose a new --out directory."
        )
    old, new = saved["corpus"].get("fingerprint"), run_record["corpus"]["fingerprint"]
    if old != new:
        raise ValueError(
            f"{out_dir} was trained on data with fingerprint {old}, but --data {mine['data']} now has "
            f"fingerprint {new} (the file changed); a resume would shift its token ids. Restore the data, "
            "or choose a new --out directory."
        )


def recover_saves(out_dir: Path) -> None:
    """Finish or roll back the saves a kill interrupted (workbench.checkpoint.recover)."""
    for saved in (out_dir / "checkpoint", out_dir / "best"):
        note = ckpt.recover(saved)
        if note:
            print(note)


def resume(out_dir: Path, model, optimizer, device) -> Progress:
    path = out_dir / "checkpoint"
    if not (path / TRAINER_JSON).is_file():
        return Progress()
    loaded = ckpt.load(path, device=device)
    model.load_state_dict(loaded.state_dict())
    state = json.loads((path / TRAINER_JSON).read_text())
    _optimizer_from_flat(optimizer, load_file(str(path / TRAINER_TENSORS), device=str(device)), state)
    print(f"resuming {out_dir} from step {state['step']}")
    return Progress(state["step"], state["best_bits"], state["evals_since_best"], state["stopped"])


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors = {
        f"state.{idx}.{key}": value.detach().contiguous().cpu()
        for idx, entry in sd["state"].items()
        for key, value in entry.items()
    }
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        entries.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": entries, "param_groups": state["param_groups"]})


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines a killed run wrote after its last checkpoint (they will be redone), and a
    torn last line (the kill cut its write short); a bad line before the last one is an error."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line) if line.strip() else None
            if entry is not None and not isinstance(entry.get("step"), int):
                raise ValueError("no integer 'step'")
        except (ValueError, AttributeError) as err:
            if number == len(lines):
                break  # the line a kill tore: dropped, it will be written again
            raise ValueError(
                f"{path} line {number} is not a metrics record ({err}); fix or delete that line, then resume."
            ) from err
        if entry is not None and entry["step"] <= step:
            kept.append(line)
    write_bytes_atomic(path, "".join(l + "\n" for l in kept).encode())


def append_jsonl(path: Path, line: dict[str, Any]) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
    except OSError as err:  # a full disk says ENOSPC without naming the file
        raise OSError(err.errno, f"{err.strerror}; could not append to {path}", str(path)) from None
