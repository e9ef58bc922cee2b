"""Statistics sources: one batch of a model -> the block sums of `Accumulator` (workbench/probing/engine.py)
per (layer, stream). `blocks` says which block (of contiguous windows: the unit of the confidence
intervals) each sequence of the batch belongs to, and `n_blocks` how many the run has; without
them every sequence is its own block (a batch that is the whole run).

- `ReferenceSource`: the patterns themselves, read at `hook_pattern` and reduced by
  `workbench.kernels.pattern_stats` (the definition) inside the hook, so no more than one layer's
  pattern is alive at a time.
- `KernelSource` (`--fast`): rotated queries and keys captured at `hook_rot_q` / `hook_rot_k`
  (`hook_q` / `hook_k` for sigma_gpt, which has no rotation; the forward stops once the last of
  them is captured, as nothing after it is needed) and reduced by the fused Triton kernel
  `workbench.kernels.probe_stats`, never materialising a pattern: one call (three launches) per
  stream and batch (all layers side by side on the head axis), per-sequence outputs that stay on
  the device, and the block sums accumulated there too (replayed as a CUDA graph once a batch
  shape repeats), so nothing waits for the GPU; the batch map copies the sums to the host while
  the next batch runs. Needs CUDA, and no hooks past q and k (`score_hooks`): `make_source` falls
  back to the reference with a warning line otherwise.

Both sources give the same block sums (within float32 rounding of the scores), per-step null-key
mass included, so `--fast` writes the reference's table. In XLNet only row 0 sees the null slot
(`sees_null`); both sources pass that to the contract.
"""

from __future__ import annotations

import functools
import sys
from typing import Protocol

import torch
from torch import Tensor

from workbench.hook_names import hook_name
from workbench.kernels.contract import ProbeStats, pattern_stats
from workbench.models import HookedAOModel
from workbench.orders import ProbeLayout, probe_layout, to_device
from workbench.probing.engine import Accumulator

ROW_CHUNK = 1 << 21  # pattern entries per pattern_stats call (bounds the float64 temporaries)


def sees_null(variant: str, row_ref: Tensor) -> Tensor | None:
    """[batch, row] bool: which rows see the null key. None (every row) except in XLNet, where only
    row 0 sees its null slot (docs/xlnet.md)."""
    if variant != "xlnet":
        return None
    return (torch.arange(row_ref.shape[1], device=row_ref.device) == 0).expand(row_ref.shape)


class StatsSource(Protocol):
    name: str

    def collect(self, model: HookedAOModel, tokens: Tensor, order: Tensor, *, r: int, w: int,
                blocks: Tensor | None = None, n_blocks: int | None = None) -> dict[str, Tensor]:
        """One batch's block sums, keyed "L{layer}.{stream}.{what}" (see `Accumulator`)."""
        ...


class ReferenceSource:
    """Patterns through `hook_pattern` -> `pattern_stats`, one sequence at a time."""

    name = "reference"

    def collect(self, model: HookedAOModel, tokens: Tensor, order: Tensor, *, r: int, w: int,
                blocks: Tensor | None = None, n_blocks: int | None = None) -> dict[str, Tensor]:
        device = next(model.parameters()).device
        blocks, n_blocks = _blocks(tokens.shape[0], blocks, n_blocks)
        blocks = to_device(blocks, device)
        layouts = {s: probe_layout(to_device(order, device), s) for s in model.stream_names}
        names = _stream_hooks(model, "pattern")
        out: dict[str, Tensor] = {}

        def hook(pattern: Tensor, hook) -> None:  # [batch, head, row, key]
            layer, stream = names[hook.name]
            layout = layouts[stream]
            acc = Accumulator(layout.row_ref.shape[1], pattern.shape[1], n_blocks, pattern.device)
            seen = sees_null(model.cfg.variant, layout.row_ref)
            acc.add_batch(ProbeStats.stack([
                _chunked_pattern_stats(pattern[b : b + 1], _select(layout, b), r, w, None if seen is None else seen[b : b + 1])
                for b in range(pattern.shape[0])
            ]), blocks)
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

    def collect(self, model: HookedAOModel, tokens: Tensor, order: Tensor, *, r: int, w: int,
                blocks: Tensor | None = None, n_blocks: int | None = None) -> dict[str, Tensor]:
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
        device = next(model.parameters()).device
        order = to_device(order, device)
        blocks, n_blocks = _blocks(tokens.shape[0], blocks, n_blocks)
        blocks = to_device(blocks, device)
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
            settings = dict(recency_offset=layout.recency_offset, r=r, w=w, scale=base, max_distance=max_distance,
                            variant=model.cfg.variant, n_blocks=n_blocks)
            acc = self._sums(stream, qs, ks, blocks, layout, settings)
            n_heads = acc.n_heads // n_layers
            for layer in range(n_layers):
                out.update(acc.to_dict(f"L{layer}.{stream}", heads=slice(layer * n_heads, (layer + 1) * n_heads)))
        return out  # still on the device: map_batches copies it to the host while the next batch runs


    def _sums(self, stream: str, qs: list[Tensor], ks: list[Tensor], blocks: Tensor, layout: ProbeLayout,
              settings: dict) -> Accumulator:
        """One stream's block sums: eager, or by a CUDA graph for a call signature seen before."""
        # the graph's inputs besides q and k: the blocks, then the positions
        inputs = [blocks, layout.key_pos, layout.row_ref] + ([layout.row_own] if layout.row_own is not None else [])
        key = (stream, tuple(settings.items()), *((t.shape, t.dtype, t.device) for t in [*qs, *ks, *inputs]))
        graphed = self._seen.get(key)
        if graphed is not None:
            return graphed(qs, ks, inputs)
        q, k = torch.cat(qs, dim=1), torch.cat(ks, dim=1)
        if self.graphs and q.is_cuda and key in self._seen:  # the second time: capture
            self._seen[key] = _GraphedSums(q, k, inputs, settings)
            return self._seen[key](qs, ks, inputs)
        self._seen[key] = None
        return _stream_sums(q, k, *inputs, **settings)


