"""Attention statistics of a model over a dataset: per (layer, stream, head), pooled over sequences,
with what a confidence interval needs.

A *statistics source* turns one batch into `ProbeStats` (workbench/kernels/contract.py) per
(layer, stream) and sequence:

- `ReferenceSource`: the patterns themselves, read at `hook_pattern` and reduced by
  `workbench.kernels.pattern_stats` (the definition) inside the hook, so no more than one layer's
  pattern is alive at a time.
- `KernelSource` (`--fast`): rotated queries and keys captured at `hook_rot_q` / `hook_rot_k`
  (`hook_q` / `hook_k` for sigma_gpt, which has no rotation; the forward stops once the last of
  them is captured, as nothing after it is needed) and reduced by the fused Triton kernel
  `workbench.kernels.probe_stats`, never materialising a pattern: one call (three launches) per stream and batch
  (all layers side by side on the head axis),
  per-sequence outputs that stay on the device, and the moment sums below accumulated there too
  (replayed as a CUDA graph once a batch shape repeats), so nothing waits for the GPU; the batch
  map copies the sums to the host while the next batch runs. Needs CUDA; `make_source` falls
  back to the reference with a warning line otherwise.

Both sources give the same moment sums (within float32 rounding of the scores), per-step null-key
mass included, so `--fast` writes the reference's table.

Each sequence's statistics become a small vector per head (below, `FIELDS`), for all rows and for
each step bucket (rows 0, 1, 2-3, 4-7, ... by slot index); a batch contributes the sums of those
vectors and of their outer products, plus sums and sums of squares of the histograms. Pooled
over batches these give every metric as a ratio of means, and its 95% confidence interval over
sequences by the delta method (`Pooled.estimate`).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from workbench.hook_names import hook_name
from workbench.kernels.contract import N_BINS, ProbeStats, pattern_stats
from workbench.models import HookedAOModel
from workbench.orders import ProbeLayout, probe_layout, to_device
from workbench.probing import specialisation
from workbench.probing.table import Row
from workbench.stats import Z_95

FIELDS = (
    "rows",  # probed rows
    "S_only_mass", "R_only_mass", "both_mass", "neither_mass",
    "S_only_chance", "R_only_chance", "both_chance", "neither_chance",
    "sink_mass",  # attention on the null key
    "sink_chance",  # 1 / |V|
    "entropy",  # bits
    "uniform_entropy",  # log2 |V|: the entropy of uniform attention
    "own_rows",  # probed rows with an own position (single stream)
)
F = {name: i for i, name in enumerate(FIELDS)}
HISTS = ("semantic", "recency", "own")  # hist tensor rows: (attention, chance) per histogram
ROW_CHUNK = 1 << 21  # pattern entries per pattern_stats call (bounds the float64 temporaries)


def step_buckets(n_rows: int) -> list[int]:
    """First slot index of each step bucket: 0, 1, 2, 4, 8, ... (< n_rows)."""
    starts, s = [0], 1
    while s < n_rows:
        starts.append(s)
        s *= 2
    return starts


def bucket_of(n_rows: int, device: torch.device | str = "cpu") -> Tensor:
    """The step bucket of every slot index 0..n_rows-1 (0; 1; 2-3 -> 2; 4-7 -> 3; ...)."""
    i = torch.arange(n_rows, device=device)
    return torch.where(i == 0, 0, torch.floor(torch.log2(i.clamp(min=1).double())).long() + 1)


@functools.lru_cache(maxsize=16)
def _row_constants(n_rows: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """([bucket, row] one-hot, |V| = i + 1, log2 |V|), float64, made on `device` (no copy to it)."""
    onehot = torch.nn.functional.one_hot(bucket_of(n_rows, device), len(step_buckets(n_rows))).T.double()
    visible = torch.arange(1, n_rows + 1, dtype=torch.float64, device=device)
    return onehot, visible, torch.log2(visible)


# ---- sources ---------------------------------------------------------------------------------


class StatsSource(Protocol):
    name: str

    def collect(self, model: HookedAOModel, tokens: Tensor, order: Tensor, *, r: int, w: int) -> dict[str, Tensor]:
        """One batch's moment sums, keyed "L{layer}.{stream}.{what}" (see `Accumulator`)."""
        ...


