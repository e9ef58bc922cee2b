"""Attention statistics of a model over a dataset: per (layer, stream, head), pooled over sequences,
with what a confidence interval needs.

A statistics source (workbench/probing/sources.py) turns one batch into `ProbeStats`
(workbench/kernels/contract.py) per (layer, stream) and sequence, and an `Accumulator` here into
block sums: each sequence's statistics become a small vector per head (below, `FIELDS`), for all
rows and for each step bucket (rows 0, 1, 2-3, 4-7, ... by slot index), and a batch adds those
vectors and the histograms (the joint semantic x recency one included) into the sum of the block
each sequence belongs to. Pooled over batches these give every metric as a ratio of means, and its
95% confidence interval by the delta method over blocks (`Pooled.estimate`).

**The unit of the intervals is a block of contiguous windows.** Probed sequences are consecutive
windows of one text (`workbench.data.sequential_windows`), and neighbouring windows move together
(workbench/stats.py gives the measured correlations), so sequences are not independent units.
Sequence s of n belongs to block `workbench.stats.block_index(n, B)[s]`, B =
`workbench.stats.window_blocks(n)`: 16 contiguous blocks of near-equal length, or, with fewer than
32 sequences, one block per sequence (the run's metadata says which: `ci_unit`). Blocks are keyed
by the global sequence index, so the sums are the same whichever batch or process adds a
sequence, and the blocks are contiguous in window order by construction.

Why the delta method over blocks and not a t interval over per-block ratios: the value in the
table stays the pooled ratio of means (a mean of block ratios is a different, biased estimate
when blocks are short), and linearising f at the pooled mean makes each block's contribution
grad f . (block mean of u), a plain mean of the per-sequence linearised values; their blocked
standard error is then exactly `workbench.stats.blocked_mean`'s (`blocked_se`), with t on B - 1
degrees of freedom. With one block per sequence it is the usual delta method over sequences.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.kernels.contract import N_BINS, ProbeStats
from workbench.models import HookedAOModel
from workbench.probing import specialisation
from workbench.probing.table import Row
from workbench.stats import blocked_se, t_quantile

FIELDS = (
    "rows",  # probed rows
    "S_only_mass", "R_only_mass", "both_mass", "neither_mass",
    "S_only_chance", "R_only_chance", "both_chance", "neither_chance",
    "sink_mass",  # attention on the null key
    "sink_chance",  # 1 / |V|
    "entropy",  # bits
    "uniform_entropy",  # log2 |V|: the entropy of uniform attention
    "own_rows",  # probed rows with an own position (single stream)
    # the normalised excess (`excess`), over the rows where the set separates something (not empty,
    # not every non-null key): with n the row's non-null mass (1 - sink) and c' the set's chance
    # among the non-null keys, "S_nn_mass" = the mass on S_r, "S_nn_chance" = n c'_S and
    # "S_nn_max" = n (the most S_r can hold once the sink is set aside), 0 on other rows; so for R_w
    "S_nn_mass", "S_nn_chance", "S_nn_max", "R_nn_mass", "R_nn_chance", "R_nn_max",
)
F = {name: i for i, name in enumerate(FIELDS)}
HISTS = ("semantic", "recency", "own")  # hist tensor rows: (attention, chance) per histogram


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
def _bucket_onehot(n_rows: int, device: torch.device) -> Tensor:
    """[bucket, row] one-hot, float64, made on `device` (no copy to it)."""
    return torch.nn.functional.one_hot(bucket_of(n_rows, device), len(step_buckets(n_rows))).T.double()


# ---- per-sequence vectors and their moments ----------------------------------------------------


class Accumulator:
    """Per block of sequences (see the module doc), sums of the per-head vectors u (FIELDS), for all
    rows (index 0) and each step bucket (1..), of the histograms, and the sequence counts, on one
    device.

    Every operation is a fixed-order tensor op (no atomics), so the sums are bit-identical from run
    to run and whichever process computes a batch; none waits for the device."""

    def __init__(self, n_rows: int, n_heads: int, n_blocks: int, device: torch.device | str = "cpu"):
        self.n_rows, self.n_heads, self.n_blocks = n_rows, n_heads, n_blocks
        # [bucket, row] one-hot: u per bucket is one matrix product (index_add_ would use atomics on CUDA)
        self.bucket_onehot = _bucket_onehot(n_rows, torch.device(device))
        self.sums: dict[str, Tensor] | None = None  # n_block, u_block, hist_block, joint_block, from the first batch
        self.has_step_sink = True

    def add_batch(self, stats: ProbeStats, blocks: Tensor) -> None:
        """Add a batch of per-sequence statistics (`ProbeStats` with a leading [batch] dimension:
        `probe_stats(..., per_sequence=True)` or `ProbeStats.stack`); `blocks` [batch] (int64, on
        the statistics' device) is the block of each sequence (`workbench.stats.block_index`)."""
        if stats.step_rows.ndim != 2 or stats.n_steps != self.n_rows or stats.n_heads != self.n_heads:
            raise ValueError(
                f"Accumulator of {self.n_heads} heads x {self.n_rows} rows takes per-sequence stats "
                f"([batch, ...]); got step_rows {list(stats.step_rows.shape)} and {stats.n_heads} heads"
            )
        if blocks.shape != stats.step_rows.shape[:1]:
            raise ValueError(f"blocks must give one block per sequence ({stats.step_rows.shape[0]}), got shape {list(blocks.shape)}")
        if stats.joint_mass is None:
            raise ValueError("the probe tables need the joint semantic x recency histogram, which these stats lack "
                             "(probe_stats(..., joint=False), the v3 kernel); compute them with joint=True")
        u = self._vectors(stats)  # [B, group, head, field]
        zeros = torch.zeros_like(stats.sem_mass)
        hist = torch.stack(
            [stats.sem_mass, stats.sem_chance, stats.rec_mass, stats.rec_chance,
             stats.own_mass if stats.has_own else zeros, stats.own_chance if stats.has_own else zeros],
            dim=2,
        )  # [B, head, 6, bin]
        joint = torch.stack([stats.joint_mass, stats.joint_chance], dim=2)  # [B, head, 2, bin, bin]
        # [B, block] one-hot: the block sums are matrix products, like the buckets
        # (a comparison, not F.one_hot: nothing that could wait for the device inside a CUDA graph)
        onehot = (blocks[:, None] == torch.arange(self.n_blocks, device=blocks.device)).double()
        batch = {
            "n_block": onehot.sum(0), "u_block": torch.einsum("bk,bghf->kghf", onehot, u),
            "hist_block": torch.einsum("bk,bhsn->khsn", onehot, hist),
            "joint_block": torch.einsum("bk,bhsij->khsij", onehot, joint),
        }
        self.sums = batch if self.sums is None else {k: v + batch[k] for k, v in self.sums.items()}
        self.has_step_sink = self.has_step_sink and stats.step_null_mass is not None

    def _vectors(self, stats: ProbeStats) -> Tensor:
        """u per (sequence, group, head): group 0 = all rows, group g >= 1 = step bucket g - 1."""
        step_rows = stats.step_rows  # [B, row]
        B, H, R = step_rows.shape[0], self.n_heads, self.n_rows
        probed = (step_rows > 0).double()
        per_head = lambda x: x[:, None].expand(B, H, R)  # noqa: E731  [B, row] -> [B, head, row]
        null = stats.step_null_mass if stats.step_null_mass is not None else torch.zeros_like(stats.step_entropy)
        non_null, non_null_chance = per_head(probed) - null, per_head(probed) - stats.step_null_chance
        mass, chance = stats.step_parts_mass, stats.step_parts_chance
        excess = []
        for a, b in ((0, 2), (1, 2)):  # S_r = S only + both, R_w = R only + both
            set_chance = chance[..., a] + chance[..., b]
            relative = set_chance / non_null_chance.clamp(min=1e-300)
            # chances are counts / |V|: "every non-null key" is 1 - c' = 0, and "all but one" is
            # 1 - c' >= 1 / T, far above float32 rounding of the kernel's chances
            informative = (set_chance > 0) & (relative < 1 - 1e-6)
            zero = torch.zeros((), dtype=mass.dtype, device=mass.device)
            excess += [torch.where(informative, mass[..., a] + mass[..., b], zero),
                       torch.where(informative, non_null * relative, zero), torch.where(informative, non_null, zero)]
        per_row = torch.stack(  # [B, head, row, field], in FIELDS order (own_rows: set below)
            [per_head(step_rows), *stats.step_parts_mass.unbind(-1), *chance.unbind(-1), null,
             stats.step_null_chance, stats.step_entropy, stats.step_entropy_chance,
             torch.zeros_like(stats.step_entropy), *excess],
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
        flags on the CPU: making them on the device would wait for it)."""
        if self.sums is None:
            raise ValueError("Accumulator.to_dict: no batch was added")
        f64 = dict(dtype=torch.float64)
        return {
            f"{prefix}.n_block": self.sums["n_block"],
            f"{prefix}.u_block": self.sums["u_block"][:, :, heads],
            f"{prefix}.hist_block": self.sums["hist_block"][:, heads],
            f"{prefix}.joint_block": self.sums["joint_block"][:, heads],
            f"{prefix}.step_sink": torch.tensor(float(self.has_step_sink), **f64),
            f"{prefix}.n_batches": torch.tensor(1.0, **f64),
        }


# ---- pooled over the dataset -------------------------------------------------------------------


@dataclass
class Pooled:
    """One (layer, stream)'s statistics pooled over every sequence of a run, kept per block of
    contiguous sequences (the unit of the confidence intervals, see the module doc)."""

    layer: int
    stream: str
    bucket_starts: list[int]
    n_block: Tensor  # [block]: sequences per block
    u_block: Tensor  # [block, 1 + buckets, head, field]
    hist_block: Tensor  # [block, head, 6, N_BINS]: (attention, chance) for semantic, recency, own
    joint_block: Tensor  # [block, head, 2, N_BINS, N_BINS]: (attention, chance) per (semantic bin, recency bin)
    has_step_sink: bool = True
    """Whether the null-key mass is known per step bucket (not from the kernel source)."""

    @functools.cached_property
    def u_sum(self) -> Tensor:
        """[1 + buckets, head, field]: u summed over every sequence."""
        return self.u_block.sum(0)

    @property
    def n_seq(self) -> int:
        return int(self.n_block.sum())

    @property
    def n_blocks(self) -> int:
        return self.n_block.shape[0]

    @property
    def n_heads(self) -> int:
        return self.u_block.shape[2]

    @property
    def has_own(self) -> bool:
        return bool(self.u_sum[0, 0, F["own_rows"]] > 0)

    def total(self, field: str, group: int = 0) -> Tensor:
        """Sum over sequences of a FIELDS entry, per head."""
        return self.u_sum[group, :, F[field]]

    def estimate(self, fn: Callable[[Tensor], Tensor], group: int | None = 0) -> tuple[Tensor, Tensor]:
        """(value, 95% CI half-width) per head of fn(mean u), the CI by the delta method over blocks
        (module doc; NaN with fewer than two blocks). fn works row by row: [n, field] -> [n]
        (e.g. [head, field] -> [head]); its gradient comes in closed form for a `Ratio`, through
        autograd otherwise. group None: every group at once, [group, head]."""
        u_block = self.u_block if group is None else self.u_block[:, group]  # [block, ..., field]
        shape, k = u_block.shape[1:-1], u_block.shape[-1]
        m = (self.u_sum if group is None else self.u_sum[group]).reshape(-1, k) / self.n_seq
        if isinstance(fn, Ratio):
            value, grad = fn.value_and_grad(m)
        else:
            mean = m.clone().requires_grad_(True)
            with torch.enable_grad():
                value = fn(mean)
                grad = torch.autograd.grad(torch.nan_to_num(value).sum(), mean, allow_unused=True)[0]
            value = value.detach()
        if grad is None:
            return value.reshape(shape), torch.full(shape, math.nan, dtype=value.dtype)
        block_means = u_block.reshape(self.n_blocks, -1, k) / self.n_block.clamp(min=1)[:, None, None]
        linearised = (block_means * grad).sum(-1)  # [block, n]: grad f . (block mean of u)
        half = t_quantile(self.n_blocks - 1) * blocked_se(linearised, self.n_block)
        return value.reshape(shape), half.reshape(shape)

    def ratio(self, num: str, den: str, group: int = 0) -> tuple[Tensor, Tensor]:
        return self.estimate(Ratio.of([num], [den]), group)

    def histogram(self, which: str) -> tuple[Tensor, Tensor, Tensor, float]:
        """(attention, chance, CI) per head and bin, as mean mass per probed row, and the rows."""
        i = 2 * HISTS.index(which)
        rows = float(self.total("own_rows" if which == "own" else "rows")[0])
        return self._mass_per_row(self.hist_block[:, :, i], self.hist_block[:, :, i + 1], rows) + (rows,)

    def joint(self) -> tuple[Tensor, Tensor, Tensor, float]:
        """(attention, chance, CI) per head and (semantic bin, recency bin), as mean mass per probed
        row, and the rows: [head, N_BINS, N_BINS] each."""
        rows = float(self.total("rows")[0])
        return self._mass_per_row(self.joint_block[:, :, 0], self.joint_block[:, :, 1], rows) + (rows,)

    def _mass_per_row(self, attention: Tensor, chance: Tensor, rows: float) -> tuple[Tensor, Tensor, Tensor]:
        """(attention, chance, CI) per probed row from [block, ...] sums: the CI of the mean
        attention per sequence over blocks, divided by the (fixed) rows per sequence."""
        per_sequence = attention / self.n_block.clamp(min=1).reshape(-1, *[1] * (attention.ndim - 1))
        se = blocked_se(per_sequence, self.n_block)
        ci = t_quantile(self.n_blocks - 1) * se / max(rows / max(self.n_seq, 1), 1e-12)
        return attention.sum(0) / max(rows, 1), chance.sum(0) / max(rows, 1), ci


def pool(sums: dict[str, Tensor], model: HookedAOModel, seq_len: int) -> dict[tuple[int, str], Pooled]:
    """The block sums over every batch (`ProbeContext.map_batches(summed=True)`, whose fixed
    summation order makes a resumed run, or one on several processes, add up identically), per
    (layer, stream)."""
    out = {}
    for layer in range(model.cfg.n_layers):
        for stream in model.stream_names:
            prefix = f"L{layer}.{stream}"
            total = {k[len(prefix) + 1 :]: v for k, v in sums.items() if k.startswith(prefix + ".")}
            if "u_block" not in total:  # none at all, or saved by a version without block sums
                raise ValueError(f"statistics of {prefix} are missing from a saved batch (or it predates the "
                                 "block sums); delete the run's .partial directory and run again.")
            n_rows = total["u_block"].shape[1] - 1
            out[(layer, stream)] = Pooled(
                layer=layer,
                stream=stream,
                bucket_starts=step_buckets(_rows_of(stream, seq_len))[:n_rows],
                n_block=total["n_block"],
                u_block=total["u_block"],
                hist_block=total["hist_block"],
                joint_block=total["joint_block"],
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
    sink_flag: bool  # null-key mass >= specialisation.SINK_MASS, whatever the label of the rest
    semantic_excess: float
    semantic_excess_ci: float
    structural_excess: float
    structural_excess_ci: float
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


def excess(which: str) -> Ratio:
    """The normalised excess of the non-null mass on S_r ("S") or R_w ("R") over chance:
    (mass - chance) / (the most the set can hold - chance), pooled over rows where the set is not
    empty, with mass and chance taken among the non-null keys (the sink set aside, each row weighted
    by its non-null mass). 1: every row puts all its non-null mass on the set (a perfect head, at
    any r, w, T); 0: uniform attention; NaN: the set never separates anything. Rows where the set
    is empty or holds every non-null key (where every head that is not all sink fills it) are left
    out."""
    mass, chance, most = f"{which}_nn_mass", f"{which}_nn_chance", f"{which}_nn_max"
    return Ratio(((mass, 1.0), (chance, -1.0)), ((most, 1.0), (chance, -1.0)))


def summarise_heads(stats: dict[tuple[int, str], Pooled]) -> list[HeadSummary]:
    """Index, excesses, label and the numbers behind the label, for every (layer, stream, head)."""
    heads = []
    for (layer, stream), pooled in stats.items():
        index, index_ci = pooled.estimate(index_fn("mass"))
        index_chance, _ = pooled.estimate(index_fn("chance"))
        (e_s, e_s_ci), (e_r, e_r_ci) = pooled.estimate(excess("S")), pooled.estimate(excess("R"))
        names = ("S_only_mass", "R_only_mass", "both_mass", "sink_mass", "entropy", "uniform_entropy")
        mean = {name: pooled.ratio(name, "rows")[0].tolist() for name in names}
        lift = {p: pooled.ratio(f"{p}_mass", f"{p}_chance")[0].tolist() for p in ("S_only", "R_only", "both")}
        values = {k: v.tolist() for k, v in dict(index=index, index_ci=index_ci, index_chance=index_chance, e_s=e_s,
                                                 e_s_ci=e_s_ci, e_r=e_r, e_r_ci=e_r_ci).items()}
        for h in range(pooled.n_heads):
            sink = mean["sink_mass"][h]
            heads.append(  # noqa: PERF401
                HeadSummary(
                    layer=layer, stream=stream, head=h,
                    index=values["index"][h], index_ci=values["index_ci"][h], index_chance=values["index_chance"][h],
                    label=specialisation.label(
                        semantic_excess=values["e_s"][h], structural_excess=values["e_r"][h], sink_mass=sink,
                        entropy=mean["entropy"][h], uniform_entropy=mean["uniform_entropy"][h],
                    ),
                    sink_flag=sink >= specialisation.SINK_MASS,
                    semantic_excess=values["e_s"][h], semantic_excess_ci=values["e_s_ci"][h],
                    structural_excess=values["e_r"][h], structural_excess_ci=values["e_r_ci"][h],
                    s_only=mean["S_only_mass"][h], r_only=mean["R_only_mass"][h], both=mean["both_mass"][h],
                    sink=sink, entropy=mean["entropy"][h],
                    lift_s_only=lift["S_only"][h], lift_r_only=lift["R_only"][h], lift_both=lift["both"][h],
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