def _stream_sums(q: Tensor, k: Tensor, blocks: Tensor, key_pos: Tensor, row_ref: Tensor, row_own: Tensor | None = None,
                 *, variant: str, n_blocks: int, **settings) -> Accumulator:
    from workbench.kernels import probe_stats

    acc = Accumulator(row_ref.shape[1], q.shape[1], n_blocks, q.device)
    acc.add_batch(probe_stats(q, k, key_pos, row_ref, row_own=row_own, sees_null=sees_null(variant, row_ref),
                              per_sequence=True, **settings), blocks)
    return acc


class _GraphedSums:
    """`_stream_sums` captured in a CUDA graph for one call signature. A call copies q and k (the
    concatenation the eager path does anyway) and the inputs into the graph's input buffers and
    replays it; the returned accumulator's sums are the graph's outputs, overwritten by the next
    replay (map_batches copies them to the host first: the copy is queued before it)."""

    def __init__(self, q: Tensor, k: Tensor, inputs: list[Tensor], settings: dict):
        self.q, self.k, self.inputs = q, k, [p.clone() for p in inputs]
        side = torch.cuda.Stream()  # warm-up off the capture, as torch.cuda.graph asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            _stream_sums(self.q, self.k, *self.inputs, **settings)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.acc = _stream_sums(self.q, self.k, *self.inputs, **settings)

    def __call__(self, qs: list[Tensor], ks: list[Tensor], inputs: list[Tensor]) -> Accumulator:
        torch.cat(qs, dim=1, out=self.q)
        torch.cat(ks, dim=1, out=self.k)
        for buffer, p in zip(self.inputs, inputs):
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


def _blocks(batch: int, blocks: Tensor | None, n_blocks: int | None) -> tuple[Tensor, int]:
    """(the block of each sequence, the run's number of blocks); default: a block per sequence."""
    if blocks is None:
        return torch.arange(batch), batch
    if n_blocks is None or blocks.shape != (batch,):
        raise ValueError(f"blocks must be [batch] = [{batch}] with n_blocks given, got shape {list(blocks.shape)}, n_blocks={n_blocks}")
    return blocks, n_blocks


def _stream_hooks(model: HookedAOModel, activation: str) -> dict[str, tuple[int, str]]:
    return {
        hook_name(activation, layer, stream): (layer, stream)
        for layer in range(model.cfg.n_layers)
        for stream in model.stream_names
    }


def _select(layout: ProbeLayout, b: int) -> ProbeLayout:
    own = layout.row_own[b : b + 1] if layout.row_own is not None else None
    return ProbeLayout(layout.key_pos[b : b + 1], layout.row_ref[b : b + 1], own, layout.recency_offset)


def _chunked_pattern_stats(pattern: Tensor, layout: ProbeLayout, r: int, w: int, seen: Tensor | None) -> ProbeStats:
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
            sees_null=None if seen is None else seen[:, start:stop],
        )
        total = stats if total is None else total + stats
    return total
