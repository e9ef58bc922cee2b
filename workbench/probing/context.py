"""What a probe sees: the model, the data, the settings, and a resumable map over batches.

Everything a probe computes per batch goes through `ctx.map_batches(key, fn)`: each batch's result
(a dict of tensors) is written atomically to `<run dir>/.partial/<key>/<batch>.safetensors` while
the next batch runs (one batch in flight, so the host never waits for the device in between), and
a resumed run loads the batches already done instead of recomputing them. Results are then combined in batch order (sums: in fixed blocks of batches, then the blocks
by a fixed pairwise tree), so a run killed and resumed gives exactly the table of an uninterrupted
run, with any number of processes.

Every random draw is seeded from (seed, purpose, index) by a hash, never from a shared stream, so
what sequence s sees does not depend on the batch size, on which probes run, or on a resume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor
from tqdm.auto import tqdm

from workbench.models import HookedAOModel
from workbench.results_io import write_bytes_atomic
from workbench.stats import block_index, window_blocks

if TYPE_CHECKING:
    from workbench.probing.engine import Pooled
    from workbench.probing.sources import StatsSource

BatchFn = Callable[[int, Tensor, Tensor], dict[str, Tensor]]


@dataclass
class ProbeSettings:
    """The knobs every probe can read (the runner fills them from the command line)."""

    r: int = 4
    """Radius of the semantic set S_r (keys with |pos - p_ref| <= r)."""
    w: int = 4
    """Window of the structural set R_w (keys with recency <= w)."""
    seed: int = 0
    batch_size: int = 8
    causal_sequences: int = 32
    """Sequences the causal probes (ablation, knockout) use: each costs many forward passes."""
    heads: list[tuple[int, str, int]] | None = None
    """(layer, stream, head) the knockout probe targets; None: the labelled heads (max_heads each)."""
    max_heads: int = 2
    """Without `heads`: knock out at most this many semantic and structural heads per stream."""
    orders: str = "random"
    """Generation orders of the probed sequences: "random" (one per sequence), "left_to_right", or
    "given" (a tensor passed to ProbeContext)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Options for user probes (`--option key=value`)."""


class ProbeContext:
    """The model, the windows, the settings and the resumable batch map (see the module doc)."""

    def __init__(
        self,
        model: HookedAOModel,
        windows: Tensor,
        settings: ProbeSettings,
        *,
        checkpoint: str = "model",
        source: StatsSource | None = None,
        workdir: Path | None = None,
        progress: bool = True,
        on_shard: Callable[[str, int], None] | None = None,
        orders: Tensor | None = None,
    ):
        from workbench.probing.sources import ReferenceSource

        if windows.ndim != 2 or windows.shape[0] == 0:
            raise ValueError(f"windows must be a non-empty [sequence, pos] tensor, got {tuple(windows.shape)}.")
        self.model = model
        self.windows = windows
        self.settings = settings
        self.checkpoint = checkpoint
        self.source = source or ReferenceSource()
        self.workdir = workdir
        self.progress = progress
        self.on_shard = on_shard
        self.orders = orders  # [sequence, pos] given by the caller (settings.orders == "given")
        self.device = next(model.parameters()).device

    # ---- data ------------------------------------------------------------------------------

    @property
    def n_sequences(self) -> int:
        return self.windows.shape[0]

    @property
    def seq_len(self) -> int:
        return self.windows.shape[1]

    def order(self, index: int) -> Tensor:
        """The generation order of sequence `index` (seeded by (seed, index) alone, or given)."""
        if self.orders is not None:
            return self.orders[index]
        if self.settings.orders == "left_to_right":
            return torch.arange(self.seq_len)
        return torch.randperm(self.seq_len, generator=self.generator("order", index))

    def batch(self, index: int, n_sequences: int | None = None) -> tuple[Tensor, Tensor]:
        """(tokens, order) of batch `index`, both [batch, pos], on the CPU: the model checks them
        there and moves them itself, without waiting for the device (`workbench.orders.to_device`)."""
        stop = min((index + 1) * self.settings.batch_size, n_sequences or self.n_sequences)
        start = index * self.settings.batch_size
        order = torch.stack([self.order(s) for s in range(start, stop)])
        return self.windows[start:stop], order

    def n_batches(self, n_sequences: int | None = None) -> int:
        n = min(n_sequences or self.n_sequences, self.n_sequences)
        return -(-n // self.settings.batch_size)

    def generator(self, *purpose: object) -> torch.Generator:
        """A CPU generator seeded from (seed, *purpose): independent streams by purpose."""
        return torch.Generator().manual_seed(stable_seed(self.settings.seed, *purpose))

    # ---- the resumable batch map -----------------------------------------------------------

    def map_batches(
        self, key: str, fn: BatchFn, n_sequences: int | None = None, desc: str | None = None, summed: bool = False
    ) -> list[dict[str, Tensor]]:
        """[fn(i, tokens, order) for each batch i], each result saved (and on resume, loaded).
        tokens and order come on the CPU (`batch`); fn's tensors may be on any device.

        summed=True: the results are sums, and what comes back is their total, [total]: the batches
        are summed in blocks of consecutive batches (`sum_block`), in batch order, and the blocks by
        a fixed pairwise tree (`tree_sum`), so the total has the same bits on any number of processes.

        Under torch.distributed (workbench/probing/distributed.py) this rank runs only its share of
        the batches (i % world_size == rank; with summed, a contiguous run of blocks) and one
        exchange then gives every rank all of them (with summed, only the roots of the tree's
        subtrees each rank holds: a few sums per rank), in order."""
        from workbench.probing import distributed

        n = self.n_batches(n_sequences)
        block = sum_block(n) if summed else 1
        n_blocks = -(-n // block)
        rank, world = distributed.rank(), distributed.world_size()
        if summed:  # a contiguous run of blocks: whole subtrees of the pairwise tree
            first, stop = rank * n_blocks // world, (rank + 1) * n_blocks // world
            mine = [i for i in range(n) if first <= i // block < stop]
        else:
            mine = [i for i in range(n) if i % world == rank]
        shard_dir = self.workdir / key if self.workdir is not None else None
        saved = {i: shard_dir / f"{i:05d}.safetensors" for i in mine} if shard_dir is not None else {}
        done = sum(path.is_file() for path in saved.values())
        show = self.progress and distributed.is_main() and done < len(mine)
        bar = tqdm(total=len(mine), initial=done, desc=desc or key, disable=not show, leave=False)
        results: dict[int, dict[str, Tensor]] = {}  # batch (with summed: block) -> result

        def finish(i: int, job: HostCopy | dict[str, Tensor]) -> None:  # called in batch order
            if isinstance(job, HostCopy):
                out = job.result()
                if i in saved:
                    write_bytes_atomic(saved[i], save_tensors(out))
                    if self.on_shard is not None:
                        self.on_shard(key, i)
                bar.update(1)
            else:
                out = job
            j = i // block
            results[j] = out if j not in results else {k: v + out[k] for k, v in results[j].items()}

        # One batch in flight: batch i's results travel to the host (and are saved) while batch
        # i + 1 is queued on the device, so the host never waits for the device between batches.
        pending: tuple[int, HostCopy | dict[str, Tensor]] | None = None
        with torch.no_grad():
            for i in mine:
                try:
                    if i in saved and saved[i].is_file():
                        job = load_tensors(saved[i].read_bytes())
                    else:
                        job = HostCopy(fn(i, *self.batch(i, n_sequences)))
                finally:  # the batch before is kept even when this one fails
                    if pending is not None:
                        finish(*pending)
                        pending = None
                pending = (i, job)
            if pending is not None:
                finish(*pending)
        bar.close()
        if not summed:
            if world > 1:
                results = distributed.gather(results)
            return [results[i] for i in range(n)]
        nodes = {span: tree_sum(results, n_blocks, span) for span in dyadic_cover(first, stop)}
        if world > 1:
            nodes = distributed.gather(nodes)
        return [tree_sum(nodes, n_blocks)]

    # ---- pooled attention statistics -------------------------------------------------------

    @cached_property
    def stats(self) -> dict[tuple[int, str], Pooled]:
        """Attention statistics pooled over every sequence, per (layer, stream), kept per block of
        contiguous windows for the confidence intervals (workbench/probing/engine.py)."""
        from workbench.probing.engine import pool

        s = self.settings
        n_blocks = window_blocks(self.n_sequences)
        block_of = block_index(self.n_sequences, n_blocks)  # by global sequence index: contiguous windows

        def collect(i: int, tokens: Tensor, order: Tensor) -> dict[str, Tensor]:
            blocks = block_of[i * s.batch_size : i * s.batch_size + tokens.shape[0]]
            return self.source.collect(self.model, tokens, order, r=s.r, w=s.w, blocks=blocks, n_blocks=n_blocks)

        [sums] = self.map_batches(
            f"stats_{self.source.name}", collect, desc=f"attention statistics ({self.source.name})",
            summed=True,  # block sums: ranks exchange a few subtree sums, not every batch's
        )
        return pool(sums, self.model, self.seq_len)

    @cached_property
    def heads(self):
        """Per-head summary (index, label, masses...) as a list of HeadSummary, from `stats`."""
        from workbench.probing.engine import summarise_heads

        return summarise_heads(self.stats)


def sum_block(n_batches: int) -> int:
    """Batches per block of a summed batch map: at most 64 blocks (the leaves of `tree_sum`), and a
    function of the number of batches alone, so that the sums do not depend on the world size."""
    return max(1, -(-n_batches // 64))


Sums = dict[str, Tensor]


def tree_sum(known: dict, n_leaves: int, span: tuple[int, int] | None = None) -> Sums:
    """The sum of leaves [lo, hi) (default: all) by a fixed pairwise tree over leaf indices: node
    [lo, hi) (aligned, hi - lo a power of two) = node [lo, mid) + node [mid, hi), a right half
    past the last leaf left out. `known` maps leaf index b (or a node (lo, hi) already summed this
    way) to its sums. Every node has the same bits whoever sums it, so ranks holding contiguous
    runs of leaves can each sum their subtrees (`dyadic_cover`) and exchange only those."""
    lo, hi = span if span is not None else (0, 1 << max(0, n_leaves - 1).bit_length())
    if (lo, hi) in known:
        return known[(lo, hi)]
    if hi - lo == 1:
        return known[lo]
    mid = (lo + hi) // 2
    left = tree_sum(known, n_leaves, (lo, mid))
    if mid >= n_leaves:
        return left
    right = tree_sum(known, n_leaves, (mid, hi))
    return {k: v + right[k] for k, v in left.items()}


def dyadic_cover(start: int, stop: int) -> list[tuple[int, int]]:
    """The largest aligned power-of-two intervals [lo, lo + 2^k) that tile [start, stop): the
    tree nodes a rank holding leaves start..stop-1 sums whole."""
    spans = []
    while start < stop:
        size = start & -start or 1 << (stop - start).bit_length()
        while start + size > stop:
            size //= 2
        spans.append((start, start + size))
        start += size
    return spans


class HostCopy:
    """A batch's result (a dict of tensors) on its way to the host: one device-to-host copy per
    (device, dtype), into pinned memory, started at once without waiting for the device.
    `result()` waits for the copies and gives contiguous CPU tensors, in the result's key order."""

    def __init__(self, result: dict[str, Tensor]):
        self.names = list(result)
        self.groups: list[tuple[list[str], list[Tensor], Tensor, torch.cuda.Event | None]] = []
        by_kind: dict[tuple[torch.device, torch.dtype], list[str]] = {}
        for name, t in result.items():
            by_kind.setdefault((t.device, t.dtype), []).append(name)
        for (device, _), names in by_kind.items():
            tensors = [result[n].detach() for n in names]
            flat = torch.cat([t.reshape(-1) for t in tensors])
            if device.type != "cuda":
                self.groups.append((names, tensors, flat, None))
                continue
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.groups.append((names, tensors, host, event))

    def result(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for names, tensors, flat, event in self.groups:
            if event is not None:
                event.synchronize()
                flat = flat.clone()  # out of pinned memory, which goes back to its cache for reuse
            for name, t, part in zip(names, tensors, flat.split([t.numel() for t in tensors])):
                out[name] = part.view(t.shape)
        return {name: out[name] for name in self.names}


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from `parts`, the same on every machine and run (unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
