"""Attention statistics of a model over a dataset: per (layer, stream, head), pooled over sequences,
with what a confidence interval needs.

A statistics source (workbench/probing/sources.py) turns one batch into `ProbeStats`
(workbench/kernels/contract.py) per (layer, stream) and sequence, and an `Accumulator` here into
moment sums: each sequence's statistics become a small vector per head (below, `FIELDS`), for all
rows and for each step bucket (rows 0, 1, 2-3, 4-7, ... by slot index); a batch contributes the
sums of those vectors and of their outer products, plus sums and sums of squares of the
histograms (the joint semantic x recency one included). Pooled over batches these give every
metric as a ratio of means, and its 95% confidence interval over sequences by the delta method
(`Pooled.estimate`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from workbench.kernels.contract import N_BINS, ProbeStats
from workbench.models import HookedAOModel
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
    """Sums over sequences of the per-head vectors u (FIELDS) and u u^T, for all rows (index 0)
    and each step bucket (1..), and of the histograms and their squares, on one device.

    Every operation is a fixed-order tensor op (no atomics), so the sums are bit-identical from run
    to run and whichever process computes a batch; none waits for the device."""

    def __init__(self, n_rows: int, n_heads: int, device: torch.device | str = "cpu"):
        self.n_rows, self.n_heads = n_rows, n_heads
        # [bucket, row] one-hot: u per bucket is one matrix product (index_add_ would use atomics on CUDA)
        self.bucket_onehot = _bucket_onehot(n_rows, torch.device(device))
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
        joint = torch.stack([stats.joint_mass, stats.joint_chance], dim=2)  # [B, head, 2, bin, bin]
        batch = {
            "u_sum": u.sum(0), "u_outer": torch.einsum("bghi,bghj->ghij", u, u),
            "hist_sum": hist.sum(0), "hist_sq": (hist * hist).sum(0),
            "joint_sum": joint.sum(0), "joint_sq": (joint * joint).sum(0),
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
            f"{prefix}.joint_sum": self.sums["joint_sum"][heads],
            f"{prefix}.joint_sq": self.sums["joint_sq"][heads],
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
    joint_sum: Tensor  # [head, 2, N_BINS, N_BINS]: (attention, chance) per (semantic bin, recency bin)
    joint_sq: Tensor
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

    def joint(self) -> tuple[Tensor, Tensor, Tensor, float]:
        """(attention, chance, CI) per head and (semantic bin, recency bin), as mean mass per probed
        row, and the rows: [head, N_BINS, N_BINS] each."""
        rows, n = float(self.total("rows")[0]), self.n_seq
        attn, chance = self.joint_sum[:, 0] / max(rows, 1), self.joint_sum[:, 1] / max(rows, 1)
        if n < 2:
            return attn, chance, torch.full_like(attn, math.nan), rows
        mean = self.joint_sum[:, 0] / n
        var = (self.joint_sq[:, 0] / n - mean**2).clamp(min=0) * n / (n - 1)
        return attn, chance, Z_95 * (var / n).sqrt() / max(rows / n, 1e-12), rows


def pool(sums: dict[str, Tensor], model: HookedAOModel, seq_len: int) -> dict[tuple[int, str], Pooled]:
    """The moment sums over every batch (`ProbeContext.map_batches(summed=True)`, whose fixed
    summation order makes a resumed run, or one on several processes, add up identically), per
    (layer, stream)."""
    out = {}
    for layer in range(model.cfg.n_layers):
        for stream in model.stream_names:
            prefix = f"L{layer}.{stream}"
            total = {k[len(prefix) + 1 :]: v for k, v in sums.items() if k.startswith(prefix + ".")}
            if "joint_sum" not in total:  # none at all, or saved by a version without the joint histogram
                raise ValueError(f"statistics of {prefix} are missing from a saved batch (or it predates the joint "
                                 "histogram); delete the run's .partial directory and run again.")
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
                joint_sum=total["joint_sum"],
                joint_sq=total["joint_sq"],
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
