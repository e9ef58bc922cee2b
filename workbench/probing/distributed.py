"""Probe runs over several processes: `torchrun --nproc_per_node=N -m workbench.cli probe ...`.

Under torchrun (WORLD_SIZE > 1 in the environment) `run_probes` joins a process group (NCCL on
CUDA, gloo on CPU) and every rank takes one GPU (cuda:LOCAL_RANK). Batches are dealt round-robin
(summed maps: a contiguous run of blocks per rank, `ProbeContext.map_batches`): rank r computes
(or, resuming, loads) its batches and saves each as `.partial/<key>/<i>.safetensors`, keyed by the
global batch index, exactly as a one-process run names them. One exchange per `map_batches` call
(`gather`) then hands every rank all batches, in batch order (summed maps: the sums of the pairwise
tree's subtrees each rank holds), so the pooled statistics -- and the table -- are those of a
one-process run; rank 0 alone writes the table and the metadata. A killed run resumes with any
number of processes.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    d = _dist()
    if d:
        d.barrier()


def init_from_env(device: torch.device) -> tuple[torch.device, bool]:
    """Join the process group torchrun describes, if any: (this rank's device, whether we joined).

    A CUDA run uses cuda:LOCAL_RANK and NCCL; a CPU run gloo. Without torchrun (or with one
    process) nothing happens.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device, False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    return device, True


def finish(joined: bool) -> None:
    """Leave the process group if `init_from_env` joined it."""
    d = _dist()
    if joined and d:  # no barrier: after a failure on one rank the others must not wait for it
        d.destroy_process_group()


def gather(local: dict[Any, dict[str, Tensor]]) -> dict[Any, dict[str, Tensor]]:
    """Every rank's {key (a batch index, or a tree node): {name: CPU tensor}}, merged (the one
    exchange per batch map).

    The layouts (names, dtypes, shapes) travel as Python objects; the values as one byte buffer
    per rank through a single all_gather: pickling thousands of tensors was slower than the
    probe run it served."""
    d = _dist()
    if not d:
        return local
    world = d.get_world_size()
    mine = sorted(local)
    layout = [(i, [(name, t.dtype, tuple(t.shape)) for name, t in local[i].items()]) for i in mine]
    layouts: list[Any] = [None] * world
    d.all_gather_object(layouts, layout)
    chunks = [_bytes(t) for i in mine for t in local[i].values()]
    blob = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)
    sizes = [sum(_span(dtype, shape) for _, entries in lay for _, dtype, shape in entries) for lay in layouts]
    device = torch.device("cuda", torch.cuda.current_device()) if d.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros(max(sizes), dtype=torch.uint8, device=device)
    padded[: blob.numel()] = blob.to(device)
    received = [torch.empty_like(padded) for _ in range(world)]
    d.all_gather(received, padded)
    merged: dict[int, dict[str, Tensor]] = {}
    for lay, buffer in zip(layouts, received):
        host, offset = buffer.cpu(), 0
        for i, entries in lay:
            result = {}
            for name, dtype, shape in entries:
                n = math.prod(shape) * dtype.itemsize
                # every tensor starts at a multiple of 8 bytes, so this is an aligned view, no copy
                result[name] = host[offset : offset + n].view(dtype).reshape(shape)
                offset += _span(dtype, shape)
            merged[i] = result
    return merged


def _span(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    """Bytes a tensor takes in the exchange buffer: its own, rounded up to a multiple of 8."""
    return -(-math.prod(shape) * dtype.itemsize // 8) * 8


def _bytes(t: Tensor) -> Tensor:
    raw = t.contiguous().reshape(-1).view(torch.uint8)
    pad = _span(t.dtype, tuple(t.shape)) - raw.numel()
    return torch.cat([raw, raw.new_zeros(pad)]) if pad else raw