class ReferenceSource:
    """Patterns through `hook_pattern` -> `pattern_stats`, one sequence at a time."""

    name = "reference"

    def collect(self, model: HookedAOModel, tokens: Tensor, order: Tensor, *, r: int, w: int) -> dict[str, Tensor]:
        device = next(model.parameters()).device
        layouts = {s: probe_layout(to_device(order, device), s) for s in model.stream_names}
        names = _stream_hooks(model, "pattern")
        out: dict[str, Tensor] = {}

        def hook(pattern: Tensor, hook) -> None:  # [batch, head, row, key]
            layer, stream = names[hook.name]
            layout = layouts[stream]
            acc = Accumulator(layout.row_ref.shape[1], pattern.shape[1], pattern.device)
            acc.add_batch(ProbeStats.stack([_chunked_pattern_stats(pattern[b : b + 1], _select(layout, b), r, w)
                                            for b in range(pattern.shape[0])]))
            out.update(acc.to_dict(f"L{layer}.{stream}"))

        with model.hooks(fwd_hooks=[(lambda n: n in names, hook)]):
            model(tokens, order)
        return out


class KernelSource:
    """q and k through hooks -> the fused Triton kernel `probe_stats` (CUDA).

    RoPE variants: the rotated q and k (`hook_rot_q`, `hook_rot_k`); sigma_gpt: `hook_q`, `hook_k`;
    a model with its own `probe_qk` (XLNet's relative attention) factorises its scores into q.k.

    On CUDA, a stream's statistics call (the kernel and the accumulator: ~100 small ops, ~2 ms of
    host time) is captured in a CUDA graph the second time a batch shape comes, and replayed from
    then on (`graphs=False`: always eager; the same bits either way).
    """

    name = "kernel"

    def __init__(self, graphs: bool = True):
        self.graphs = graphs
        self._seen: dict[tuple, _GraphedSums | None] = {}  # call signature -> its graph, once captured

    def collect(self, model: HookedAOModel, tokens: Tensor, order: Tensor, *, r: int, w: int) -> dict[str, Tensor]:
        hooked = score_hooks(model)
        if hooked:  # attached after make_source chose this source: never skip them silently
            raise RuntimeError(
                f"the kernel source would skip the hooks attached at {', '.join(hooked)} (it computes the "
                "pattern from q and k); remove them, or probe without --fast."
            )
        own_qk = hasattr(model, "probe_qk")
        rotated = not own_qk and getattr(model, "rotary", None) is not None
        names = {**_stream_hooks(model, "rot_q" if rotated else "q"), **_stream_hooks(model, "rot_k" if rotated else "k")}
        cache: dict[str, Tensor] = {}

        def capture(_module, _inputs, x: Tensor, name: str) -> None:
            cache[name] = x.detach()
            if len(cache) == len(names):
                raise _Captured  # all in hand: the rest of the forward would be thrown away

        # Plain torch forward hooks on just these hook points, removed by handle: TransformerLens's
        # `model.hooks()` walks every hook point of the model on exit (~3 ms per batch). Nothing
        # here needs its bookkeeping (`has_hooks` matters only for pattern and result hooks).
        handles = [
            model.hook_dict[name].register_forward_hook(functools.partial(capture, name=name)) for name in names
        ]
        try:
            model(tokens, order)  # CPU tokens and order: checked there, no device sync
        except _Captured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = sorted(set(names) - set(cache))
        if missing:
            raise RuntimeError(f"the forward never reached {', '.join(missing)}; the kernel needs q and k of every layer")
        out: dict[str, Tensor] = {}
        max_distance = order.shape[1]  # positions are 0..T-1: bounds every distance, saves a sync per call
        n_layers = model.cfg.n_layers
        order = to_device(order, next(model.parameters()).device)
        for stream in model.stream_names:
            layout = probe_layout(order, stream)
            qs, ks = [], []
            for layer in range(n_layers):
                if own_qk:
                    q, k, scale = model.probe_qk(cache, layer, stream, order)
                else:
                    which = ("rot_q", "rot_k") if rotated else ("q", "k")
                    q, k = (cache[hook_name(a, layer, stream)].transpose(1, 2) for a in which)  # [batch, head, slot, d_head]
                    scale = model.blocks[layer].attn.scale
                if layer == 0:
                    base = scale  # one call, one scale: any other layer's is folded into its q
                qs.append(q if scale == base else q * (scale / base))
                ks.append(k)
            # One kernel call per stream: the layers side by side on the head axis (heads are
            # independent in every statistic), so the fixed cost per call is paid once, not per layer.
            settings = dict(recency_offset=layout.recency_offset, r=r, w=w, scale=base, max_distance=max_distance)
            acc = self._sums(stream, qs, ks, layout, settings)
            n_heads = acc.n_heads // n_layers
            for layer in range(n_layers):
                out.update(acc.to_dict(f"L{layer}.{stream}", heads=slice(layer * n_heads, (layer + 1) * n_heads)))
        return out  # still on the device: map_batches copies it to the host while the next batch runs


    def _sums(self, stream: str, qs: list[Tensor], ks: list[Tensor], layout: ProbeLayout, settings: dict) -> Accumulator:
        """One stream's moment sums: eager, or by a CUDA graph for a call signature seen before."""
        positions = [layout.key_pos, layout.row_ref] + ([layout.row_own] if layout.row_own is not None else [])
        key = (stream, tuple(settings.items()), *((t.shape, t.dtype, t.device) for t in [*qs, *ks, *positions]))
        graphed = self._seen.get(key)
        if graphed is not None:
            return graphed(qs, ks, positions)
        q, k = torch.cat(qs, dim=1), torch.cat(ks, dim=1)
        if self.graphs and q.is_cuda and key in self._seen:  # the second time: capture
            self._seen[key] = _GraphedSums(q, k, positions, settings)
            return self._seen[key](qs, ks, positions)
        self._seen[key] = None
        return _stream_sums(q, k, *positions, **settings)


