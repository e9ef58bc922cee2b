"""Generation orders, input validation and slot <-> position coordinates.

Notation (docs/coordinates.md): `order[b, t]` = σ[t], the position generated at step t;
`rank[b, p]` = the step at which position p is generated. Inside the models every stream is laid
out in generation-order *slots*; this module says which position each slot stands for and converts
tensors between slot and sequence-position coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

Stream = Literal["content", "query", "main"]
STREAMS: tuple[str, ...] = ("content", "query", "main")


def left_to_right(batch: int, n_pos: int, device: torch.device | str | None = None) -> Tensor:
    """The identity order for every sequence: [batch, step]."""
    return torch.arange(n_pos, device=device).expand(batch, n_pos).clone()


def random_orders(
    batch: int,
    n_pos: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A fresh uniformly random permutation per sequence: [batch, step]."""
    keys = torch.rand(batch, n_pos, generator=generator, device=generator.device if generator else None)
    return keys.argsort(dim=-1).to(device)


def ranks(order: Int[Tensor, "batch step"]) -> Int[Tensor, "batch pos"]:
    """rank[b, p] = the step at which position p is generated (the inverse permutation)."""
    rank = torch.empty_like(order)
    steps = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return rank.scatter_(-1, order, steps)


def check_tokens(tokens: object, d_vocab: int, n_ctx: int) -> Tensor:
    """Validate a token batch and return it as int64 [batch, pos] (a 1-D input gains a batch dim)."""
    if not isinstance(tokens, Tensor):
        raise TypeError(
            f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}; "
            "use model.to_tokens(text) to turn text into ids."
        )
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(
            f"tokens must hold integer ids, got dtype {tokens.dtype}; convert with tokens.long()."
        )
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2:
        raise ValueError(
            f"tokens must have shape [batch, pos] or [pos], got {tuple(tokens.shape)}."
        )
    if tokens.shape[0] == 0:
        raise ValueError("tokens has a batch of 0 sequences; give at least one sequence.")
    n_pos = tokens.shape[1]
    if n_pos == 0:
        raise ValueError("tokens is empty (0 positions); give at least one token.")
    if n_pos > n_ctx:
        raise ValueError(
            f"sequence length {n_pos} is longer than the model's context n_ctx={n_ctx}; "
            f"split the text into windows of at most {n_ctx} tokens."
        )
    if tokens.numel():
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= d_vocab:
            bad = tokens[(tokens < 0) | (tokens >= d_vocab)]
            raise ValueError(
                f"token ids must lie in [0, {d_vocab}) (the model's vocabulary), found "
                f"{bad[:5].tolist()}{'...' if bad.numel() > 5 else ''}; was the text tokenised "
                "with this model's tokenizer (model.to_tokens)?"
            )
    return tokens.long()


def check_order(order: object, batch: int, n_pos: int, device: torch.device) -> Tensor:
    """Validate a generation order and return it as int64 [batch, step] on `device`.

    `None` means left-to-right; a 1-D order is shared by the whole batch.
    """
    if order is None:
        return left_to_right(batch, n_pos, device)
    if isinstance(order, str):
        raise TypeError(
            f"order must be None (left to right) or a permutation tensor [batch, step] / [step], got "
            f"the string {order!r}; for random orders use workbench.orders.random_orders(batch, n_pos, "
            "generator) (strings like 'random' are for model.generate)."
        )
    if not isinstance(order, Tensor):
        try:
            order = torch.as_tensor(order)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"order must be None or a permutation tensor, got {type(order).__name__} ({error}).") from None
    if order.is_floating_point() or order.dtype == torch.bool:
        raise TypeError(f"order must hold integer positions, got dtype {order.dtype}.")
    if order.ndim == 1:
        order = order.unsqueeze(0).expand(batch, -1)
    if order.shape != (batch, n_pos):
        raise ValueError(
            f"order must have shape [batch, step] = ({batch}, {n_pos}) or [step] = ({n_pos},) "
            f"to match the tokens, got {tuple(order.shape)}."
        )
    order = order.long()  # validated where it is: a CPU order costs the device nothing
    # a permutation: every value in range, every position hit (n values hitting n positions)
    hit = torch.zeros(order.shape, dtype=torch.bool, device=order.device).scatter_(-1, order.clamp(0, n_pos - 1), True)
    bad = ((order < 0) | (order >= n_pos)).any(dim=-1) | ~hit.all(dim=-1)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(
            f"order[{row}] = {order[row].tolist()[:16]}{'...' if n_pos > 16 else ''} is not a "
            f"permutation of 0..{n_pos - 1}: every position must appear exactly once. "
            "Build orders with workbench.orders.random_orders or torch.randperm."
        )
    return to_device(order, device)


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """`t` on `device`. A CPU tensor goes to a CUDA device through pinned memory, asynchronously:
    a plain `.to()` from pageable memory first waits for all the work queued on the device."""
    device = torch.device(device)
    if t.device.type == "cpu" and device.type == "cuda":
        return t.contiguous().pin_memory().to(device, non_blocking=True)
    return t.to(device)


