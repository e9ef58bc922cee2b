"""Fused probe statistics: histograms and set masses straight from q and k, never B x H x T x T.

`probe_stats(q, k, key_pos, row_ref, ...)` returns the same `ProbeStats` as
`reference_probe_stats` / `pattern_stats` (workbench/kernels/contract.py, docs/coordinates.md),
computed flash-attention style: each program owns BLOCK_M rows of one (batch, head) and walks the
visible key blocks, and no pattern ever leaves registers. Three launches:

1. `_lse_kernel` (a flash forward without V): per row LSE = m + log2(l) and the entropy in bits;
2. `_probe_stats_kernel`: p = 2^(s - LSE), already normalised, binned as it is produced;
3. `_probe_stats_kernel` with CHANCE=True: the same binning with p := 1 on visible keys, once per
   batch rather than per head (chance needs no softmax), divided by |V| = i + 1.

Design notes, the cost model, profiles and measured numbers: docs/kernel.md. This is v2, the
kernel for every statistic including the joint semantic x recency histogram; `probe_stats(...,
joint=False)` runs v3 instead (workbench/kernels/probe_v3.py: each histogram in the frame where its
distance is a band), which does not compute the joint histogram (it returns None there). How the binning stays
cheap (the binning, not the matmul, is the cost):

- semantic / own distance (random positions, so per element): cumulative masses
  "d <= EDGES[k]" for the n edges that positions can cross (n = 1 + ceil(log2 max distance));
  each is one saturated add (`clamp(t + 1 - |d|, 0, 1)`, which ptxas folds to FADD.SAT) and one
  FFMA per element. Bins are differences of cumulative masses, taken once per row at the end.
- row sums stay per-lane partials ([rows, 4], `_rowsum`) inside the key loop: the cross-lane
  shuffles are paid once per row block, not once per tile and statistic. (Pass 2 needs no online
  rescaling, which is what makes this possible.)
- recency i - j + offset is constant along diagonals, so a whole tile away from the diagonal lies
  in one recency bin: its row sums go to a running total, flushed into the [rows, bins]
  accumulator only when the bin changes. Tiles that straddle bin edges (a band near the diagonal
  and at powers of two) compute the straddled edges per element.
- the structural set R_w likewise: tiles fully inside add their row sums, tiles straddling w
  compute it per element, tiles outside do nothing.
- the joint semantic x recency histogram: at each flush of a recency run, the run's cumulative
  semantic masses (reduced over rows) go to its bin; tiles straddling recency bins are redone
  per bin in a second loop after the main one (`_joint_tile`), so the hot loop carries no more
  state (the state is the program's own slot of the output, in global memory).
- rows that do not see the null keys (`sees_null`, XLNet): both passes hide them in the key
  blocks that hold a null key (a constexpr: compiled out when every row sees them).
- key blocks past the causal diagonal are never visited; row blocks with no probed row (padding)
  visit none; only diagonal blocks pay for the causal mask.
- deterministic: every program writes its own partial sums; the final reduction is a float64
  torch sum in a fixed order. No atomics.

Caveats:

- Without a CUDA device this module sets TRITON_INTERPRET=1 *at import* (unless the variable is
  already set), so that the kernel runs, slowly, in Triton's interpreter on CPU tensors (the tests
  use this). Import it after choosing otherwise, or set TRITON_INTERPRET=0 to opt out. That works
  only if triton itself was not imported earlier (transformers imports it): triton decides at its
  own import whether tl.sum & co. can be interpreted, and `probe_stats` says so if they cannot.
- One host-device sync per call: the largest position decides how many distance edges the kernel
  evaluates (pass `max_distance=` to skip it).
- float32 inputs use `tf32x3` dots (about float32 accuracy); float16 / bfloat16 use the tensor
  cores directly. Triton's interpreter computes bfloat16 dots wrongly: test bf16 on a GPU.
- q and k may be arbitrary strided views as long as d_head is contiguous; otherwise they are
  copied. d_head any size from 1 to 256 (padded to a power of two, at least 16, inside the kernel).
- Positions are exact in float32 up to 2^24; distances above 2^14 share the last bin.
- The per-row (per-step) outputs are written per (batch, head, row) before the batch reduction:
  28 bytes per row and head of scratch memory (with the LSE). `per_sequence=True` skips the batch
  reduction and returns every sequence's statistics side by side ([batch, ...] tensors, on the
  device) from the same three launches.
- Speed (H100, docs/kernel.md, measured before the joint histogram): 4.8x an SDPA causal forward
  on the same q, k at T = 1024 (7.5x with own distances); the hot loop is bound by instruction
  issue (54 instructions per visible pair, 27 of them the semantic edges), not by the tensor cores
  or memory. The joint histogram's second loop adds ~1.8x the statistics pass's instructions at
  T = 1024 (SASS count; not yet timed).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    # Must happen before the @triton.jit decorators below run (see the header).
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402
from torch import Tensor  # noqa: E402

from workbench.kernels.contract import (  # noqa: E402
    EDGES,
    N_BINS,
    ProbeStats,
    check_positions,
    n_thresholds,
)
from workbench.kernels.reference import check_qk  # noqa: E402

NBP = 32  # histogram bins padded to a power of two inside the kernel
JS = 16  # joint histogram: columns of cumulative semantic masses (N_SEM <= 15 edges and the total)
N_ROW_FIELDS = 6  # per-row outputs: S only, R only, both, neither, entropy (bits), null-key mass
N_ROW_FIELDS_C = tl.constexpr(N_ROW_FIELDS)

S_EDGE, S_ALL, S_EXTRA, S_NONE = 0, 1, 2, 3  # how the semantic set S_r is read (see _s_mode)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _le(a, t):
    """1.0 where a <= t, else 0.0, for integer-valued float a and integer t (one FADD.SAT)."""
    return tl.minimum(tl.maximum((t + 1.0) - a, 0.0), 1.0)


@triton.jit
def _bin_of(x):
    """Log2 bin of integer x >= 0 (scalar or tensor): 1 for 0, else 2 + ceil(log2 x), at most 17."""
    xc = tl.maximum(x, 1)
    # ceil(log2 x) = floor(log2(2x - 1)): the float exponent of 2x - 1 (exact below 2^23).
    e = ((2 * xc - 1).to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127
    return tl.where(x <= 0, 1, tl.minimum(2 + e, 17))


@triton.jit
def _rowsum(x, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row sums of a [BLOCK_M, BLOCK_N] tile, left as 4 partial sums per row: [BLOCK_M, 4].

    In the MMA accumulator layout a row's columns sit in the 4 lanes of a quad (column
    8n + 2 * lane + e); summing over n and e stays inside each thread, so the cross-lane shuffles
    of a full row sum are paid once per row block (`tl.sum(acc, 1)` at the end) rather than once
    per tile and statistic. Any layout gives the same numbers; this one gives them for free.
    """
    return tl.sum(tl.sum(tl.reshape(x, [BLOCK_M, BLOCK_N // 8, 4, 2]), 1), 2)


@triton.jit
def _edge_mass(p, a, t, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """_rowsum(p * (a <= t)) for integer-valued a, t: one FADD.SAT and one FFMA per element.

    (Written out rather than composed from _le and _rowsum: each nested @triton.jit call costs
    milliseconds in the CPU interpreter, and this one runs once per edge per tile.)"""
    m = tl.minimum(tl.maximum((t + 1.0) - a, 0.0), 1.0)
    return tl.sum(tl.sum(tl.reshape(p * m, [BLOCK_M, BLOCK_N // 8, 4, 2]), 1), 2)


@triton.jit
def _program(n_heads, n_row_blocks, BLOCK_M: tl.constexpr):
    """This program's (row block, batch x head, batch, head, first row) in the 1-D grid over
    (batch x head) x row blocks, row blocks fastest (consecutive programs share K in L2)."""
    pid = tl.program_id(0)
    pid_m = pid % n_row_blocks
    pid_bh = pid // n_row_blocks
    return pid_m, pid_bh, (pid_bh // n_heads).to(tl.int64), (pid_bh % n_heads).to(tl.int64), pid_m * BLOCK_M


@triton.jit
def _slot_rows(REF, OWN, SEES, b, stride_ref_b, offs_m, row_ok, rec_off, HAS_OWN: tl.constexpr,
               NULL_ROWS: tl.constexpr):
    """The rows of a slot-order block: (probed, reference position, rows with an own position,
    own position (the reference without own), recency base rowf (key j: rowf - j), sees_null)."""
    ref = tl.load(REF + b * stride_ref_b + offs_m, mask=row_ok, other=-1)
    probed = ref >= 0
    ref_f = ref.to(tl.float32)
    if HAS_OWN:
        own_pos = tl.load(OWN + b * stride_ref_b + offs_m, mask=row_ok, other=-1)
        own_rows = probed & (own_pos >= 0)
        own_f = own_pos.to(tl.float32)
    else:
        own_rows = probed
        own_f = ref_f
    rowf = (offs_m + rec_off).to(tl.float32)
    sees = tl.load(SEES + b * stride_ref_b + offs_m, mask=row_ok, other=1) if NULL_ROWS else offs_m
    return probed, ref_f, own_rows, own_f, rowf, sees


@triton.jit
def _straddle(acc, p, dist, rs, blo, bhi, MAX_EDGES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              NBP: tl.constexpr):
    """A tile whose integer-valued distances `dist` span bins blo < bhi (at most MAX_EDGES edges):
    per element only the edges between them. Adds the masses of bins blo + 1 .. bhi to the
    [BLOCK_M, NBP] accumulator; returns (acc, [BLOCK_M, 4] mass in bin blo), the latter to start
    the run of bin blo. (rs: the tile's row sums, as from _rowsum.)"""
    cols = tl.arange(0, NBP)[None, :]
    cm = _edge_mass(p, dist, (1 << (blo - 1)) >> 1, BLOCK_M, BLOCK_N)  # mass in bin blo
    first = cm
    for s in tl.static_range(1, MAX_EDGES):
        if blo + s < bhi:
            cm_s = _edge_mass(p, dist, (1 << (blo + s - 1)) >> 1, BLOCK_M, BLOCK_N)
            acc += tl.where(cols == blo + s, tl.sum(cm_s - cm, 1)[:, None], 0.0)
            cm = cm_s
    acc += tl.where(cols == bhi, tl.sum(rs - cm, 1)[:, None], 0.0)
    return acc, first


@triton.jit
def _hide_null(qk, j0, offs_n, kpos_ptr, null_ptr, sees, n_keys, qk_scale, BLOCK_N: tl.constexpr):
    """Unscaled scores with the null keys of a key block set to -1e6 (after scaling) for the rows
    that do not see them (sees == 0); a block without a null key is returned as it is."""
    if tl.load(null_ptr + j0 // BLOCK_N) != 0:
        kpos = tl.load(kpos_ptr + offs_n, mask=offs_n < n_keys, other=0)
        qk = tl.where((kpos[None, :] < 0) & (sees[:, None] == 0), -1.0e6 / qk_scale, qk)
    return qk


@triton.jit
def _lse_tile(j0, q, k_base, kpos_ptr, null_ptr, sees, stride_kn, n_keys, qk_scale, offs_m, offs_d, m_i, l_i, ent,
              HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
              NULL_ROWS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    offs_n = j0 + tl.arange(0, BLOCK_N)
    k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
    if MASKED:
        k = tl.load(k_ptrs, mask=(offs_n < n_keys)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if NULL_ROWS:
            qk = _hide_null(qk, j0, offs_n, kpos_ptr, null_ptr, sees, n_keys, qk_scale, BLOCK_N)
        qk = qk * qk_scale + tl.where(offs_m[:, None] >= offs_n[None, :], 0.0, -1.0e6)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        x = qk - m_new[:, None]
    else:
        if HEAD_DIM == D_PAD:  # no mask: keeps the loads vectorised and pipelined
            k = tl.load(k_ptrs)
        else:
            k = tl.load(k_ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if NULL_ROWS:
            qk = _hide_null(qk, j0, offs_n, kpos_ptr, null_ptr, sees, n_keys, qk_scale, BLOCK_N)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        x = qk * qk_scale - m_new[:, None]
    p = tl.math.exp2(x)
    alpha = tl.math.exp2(m_i - m_new)
    # entropy: ent = sum p * (s - m), kept relative to the running max (docs/kernel.md)
    ent = alpha * (ent + (m_i - m_new) * l_i) + tl.sum(p * x, 1)
    l_i = l_i * alpha + tl.sum(p, 1)
    return m_new, l_i, ent


@triton.jit
def _lse_kernel(
    Q, K, REF, KPOS, NULL_BLK, SEES, LSE, ROWS_OUT,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_ref_b, stride_pos_b, stride_null_b,
    n_heads, n_rows, n_keys, n_row_blocks, qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    NULL_ROWS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Pass 1 (a flash-attention forward without V): per row LSE = m + log2(l), in log2 units,
    and the entropy in bits. Writes LSE [B*H, R] and ROWS_OUT[:, 4, :] (entropy of probed rows, else 0).
    With NULL_ROWS, SEES [B, R] (int, same strides as REF) says which rows see the null keys."""
    pid_m, pid_bh, b, h, i0 = _program(n_heads, n_row_blocks, BLOCK_M)
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    row_ok = offs_m < n_rows
    probed = tl.load(REF + b * stride_ref_b + offs_m, mask=row_ok, other=-1) >= 0
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    kpos_ptr = KPOS + b * stride_pos_b
    null_ptr = NULL_BLK + b * stride_null_b
    sees = tl.load(SEES + b * stride_ref_b + offs_m, mask=row_ok, other=1) if NULL_ROWS else offs_m

    hi = tl.where(tl.max(probed.to(tl.int32), 0) > 0, tl.minimum(i0 + BLOCK_M, n_keys), 0)
    lo = tl.minimum((i0 + 1) // BLOCK_N * BLOCK_N, hi)
    m_i = tl.zeros([BLOCK_M], tl.float32) - 1.0e30  # finite: (m_old - m_new) * l stays 0 * finite
    l_i = tl.zeros([BLOCK_M], tl.float32)
    ent = tl.zeros([BLOCK_M], tl.float32)
    for j0 in range(0, lo, BLOCK_N):
        m_i, l_i, ent = _lse_tile(j0, q, k_base, kpos_ptr, null_ptr, sees, stride_kn, n_keys, qk_scale, offs_m,
                                  offs_d, m_i, l_i, ent, HEAD_DIM, D_PAD, BLOCK_N, False, NULL_ROWS, DOT_PRECISION)
    for j0 in range(lo, hi, BLOCK_N):
        m_i, l_i, ent = _lse_tile(j0, q, k_base, kpos_ptr, null_ptr, sees, stride_kn, n_keys, qk_scale, offs_m,
                                  offs_d, m_i, l_i, ent, HEAD_DIM, D_PAD, BLOCK_N, True, NULL_ROWS, DOT_PRECISION)
    l_safe = tl.maximum(l_i, 1e-30)  # rows never visited: not probed, masked below
    # rows not probed get LSE = +inf, so that pass 2 sees p = 0 there whatever its block size
    tl.store(LSE + pid_bh.to(tl.int64) * n_rows + offs_m, tl.where(probed, m_i + tl.math.log2(l_safe), float("inf")),
             mask=row_ok)
    entropy = tl.math.log2(l_safe) - ent / l_safe
    tl.store(ROWS_OUT + (pid_bh.to(tl.int64) * N_ROW_FIELDS_C + 4) * n_rows + offs_m,
             tl.where(probed, entropy, 0.0), mask=row_ok)


@triton.jit
def _joint_cum(sem, tot, nul, wrow, N_SEM: tl.constexpr, JS: tl.constexpr):
    """Block-level cumulative semantic masses [JS]: sum over rows of wrow x (mass at d <= EDGES[e])
    for e < N_SEM, and of wrow x the non-null mass in column N_SEM (from per-lane partials).
    Summed in float64: in the chance pass the row values are exact counts, so a cell no key falls
    in is the difference of two identical sums, exactly 0, as in the reference."""
    cols = tl.arange(0, JS)[None, :]
    v = tl.where(cols == N_SEM, tl.sum(tot - nul, 1)[:, None], 0.0)
    for e in tl.static_range(N_SEM):
        v = tl.where(cols == e, tl.sum(sem[e], 1)[:, None], v)
    return tl.sum(v.to(tl.float64) * wrow.to(tl.float64)[:, None], 0)


@triton.jit
def _joint_state(JW, JOINT_OUT, stride_ref_b, n_heads, n_row_blocks, offs_m, NBP: tl.constexpr, JS: tl.constexpr):
    """(this program's joint-histogram slot, the row weights of its block) from the launch arguments."""
    pid = tl.program_id(0)
    b = (pid // n_row_blocks // n_heads).to(tl.int64)
    wrow = tl.load(JW + b * stride_ref_b + offs_m, mask=offs_m < stride_ref_b, other=0.0)  # rows are contiguous
    return JOINT_OUT + pid.to(tl.int64) * (NBP * JS), wrow


@triton.jit
def _joint_add(joint_base, row, vec, JS: tl.constexpr):
    """Add [JS] to one row of this program's joint-histogram slot (in global memory: the joint
    state is touched only when a recency bin changes, so it need not hold registers in the loop)."""
    ptrs = joint_base + row * JS + tl.arange(0, JS)
    tl.store(ptrs, tl.load(ptrs) + vec)


@triton.jit
def _joint_segment(pw, ad, wrow, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, N_SEM: tl.constexpr,
                   JS: tl.constexpr):
    """_joint_cum of one tile's masses pw (already restricted to a recency range), per element."""
    cols = tl.arange(0, JS)[None, :]
    v = tl.where(cols == N_SEM, tl.sum(tl.sum(tl.sum(tl.reshape(pw, [BLOCK_M, BLOCK_N // 8, 4, 2]), 1), 2), 1)[:, None],
                 0.0)
    for e in tl.static_range(N_SEM):
        m = tl.minimum(tl.maximum((((1 << e) >> 1) + 1.0) - ad, 0.0), 1.0)
        c = tl.sum(tl.sum(tl.sum(tl.reshape(pw * m, [BLOCK_M, BLOCK_N // 8, 4, 2]), 1), 2), 1)
        v = tl.where(cols == e, c[:, None], v)
    return tl.sum(v.to(tl.float64) * wrow.to(tl.float64)[:, None], 0)


@triton.jit
def _joint_tile(j0, q, k_base, kpos_ptr, stride_kn, n_keys, qk_scale, lse, offs_m, offs_d, ref_f, rowf, i0, rec_off,
                joint_base, wrow, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, N_SEM: tl.constexpr, JS: tl.constexpr, CHANCE: tl.constexpr,
                DOT_PRECISION: tl.constexpr):
    """The joint histogram of one tile that straddles recency bins, which the main loop's run
    counted whole in its lowest bin blo: p again (the dot and exp2 cost less than the binning),
    then per recency bin of the tile the cumulative semantic masses of its keys, each bin's added
    to its row and the whole tile taken back from row blo. Null keys are left out (cell (0, 0)
    comes from the host), so whether a row sees them does not matter here."""
    offs_n = j0 + tl.arange(0, BLOCK_N)
    key_ok = offs_n < n_keys
    kpos = tl.load(kpos_ptr + offs_n, mask=key_ok, other=-1)
    keep = (offs_m[:, None] >= offs_n[None, :]) & (kpos[None, :] >= 0)  # visible, not null
    if CHANCE:
        p = tl.where(keep, 1.0, 0.0)
    else:
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :],
                    mask=key_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p = tl.where(keep, tl.math.exp2(qk * qk_scale - lse[:, None]), 0.0)
    ad = tl.abs(kpos.to(tl.float32)[None, :] - ref_f[:, None])
    recf = rowf[:, None] - offs_n[None, :].to(tl.float32)
    blo = _bin_of(tl.maximum(i0 + rec_off - (j0 + BLOCK_N - 1), rec_off))
    bhi = _bin_of(i0 + BLOCK_M - 1 + rec_off - j0)
    below = tl.zeros([JS], tl.float64)  # the cumulative of the bins done so far
    for b in range(blo, bhi):  # bins blo .. bhi - 1: keys with recency up to the bin's top edge
        upto = _joint_segment(p * _le(recf, (1 << (b - 1)) >> 1), ad, wrow, BLOCK_M, BLOCK_N, N_SEM, JS)
        _joint_add(joint_base, b, upto - below, JS)
        below = upto
    whole = _joint_segment(p, ad, wrow, BLOCK_M, BLOCK_N, N_SEM, JS)
    _joint_add(joint_base, bhi, whole - below, JS)
    _joint_add(joint_base, blo, -whole, JS)


@triton.jit
def _probe_tile(
    j0, q, k_base, kpos_ptr, null_ptr, stride_kn, n_keys, qk_scale, lse,
    offs_m, offs_d, ref_f, own_f, rowf, i0, rec_off, r, w, sees, JW, JOINT_OUT, stride_ref_b, n_heads, n_row_blocks,
    # running sums, [BLOCK_M, 4] per-lane partials (see _rowsum); p is already normalised
    tot, nul, sem, own, s_ex, r_mass, both, run, run_bin, rec_acc,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    N_SEM: tl.constexpr, HAS_OWN: tl.constexpr, S_MODE: tl.constexpr, R_IDX: tl.constexpr,
    MAX_REC_EDGES: tl.constexpr, NBP: tl.constexpr, JS: tl.constexpr, MASKED: tl.constexpr,
    CHANCE: tl.constexpr, NULL_ROWS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile: probabilities, then every statistic's contribution."""
    offs_n = j0 + tl.arange(0, BLOCK_N)
    if MASKED:
        key_ok = offs_n < n_keys
        kpos = tl.load(kpos_ptr + offs_n, mask=key_ok, other=0)
    else:
        kpos = tl.load(kpos_ptr + offs_n)

    # -- recency range of the tile (scalars); a new bin flushes the joint histogram's run ---------
    rlo = i0 + rec_off - (j0 + BLOCK_N - 1)  # smallest recency in the tile
    if MASKED:
        rlo = tl.maximum(rlo, rec_off)  # ... among visible keys
    rhi = i0 + BLOCK_M - 1 + rec_off - j0  # largest
    blo = _bin_of(rlo)
    bhi = _bin_of(rhi)
    flush = (blo != bhi) | (blo != run_bin)
    if flush:  # the run of tiles in bin run_bin ends: its semantic masses since the last flush
        # (the joint state lives in global memory and its pointers are made here from the launch
        # arguments, so that nothing of it holds a register in the hot loop)
        joint_base, wrow = _joint_state(JW, JOINT_OUT, stride_ref_b, n_heads, n_row_blocks, offs_m, NBP, JS)
        c_now = _joint_cum(sem, tot, nul, wrow, N_SEM, JS)
        if run_bin >= 0:
            _joint_add(joint_base, run_bin, c_now - tl.load(joint_base + (NBP - 1) * JS + tl.arange(0, JS)), JS)
        tl.store(joint_base + (NBP - 1) * JS + tl.arange(0, JS), c_now)  # row NBP - 1: the cumulative at the flush

    # -- probabilities p ---------------------------------------------------------------------------
    if CHANCE:  # chance: weight 1 on every visible key, no softmax
        # A (loop-invariant) dot of ones, so that p has the MMA layout like the softmax path.
        p = tl.dot(tl.full([BLOCK_M, 16], 1.0, tl.float16), tl.full([16, BLOCK_N], 0.0625, tl.float16))
        if MASKED:
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
    else:
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
        if MASKED:
            k = tl.load(k_ptrs, mask=key_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
        elif HEAD_DIM == D_PAD:
            k = tl.load(k_ptrs)
        else:
            k = tl.load(k_ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASKED:
            qk = qk * qk_scale + tl.where(offs_m[:, None] >= offs_n[None, :], 0.0, -1.0e6)
            p = tl.math.exp2(qk - lse[:, None])
        else:
            p = tl.math.exp2(qk * qk_scale - lse[:, None])

    # -- null keys (key_pos < 0): no distance, no recency; one uniform branch per tile ---------
    # (the per-block flag comes from the host: a tl.min over kpos would reduce across warps)
    null_block = tl.load(null_ptr + j0 // BLOCK_N) != 0
    if NULL_ROWS:
        if null_block:  # rows that do not see the null keys: not in V (pass 1 left them out of the LSE)
            p = tl.where((kpos[None, :] >= 0) | (sees[:, None] != 0), p, 0.0)
    rs = _rowsum(p, BLOCK_M, BLOCK_N)
    tot += rs
    if null_block:
        p_nn = tl.where(kpos[None, :] >= 0, p, 0.0)
        rs_nn = _rowsum(p_nn, BLOCK_M, BLOCK_N)
        nul += rs - rs_nn
    else:
        p_nn = p
        rs_nn = rs

    # -- semantic distance: cumulative masses at EDGES[0..N_SEM-1] ------------------------------
    kf = kpos.to(tl.float32)
    ad = tl.abs(kf[None, :] - ref_f[:, None])
    s_inc = rs * 0.0
    new_sem = ()
    for e in tl.static_range(N_SEM):
        inc = _edge_mass(p_nn, ad, (1 << e) >> 1, BLOCK_M, BLOCK_N)
        new_sem = new_sem + (sem[e] + inc,)
        if S_MODE == 0:
            if e == R_IDX:
                s_inc = inc
    sem = new_sem
    if S_MODE == 1:
        s_inc = rs_nn
    if S_MODE == 2:
        s_inc = _edge_mass(p_nn, ad, r, BLOCK_M, BLOCK_N)
        s_ex += s_inc

    # -- own distance (single stream) ------------------------------------------------------------
    if HAS_OWN:
        ado = tl.abs(kf[None, :] - own_f[:, None])
        new_own = ()
        for e in tl.static_range(N_SEM):
            new_own = new_own + (own[e] + _edge_mass(p_nn, ado, (1 << e) >> 1, BLOCK_M, BLOCK_N),)
        own = new_own

    # -- recency: whole tiles in one bin go to `run`; straddled edges per element ---------------
    cols = tl.arange(0, NBP)[None, :]
    if flush:
        # flush the running bin into the [rows, bins] accumulator
        rec_acc += tl.where(cols == run_bin, tl.sum(run, 1)[:, None], 0.0)
        if blo == bhi:
            run = rs_nn
        else:
            recf = rowf[:, None] - offs_n[None, :].to(tl.float32)
            rec_acc, run = _straddle(rec_acc, p_nn, recf, rs_nn, blo, bhi, MAX_REC_EDGES, BLOCK_M, BLOCK_N, NBP)
            # Joint histogram: the new run counts this whole tile in bin blo; `_joint_tile` moves
            # its parts in bins blo+1..bhi after the loop, so the hot loop holds no more state.
        run_bin = blo
    else:
        run += rs_nn

    # -- structural set R_w, and S_r & R_w ----------------------------------------------------
    if rhi <= w:  # the whole tile is recent enough
        r_mass += rs_nn
        both += s_inc
    elif rlo <= w:  # the tile straddles w
        recf = rowf[:, None] - offs_n[None, :].to(tl.float32)
        pw = p_nn * _le(recf, w)
        r_mass += _rowsum(pw, BLOCK_M, BLOCK_N)
        if S_MODE == 0 or S_MODE == 2:
            both += _rowsum(pw * _le(ad, r), BLOCK_M, BLOCK_N)
        elif S_MODE == 1:
            both += _rowsum(pw, BLOCK_M, BLOCK_N)
    return tot, nul, sem, own, s_ex, r_mass, both, run, run_bin, rec_acc


@triton.jit
def _hist_from_cumulative(cum, nul, l_nn, BLOCK_M: tl.constexpr, N_SEM: tl.constexpr, NBP: tl.constexpr):
    """[BLOCK_M, NBP] bins from cumulative masses cum[e] = mass(d <= EDGES[e]) (per-lane partials)."""
    cols = tl.arange(0, NBP)[None, :]
    h = tl.where(cols == 0, nul[:, None], 0.0)
    prev = tl.zeros_like(nul)
    for e in tl.static_range(N_SEM):
        c = tl.sum(cum[e], 1)
        h = tl.where(cols == e + 1, (c - prev)[:, None], h)
        prev = c
    return tl.where(cols == N_SEM + 1, (l_nn - prev)[:, None], h)


@triton.jit
def _probe_stats_kernel(
    Q, K, KPOS, NULL_BLK, REF, OWN, SEES, JW, LSE, ROWS_OUT, HIST_OUT, JOINT_OUT,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_pos_b, stride_null_b, stride_ref_b,
    n_heads, n_rows, n_keys, n_row_blocks, qk_scale, rec_off, r, w,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    N_SEM: tl.constexpr, HAS_OWN: tl.constexpr, S_MODE: tl.constexpr, R_IDX: tl.constexpr,
    MAX_REC_EDGES: tl.constexpr, NBP: tl.constexpr, JS: tl.constexpr, CHANCE: tl.constexpr,
    NULL_ROWS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Pass 2: the statistics, from p = 2^(s - LSE) (or p = 1 on visible keys when CHANCE).

    1-D grid over (batch * heads) x row blocks, row blocks fastest (consecutive programs share K in
    L2; no grid-dimension limit). Writes ROWS_OUT[:, 0:4, :] (parts per row), ROWS_OUT[:, 5, :] (null-key
    mass per row; with CHANCE field 4 is log2 |V|, the entropy of uniform attention),
    HIST_OUT [B*H, blocks, 3, NBP] (semantic / recency / own histograms of the block) and JOINT_OUT
    [B*H, blocks, NBP, JS] (per recency bin, the block's cumulative semantic masses, weighted per
    row by JW: 1 for probed rows, 1 / |V| for the chance pass, 0 for rows not probed). SEES [B, R]
    (int, REF's strides, as OWN; read with NULL_ROWS): whether each row sees the null keys.
    """
    pid_m, pid_bh, b, h, i0 = _program(n_heads, n_row_blocks, BLOCK_M)
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    row_ok = offs_m < n_rows
    # OWN has REF's strides (both [B, R] contiguous); recency of key j for row i is rowf - j
    probed, ref_f, own_rows, own_f, rowf, sees = _slot_rows(REF, OWN, SEES, b, stride_ref_b, offs_m, row_ok, rec_off,
                                                            HAS_OWN, NULL_ROWS)

    if CHANCE:
        q = 0.0
        lse = ref_f
    else:
        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
        q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
        lse = tl.load(LSE + pid_bh.to(tl.int64) * n_rows + offs_m, mask=row_ok, other=float("inf"))  # p = 0
    k_base = K + b * stride_kb + h * stride_kh
    kpos_ptr = KPOS + b * stride_pos_b
    null_ptr = NULL_BLK + b * stride_null_b

    # Key blocks: [0, lo) are visible to every row of the block, [lo, hi) need the causal mask;
    # blocks past the last row are never visited, and a block with no probed row visits none.
    any_probed = tl.max(probed.to(tl.int32), 0) > 0
    hi = tl.where(any_probed, tl.minimum(i0 + BLOCK_M, n_keys), 0)
    lo = tl.minimum((i0 + 1) // BLOCK_N * BLOCK_N, hi)

    zero = tl.zeros([BLOCK_M, 4], tl.float32)
    tot, nul, s_ex, r_mass, both, run = zero, zero, zero, zero, zero, zero
    sem = (zero,) * N_SEM
    own = (zero,) * N_SEM if HAS_OWN else ()
    run_bin = i0 * 0 - 1
    rec_acc = tl.zeros([BLOCK_M, NBP], tl.float32)
    # this program's joint-histogram slot: [recency bin, cumulative semantic edge] of the whole block
    joint_base, wrow = _joint_state(JW, JOINT_OUT, stride_ref_b, n_heads, n_row_blocks, offs_m, NBP, JS)
    tl.store(joint_base + tl.arange(0, NBP)[:, None] * JS + tl.arange(0, JS)[None, :], tl.zeros([NBP, JS], tl.float64))

    for j0 in range(0, lo, BLOCK_N):
        tot, nul, sem, own, s_ex, r_mass, both, run, run_bin, rec_acc = _probe_tile(
            j0, q, k_base, kpos_ptr, null_ptr, stride_kn, n_keys, qk_scale, lse,
            offs_m, offs_d, ref_f, own_f, rowf, i0, rec_off, r, w, sees, JW, JOINT_OUT, stride_ref_b, n_heads,
            n_row_blocks, tot, nul, sem, own, s_ex, r_mass, both, run, run_bin, rec_acc,
            HEAD_DIM, D_PAD, BLOCK_M, BLOCK_N, N_SEM, HAS_OWN, S_MODE, R_IDX, MAX_REC_EDGES, NBP, JS,
            False, CHANCE, NULL_ROWS, DOT_PRECISION,
        )
    for j0 in range(lo, hi, BLOCK_N):
        tot, nul, sem, own, s_ex, r_mass, both, run, run_bin, rec_acc = _probe_tile(
            j0, q, k_base, kpos_ptr, null_ptr, stride_kn, n_keys, qk_scale, lse,
            offs_m, offs_d, ref_f, own_f, rowf, i0, rec_off, r, w, sees, JW, JOINT_OUT, stride_ref_b, n_heads,
            n_row_blocks, tot, nul, sem, own, s_ex, r_mass, both, run, run_bin, rec_acc,
            HEAD_DIM, D_PAD, BLOCK_M, BLOCK_N, N_SEM, HAS_OWN, S_MODE, R_IDX, MAX_REC_EDGES, NBP, JS,
            True, CHANCE, NULL_ROWS, DOT_PRECISION,
        )

    # -- epilogue: per row (one cross-lane reduction per statistic), then sum the probed rows ------
    cols = tl.arange(0, NBP)[None, :]
    tot_r = tl.sum(tot, 1)
    nul_r = tl.sum(nul, 1)
    rec_acc += tl.where(cols == run_bin, tl.sum(run, 1)[:, None], 0.0)
    # normalise by the row total: |V| = i + 1 for chance, ~1 (exactly 1 up to rounding) for p
    inv = 1.0 / tl.maximum(tot_r, 1e-30)  # rows never visited have 0; they are not probed
    l_nn = tot_r - nul_r
    hist_base = HIST_OUT + ((pid_bh * n_row_blocks + pid_m) * 3) * NBP + tl.arange(0, NBP)
    if run_bin >= 0:  # the last run of the joint histogram
        prev = tl.load(joint_base + (NBP - 1) * JS + tl.arange(0, JS))
        _joint_add(joint_base, run_bin, _joint_cum(sem, tot, nul, wrow, N_SEM, JS) - prev, JS)
    for j0 in range(0, hi, BLOCK_N):  # the tiles that straddle recency bins, which the runs left out
        t_lo = _bin_of(tl.maximum(i0 + rec_off - (j0 + BLOCK_N - 1), rec_off))
        if t_lo != _bin_of(i0 + BLOCK_M - 1 + rec_off - j0):
            _joint_tile(j0, q, k_base, kpos_ptr, stride_kn, n_keys, qk_scale, lse, offs_m, offs_d, ref_f, rowf, i0,
                        rec_off, joint_base, wrow, HEAD_DIM, D_PAD, BLOCK_M, BLOCK_N, N_SEM, JS, CHANCE, DOT_PRECISION)

    hs = _hist_from_cumulative(sem, nul_r, l_nn, BLOCK_M, N_SEM, NBP)
    tl.store(hist_base, tl.sum(tl.where(probed[:, None], hs * inv[:, None], 0.0), 0))
    hr = rec_acc + tl.where(cols == 0, nul_r[:, None], 0.0)
    tl.store(hist_base + NBP, tl.sum(tl.where(probed[:, None], hr * inv[:, None], 0.0), 0))
    if HAS_OWN:
        ho = _hist_from_cumulative(own, nul_r, l_nn, BLOCK_M, N_SEM, NBP)
        tl.store(hist_base + 2 * NBP, tl.sum(tl.where(own_rows[:, None], ho * inv[:, None], 0.0), 0))
    else:
        tl.store(hist_base + 2 * NBP, tl.zeros([NBP], tl.float32))

    if S_MODE == 0:
        s_tot = tl.sum(sem[R_IDX], 1)
    elif S_MODE == 1:
        s_tot = l_nn
    elif S_MODE == 2:
        s_tot = tl.sum(s_ex, 1)
    else:
        s_tot = tot_r * 0.0
    s_frac = s_tot * inv
    r_frac = tl.sum(r_mass, 1) * inv
    b_frac = tl.sum(both, 1) * inv
    row_base = ROWS_OUT + pid_bh.to(tl.int64) * N_ROW_FIELDS_C * n_rows + offs_m
    tl.store(row_base, tl.where(probed, s_frac - b_frac, 0.0), mask=row_ok)
    tl.store(row_base + n_rows, tl.where(probed, r_frac - b_frac, 0.0), mask=row_ok)
    tl.store(row_base + 2 * n_rows, tl.where(probed, b_frac, 0.0), mask=row_ok)
    tl.store(row_base + 3 * n_rows, tl.where(probed, 1.0 - s_frac - r_frac + b_frac, 0.0), mask=row_ok)
    tl.store(row_base + 5 * n_rows, tl.where(probed, nul_r * inv, 0.0), mask=row_ok)
    if CHANCE:  # the entropy of uniform attention over V
        tl.store(row_base + 4 * n_rows, tl.where(probed, tl.math.log2(tl.maximum(tot_r, 1.0)), 0.0), mask=row_ok)


# ----------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------


def _s_mode(r: int, n_sem: int, max_distance: int) -> tuple[int, int]:
    """How the kernel reads the semantic set S_r: (mode, edge index)."""
    if r < 0:
        return S_NONE, 0
    if r >= max_distance:
        return S_ALL, 0  # every key's distance is <= r
    if r in EDGES[:n_sem]:
        return S_EDGE, EDGES.index(r)
    return S_EXTRA, 0


def _max_rec_edges(block_m: int, block_n: int) -> int:
    """Most bin edges one tile's recency range [a, a + BLOCK_M + BLOCK_N - 2], a >= 0, can straddle."""
    span = block_m + block_n - 2
    return max(1, (1 if span == 0 else 2 + math.ceil(math.log2(span))) - 1)


def default_config(n_rows: int, d_head: int, device: torch.device, has_own: bool, n_sem: int) -> dict[str, int | None]:
    """Launch parameters of the statistics pass and (lse_*) of the LSE pass; docs/kernel.md says why."""
    if device.type != "cuda":  # interpreter: fewer, larger numpy ops
        return dict(block_m=64, block_n=64, num_warps=4, num_stages=1, maxnreg=None,
                    lse_block_m=64, lse_block_n=64, lse_warps=4)
    lse_m = 128 if n_rows > 64 else 64
    # statistics pass: one warpgroup, 64 rows x 32 keys. The per-element work is unrolled over the
    # tile, and Nsight Compute showed 64 x 64 tiles stalling on instruction fetch (38% of samples);
    # 64 x 32 measured fastest with and without own distances. It needs ~200 registers, which
    # leaves room for 2 programs per SM; capped at 168 (3 per SM) it is 5-10% faster without own
    # distances up to 13 edges (T <= 4096), and slower with them or more edges (spills).
    maxnreg = 168 if not has_own and n_sem <= 13 else None
    return dict(block_m=64, block_n=32, num_warps=4, num_stages=2, maxnreg=maxnreg,
                lse_block_m=lse_m, lse_block_n=64, lse_warps=8 if lse_m == 128 else 4)


@dataclass
class _Prepared:
    """Validated inputs and launch parameters of one probe_stats call."""

    q: Tensor
    k: Tensor
    key_pos: Tensor
    null_blk: Tensor
    row_ref: Tensor
    row_own: Tensor  # row_ref again when there are no own positions (then never read)
    sees: Tensor  # [B, R] int32, whether each row sees the null keys (row_ref again when all do: never read)
    joint_weights: tuple[Tensor, Tensor]  # [B, R] float32 row weights of the joint histogram: mass, chance
    has_own: bool
    shape: tuple[int, int, int, int]  # B, H, R, K
    n_rb: int
    args: tuple
    constexprs: dict
    lse_launch: dict  # block sizes and warps of the LSE pass


def _prepare(q, k, key_pos, row_ref, row_own, sees_null, recency_offset, r, w, scale, max_distance, overrides) -> _Prepared:
    B, H, R, K, D = check_qk(q, k)
    check_positions(key_pos, row_ref, row_own, B, R, K, sees_null)
    if recency_offset < 0:
        raise ValueError(f"recency_offset must be >= 0 (0: content / single stream, 1: query stream), got {recency_offset}")
    dev = q.device
    for name, t in (("key_pos", key_pos), ("row_ref", row_ref), ("row_own", row_own), ("sees_null", sees_null)):
        if t is not None and t.device != dev:
            raise ValueError(f"{name} is on {t.device} but q and k are on {dev}; move it with .to(q.device)")
    if _interpreting() and not isinstance(tl.sum, InterpretedFunction):
        raise RuntimeError(
            "probe_stats: TRITON_INTERPRET=1 was set after triton had been imported (by another "
            "package, e.g. transformers), so triton's own functions cannot run in the interpreter. "
            "Set TRITON_INTERPRET=1 in the environment before Python starts, or before importing "
            "anything that imports triton."
        )
    if dev.type != "cuda" and not _interpreting():
        raise RuntimeError(
            "probe_stats runs a Triton kernel: it needs CUDA tensors, or TRITON_INTERPRET=1 set before "
            "workbench.kernels.probe_kernel is imported. On CPU use workbench.kernels.reference_probe_stats."
        )
    if not 1 <= D <= 256:
        raise ValueError(f"d_head must be between 1 and 256, got {D}")

    # The kernel reads d_head contiguously; any other strides are passed through.
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    key_pos = key_pos.to(torch.int32).contiguous()
    row_ref = row_ref.to(torch.int32).contiguous()
    has_own = row_own is not None
    row_own = row_own.to(torch.int32).contiguous() if has_own else row_ref
    probed = (row_ref >= 0).float()
    visible = torch.arange(1, R + 1, device=dev, dtype=torch.float32).expand(B, R)  # |V| = i + 1 ...
    if sees_null is not None:  # ... less the null keys a row does not see
        visible = visible - (~sees_null) * torch.cumsum(key_pos[:, :R] < 0, dim=1)
        if bool((probed * (visible == 0)).any()):  # a sync, on this rare path only
            raise ValueError("a probed row (row_ref >= 0) sees no key; mark it not probed (row_ref = -1) or let it "
                             "see the null key (sees_null)")
    sees = sees_null.to(torch.int32).contiguous() if sees_null is not None else row_ref
    joint_weights = (probed, probed / visible.clamp(min=1))
    if max_distance is None:  # |a - b| <= max(a, b) for positions a, b >= 0; one device sync
        maxima = [key_pos.max(), row_ref.max()] + ([row_own.max()] if has_own else [])
        max_distance = max(0, int(torch.stack(maxima).max().item()))
    n_sem = n_thresholds(max_distance)
    s_mode, r_idx = _s_mode(int(r), n_sem, max_distance)

    cfg = default_config(R, D, dev, has_own, n_sem)
    tile = cfg["block_m"], cfg["block_n"], cfg["num_warps"]
    cfg.update({k_: v for k_, v in overrides.items() if v is not None})
    if (cfg["block_m"], cfg["block_n"], cfg["num_warps"]) != tile:
        cfg["maxnreg"] = None  # the register cap was measured for the default tile only
    bm, bn = cfg["block_m"], cfg["block_n"]
    if bm < 16 or bn < 16 or bm & (bm - 1) or bn & (bn - 1):
        raise ValueError(f"block_m and block_n must be powers of two >= 16, got {bm}, {bn}")
    n_rb, n_kb = triton.cdiv(R, bm), triton.cdiv(K, bn)
    # which key blocks hold a null key (key_pos < 0): [batch, key blocks]
    null_blk = torch.nn.functional.pad(key_pos < 0, (0, n_kb * bn - K)).view(B, n_kb, bn).any(-1).to(torch.int32)
    if q.dtype == torch.float32:
        precision = "ieee" if _interpreting() else "tf32x3"
    else:
        precision = "tf32"  # ignored for 16-bit inputs
    qk_scale = (1.0 / math.sqrt(D) if scale is None else float(scale)) * 1.4426950408889634  # log2(e)
    constexprs = dict(
        HEAD_DIM=D, D_PAD=max(16, triton.next_power_of_2(D)), BLOCK_M=bm, BLOCK_N=bn, N_SEM=n_sem,
        HAS_OWN=has_own, S_MODE=s_mode, R_IDX=r_idx, MAX_REC_EDGES=_max_rec_edges(bm, bn), NBP=NBP, JS=JS,
        NULL_ROWS=sees_null is not None,
        DOT_PRECISION=precision, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if cfg["maxnreg"]:
        constexprs["maxnreg"] = cfg["maxnreg"]
    args = (K, n_rb, qk_scale, int(recency_offset), int(r), int(w))
    lse_launch = dict(BLOCK_M=cfg["lse_block_m"], BLOCK_N=cfg["lse_block_n"], num_warps=cfg["lse_warps"],
                      num_stages=cfg["num_stages"], HEAD_DIM=D, D_PAD=constexprs["D_PAD"],
                      NULL_ROWS=constexprs["NULL_ROWS"], DOT_PRECISION=precision)
    return _Prepared(q, k, key_pos, null_blk, row_ref, row_own, sees, joint_weights, has_own, (B, H, R, K), n_rb,
                     args, constexprs, lse_launch)


def _launch(pp: _Prepared, chance: bool, per_sequence: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax statistics per head (LSE pass, then statistics pass), or (chance=True) chance values
    once per batch (statistics pass with p = 1).

    Returns the batch- and block-reduced partials: rows [h, 6, R], histograms [h, 3, N_BINS] and
    the joint histogram's cumulative partials [h, NBP, JS] (float64); with per_sequence, reduced
    over blocks only: [B, h, ...].
    """
    B, H, R, K = pp.shape
    n_heads = 1 if chance else H
    dev = pp.q.device
    q, k = pp.q, pp.k
    rows_out = torch.empty(B * n_heads, N_ROW_FIELDS, R, dtype=torch.float32, device=dev)
    hist_out = torch.empty(B * n_heads, pp.n_rb, 3, NBP, dtype=torch.float32, device=dev)
    joint_out = torch.empty(B * n_heads, pp.n_rb, NBP, JS, dtype=torch.float64, device=dev)
    if chance:
        lse = rows_out  # not read
    else:
        lse = torch.empty(B * H, R, dtype=torch.float32, device=dev)
        n_rb_lse = triton.cdiv(R, pp.lse_launch["BLOCK_M"])
        _lse_kernel[(n_rb_lse * B * H,)](
            q, k, pp.row_ref, pp.key_pos, pp.null_blk, pp.sees, lse, rows_out,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), pp.row_ref.stride(0),
            pp.key_pos.stride(0), pp.null_blk.stride(0), H, R, K, n_rb_lse, pp.args[2], **pp.lse_launch,
        )
    _probe_stats_kernel[(pp.n_rb * B * n_heads,)](
        q, k, pp.key_pos, pp.null_blk, pp.row_ref, pp.row_own, pp.sees, pp.joint_weights[int(chance)], lse,
        rows_out, hist_out, joint_out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        pp.key_pos.stride(0), pp.null_blk.stride(0), pp.row_ref.stride(0),
        n_heads, R, *pp.args, CHANCE=chance, **pp.constexprs,
    )
    # deterministic reduction over batch and row blocks, in float64
    rows = rows_out.view(B, n_heads, N_ROW_FIELDS, R)
    hist = hist_out.view(B, n_heads, pp.n_rb, 3, NBP).sum(2, dtype=torch.float64)[..., :N_BINS]
    joint = joint_out.view(B, n_heads, pp.n_rb, NBP, JS).sum(2, dtype=torch.float64)
    if per_sequence:
        return rows.double(), hist, joint
    return rows.sum(0, dtype=torch.float64), hist.sum(0), joint.sum(0)  # no float64 copy of the per-row scratch


def probe_stats(
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
    max_distance: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    per_sequence: bool = False,
    joint: bool = True,
) -> ProbeStats:
    """Probe statistics of softmax(q k^T * scale) under the top-left causal mask, fused.

    q: [batch, head, row, d_head], k: [batch, head, key, d_head] (same dtype: float16, bfloat16 or
    float32; rows <= keys; row i sees keys 0..i). key_pos: int [batch, key], negative for null keys.
    row_ref: int [batch, row], negative for rows not probed. row_own: optional int [batch, row]
    (own position of single-stream rows, negative for none) for the own-distance histograms.
    sees_null: optional bool [batch, row], whether each row sees the null keys (None: all do; XLNet:
    row 0 only); a null key a row does not see is left out of its softmax and of its V.
    Recency of key j for row i is i - j + recency_offset. (r, w) define S_r and R_w.
    scale defaults to 1 / sqrt(d_head). max_distance (optional) bounds every |position difference|
    and saves one device sync. block_m / block_n / num_warps / num_stages override the launch
    configuration (results do not depend on them beyond float32 rounding).
    per_sequence=True returns the statistics of each sequence side by side (every tensor with a
    leading [batch] dimension, see `ProbeStats`), on the device, from the same three launches: the
    batch sum is simply left out of the final reduction. Nothing waits for the device.
    joint=False runs the v3 kernels instead (`workbench.kernels.probe_v3`: each histogram in the
    frame where its distance is a band): every field the same except `joint_mass` and
    `joint_chance`, which are None (v3 cannot compute the joint histogram cheaply; docs/kernel.md).
    The launch overrides (block_m, ...) are v2's and are refused with joint=False.
    """
    if not joint:
        if any(x is not None for x in (block_m, block_n, num_warps, num_stages)):
            raise ValueError("block_m / block_n / num_warps / num_stages configure the v2 kernel (joint=True); "
                             "for joint=False use workbench.kernels.probe_v3.probe_stats_v3(slot_block=, band_block=)")
        from workbench.kernels.probe_v3 import probe_stats_v3

        return probe_stats_v3(q, k, key_pos, row_ref, row_own=row_own, sees_null=sees_null,
                              recency_offset=recency_offset, r=r, w=w, scale=scale, max_distance=max_distance,
                              per_sequence=per_sequence)
    overrides = dict(block_m=block_m, block_n=block_n, num_warps=num_warps, num_stages=num_stages)
    pp = _prepare(q, k, key_pos, row_ref, row_own, sees_null, recency_offset, r, w, scale, max_distance, overrides)
    rows_m, hist_m, joint_m = _launch(pp, chance=False, per_sequence=per_sequence)
    rows_c, hist_c, joint_c = _launch(pp, chance=True, per_sequence=per_sequence)
    probed = (pp.row_ref >= 0).double()  # [batch, row]
    own_rows = probed * (pp.row_own >= 0) if pp.has_own else None
    if per_sequence:
        step_rows, n_own = probed, (own_rows.sum(-1) if pp.has_own else probed.new_zeros(probed.shape[0]))
    else:
        step_rows, n_own = probed.sum(0), (own_rows.sum() if pp.has_own else probed.new_zeros(()))
    return _assemble(rows_m, hist_m, joint_m, rows_c, hist_c, joint_c, step_rows, n_own, n_sem=pp.constexprs["N_SEM"],
                     r=int(r), w=int(w), recency_offset=int(recency_offset), has_own=pp.has_own)


def _joint_bins(cumulative: Tensor, null_mass: Tensor, n_sem: int) -> Tensor:
    """[..., N_BINS, N_BINS] (semantic bin, recency bin) from the kernel's [..., NBP, JS] partials
    (recency bin, cumulative semantic mass at EDGES[0..n_sem-1] and the non-null total): semantic
    bins are differences of cumulative masses; the null key's mass goes to cell (0, 0)."""
    cum = cumulative[..., :N_BINS, : n_sem + 1]
    out = cum.new_zeros(*cum.shape[:-2], N_BINS, N_BINS)
    out[..., 1 : n_sem + 2, :] = torch.diff(cum, dim=-1, prepend=torch.zeros_like(cum[..., :1])).transpose(-1, -2)
    out[..., 0, 0] = null_mass
    return out


def _assemble(rows_m, hist_m, joint_m, rows_c, hist_c, joint_c, step_rows, n_own, *, n_sem, r, w, recency_offset,
              has_own) -> ProbeStats:
    """ProbeStats from the reduced partials: rows [..., H, 6, R] (chance: [..., 1, 6, R]), hists
    [..., H, 3, N_BINS], joint [..., H, NBP, JS], step_rows [..., R], n_own [...]; "..." is [batch]
    for per-sequence stats."""
    if joint_m is not None:  # None: the v3 kernels (probe_stats(..., joint=False)) leave it out
        joint_m = _joint_bins(joint_m, hist_m[..., 0, 0], n_sem).contiguous()
        joint_c = _joint_bins(joint_c, hist_c[..., 0, 0], n_sem).expand_as(joint_m).contiguous()
    rows_c, hist_c = rows_c.expand_as(rows_m), hist_c.expand_as(hist_m)
    step_pc = rows_c[..., :4, :].transpose(-1, -2).contiguous()
    # A part whose chance is 0 on a row is empty there (chance counts keys exactly), so its mass is
    # exactly 0 by definition; the float32 differences (S - both, ...) leave ~1e-9 instead, which
    # would turn the reference's 0/0 = NaN lifts into inf.
    step_pm = torch.where(step_pc == 0, 0.0, rows_m[..., :4, :].transpose(-1, -2)).contiguous()
    own = has_own
    return ProbeStats(
        r=r, w=w, recency_offset=recency_offset,
        n_rows=step_rows.sum(-1), n_own_rows=n_own,
        sem_mass=hist_m[..., 0, :].contiguous(), sem_chance=hist_c[..., 0, :].contiguous(),
        rec_mass=hist_m[..., 1, :].contiguous(), rec_chance=hist_c[..., 1, :].contiguous(),
        own_mass=hist_m[..., 2, :].contiguous() if own else None,
        own_chance=hist_c[..., 2, :].contiguous() if own else None,
        joint_mass=joint_m, joint_chance=joint_c,
        parts_mass=step_pm.sum(-2), parts_chance=step_pc.sum(-2), entropy=rows_m[..., 4, :].sum(-1),
        step_parts_mass=step_pm, step_parts_chance=step_pc, step_entropy=rows_m[..., 4, :].contiguous(),
        step_rows=step_rows, step_null_chance=rows_c[..., 5, :].contiguous(),
        step_entropy_chance=rows_c[..., 4, :].contiguous(), step_null_mass=rows_m[..., 5, :].contiguous(),
    )