def _stream_sums(q: Tensor, k: Tensor, key_pos: Tensor, row_ref: Tensor, row_own: Tensor | None = None, **settings) -> Accumulator:
    from workbench.kernels import probe_stats

    acc = Accumulator(row_ref.shape[1], q.shape[1], q.device)
    acc.add_batch(probe_stats(q, k, key_pos, row_ref, row_own=row_own, per_sequence=True, **settings))
    return acc


class _GraphedSums:
    """`_stream_sums` captured in a CUDA graph for one call signature. A call copies q and k (the
    concatenation the eager path does anyway) and the positions into the graph's input buffers and
    replays it; the returned accumulator's sums are the graph's outputs, overwritten by the next
    replay (map_batches copies them to the host first: the copy is queued before it)."""

    def __init__(self, q: Tensor, k: Tensor, positions: list[Tensor], settings: dict):
        self.q, self.k, self.positions = q, k, [p.clone() for p in positions]
        side = torch.cuda.Stream()  # warm-up off the capture, as torch.cuda.graph asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            _stream_sums(self.q, self.k, *self.positions, **settings)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.acc = _stream_sums(self.q, self.k, *self.positions, **settings)

    def __call__(self, qs: list[Tensor], ks: list[Tensor], positions: list[Tensor]) -> Accumulator:
        torch.cat(qs, dim=1, out=self.q)
        torch.cat(ks, dim=1, out=self.k)
        for buffer, p in zip(self.positions, positions):
            buffer.copy_(p)
        self.graph.replay()
        return self.acc


class _Captured(Exception):
    """Raised by `KernelSource`'s last capture hook: the forward stops there (like TransformerLens's
    `stop_at_layer`), skipping the last layer's attention output and MLP and the unembedding."""


