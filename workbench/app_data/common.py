"""What every page's compute shares: where checkpoints and results live, the error a user can
act on (`AppInputError`), the streams of a variant, and a loaded model with its lock."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from workbench.checkpoint import BUNDLED_DIR, CheckpointError
from workbench.models import HookedAOModel

__all__ = ["REPO", "RESULTS_ENV", "CHECKPOINTS_ENV", "STREAMS_OF", "AppInputError", "results_dir", "checkpoints_dir", "shown_path", "source_dir", "streams_of", "load_model", "LoadedModel"]


REPO = Path(__file__).resolve().parents[2]
RESULTS_ENV = "WORKBENCH_RESULTS"
"""Directory holding `nll.json`, `probes/<checkpoint>/` and the study's `study*.json` (default: `results/` of the repo)."""
CHECKPOINTS_ENV = "WORKBENCH_CHECKPOINTS"
"""Directory of checkpoints the app lists (default: the bundled `checkpoints/`)."""


STREAMS_OF = {"two_stream": ("content", "query"), "xlnet": ("content", "query")}


class AppInputError(ValueError):
    """Something the user gave (or a file the app needs) is unusable; the message says what to do."""


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or REPO / "results")


def checkpoints_dir() -> Path:
    return Path(os.environ.get(CHECKPOINTS_ENV) or BUNDLED_DIR)


def shown_path(path: Path | str) -> str:
    """`path` as the app writes it: relative to the project root when inside it ("results/probes/x"),
    else absolute."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def source_dir(kind: str, text: str) -> Path:
    """A directory the user typed for "checkpoints" or "results", checked: it must exist and hold
    what the app reads (checkpoint directories; `nll.json`, `study.json` or `probes/`). A checkpoint directory
    given as the checkpoints directory stands for its parent."""
    from workbench.checkpoint import META

    path = Path(text.strip()).expanduser()
    if not path.is_dir():
        raise AppInputError(f"{shown_path(path)} is not a directory.")
    if kind == "checkpoints":
        if (path / META).is_file():
            return path.parent
        if not any((p / META).is_file() for p in path.iterdir() if p.is_dir()):
            raise AppInputError(f"{shown_path(path)} holds no checkpoint (no sub-directory with {META}).")
        return path
    if kind == "results":
        if not ((path / "nll.json").is_file() or (path / "study.json").is_file() or (path / "probes").is_dir()):
            raise AppInputError(f"{shown_path(path)} holds none of nll.json, study.json, probes/: it is not a results directory.")
        return path
    raise ValueError(f"kind must be 'checkpoints' or 'results', got {kind!r}")


def streams_of(variant: str) -> tuple[str, ...]:
    return STREAMS_OF.get(variant, ("main",))


def load_model(name_or_path: str | Path) -> HookedAOModel:
    """`workbench.load`, with every failure (missing, corrupt, mismatched) as an AppInputError."""
    from workbench.checkpoint import load

    path = Path(name_or_path)
    if not path.is_dir():
        path = checkpoints_dir() / str(name_or_path)
    try:
        return load(path)
    except (CheckpointError, OSError, ValueError, RuntimeError, KeyError) as err:
        raise AppInputError(f"checkpoint {Path(name_or_path).name!r} could not be loaded: {err}") from err


@dataclass
class LoadedModel:
    """A model and the lock that serialises hooked runs on it (hooks are module state: two
    sessions adding hooks to the same model at once would see each other's)."""

    model: HookedAOModel
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        info = getattr(self.model, "checkpoint", None)
        return info.name if info is not None else "model"
