"""The probe statistics: bins, the `ProbeStats` container, and `pattern_stats` on a materialised pattern.

This module is the executable form of the probe contract in docs/coordinates.md. Everything that
computes probe statistics -- the hooks-based reference (from `hook_pattern`), the chunked PyTorch
reference (`workbench.kernels.reference`) and the fused Triton kernel (`workbench.kernels.probe_kernel`)
-- returns the same `ProbeStats`, and `pattern_stats` is the definition the other two are tested
against.

Conventions (one attention row i of one sequence and head; slot coordinates):

- visible keys V = {0..i}, less the null keys for rows that do not see them (`sees_null`; XLNet:
  only row 0 sees its null slot); row i's chance weight of each visible key is 1 / |V|.
- a key j with `key_pos[j] < 0` is a **null key** (key 0, the BOS / learned null key): it has no
  distance and no recency, sits in bin 0 of every histogram and in the part "neither".
- **semantic distance** |key_pos[j] - row_ref[i]|; **own distance** |key_pos[j] - row_own[i]|;
  **recency** i - j + recency_offset (0 for the content stream and single streams, 1 for the query
  stream).
- rows with `row_ref < 0` are not probed (the content stream's BOS row, padding). Rows with
  `row_own < 0` are left out of the own-distance histograms only.
- S_r = {non-null visible j : distance <= r}, R_w = {non-null visible j : recency <= w}; the four
  parts are (S only, R only, both, neither), in that order.
- histogram bins (`distance_bin`): 0 null key; 1 d = 0; 2 d = 1; b >= 3: 2^(b-3) < d <= 2^(b-2);
  d > 2^14 all land in the last bin, N_BINS - 1 = 17.
- the **joint histogram** [semantic bin, recency bin] holds each key's mass in the cell of its two
  bins (the null key in [0, 0]); its margins are the two histograms, and the parts at any r, w on
  bin edges (0, 1, 2, 4, ...) are sums of its cells (`workbench.probing.readout`).

Every sum in `ProbeStats` is over batch and probed rows, so a histogram row sums to the number of
probed rows and stats from several batches (or ranks) simply add.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

N_BINS = 18
"""Histogram bins: null key, d = 0, d = 1, then (2^(b-3), 2^(b-2)] up to 2^14 < d (the last bin)."""

N_PARTS = 4
PARTS = ("S_only", "R_only", "both", "neither")

# Upper (inclusive) edges of bins 1..16: bin b >= 1 holds EDGES[b-2] < d <= EDGES[b-1]; bin 17 the rest.
EDGES: tuple[int, ...] = (0,) + tuple(2**k for k in range(15))
assert len(EDGES) == N_BINS - 2


def distance_bin(d: Tensor) -> Tensor:
    """Log2 bin of integer distances / recencies `d` (any shape); d < 0 marks the null key (bin 0).

    bin 0: null; 1: d = 0; 2: d = 1; b >= 3: 2^(b-3) < d <= 2^(b-2); d > 2^14: bin 17.
    For d >= 1 this is 2 + ceil(log2 d), capped at N_BINS - 1.
    """
    if d.is_floating_point():
        raise TypeError(f"distance_bin takes integer distances, got {d.dtype}")
    edges = torch.tensor(EDGES, dtype=d.dtype, device=d.device)
    b = 1 + torch.bucketize(d.contiguous(), edges, right=False)  # 1 + #{edges < d}
    return torch.where(d < 0, torch.zeros_like(b), b)


def n_thresholds(max_distance: int) -> int:
    """How many cumulative edges (EDGES[0..n-1]) separate all bins that distances <= max_distance reach.

    Bins above bin n + 1 are then empty, and bin n + 1 is "the rest". Used by the kernel to skip
    edges no key can cross.
    """
    if max_distance <= 0:
        return 1
    return min(N_BINS - 2, 1 + math.ceil(math.log2(max_distance)))


# ----------------------------------------------------------------------------------------------
# The container
# ----------------------------------------------------------------------------------------------

_TENSOR_FIELDS = (
    "n_rows", "n_own_rows",
    "sem_mass", "sem_chance", "rec_mass", "rec_chance", "own_mass", "own_chance",
    "joint_mass", "joint_chance",
    "parts_mass", "parts_chance", "entropy",
    "step_parts_mass", "step_parts_chance", "step_entropy", "step_rows", "step_null_chance", "step_entropy_chance",
    "step_null_mass",
)
_OPTIONAL = ("own_mass", "own_chance", "step_null_mass")  # may be missing from an older saved dict
_STEP_FIELDS = ("step_parts_mass", "step_parts_chance", "step_entropy", "step_rows", "step_null_chance",
                "step_entropy_chance", "step_null_mass")


@dataclass
class ProbeStats:
    """Probe statistics of one (layer, stream), summed over batch and probed rows, per head.

    All tensors are float64 on the device they were computed on. Shapes (H heads, R rows of the
    stream, i.e. generation steps in slot coordinates):

    | field | shape | what |
    |---|---|---|
    | `n_rows` | [] | probed rows (row_ref >= 0) |
    | `n_own_rows` | [] | probed rows with an own position (row_own >= 0); 0 without row_own |
    | `sem_mass`, `sem_chance` | [H, N_BINS] | attention / chance mass per semantic-distance bin |
    | `rec_mass`, `rec_chance` | [H, N_BINS] | the same per recency bin |
    | `own_mass`, `own_chance` | [H, N_BINS] or None | the same per own-distance bin |
    | `joint_mass`, `joint_chance` | [H, N_BINS, N_BINS] or None | the same per (semantic bin, recency bin); None from `probe_stats(..., joint=False)` (the v3 kernel) |
    | `parts_mass`, `parts_chance` | [H, 4] | (S only, R only, both, neither) at (r, w) |
    | `entropy` | [H] | sum of row entropies, bits |
    | `step_parts_mass`, `step_parts_chance` | [H, R, 4] | the parts per row index |
    | `step_entropy` | [H, R] | entropy per row index |
    | `step_rows` | [R] | probed rows per row index |
    | `step_null_chance` | [H, R] | chance mass of null keys per row index (1 / (visible keys) where the row sees the null key) |
    | `step_entropy_chance` | [H, R] | entropy of uniform attention, log2 (visible keys), per row index |
    | `step_null_mass` | [H, R] | attention on null keys per row index (bin 0 of the semantic histogram, per step) |

    Histograms (except own) and parts sum to `n_rows` per head; own histograms to `n_own_rows`.
    Chance values do not depend on the head; they are stored per head for a uniform layout.

    **Per-sequence batches.** `probe_stats(..., per_sequence=True)` and `ProbeStats.stack` give the
    statistics of B sequences side by side: every tensor has one more leading dimension, [B, ...]
    (n_rows [B], sem_mass [B, H, N_BINS], ...), and stays on its device. That is what confidence
    intervals need (summed per block of contiguous sequences: `workbench.probing.engine.Accumulator`); `+`, `to_flat` and
    `all_reduce` work on either form.
    """

    r: int
    w: int
    recency_offset: int
    n_rows: Tensor
    n_own_rows: Tensor
    sem_mass: Tensor
    sem_chance: Tensor
    rec_mass: Tensor
    rec_chance: Tensor
    own_mass: Tensor | None
    own_chance: Tensor | None
    joint_mass: Tensor | None
    joint_chance: Tensor | None
    parts_mass: Tensor
    parts_chance: Tensor
    entropy: Tensor
    step_parts_mass: Tensor
    step_parts_chance: Tensor
    step_entropy: Tensor
    step_rows: Tensor
    step_null_chance: Tensor
    step_entropy_chance: Tensor
    step_null_mass: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    # -- shape facts ---------------------------------------------------------------------------
    @property
    def n_heads(self) -> int:
        return self.sem_mass.shape[-2]

    @property
    def n_steps(self) -> int:
        return self.step_rows.shape[-1]

    @property
    def has_own(self) -> bool:
        return self.own_mass is not None

    # -- derived readings ----------------------------------------------------------------------
    def mean(self, name: str) -> Tensor:
        """A histogram / parts / entropy field divided by the rows it was summed over."""
        rows = self.n_own_rows if name.startswith("own") else self.n_rows
        return getattr(self, name) / rows.clamp(min=1)

    def lift(self, name: str) -> Tensor:
        """mass / chance for 'sem', 'rec', 'own' or 'parts' (NaN where chance is 0)."""
        mass, chance = getattr(self, f"{name}_mass"), getattr(self, f"{name}_chance")
        return mass / chance

    # -- accumulation --------------------------------------------------------------------------
    def _check_compatible(self, other: ProbeStats) -> None:
        if (self.r, self.w, self.recency_offset) != (other.r, other.w, other.recency_offset):
            raise ValueError(
                "cannot add ProbeStats computed with different (r, w, recency_offset): "
                f"{(self.r, self.w, self.recency_offset)} vs {(other.r, other.w, other.recency_offset)}"
            )
        if self.n_heads != other.n_heads:
            raise ValueError(f"cannot add ProbeStats of {self.n_heads} and {other.n_heads} heads")
        if self.has_own != other.has_own:
            raise ValueError("cannot add ProbeStats with and without own-distance histograms")
        if (self.joint_mass is None) != (other.joint_mass is None):
            raise ValueError("cannot add ProbeStats with and without the joint histogram (probe_stats(..., joint=False) "
                             "leaves it out); compute both with the same joint setting")

    def __add__(self, other: ProbeStats) -> ProbeStats:
        if not isinstance(other, ProbeStats):
            return NotImplemented
        self._check_compatible(other)
        n_steps = max(self.n_steps, other.n_steps)
        a, b = self._padded(n_steps), other._padded(n_steps)
        out = {}
        for name in _TENSOR_FIELDS:
            x, y = getattr(a, name), getattr(b, name)
            out[name] = None if x is None or y is None else x + y.to(x.device)
        return ProbeStats(r=self.r, w=self.w, recency_offset=self.recency_offset, meta=dict(self.meta), **out)

    def __radd__(self, other):  # lets sum([...]) start from 0
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def _padded(self, n_steps: int) -> ProbeStats:
        """Per-step arrays zero-padded to n_steps rows (sums over shorter sequences stay exact)."""
        pad = n_steps - self.n_steps
        if pad == 0:
            return self
        fields = {}
        for name in _STEP_FIELDS:
            x = getattr(self, name)
            if x is None:
                continue
            axis = -2 if name in ("step_parts_mass", "step_parts_chance") else -1  # the row axis
            shape = list(x.shape)
            shape[axis] = pad
            fields[name] = torch.cat([x, x.new_zeros(shape)], dim=axis)
        return dataclasses.replace(self, **fields)

    @classmethod
    def stack(cls, seqs: list[ProbeStats]) -> ProbeStats:
        """Per-sequence statistics side by side: every tensor gets a leading [len(seqs)] dimension
        (per-step arrays zero-padded to the longest). step_null_mass is kept only if all have it."""
        if not seqs:
            raise ValueError("ProbeStats.stack needs at least one ProbeStats")
        for other in seqs[1:]:
            seqs[0]._check_compatible(other)
        n_steps = max(s.n_steps for s in seqs)
        padded = [s._padded(n_steps) for s in seqs]
        out = {}
        for name in _TENSOR_FIELDS:
            xs = [getattr(s, name) for s in padded]
            out[name] = None if any(x is None for x in xs) else torch.stack([x.to(xs[0].device) for x in xs])
        first = seqs[0]
        return ProbeStats(r=first.r, w=first.w, recency_offset=first.recency_offset, meta=dict(first.meta), **out)

    # -- flat view for torch.distributed -------------------------------------------------------
    def to_flat(self) -> Tensor:
        """All tensors, flattened and concatenated in a fixed order: one float64 vector.

        `torch.distributed.all_reduce(flat)` followed by `stats.from_flat(flat)` combines shards
        (every rank must have the same heads, rows, own-ness and (r, w)).
        """
        parts = [getattr(self, n).reshape(-1).double() for n in _TENSOR_FIELDS if getattr(self, n) is not None]
        return torch.cat(parts)

    def from_flat(self, flat: Tensor) -> ProbeStats:
        """A ProbeStats with this one's layout and values read from `flat` (see `to_flat`)."""
        out, offset = {}, 0
        for name in _TENSOR_FIELDS:
            x = getattr(self, name)
            if x is None:
                out[name] = None
                continue
            n = x.numel()
            out[name] = flat[offset : offset + n].reshape(x.shape).to(x.dtype)
            offset += n
        if offset != flat.numel():
            raise ValueError(f"flat vector has {flat.numel()} values, this layout needs {offset}")
        return dataclasses.replace(self, **out)

    def all_reduce(self, group=None) -> ProbeStats:
        """Sum over the ranks of a torch.distributed group (a no-op when not initialised)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        flat = self.to_flat()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        return self.from_flat(flat)

    # -- saving --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict: numpy float64 arrays, python ints for r / w / recency_offset (None for no own)."""
        d: dict[str, Any] = {"r": self.r, "w": self.w, "recency_offset": self.recency_offset}
        for name in _TENSOR_FIELDS:
            x = getattr(self, name)
            d[name] = None if x is None else x.detach().double().cpu().numpy()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device | str | None = None) -> ProbeStats:
        missing = [n for n in ("r", "w", "recency_offset", *_TENSOR_FIELDS) if n not in d and n not in _OPTIONAL]
        if missing:
            raise KeyError(f"ProbeStats.from_dict: missing fields {missing}")
        tensors = {
            n: None if d.get(n) is None else torch.as_tensor(np.asarray(d[n]), dtype=torch.float64, device=device)
            for n in _TENSOR_FIELDS
        }
        return cls(r=int(d["r"]), w=int(d["w"]), recency_offset=int(d["recency_offset"]), **tensors)

    def to(self, device: torch.device | str) -> ProbeStats:
        return dataclasses.replace(
            self, **{n: None if getattr(self, n) is None else getattr(self, n).to(device) for n in _TENSOR_FIELDS}
        )

    def cpu(self) -> ProbeStats:
        return self.to("cpu")