SCORE_HOOK_SUFFIXES = ("hook_attn_scores", "hook_pattern", "hook_score_content", "hook_score_position", "hook_score_segment")
"""Hook points between the captured q, k and the pattern: the kernel computes the pattern from q
and k itself, so anything attached there would be skipped."""


def score_hooks(model: HookedAOModel) -> list[str]:
    """Names of the hook points past q and k (`SCORE_HOOK_SUFFIXES`) that have forward hooks attached."""
    return [name for name, hp in model.hook_dict.items()
            if name.rsplit(".", 1)[-1] in SCORE_HOOK_SUFFIXES and hp._forward_hooks]


def make_source(fast: bool, device: torch.device | str, model: HookedAOModel | None = None) -> tuple[StatsSource, str]:
    """(the source to use, a note for the metadata). `fast` without CUDA, or on a model with hooks
    on its scores or patterns (which the kernel would skip), falls back to the reference, loudly."""
    if not fast:
        return ReferenceSource(), "reference: patterns through hook_pattern -> pattern_stats"
    hooked = score_hooks(model) if model is not None else []
    if hooked:
        shown = ", ".join(hooked[:3]) + (f" and {len(hooked) - 3} more" if len(hooked) > 3 else "")
        message = (
            f"workbench probe: WARNING: --fast computes the patterns from q and k in the kernel, which would "
            f"skip the hooks attached at {shown}; falling back to the reference path (patterns through "
            "hooks), which runs them. Remove those hooks to use the kernel."
        )
        print(message, file=sys.stderr, flush=True)
        return ReferenceSource(), f"reference (fallback: --fast asked for, hooks attached at {shown})"
    if torch.device(device).type != "cuda":
        message = (
            f"workbench probe: WARNING: --fast needs a CUDA device (the fused Triton kernel), but the "
            f"run is on {torch.device(device)}; falling back to the reference path (patterns through "
            "hooks). Results are the same, only slower."
        )
        print(message, file=sys.stderr, flush=True)
        return ReferenceSource(), "reference (fallback: --fast asked for, no CUDA device)"
    return KernelSource(), "kernel: rotated q, k through hooks -> workbench.kernels.probe_stats"


def _stream_hooks(model: HookedAOModel, activation: str) -> dict[str, tuple[int, str]]:
    return {
        hook_name(activation, layer, stream): (layer, stream)
        for layer in range(model.cfg.n_layers)
        for stream in model.stream_names
    }


def _select(layout: ProbeLayout, b: int) -> ProbeLayout:
    own = layout.row_own[b : b + 1] if layout.row_own is not None else None
    return ProbeLayout(layout.key_pos[b : b + 1], layout.row_ref[b : b + 1], own, layout.recency_offset)


