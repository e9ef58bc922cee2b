"""The tidy results table of a probe run: one row per (checkpoint, layer, stream, head, probe,
metric, x, y), written as Parquet, atomically.

| column | type | meaning |
|---|---|---|
| `checkpoint` | str | checkpoint name |
| `layer` | int | layer; -1 for model-level or model-free rows |
| `stream` | str | `content` / `query` / `main`; "" for model-free rows |
| `head` | int | head; -1 for layer- or model-level rows |
| `probe` | str | the probe that wrote the row |
| `metric` | str | what `value` measures (docs/probes.md lists every metric) |
| `value` | float | the measurement |
| `chance` | float | its chance value (uniform attention over the visible keys; for a causal check, the random-set control); NaN if none |
| `ci` | float | half-width of its 95% confidence interval (t) over blocks of contiguous windows, or over sequences when there are fewer than 32 (metadata.json `ci_unit` says which, for the statistics and for the causal checks); NaN if none |
| `n` | int | how many units the value pools (probed rows, or sequences for causal checks) |
| `x` | int | the metric's argument: histogram bin (the semantic bin of `joint_hist`), first step of a step bucket, or length T; -1 for scalars |
| `y` | int | the second argument: the recency bin of `joint_hist` rows; -1 elsewhere |
| `label` | str | a head's specialisation label on `metric == "label"` rows, else "" |
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from workbench.results_io import write_bytes_atomic

SCHEMA = pa.schema(
    [
        ("checkpoint", pa.string()),
        ("layer", pa.int32()),
        ("stream", pa.string()),
        ("head", pa.int32()),
        ("probe", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("chance", pa.float64()),
        ("ci", pa.float64()),
        ("n", pa.int64()),
        ("x", pa.int64()),
        ("label", pa.string()),
        ("y", pa.int64()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
TABLE_FILE = "probes.parquet"
NAN = math.nan


@dataclass(frozen=True)
class Row:
    """One measurement a probe yields; the runner adds `checkpoint` and `probe`."""

    metric: str
    value: float
    layer: int = -1
    stream: str = ""
    head: int = -1
    chance: float = NAN
    ci: float = NAN
    n: int = 0
    x: int = -1
    label: str = ""
    y: int = -1


def rows_to_table(rows: list[tuple[str, str, Row]]) -> pa.Table:
    """(checkpoint, probe, Row) triples -> an Arrow table with SCHEMA."""
    columns: dict[str, list] = {"checkpoint": [c for c, _, _ in rows], "probe": [p for _, p, _ in rows]}
    for name in COLUMNS:
        if name not in columns:
            values = [getattr(row, name) for _, _, row in rows]
            columns[name] = [float(v) for v in values] if name in ("value", "chance", "ci") else values
    return pa.table({name: columns[name] for name in COLUMNS}, schema=SCHEMA)


def write_table(table: pa.Table, path: Path) -> None:
    """Write `table` as Parquet at `path`: a temp file in the same directory, then os.replace."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    write_bytes_atomic(Path(path), buffer.getvalue())


def read_table(path: str | Path):
    """A probe table (a results directory or the .parquet file) as a pandas DataFrame."""
    path = Path(path)
    if path.is_dir():
        path = path / TABLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no probe table at {path}; run `workbench probe --out {path.parent}` first.")
    return pq.read_table(path).to_pandas()