def empty_stats(
    n_heads: int, n_steps: int, *, has_own: bool, r: int, w: int, recency_offset: int, device=None
) -> ProbeStats:
    """All-zero ProbeStats (the identity of `+`)."""
    z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
    return ProbeStats(
        r=r, w=w, recency_offset=recency_offset,
        n_rows=z(()), n_own_rows=z(()),
        sem_mass=z(n_heads, N_BINS), sem_chance=z(n_heads, N_BINS),
        rec_mass=z(n_heads, N_BINS), rec_chance=z(n_heads, N_BINS),
        own_mass=z(n_heads, N_BINS) if has_own else None, own_chance=z(n_heads, N_BINS) if has_own else None,
        joint_mass=z(n_heads, N_BINS, N_BINS), joint_chance=z(n_heads, N_BINS, N_BINS),
        parts_mass=z(n_heads, N_PARTS), parts_chance=z(n_heads, N_PARTS), entropy=z(n_heads),
        step_parts_mass=z(n_heads, n_steps, N_PARTS), step_parts_chance=z(n_heads, n_steps, N_PARTS),
        step_entropy=z(n_heads, n_steps), step_rows=z(n_steps), step_null_chance=z(n_heads, n_steps),
        step_entropy_chance=z(n_heads, n_steps), step_null_mass=z(n_heads, n_steps),
    )