def _chunked_pattern_stats(pattern: Tensor, layout: ProbeLayout, r: int, w: int) -> ProbeStats:
    """pattern_stats of one sequence, over chunks of rows so the float64 temporaries stay small."""
    _, n_heads, n_rows, n_keys = pattern.shape
    chunk = max(1, ROW_CHUNK // max(1, n_heads * n_keys))
    total = None
    for start in range(0, n_rows, chunk):
        stop = min(n_rows, start + chunk)
        own = layout.row_own[:, start:stop] if layout.row_own is not None else None
        stats = pattern_stats(
            pattern[:, :, start:stop], layout.key_pos, layout.row_ref[:, start:stop], own,
            recency_offset=layout.recency_offset, r=r, w=w, row_start=start, n_steps=n_rows,
        )
        total = stats if total is None else total + stats
    return total


# ---- per-sequence vectors and their moments ----------------------------------------------------


class Accumulator:
    """Sums over sequences of the per-head vectors u (FIELDS) and u u^T, for all rows (index 0)
    and each step bucket (1..), and of the histograms and their squares, on one device.

    Every operation is a fixed-order tensor op (no atomics), so the sums are bit-identical from run
    to run and whichever process computes a batch; none waits for the device."""

    def __init__(self, n_rows: int, n_heads: int, device: torch.device | str = "cpu"):
        self.n_rows, self.n_heads = n_rows, n_heads
        # [bucket, row] one-hot: u per bucket is one matrix product (index_add_ would use atomics on CUDA)
        self.bucket_onehot, self.visible, self.log2_visible = _row_constants(n_rows, torch.device(device))
        self.n_seq = 0
        self.sums: dict[str, Tensor] | None = None  # u_sum, u_outer, hist_sum, hist_sq, from the first batch
        self.has_step_sink = True

    def add_batch(self, stats: ProbeStats) -> None:
        """Add a batch of per-sequence statistics (`ProbeStats` with a leading [batch] dimension:
        `probe_stats(..., per_sequence=True)` or `ProbeStats.stack`)."""
        if stats.step_rows.ndim != 2 or stats.n_steps != self.n_rows or stats.n_heads != self.n_heads:
            raise ValueError(
                f"Accumulator of {self.n_heads} heads x {self.n_rows} rows takes per-sequence stats "
                f"([batch, ...]); got step_rows {list(stats.step_rows.shape)} and {stats.n_heads} heads"
            )
        u = self._vectors(stats)  # [B, group, head, field]
        zeros = torch.zeros_like(stats.sem_mass)
        hist = torch.stack(
            [stats.sem_mass, stats.sem_chance, stats.rec_mass, stats.rec_chance,
             stats.own_mass if stats.has_own else zeros, stats.own_chance if stats.has_own else zeros],
            dim=2,
        )  # [B, head, 6, bin]
        batch = {
            "u_sum": u.sum(0), "u_outer": torch.einsum("bghi,bghj->ghij", u, u),
            "hist_sum": hist.sum(0), "hist_sq": (hist * hist).sum(0),
        }
        self.sums = batch if self.sums is None else {k: v + batch[k] for k, v in self.sums.items()}
        self.has_step_sink = self.has_step_sink and stats.step_null_mass is not None
        self.n_seq += stats.step_rows.shape[0]

    def _vectors(self, stats: ProbeStats) -> Tensor:
        """u per (sequence, group, head): group 0 = all rows, group g >= 1 = step bucket g - 1."""
        step_rows = stats.step_rows  # [B, row]
        B, H, R = step_rows.shape[0], self.n_heads, self.n_rows
        probed = (step_rows > 0).double()
        per_head = lambda x: x[:, None].expand(B, H, R)  # noqa: E731  [B, row] -> [B, head, row]
        null = stats.step_null_mass if stats.step_null_mass is not None else torch.zeros_like(stats.step_entropy)
        per_row = torch.stack(  # [B, head, row, field], in FIELDS order (own_rows: set below)
            [per_head(step_rows), *stats.step_parts_mass.unbind(-1), *stats.step_parts_chance.unbind(-1), null,
             per_head(probed / self.visible), stats.step_entropy, per_head(probed * self.log2_visible),
             torch.zeros_like(stats.step_entropy)],
            dim=-1,
        )
        by_bucket = torch.einsum("gr,bhrf->bghf", self.bucket_onehot, per_row)
        # All rows: from the whole-sequence fields (the null mass is the semantic histogram's bin 0,
        # so it is known for every source).
        whole = by_bucket.sum(1)
        whole[..., F["sink_mass"]] = stats.sem_mass[..., 0]
        whole[..., F["own_rows"]] = stats.n_own_rows[:, None]
        return torch.cat([whole[:, None], by_bucket], dim=1)

    def to_dict(self, prefix: str, heads: slice = slice(None)) -> dict[str, Tensor]:
        """The sums (of some heads), keyed "{prefix}.{what}", on the accumulator's device (the
        counts on the CPU: making them on the device would wait for it)."""
        if self.sums is None:
            raise ValueError("Accumulator.to_dict: no batch was added")
        f64 = dict(dtype=torch.float64)
        return {
            f"{prefix}.n_seq": torch.tensor(float(self.n_seq), **f64),
            f"{prefix}.u_sum": self.sums["u_sum"][:, heads],
            f"{prefix}.u_outer": self.sums["u_outer"][:, heads],
            f"{prefix}.hist_sum": self.sums["hist_sum"][heads],
            f"{prefix}.hist_sq": self.sums["hist_sq"][heads],
            f"{prefix}.step_sink": torch.tensor(float(self.has_step_sink), **f64),
            f"{prefix}.n_batches": torch.tensor(1.0, **f64),
        }


# ---- pooled over the dataset -------------------------------------------------------------------


@dataclass
class Pooled:
    """One (layer, stream)'s statistics pooled over every sequence of a run."""

    layer: int
    stream: str
    n_seq: int
    bucket_starts: list[int]
    u_sum: Tensor  # [1 + buckets, head, field]
    u_outer: Tensor  # [1 + buckets, head, field, field]
    hist_sum: Tensor  # [head, 6, N_BINS]: (attention, chance) for semantic, recency, own
    hist_sq: Tensor
    has_step_sink: bool = True
    """Whether the null-key mass is known per step bucket (not from the kernel source)."""
    _covariances: dict[int | None, Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_heads(self) -> int:
        return self.u_sum.shape[1]

    @property
    def has_own(self) -> bool:
        return bool(self.u_sum[0, 0, F["own_rows"]] > 0)

    def total(self, field: str, group: int = 0) -> Tensor:
        """Sum over sequences of a FIELDS entry, per head."""
        return self.u_sum[group, :, F[field]]

    def estimate(self, fn: Callable[[Tensor], Tensor], group: int | None = 0) -> tuple[Tensor, Tensor]:
        """(value, 95% CI half-width) per head of fn(mean u), the CI by the delta method over
        sequences (NaN with fewer than two sequences). fn works row by row: [n, field] -> [n]
        (e.g. [head, field] -> [head]); its gradient comes in closed form for a `Ratio`, through
        autograd otherwise. group None: every group at once, [group, head]."""
        u_sum = self.u_sum if group is None else self.u_sum[group]
        u_outer = self.u_outer if group is None else self.u_outer[group]
        shape, k, n = u_sum.shape[:-1], u_sum.shape[-1], self.n_seq
        m = (u_sum / n).reshape(-1, k)
        if isinstance(fn, Ratio):
            value, grad = fn.value_and_grad(m)
        else:
            mean = m.clone().requires_grad_(True)
            with torch.enable_grad():
                value = fn(mean)
                grad = torch.autograd.grad(torch.nan_to_num(value).sum(), mean, allow_unused=True)[0]
            value = value.detach()
        if n < 2 or grad is None:
            return value.reshape(shape), torch.full(shape, math.nan, dtype=value.dtype)
        if group not in self._covariances:  # of u over sequences; the same for every fn
            self._covariances[group] = (u_outer.reshape(-1, k, k) / n - m[:, :, None] * m[:, None, :]) * n / (n - 1)
        var = (grad[:, None, :] @ self._covariances[group] @ grad[:, :, None]).reshape(-1) / n  # einsum's path search costs more
        return value.reshape(shape), (Z_95 * var.clamp(min=0).sqrt()).reshape(shape)

    def ratio(self, num: str, den: str, group: int = 0) -> tuple[Tensor, Tensor]:
        return self.estimate(Ratio.of([num], [den]), group)

    def histogram(self, which: str) -> tuple[Tensor, Tensor, Tensor, float]:
        """(attention, chance, CI) per head and bin, as mean mass per probed row, and the rows."""
        i = 2 * HISTS.index(which)
        rows = float(self.total("own_rows" if which == "own" else "rows")[0])
        n = self.n_seq
        attn, chance = self.hist_sum[:, i] / max(rows, 1), self.hist_sum[:, i + 1] / max(rows, 1)
        if n < 2:
            return attn, chance, torch.full_like(attn, math.nan), rows
        mean = self.hist_sum[:, i] / n
        var = (self.hist_sq[:, i] / n - mean**2).clamp(min=0) * n / (n - 1)
        ci = Z_95 * (var / n).sqrt() / max(rows / n, 1e-12)
        return attn, chance, ci, rows


def pool(sums: dict[str, Tensor], model: HookedAOModel, seq_len: int) -> dict[tuple[int, str], Pooled]:
    """The moment sums over every batch (`ProbeContext.map_batches(summed=True)`, whose fixed
    summation order makes a resumed run, or one on several processes, add up identically), per
    (layer, stream)."""
    out = {}
    for layer in range(model.cfg.n_layers):
        for stream in model.stream_names:
            prefix = f"L{layer}.{stream}"
            total = {k[len(prefix) + 1 :]: v for k, v in sums.items() if k.startswith(prefix + ".")}
            if not total:
                raise ValueError(f"statistics of {prefix} are missing from a saved batch; delete the run's .partial directory and run again.")
            n_rows = total["u_sum"].shape[0] - 1
            out[(layer, stream)] = Pooled(
                layer=layer,
                stream=stream,
                n_seq=int(total["n_seq"]),
                bucket_starts=step_buckets(_rows_of(stream, seq_len))[:n_rows],
                u_sum=total["u_sum"],
                u_outer=total["u_outer"],
                hist_sum=total["hist_sum"],
                hist_sq=total["hist_sq"],
                has_step_sink=bool(total["step_sink"] == total["n_batches"]),
            )
    return out


def _rows_of(stream: str, seq_len: int) -> int:
    return seq_len + 1 if stream == "content" else seq_len


# ---- per-head summary --------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadSummary:
    layer: int
    stream: str
    head: int
    index: float
    index_ci: float
    index_chance: float
    label: str
    s_only: float
    r_only: float
    both: float
    sink: float
    entropy: float
    lift_s_only: float
    lift_r_only: float
    lift_both: float


def index_fn(kind: str) -> Ratio:
    """The specialisation index of mean u, on masses ("mass") or chances ("chance")."""
    s, r = f"S_only_{kind}", f"R_only_{kind}"
    return Ratio(((s, 1.0), (r, -1.0)), ((s, 1.0), (r, 1.0)))


def summarise_heads(stats: dict[tuple[int, str], Pooled]) -> list[HeadSummary]:
    """Index, label and the numbers behind the label, for every (layer, stream, head)."""
    heads = []
    for (layer, stream), pooled in stats.items():
        index, index_ci = pooled.estimate(index_fn("mass"))
        index_chance, _ = pooled.estimate(index_fn("chance"))
        mean = {name: pooled.ratio(name, "rows")[0] for name in ("S_only_mass", "R_only_mass", "both_mass", "sink_mass", "entropy", "uniform_entropy")}
        lift = {p: pooled.ratio(f"{p}_mass", f"{p}_chance")[0] for p in ("S_only", "R_only", "both")}
        for h in range(pooled.n_heads):
            numbers = dict(
                index=float(index[h]),
                sink_mass=float(mean["sink_mass"][h]),
                lift_s_only=float(lift["S_only"][h]),
                lift_r_only=float(lift["R_only"][h]),
                lift_both=float(lift["both"][h]),
                entropy=float(mean["entropy"][h]),
                uniform_entropy=float(mean["uniform_entropy"][h]),
            )
            heads.append(  # noqa: PERF401
                HeadSummary(
                    layer=layer,
                    stream=stream,
                    head=h,
                    index=numbers["index"],
                    index_ci=float(index_ci[h]),
                    index_chance=float(index_chance[h]),
                    label=specialisation.label(**numbers),
                    s_only=float(mean["S_only_mass"][h]),
                    r_only=float(mean["R_only_mass"][h]),
                    both=float(mean["both_mass"][h]),
                    sink=numbers["sink_mass"],
                    entropy=numbers["entropy"],
                    lift_s_only=numbers["lift_s_only"],
                    lift_r_only=numbers["lift_r_only"],
                    lift_both=numbers["lift_both"],
                )
            )
    return heads



# ---- rows of the tidy table ----------------------------------------------------------------------


def scalar_rows(
    pooled: Pooled,
    metric: str,
    value: Callable[[Tensor], Tensor],
    chance: Callable[[Tensor], Tensor] | float | None = None,
    group: int = 0,
    x: int = -1,
) -> list[Row]:
    """One Row per head: value (with its CI) and chance, both functions of mean u (see FIELDS)."""
    v, ci, c = _estimates(pooled, value, chance, group)
    return _head_rows(pooled, metric, v, ci, c, group, x)


def step_rows(
    pooled: Pooled,
    metric: str,
    value: Callable[[Tensor], Tensor],
    chance: Callable[[Tensor], Tensor] | float | None = None,
) -> list[Row]:
    """`scalar_rows` for every step bucket with probed rows (x = the bucket's first slot index),
    from one estimate over all buckets."""
    v, ci, c = _estimates(pooled, value, chance, None)
    rows = []
    for group, start in enumerate(pooled.bucket_starts, start=1):
        if float(pooled.u_sum[group, 0, F["rows"]]) > 0:  # not the content stream's BOS row
            rows += _head_rows(pooled, metric, v[group], ci[group], c[group], group, start)
    return rows


def _estimates(pooled: Pooled, value, chance, group: int | None) -> tuple[Tensor, Tensor, Tensor]:
    v, ci = pooled.estimate(value, group)
    if callable(chance):
        c, _ = pooled.estimate(chance, group)
    else:
        c = torch.full_like(v, math.nan if chance is None else chance)
    return v, ci, c


def _head_rows(pooled: Pooled, metric: str, v: Tensor, ci: Tensor, c: Tensor, group: int, x: int) -> list[Row]:
    rows = pooled.u_sum[group, :, F["rows"]]
    return [  # tolist(): one conversion per tensor, not one per element
        Row(metric=metric, value=v_h, layer=pooled.layer, stream=pooled.stream, head=h, chance=c_h, ci=ci_h, n=int(n_h), x=x)
        for h, (v_h, c_h, ci_h, n_h) in enumerate(zip(v.tolist(), c.tolist(), ci.tolist(), rows.tolist()))
    ]


@dataclass(frozen=True)
class Ratio:
    """mean u -> (sum of c * u[field] over `num`) / (the same over `den`): every built-in metric is
    such a ratio of two linear forms, so its delta-method gradient has a closed form,
    (num_coefficients - value * den_coefficients) / denominator, with no autograd pass."""

    num: tuple[tuple[str, float], ...]
    den: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, num: list[str], den: list[str]) -> Ratio:
        return cls(tuple((f, 1.0) for f in num), tuple((f, 1.0) for f in den))

    def __call__(self, u: Tensor) -> Tensor:
        return _linear(self.num, u) / _linear(self.den, u)

    def value_and_grad(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """fn(u) and its gradient row by row, [n] and [n, field] (NaN where fn is not finite,
        like autograd through 0 / 0)."""
        den = _linear(self.den, u)
        value = _linear(self.num, u) / den
        a, b = (_coefficients(terms, u) for terms in (self.num, self.den))
        return value, (a - value[:, None] * b) / den[:, None]


def _linear(terms: tuple[tuple[str, float], ...], u: Tensor) -> Tensor:
    return sum(u[:, F[f]] * c if c != 1.0 else u[:, F[f]] for f, c in terms)


def _coefficients(terms: tuple[tuple[str, float], ...], u: Tensor) -> Tensor:
    out = [0.0] * u.shape[-1]
    for f, c in terms:
        out[F[f]] += c
    return torch.tensor(out, dtype=u.dtype, device=u.device)


def per_row(field: str) -> Ratio:
    """mean u -> a field's mass per probed row."""
    return Ratio.of([field], ["rows"])


def lift(part: str) -> Ratio:
    """mean u -> mass / chance of a part (or of a sum of parts, e.g. "S_only+both")."""
    names = part.split("+")
    return Ratio.of([f"{p}_mass" for p in names], [f"{p}_chance" for p in names])


def summed(fields: list[str]) -> Ratio:
    """mean u -> the sum of some fields per probed row."""
    return Ratio.of(fields, ["rows"])