def slot_positions(
    order: Int[Tensor, "batch step"], stream: Stream, axis: Literal["row", "key"] = "row"
) -> Int[Tensor, "batch slot"]:
    """The sequence position each slot of `stream` stands for; -1 for the BOS / null slot.

    Rows: content slot i holds position σ[i-1]; query row i and single-stream ("main") slot i
    predict position σ[i]. Keys: key j holds the token at σ[j-1] (key 0 is the null key).
    """
    _check_stream(stream)
    bos = torch.full_like(order[:, :1], -1)
    if axis == "key":
        keys = torch.cat([bos, order], dim=1)
        return keys if stream != "main" else keys[:, :-1]
    if axis != "row":
        raise ValueError(f"axis must be 'row' or 'key', got {axis!r}.")
    return torch.cat([bos, order], dim=1) if stream == "content" else order


def slots_to_positions(
    x: Tensor,
    order: Int[Tensor, "batch step"],
    stream: Stream,
    axis: Literal["row", "key"] = "row",
    dim: int = 1,
) -> Tensor:
    """Move dimension `dim` of `x` from slot to sequence-position coordinates.

    The BOS / null slot has no position and is dropped (read it at slot 0 if needed); positions
    that no slot stands for (the last key of a single stream) are filled with zeros. A StreamView's
    tensors are accepted too: a two-stream axis of T+1 slots trimmed to T (the view drops the last
    slot, whose position then reads zeros).
    """
    slots = slot_positions(order, stream, axis)
    dim = dim % x.ndim
    n_slots, n_pos = slots.shape[1], order.shape[1]
    if x.shape[0] == slots.shape[0] and x.shape[dim] == n_pos and n_slots == n_pos + 1:  # view-shaped
        x = torch.cat([x, x.new_zeros(*x.shape[:dim], 1, *x.shape[dim + 1 :])], dim=dim)
    if x.shape[dim] != n_slots or x.shape[0] != slots.shape[0]:
        accepted = f"{n_slots}" + (f" (or {n_pos}, a StreamView's)" if n_slots == n_pos + 1 else "")
        raise ValueError(
            f"x has {x.shape[dim]} slots along dim {dim} and batch {x.shape[0]}, but the "
            f"{stream} stream's {axis}s have {accepted} slots for batch {slots.shape[0]}; "
            "is dim the slot axis, and the order the one the tensor was made under?"
        )
    if axis == "key" or stream == "content":  # the BOS / null slot is slot 0 (see slot_positions)
        x, slots = x.narrow(dim, 1, x.shape[dim] - 1), slots[:, 1:]
    index = _broadcast_index(slots, x, dim)
    out = x.new_zeros(*x.shape[:dim], n_pos, *x.shape[dim + 1 :])
    return out.scatter(dim, index, x)


def positions_to_slots(
    x: Tensor,
    order: Int[Tensor, "batch step"],
    stream: Stream,
    axis: Literal["row", "key"] = "row",
    dim: int = 1,
) -> Tensor:
    """Move dimension `dim` of `x` from sequence-position to slot coordinates (BOS slot = 0)."""
    slots = slot_positions(order, stream, axis)
    dim = dim % x.ndim
    index = _broadcast_index(slots.clamp(min=0), x, dim, n_out=slots.shape[1])
    out = x.gather(dim, index)
    bos = (slots < 0).view(slots.shape[0], *([1] * (dim - 1)), slots.shape[1], *([1] * (x.ndim - dim - 1)))
    return out.masked_fill(bos, 0)


@dataclass(frozen=True)
class ProbeLayout:
    """What the probe contract needs to know about one stream's attention (docs/coordinates.md)."""

    key_pos: Int[Tensor, "batch key"]
    """Position of each key; -1 for the null key."""
    row_ref: Int[Tensor, "batch row"]
    """Reference position of each row; -1 for rows that are not probed."""
    row_own: Int[Tensor, "batch row"] | None
    """Own position of single-stream rows (-1 for BOS); None for the two-stream streams."""
    recency_offset: int
    """recency(row i, key j) = i - j + recency_offset."""


def probe_layout(order: Int[Tensor, "batch step"], stream: Stream) -> ProbeLayout:
    key_pos = slot_positions(order, stream, "key")
    row_ref = slot_positions(order, stream, "row")
    if stream == "main":
        return ProbeLayout(key_pos, row_ref, row_own=key_pos, recency_offset=0)
    return ProbeLayout(key_pos, row_ref, None, recency_offset=1 if stream == "query" else 0)


def _broadcast_index(slots: Tensor, x: Tensor, dim: int, n_out: int | None = None) -> Tensor:
    shape = [1] * x.ndim
    shape[0], shape[dim] = slots.shape[0], slots.shape[1]
    expand = list(x.shape)
    expand[dim] = slots.shape[1] if n_out is None else n_out
    return slots.view(shape).expand(expand)


def _check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}.")