# ----------------------------------------------------------------------------------------------
# Statistics of a materialised pattern
# ----------------------------------------------------------------------------------------------


def check_positions(
    key_pos: Tensor, row_ref: Tensor, row_own: Tensor | None, batch: int, n_rows: int, n_keys: int,
    sees_null: Tensor | None = None,
) -> None:
    """Shapes and dtypes of the position arguments shared by every probe-stats entry point."""
    if sees_null is not None and (not isinstance(sees_null, Tensor) or sees_null.dtype != torch.bool
                                  or tuple(sees_null.shape) != (batch, n_rows)):
        raise ValueError(f"sees_null must be a bool tensor of shape {[batch, n_rows]} ([batch, row]: whether each "
                         f"row sees the null keys), got {getattr(sees_null, 'dtype', type(sees_null).__name__)} "
                         f"{list(getattr(sees_null, 'shape', []))}")
    for name, t, shape in (("key_pos", key_pos, (batch, n_keys)), ("row_ref", row_ref, (batch, n_rows)),
                           ("row_own", row_own, (batch, n_rows))):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor of positions, got {type(t).__name__} "
                            f"{getattr(t, 'dtype', '')}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)} ([batch, {'key' if name == 'key_pos' else 'row'}]),"
                             f" got {list(t.shape)}")


