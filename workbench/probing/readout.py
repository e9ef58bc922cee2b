"""The four parts at any (r, w) on bin edges, read from the joint semantic x recency histogram.

The `histograms` probe writes `joint_hist` rows: per (layer, stream, head), the attention and
chance mass per probed row in each cell (x = semantic-distance bin, y = recency bin; bins as in
docs/coordinates.md, the null key in cell (0, 0)). S_r is the semantic bins 1..bin(r) and R_w the
recency bins 1..bin(w), so for r and w on bin edges -- 0, 1, 2, 4, 8, ... -- the parts are sums
of cells, exactly the values a run at that (r, w) writes (`parts` probe). Other r, w fall inside a
bin and cannot be read: `parts_at` says so. What needs more than the joint (confidence intervals,
the normalised excess and the labels, which need per-row quantities) is not read out: rerun the
probe at that (r, w) for those.

    from workbench.probing import read_table
    from workbench.probing.readout import parts_at, parts_table
    parts_table(read_table("results/probes/two_stream-1024"), r=16, w=1)   # every head
    parts_at(mass, r=2, w=8)                                            # one [.., bin, bin] array
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.kernels.contract import EDGES, N_BINS, PARTS

KEYS = ["checkpoint", "layer", "stream", "head"]


def edge_bin(value: int, name: str = "r") -> int:
    """The last bin of a set whose bound `value` is on a bin edge (0 -> 1, 1 -> 2, 2 -> 3, 4 -> 4, ...)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in EDGES:
        edges = ", ".join(str(e) for e in EDGES[:8])
        raise ValueError(f"{name}={value!r} is not on a bin edge of the joint histogram ({edges}, ... 2^14): it "
                         f"would split a bin; pick an edge, or rerun the probe with --{name} {value}")
    return EDGES.index(value) + 1


def parts_at(joint: np.ndarray, r: int, w: int) -> dict[str, np.ndarray]:
    """S only, R only, both, neither (and the sets S_r, R_w) from joint mass or chance [..., bin, bin]."""
    joint = np.asarray(joint, dtype=np.float64)
    if joint.shape[-2:] != (N_BINS, N_BINS):
        raise ValueError(f"joint must end in [{N_BINS}, {N_BINS}] (semantic bin, recency bin), got {joint.shape}")
    s, t = edge_bin(r, "r"), edge_bin(w, "w")
    both = joint[..., 1 : s + 1, 1 : t + 1].sum((-1, -2))
    in_s = joint[..., 1 : s + 1, :].sum((-1, -2))
    in_r = joint[..., :, 1 : t + 1].sum((-1, -2))
    total = joint.sum((-1, -2))
    return {"S_only": in_s - both, "R_only": in_r - both, "both": both, "neither": total - in_s - in_r + both,
            "semantic_set": in_s, "structural_set": in_r}


def joint_arrays(table: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(heads, mass, chance): the `joint_hist` rows of a probe table as [head, bin, bin] arrays,
    `heads` the (checkpoint, layer, stream, head) of each."""
    rows = table[table["metric"] == "joint_hist"]
    if rows.empty:
        raise ValueError("the table has no joint_hist rows: it was written before the joint histogram existed, "
                         "or without the histograms probe; rerun `workbench probe` with it")
    heads = rows[KEYS].drop_duplicates().reset_index(drop=True)
    index = pd.MultiIndex.from_frame(heads)
    at = index.get_indexer(pd.MultiIndex.from_frame(rows[KEYS]))
    mass, chance = (np.zeros((len(heads), N_BINS, N_BINS)) for _ in range(2))
    x, y = rows["x"].to_numpy(), rows["y"].to_numpy()
    mass[at, x, y], chance[at, x, y] = rows["value"].to_numpy(), rows["chance"].to_numpy()
    return heads, mass, chance


def parts_table(table: pd.DataFrame, r: int, w: int) -> pd.DataFrame:
    """Per head and part (S_only, R_only, both, neither, semantic_set, structural_set): mass and
    chance per probed row and lift (mass / chance, NaN where the part is empty) at (r, w)."""
    heads, mass, chance = joint_arrays(table)
    m, c = parts_at(mass, r, w), parts_at(chance, r, w)
    frames = []
    for part in (*PARTS, "semantic_set", "structural_set"):
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = np.where(c[part] > 0, m[part] / c[part], np.nan)
        frames.append(heads.assign(part=part, mass=m[part], chance=c[part], lift=lift, r=r, w=w))
    return pd.concat(frames, ignore_index=True)
