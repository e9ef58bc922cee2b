"""Probe results as the app reads them: the committed table of a checkpoint, or a quick estimate
computed here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.app_data.common import AppInputError, checkpoints_dir, results_dir
from workbench.checkpoint import CheckpointError

__all__ = ["ProbeResults", "probe_results_path", "load_probe_results", "QUICK_PROBES", "quick_probe_results"]


@dataclass
class ProbeResults:
    """A probe run's tidy table (pandas) and metadata; `source` says where it came from."""

    checkpoint: str
    table: pd.DataFrame
    metadata: dict[str, Any]
    source: str

    @property
    def r(self) -> int | None:
        return self.metadata.get("r")

    @property
    def w(self) -> int | None:
        return self.metadata.get("w")


def probe_results_path(checkpoint: str, root: Path | None = None) -> Path:
    return (results_dir() if root is None else Path(root)) / "probes" / checkpoint


def load_probe_results(checkpoint: str, root: Path | None = None) -> ProbeResults:
    """The committed probe results of a checkpoint (results/probes/<checkpoint>/)."""
    from workbench.probing import read_table

    where = probe_results_path(checkpoint, root)
    try:
        table = read_table(where)
    except FileNotFoundError as err:
        raise AppInputError(
            f"no probe results for {checkpoint} in {where}. Run `workbench probe --checkpoint {checkpoint} "
            f"--out {where}`, or compute a quick estimate here."
        ) from err
    except Exception as err:  # noqa: BLE001 (pyarrow raises many kinds for a damaged file)
        raise AppInputError(f"the probe table in {where} cannot be read ({err}); run the probes again.") from err
    missing = {"layer", "stream", "head", "metric", "value"} - set(table.columns)
    if missing:
        raise AppInputError(f"the probe table in {where} lacks columns {sorted(missing)}; it is not a workbench probe table.")
    meta_file = where / "metadata.json"
    try:
        metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    except json.JSONDecodeError:
        metadata = {}
    return ProbeResults(checkpoint, table, metadata, str(where))


QUICK_PROBES = ("parts", "specialisation", "histograms", "entropy", "sink", "by_step")


def quick_probe_results(checkpoint: str, n_sequences: int = 8, r: int = 4, w: int = 4, seed: int = 0) -> ProbeResults:
    """A small probe run (the probes' own runner, on CPU, nothing written) for a checkpoint that has
    no committed results: the same table, from fewer sequences, so wider intervals."""
    from workbench.probing import run_probes

    path = Path(checkpoint) if Path(checkpoint).is_dir() else checkpoints_dir() / checkpoint
    try:
        run = run_probes(path, probes=list(QUICK_PROBES), max_sequences=n_sequences, r=r, w=w, seed=seed,
                         out=None, progress=False, device="cpu", batch_size=min(8, n_sequences))
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        raise AppInputError(f"the quick probe run on {checkpoint} failed: {err}") from err
    return ProbeResults(Path(checkpoint).name, run.table, run.metadata, f"quick estimate: {n_sequences} validation windows")