def pattern_stats(
    pattern: Tensor,
    key_pos: Tensor,
    row_ref: Tensor,
    row_own: Tensor | None = None,
    *,
    recency_offset: int,
    r: int,
    w: int,
    row_start: int = 0,
    n_steps: int | None = None,
    sees_null: Tensor | None = None,
) -> ProbeStats:
    """Probe statistics of a materialised attention pattern (the definition; float64, exact).

    pattern: [batch, head, row, key] attention probabilities of rows row_start .. row_start + row - 1
        (slot coordinates, e.g. `hook_pattern`, or one chunk of it). Only the visible keys j <= i
        are read; entries above the causal diagonal are ignored.
    key_pos: [batch, key] int, negative for the null key. row_ref / row_own: [batch, row] int for
        the rows of this chunk (negative: not probed / no own position).
    row_start, n_steps: where this chunk's rows sit in the stream and how many rows the stream has
        (per-step arrays are [.., n_steps, ..]; default row_start + row). Summing the ProbeStats of
        all chunks gives the stats of the whole pattern.
    sees_null: [batch, row] bool for this chunk's rows, whether the row sees the null keys (None:
        every row does). A null key a row does not see is not in its V, like keys past the diagonal.
    """
    if pattern.dim() != 4:
        raise ValueError(f"pattern must be [batch, head, row, key], got shape {list(pattern.shape)}")
    B, H, Rc, K = pattern.shape
    check_positions(key_pos, row_ref, row_own, B, Rc, K, sees_null)
    if row_start + Rc > K:
        raise ValueError(f"rows {row_start}..{row_start + Rc - 1} see keys 0..i, but there are only {K} keys")
    n_steps = row_start + Rc if n_steps is None else n_steps
    dev = pattern.device
    f64 = torch.float64
    key_pos, row_ref = key_pos.to(dev, torch.int64), row_ref.to(dev, torch.int64)

    i = torch.arange(row_start, row_start + Rc, device=dev)  # global row index   [Rc]
    j = torch.arange(K, device=dev)  # [K]
    null = key_pos < 0  # [B, K]
    causal = (j[None, :] <= i[:, None])[None]  # [1, Rc, K]
    real = causal & ~null[:, None, :]  # non-null visible keys          [B, Rc, K]
    seen_null = causal & null[:, None, :]
    if sees_null is not None:
        seen_null = seen_null & sees_null.to(dev)[:, :, None]
    vis = real | seen_null  # V                                          [B, Rc, K]
    probed = row_ref >= 0  # [B, Rc]
    n_vis = vis.sum(-1).to(f64)  # |V|                                    [B, Rc]
    if bool((probed & (n_vis == 0)).any()):
        b, row = (probed & (n_vis == 0)).nonzero()[0].tolist()
        raise ValueError(f"row {row_start + row} of sequence {b} is probed (row_ref >= 0) but sees no key; mark it "
                         "not probed (row_ref = -1) or let it see the null key (sees_null)")

    p = torch.where(vis[:, None], pattern.to(f64), 0.0)  # [B, H, Rc, K]; NaN of an empty row dropped too
    chance = (vis.to(f64) / n_vis.clamp(min=1)[..., None])[:, None]  # [B, 1, Rc, K]

    def bins_of(dist: Tensor) -> Tensor:  # [B, Rc, K] int, null keys -> bin 0
        return torch.where(null[:, None, :], 0, distance_bin(dist))

    def hist(bins: Tensor, weights: Tensor, rows: Tensor) -> Tensor:  # -> [heads, N_BINS]
        h = weights.shape[1]
        out = torch.zeros(B, h, Rc, N_BINS, dtype=f64, device=dev)
        out.scatter_add_(-1, bins[:, None].expand(B, h, Rc, K), weights.expand(B, h, Rc, K))
        return (out * rows[:, None, :, None]).sum((0, 2))

    rows = probed.to(f64)
    sem_dist = (key_pos[:, None, :] - row_ref[:, :, None]).abs()  # [B, Rc, K]
    sem_bins = bins_of(sem_dist)
    rec = (i[:, None] - j[None, :] + recency_offset).expand(B, Rc, K)
    rec_bins = bins_of(rec)
    cells = (sem_bins * N_BINS + rec_bins).reshape(1, -1)  # joint histogram cell of every entry

    def joint(weights: Tensor) -> Tensor:  # -> [heads, N_BINS, N_BINS]
        h = weights.shape[1]
        w_rows = (weights.expand(B, h, Rc, K) * rows[:, None, :, None]).transpose(0, 1).reshape(h, -1)
        out = torch.zeros(h, N_BINS * N_BINS, dtype=f64, device=dev)
        return out.scatter_add_(1, cells.expand(h, -1), w_rows).view(h, N_BINS, N_BINS)

    stats: dict[str, Any] = {}
    stats["sem_mass"], stats["sem_chance"] = hist(sem_bins, p, rows), hist(sem_bins, chance, rows).expand(H, -1)
    stats["rec_mass"], stats["rec_chance"] = hist(rec_bins, p, rows), hist(rec_bins, chance, rows).expand(H, -1)
    stats["joint_mass"], stats["joint_chance"] = joint(p), joint(chance).expand(H, -1, -1)
    if row_own is not None:
        row_own = row_own.to(dev, torch.int64)
        own_rows = (probed & (row_own >= 0)).to(f64)
        own_bins = bins_of((key_pos[:, None, :] - row_own[:, :, None]).abs())
        stats["own_mass"] = hist(own_bins, p, own_rows)
        stats["own_chance"] = hist(own_bins, chance, own_rows).expand(H, -1)
        stats["n_own_rows"] = own_rows.sum()
    else:
        stats["own_mass"] = stats["own_chance"] = None
        stats["n_own_rows"] = torch.zeros((), dtype=f64, device=dev)

    # The four parts, per row: [B, h, Rc, 4].
    in_s = (real & (sem_dist <= r)).to(f64)[:, None]
    in_r = (real & (rec <= w)).to(f64)[:, None]

    def parts(weights: Tensor) -> Tensor:
        s, rr = (weights * in_s).sum(-1), (weights * in_r).sum(-1)
        both = (weights * in_s * in_r).sum(-1)
        total = weights.sum(-1)
        return torch.stack([s - both, rr - both, both, total - s - rr + both], dim=-1)

    def per_step(x: Tensor) -> Tensor:  # [B, h, Rc, ...] -> [h, n_steps, ...], probed rows only
        x = (x * rows.view(B, 1, Rc, *([1] * (x.dim() - 3)))).sum(0)
        out = x.new_zeros(x.shape[0], n_steps, *x.shape[2:])
        out[:, row_start : row_start + Rc] = x
        return out

    stats["step_parts_mass"] = per_step(parts(p))
    stats["step_parts_chance"] = per_step(parts(chance)).expand(H, -1, -1)
    plogp = torch.where(p > 0, p * torch.log2(p.clamp(min=torch.finfo(f64).tiny)), torch.zeros((), dtype=f64, device=dev))
    stats["step_entropy"] = per_step(-plogp.sum(-1))
    stats["step_null_mass"] = per_step((p * null[:, None, None, :]).sum(-1))
    stats["step_null_chance"] = per_step((chance * null[:, None, None, :]).sum(-1)).expand(H, -1)
    stats["step_entropy_chance"] = per_step(torch.log2(n_vis.clamp(min=1))[:, None]).expand(H, -1)
    stats["parts_mass"] = stats["step_parts_mass"].sum(1)
    stats["parts_chance"] = stats["step_parts_chance"].sum(1)
    stats["entropy"] = stats["step_entropy"].sum(1)
    step_rows = torch.zeros(n_steps, dtype=f64, device=dev)
    step_rows[row_start : row_start + Rc] = rows.sum(0)
    stats["step_rows"] = step_rows
    stats["n_rows"] = rows.sum()
    stats = {k: v.contiguous() if isinstance(v, Tensor) else v for k, v in stats.items()}
    return ProbeStats(r=int(r), w=int(w), recency_offset=int(recency_offset), **stats)
