"""Plain-PyTorch reference for `probe_stats`: scores in float32, masked softmax, then `pattern_stats`.

Same interface and result as the Triton kernel (`workbench.kernels.probe_kernel.probe_stats`), on any
device. It works through the rows in chunks, so it never holds the whole [batch, head, row, key]
pattern: peak memory is about `max_elements` pattern entries times a few float64 temporaries.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from workbench.kernels.contract import ProbeStats, check_positions, empty_stats, pattern_stats


def check_qk(q: Tensor, k: Tensor) -> tuple[int, int, int, int, int]:
    """Shape / dtype contract shared by the reference and the kernel; returns (B, H, R, K, D)."""
    if not (isinstance(q, Tensor) and isinstance(k, Tensor)):
        raise TypeError("q and k must be torch tensors")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(
            f"q must be [batch, head, row, d_head] and k [batch, head, key, d_head]; got shapes "
            f"{list(q.shape)} and {list(k.shape)}"
        )
    B, H, R, D = q.shape
    if (k.shape[0], k.shape[1], k.shape[3]) != (B, H, D):
        raise ValueError(f"q {list(q.shape)} and k {list(k.shape)} disagree on batch, head or d_head")
    K = k.shape[2]
    if R > K:
        raise ValueError(f"row i sees keys 0..i, so rows ({R}) must not outnumber keys ({K})")
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must share a dtype, got {q.dtype} and {k.dtype}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"q and k must be float16, bfloat16 or float32, got {q.dtype}")
    if q.device != k.device:
        raise ValueError(f"q and k are on different devices ({q.device}, {k.device})")
    return B, H, R, K, D


def reference_probe_stats(
    q: Tensor,
    k: Tensor,
    key_pos: Tensor,
    row_ref: Tensor,
    *,
    row_own: Tensor | None = None,
    sees_null: Tensor | None = None,
    recency_offset: int,
    r: int,
    w: int,
    scale: float | None = None,
    max_elements: int = 1 << 22,
) -> ProbeStats:
    """Probe statistics of softmax(q k^T * scale) under the top-left causal mask (row i sees 0..i).

    q: [batch, head, row, d_head], k: [batch, head, key, d_head]; key_pos [batch, key],
    row_ref / row_own [batch, row] (see `workbench.kernels.contract`); sees_null [batch, row] bool
    (None: every row sees the null keys), a null key a row does not see is masked like a key past
    the diagonal. Scores are computed in float32 from the given dtype; statistics in float64.
    """
    B, H, R, K, D = check_qk(q, k)
    check_positions(key_pos, row_ref, row_own, B, R, K, sees_null)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    dev = q.device
    key_pos, row_ref = key_pos.to(dev), row_ref.to(dev)
    row_own = None if row_own is None else row_own.to(dev)

    kf = k.float()
    chunk = max(1, min(R, max_elements // max(1, B * H * K)))
    total = empty_stats(H, R, has_own=row_own is not None, r=r, w=w, recency_offset=recency_offset, device=dev)
    j = torch.arange(K, device=dev)
    for start in range(0, R, chunk):
        stop = min(R, start + chunk)
        scores = torch.matmul(q[:, :, start:stop].float(), kf.transpose(-1, -2)) * scale  # [B, H, c, K]
        i = torch.arange(start, stop, device=dev)
        hidden = (j[None, :] > i[:, None])[None]  # [1, c, K]
        chunk_sees = None if sees_null is None else sees_null[:, start:stop].to(dev)
        if chunk_sees is not None:
            hidden = hidden | ((key_pos < 0)[:, None, :] & ~chunk_sees[:, :, None])
        pattern = torch.softmax(scores.masked_fill(hidden[:, None], float("-inf")), dim=-1)
        total = total + pattern_stats(
            pattern, key_pos, row_ref[:, start:stop],
            None if row_own is None else row_own[:, start:stop],
            recency_offset=recency_offset, r=r, w=w, row_start=start, n_steps=R, sees_null=chunk_sees,
        )
    return total
