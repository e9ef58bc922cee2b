"""Probe kernel v3: each histogram in the frame where its distance is a band (issue 21).

`probe_stats_v3(...)` (reached as `probe_stats(..., joint=False)`) returns the same `ProbeStats`
as the v2 kernel (`workbench.kernels.probe_kernel`) and the reference, **except the joint semantic
x recency histogram**, which it does not compute: `joint_mass` and `joint_chance` are None. Every
other field is the same, to float32 rounding. docs/kernel.md ("v3") has the design and the
instruction counts; why the joint is left to v2 is at the end of this docstring.

Two frames, four launches (two with softmax per head, two with p = 1 once per batch for chance):

1. **Slot pass** (`_slot_kernel`; slot = generation order, rows and keys as given, causal half):
   a flash forward with online softmax (running max m, sum l, entropy relative to m), plus the
   statistics whose distance is a band in slot order: recency i - j + offset (banded as in v2:
   whole tiles of one recency bin add row sums to a run, flushed into the [rows, bins]
   accumulator when the bin changes; tiles straddling bin edges bin per element), R_w (whole tiles
   inside, per element on the tile straddling w) and S_r & R_w ("both": only tiles with recency
   <= w, i.e. next to the diagonal, test |d| <= r per element), the null-key mass and the row
   total; and, per element, the FAR_EDGES largest distance edges (split edges, below). Running
   sums are rescaled by 2^(m_old - m_new) per tile; the [rows, bins] recency accumulator only at a
   flush (it carries the max it was last scaled to). Writes LSE, entropy, the per-row parts (without
   S when the semantic pass adds it), the recency histogram and the per-row far-edge fractions.
2. **Semantic pass** (`_band_kernel`): rows sorted by reference position, keys by
   position (host: one argsort per sequence; the kernel gathers q and k rows through the sorted
   slot indices, so nothing is copied). A tile's distance range follows from four scalars (first
   and last position of its rows and of its keys), so a tile inside one log2 bin adds its row sums
   to a run, a tile across bin edges bins per element only the edges it straddles, and S_r is a
   whole-tile add, nothing, or one compare per element. Visibility is one integer compare per
   element (key slot <= row slot; null keys and padding carry a slot no row reaches). p = 2^(s -
   LSE) with the slot pass's LSE. Writes the semantic histogram and adds S_r to the per-row parts
   (a gather and scatter at each row's slot).
   **Split edges**: it bins only the distances up to EDGES[n - 1 - FAR_EDGES] and visits only the
   key blocks that hold them for its rows (about a quarter of the square instead of all of it);
   the bins above are differences of the slot pass's per-row fractions, read at each row's slot.
3. **Own pass**: the same kernel with rows sorted by own position (single stream), histogram only.

Chance: the same kernels with CHANCE=True (p = 1 on visible keys), once per batch.

Null keys have bin 0 in every histogram and are in "neither"; their mass comes from the slot pass
(semantic and own bin 0 from its per-row null mass).

**The joint histogram is not computed here** (docs/kernel.md, "v3: the joint histogram"): a
pair's joint cell needs its semantic *and* its recency bin, and no frame has both constant over a
tile (in slot order the semantic distance is random, in position order the recency is), so every
visible pair needs per-element binning in one of the frames: ~2 instructions per bin edge and
pair, which is what v2 pays for its semantic edges and then gets the joint from almost free.
`probe_stats(..., joint=True)` (the default, and what `probe --fast` uses because the probe
tables hold the joint) therefore runs v2.

Caveats: as v2 (see workbench/kernels/probe_kernel.py): TRITON_INTERPRET=1 on machines without
CUDA, one device sync per call without `max_distance`, bf16 wrong in the interpreter. Extra: the
host sorts positions once per call (two or three argsorts and searchsorteds of [batch, T]); the
position passes visit their key blocks whether or not a row sees them (visibility is per
element), so they cover part of the full square, not of the causal half; per-row scratch of
28 bytes per row and head, plus 12 per distance kind (the far-edge fractions). Launch parameters are not tuned
on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from workbench.kernels.contract import EDGES, N_BINS, ProbeStats
from workbench.kernels.probe_kernel import (
    N_ROW_FIELDS,
    N_ROW_FIELDS_C,
    NBP,
    _assemble,
    _bin_of,
    _edge_mass,
    _hide_null,
    _le,
    _max_rec_edges,
    _prepare,
    _program,
    _rowsum,
    _slot_rows,
    _straddle,
)

_FAR = 1 << 30  # slot of a null / padding key in the sorted frame: above every row's slot


# ----------------------------------------------------------------------------------------------
# Pass 1: slot frame, online softmax
# ----------------------------------------------------------------------------------------------


@triton.jit
def _slot_tile(
    j0, q, k_base, kpos_ptr, null_ptr, stride_kn, n_keys, qk_scale, offs_m, offs_d, ref_f, own_f, rowf, i0, rec_off,
    r, w, sees, m_i, l_i, ent, nul, r_mass, both, run, run_bin, rec_acc, m_acc, far, far_own, s_in,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MAX_REC_EDGES: tl.constexpr, NBP: tl.constexpr, N_NEAR: tl.constexpr, N_FAR: tl.constexpr,
    HAS_OWN: tl.constexpr, S_IN_SLOT: tl.constexpr, MASKED: tl.constexpr, CHANCE: tl.constexpr,
    NULL_ROWS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_n = j0 + tl.arange(0, BLOCK_N)
    if MASKED:
        kpos = tl.load(kpos_ptr + offs_n, mask=offs_n < n_keys, other=0)
    else:
        kpos = tl.load(kpos_ptr + offs_n)
    null_block = tl.load(null_ptr + j0 // BLOCK_N) != 0

    # -- p relative to the running max (chance: 1 on visible keys, max 0) ------------------------
    if CHANCE:
        p = tl.full([BLOCK_M, BLOCK_N], 1.0, tl.float32)
        if MASKED:
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        if NULL_ROWS:
            if null_block:
                p = tl.where((kpos[None, :] >= 0) | (sees[:, None] != 0), p, 0.0)
        m_new = m_i
        alpha = tl.full([BLOCK_M], 1.0, tl.float32)
    else:
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
        if MASKED:
            k = tl.load(k_ptrs, mask=(offs_n < n_keys)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
        elif HEAD_DIM == D_PAD:
            k = tl.load(k_ptrs)
        else:
            k = tl.load(k_ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if NULL_ROWS:
            qk = _hide_null(qk, j0, offs_n, kpos_ptr, null_ptr, sees, n_keys, qk_scale, BLOCK_N)
        qk = qk * qk_scale
        if MASKED:
            qk = qk + tl.where(offs_m[:, None] >= offs_n[None, :], 0.0, -1.0e6)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        x = qk - m_new[:, None]
        p = tl.math.exp2(x)
        alpha = tl.math.exp2(m_i - m_new)
        # entropy: sum p * (s - m), kept relative to the running max (as v2's LSE pass)
        ent = alpha * (ent + (m_i - m_new) * l_i) + tl.sum(p * x, 1)
    a4 = alpha[:, None]
    rs = _rowsum(p, BLOCK_M, BLOCK_N)
    l_i = l_i * alpha + tl.sum(rs, 1)
    nul = nul * a4
    if null_block:  # null keys: no distance, no recency; only the row total and the null mass
        p = tl.where(kpos[None, :] >= 0, p, 0.0)
        rs_nn = _rowsum(p, BLOCK_M, BLOCK_N)
        nul += rs - rs_nn
    else:
        rs_nn = rs
    run = run * a4
    r_mass = r_mass * a4
    both = both * a4

    # -- split edges: the far semantic (and own) edges per element here, so that the position frame
    #    visits only the tiles within EDGES[N_NEAR - 1] of its rows; S_r too when r is beyond that --
    if N_FAR > 0 or S_IN_SLOT:
        kf = kpos.to(tl.float32)[None, :]
        ad = tl.abs(kf - ref_f[:, None])
        new_far = ()
        for e in tl.static_range(N_FAR):
            new_far = new_far + (far[e] * a4 + _edge_mass(p, ad, (1 << (N_NEAR + e)) >> 1, BLOCK_M, BLOCK_N),)
        far = new_far
        if HAS_OWN:
            ado = tl.abs(kf - own_f[:, None])
            new_own = ()
            for e in tl.static_range(N_FAR):
                new_own = new_own + (far_own[e] * a4 + _edge_mass(p, ado, (1 << (N_NEAR + e)) >> 1, BLOCK_M, BLOCK_N),)
            far_own = new_own
        if S_IN_SLOT:
            s_in = s_in * a4 + _edge_mass(p, ad, r, BLOCK_M, BLOCK_N)

    # -- recency: as v2, plus the scale of the [rows, bins] accumulator ---------------------------
    rlo = i0 + rec_off - (j0 + BLOCK_N - 1)
    if MASKED:
        rlo = tl.maximum(rlo, rec_off)
    rhi = i0 + BLOCK_M - 1 + rec_off - j0
    blo = _bin_of(rlo)
    bhi = _bin_of(rhi)
    if (blo != bhi) | (blo != run_bin):
        cols = tl.arange(0, NBP)[None, :]
        rec_acc = (rec_acc * tl.math.exp2(m_acc - m_new)[:, None]
                   + tl.where(cols == run_bin, tl.sum(run, 1)[:, None], 0.0))
        m_acc = m_new
        if blo == bhi:
            run = rs_nn
        else:
            recf = rowf[:, None] - offs_n[None, :].to(tl.float32)
            rec_acc, run = _straddle(rec_acc, p, recf, rs_nn, blo, bhi, MAX_REC_EDGES, BLOCK_M, BLOCK_N, NBP)
        run_bin = blo
    else:
        run += rs_nn

    # -- R_w, and S_r & R_w: per element only on the tiles with recency <= w (next to the diagonal)
    if rlo <= w:
        ad = tl.abs(kpos.to(tl.float32)[None, :] - ref_f[:, None])
        if rhi > w:
            p = p * _le(rowf[:, None] - offs_n[None, :].to(tl.float32), w)
            r_mass += _rowsum(p, BLOCK_M, BLOCK_N)
        else:
            r_mass += rs_nn
        both += _edge_mass(p, ad, r, BLOCK_M, BLOCK_N)
    return m_new, l_i, ent, nul, r_mass, both, run, run_bin, rec_acc, m_acc, far, far_own, s_in


@triton.jit
def _slot_kernel(
    Q, K, KPOS, NULL_BLK, REF, OWN, SEES, WROW, LSE, ROWS_OUT, HIST_OUT, FAR_OUT,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_pos_b, stride_null_b, stride_ref_b,
    n_heads, n_rows, n_keys, n_row_blocks, qk_scale, rec_off, r, w,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MAX_REC_EDGES: tl.constexpr, NBP: tl.constexpr, N_NEAR: tl.constexpr, N_FAR: tl.constexpr,
    HAS_OWN: tl.constexpr, S_IN_SLOT: tl.constexpr, CHANCE: tl.constexpr, NULL_ROWS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Pass 1, slot frame. Writes LSE [B*H, R] (log2 units; +inf for rows not probed), ROWS_OUT
    [B*H, 6, R] (fields: S only, R only, both, neither, entropy (chance: log2 |V|), null mass;
    fractions of the row total; without S_IN_SLOT, S is left out (S only = -both, neither =
    1 - R + both) and the semantic pass adds it to fields 0 and 3), HIST_OUT [B*H, blocks, NBP]
    (recency histogram of the block's probed rows, bin 0 the null keys) and, with N_FAR far edges,
    FAR_OUT [B*H, (N_FAR + 1) x (1, or 2 with own), R]: per row the fraction at distance <= each
    far edge, then the fraction beyond the last (semantic, then own). OWN, REF, SEES and WROW share
    strides; WROW [B, R] is the chance pass's row weight 1 / |V| (read with CHANCE, so that the
    position pass, which weighs its rows with the same array, gets the same float32 fractions and
    an empty bin stays exactly 0)."""
    pid_m, pid_bh, b, h, i0 = _program(n_heads, n_row_blocks, BLOCK_M)
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    row_ok = offs_m < n_rows
    probed, ref_f, own_rows, own_f, rowf, sees = _slot_rows(REF, OWN, SEES, b, stride_ref_b, offs_m, row_ok, rec_off,
                                                            HAS_OWN, NULL_ROWS)  # recency of key j: rowf - j
    if CHANCE:
        q = 0.0
        m_i = tl.zeros([BLOCK_M], tl.float32)
    else:
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                    mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
        m_i = tl.zeros([BLOCK_M], tl.float32) - 1.0e30  # finite: (m_old - m_new) * l stays 0 * finite
    k_base = K + b * stride_kb + h * stride_kh
    kpos_ptr = KPOS + b * stride_pos_b
    null_ptr = NULL_BLK + b * stride_null_b

    hi = tl.where(tl.max(probed.to(tl.int32), 0) > 0, tl.minimum(i0 + BLOCK_M, n_keys), 0)
    lo = tl.minimum((i0 + 1) // BLOCK_N * BLOCK_N, hi)
    zero = tl.zeros([BLOCK_M, 4], tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    ent = tl.zeros([BLOCK_M], tl.float32)
    nul, r_mass, both, run = zero, zero, zero, zero
    run_bin = i0 * 0 - 1
    rec_acc = tl.zeros([BLOCK_M, NBP], tl.float32)  # relative to the max m_acc
    m_acc = m_i
    far = (zero,) * N_FAR  # cumulative semantic masses at the far edges
    far_own = (zero,) * N_FAR if HAS_OWN else ()
    s_in = zero
    for j0 in range(0, lo, BLOCK_N):
        m_i, l_i, ent, nul, r_mass, both, run, run_bin, rec_acc, m_acc, far, far_own, s_in = _slot_tile(
            j0, q, k_base, kpos_ptr, null_ptr, stride_kn, n_keys, qk_scale, offs_m, offs_d, ref_f, own_f, rowf, i0,
            rec_off, r, w, sees, m_i, l_i, ent, nul, r_mass, both, run, run_bin, rec_acc, m_acc, far, far_own, s_in,
            HEAD_DIM, D_PAD, BLOCK_M, BLOCK_N, MAX_REC_EDGES, NBP, N_NEAR, N_FAR, HAS_OWN, S_IN_SLOT, False, CHANCE,
            NULL_ROWS, DOT_PRECISION)
    for j0 in range(lo, hi, BLOCK_N):
        m_i, l_i, ent, nul, r_mass, both, run, run_bin, rec_acc, m_acc, far, far_own, s_in = _slot_tile(
            j0, q, k_base, kpos_ptr, null_ptr, stride_kn, n_keys, qk_scale, offs_m, offs_d, ref_f, own_f, rowf, i0,
            rec_off, r, w, sees, m_i, l_i, ent, nul, r_mass, both, run, run_bin, rec_acc, m_acc, far, far_own, s_in,
            HEAD_DIM, D_PAD, BLOCK_M, BLOCK_N, MAX_REC_EDGES, NBP, N_NEAR, N_FAR, HAS_OWN, S_IN_SLOT, True, CHANCE,
            NULL_ROWS, DOT_PRECISION)

    cols = tl.arange(0, NBP)[None, :]
    nul_r = tl.sum(nul, 1)
    rec_acc = rec_acc * tl.math.exp2(m_acc - m_i)[:, None] + tl.where(cols == run_bin, tl.sum(run, 1)[:, None], 0.0)
    l_safe = tl.maximum(l_i, 1e-30)  # rows never visited: not probed, masked below
    if CHANCE:  # 1 / |V|: the host's float32 value (see the docstring)
        inv = tl.load(WROW + b * stride_ref_b + offs_m, mask=row_ok, other=0.0)
    else:
        inv = 1.0 / l_safe
    hr = rec_acc + tl.where(cols == 0, nul_r[:, None], 0.0)
    tl.store(HIST_OUT + (pid_bh * n_row_blocks + pid_m) * NBP + tl.arange(0, NBP),
             tl.sum(tl.where(probed[:, None], hr * inv[:, None], 0.0), 0))
    row_base = ROWS_OUT + pid_bh.to(tl.int64) * N_ROW_FIELDS_C * n_rows + offs_m
    r_frac = tl.sum(r_mass, 1) * inv
    b_frac = tl.sum(both, 1) * inv
    s_frac = tl.sum(s_in, 1) * inv  # 0 unless S_IN_SLOT
    tl.store(row_base, tl.where(probed, s_frac - b_frac, 0.0), mask=row_ok)
    tl.store(row_base + n_rows, tl.where(probed, r_frac - b_frac, 0.0), mask=row_ok)
    tl.store(row_base + 2 * n_rows, tl.where(probed, b_frac, 0.0), mask=row_ok)
    tl.store(row_base + 3 * n_rows, tl.where(probed, 1.0 - s_frac - r_frac + b_frac, 0.0), mask=row_ok)
    if N_FAR > 0:  # per row: the fraction at distance <= each far edge, then beyond the last (from
        # counts in the chance pass, so that an empty bin stays exactly 0 in the position pass)
        l_nn = l_i - nul_r
        far_base = FAR_OUT + pid_bh.to(tl.int64) * (N_FAR + 1) * (2 if HAS_OWN else 1) * n_rows + offs_m
        for e in tl.static_range(N_FAR):
            tl.store(far_base + e * n_rows, tl.where(probed, tl.sum(far[e], 1) * inv, 0.0), mask=row_ok)
        tl.store(far_base + N_FAR * n_rows, tl.where(probed, (l_nn - tl.sum(far[N_FAR - 1], 1)) * inv, 0.0),
                 mask=row_ok)
        if HAS_OWN:
            own_base = far_base + (N_FAR + 1) * n_rows
            for e in tl.static_range(N_FAR):
                tl.store(own_base + e * n_rows, tl.where(own_rows, tl.sum(far_own[e], 1) * inv, 0.0), mask=row_ok)
            tl.store(own_base + N_FAR * n_rows,
                     tl.where(own_rows, (l_nn - tl.sum(far_own[N_FAR - 1], 1)) * inv, 0.0), mask=row_ok)
    tl.store(row_base + 5 * n_rows, tl.where(probed, nul_r * inv, 0.0), mask=row_ok)
    if CHANCE:  # the entropy of uniform attention over V
        tl.store(row_base + 4 * n_rows, tl.where(probed, tl.math.log2(tl.maximum(l_i, 1.0)), 0.0), mask=row_ok)
    else:
        tl.store(LSE + pid_bh.to(tl.int64) * n_rows + offs_m,
                 tl.where(probed, m_i + tl.math.log2(l_safe), float("inf")), mask=row_ok)
        tl.store(row_base + 4 * n_rows, tl.where(probed, tl.math.log2(l_safe) - ent / l_safe, 0.0), mask=row_ok)


# ----------------------------------------------------------------------------------------------
# Passes 2 and 3: position frame (rows sorted by reference / own position, keys by position)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _band_kernel(
    Q, K, KPOS_S, KIDX_S, KSLOT_S, RPOS_S, RSLOT_S, KRANGE, WROW, LSE, ROWS_OUT, FAR, HIST_OUT,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_ks_b, stride_rs_b, stride_w_b,
    n_heads, n_rows, n_row_blocks, qk_scale, r, far_field,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    N_NEAR: tl.constexpr, N_FAR: tl.constexpr, FAR_FIELDS: tl.constexpr, NBP: tl.constexpr,
    PARTS: tl.constexpr, CHANCE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Passes 2 and 3: the distance histogram |key position - row position| in the position frame.

    Sorted arrays (host, per sequence, padded to whole blocks): KPOS_S / KIDX_S / KSLOT_S [B, Kp]
    key positions ascending (null and padding keys repeat the last real position), their slot
    (for the gather of k) and their visibility slot (_FAR for null and padding keys); RPOS_S /
    RSLOT_S [B, Rp] row positions ascending and each row's slot (-1: not in this histogram, padding
    too). WROW [B, R] (slot order): each row's weight in the histogram (1 probed / 0; chance
    1 / |V|). Writes HIST_OUT [B*H, blocks, NBP] (bin 0 is left to the host) and, with PARTS, adds
    S_r (as a fraction of the row) to ROWS_OUT fields 0 and 3 at each row's slot.

    Split edges: bins 1..N_NEAR (distance <= EDGES[N_NEAR - 1]) are binned here, over the key
    blocks KRANGE [B, row blocks, 2] (first, end key block) that hold such distances; with N_FAR > 0 the bins
    above come from the slot pass's per-row fractions FAR [B*H, FAR_FIELDS, R] (fields far_field ..
    far_field + N_FAR: at distance <= each far edge, then beyond the last), read at each row's slot:
    the first far bin is its first field less this pass's near mass of the row. (N_FAR = 0: every
    key block, every bin here.)
    """
    pid_m, pid_bh, b, h, i0 = _program(n_heads, n_row_blocks, BLOCK_M)
    offs_i = i0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    rpos_ptr = RPOS_S + b * stride_rs_b
    slot = tl.load(RSLOT_S + b * stride_rs_b + offs_i)  # [BLOCK_M], -1 for rows left out
    ok = slot >= 0
    slot_c = tl.maximum(slot, 0)
    pos_f = tl.load(rpos_ptr + offs_i).to(tl.float32)
    r_lo = tl.load(rpos_ptr + i0)  # the block's positions, ascending: first and last
    r_hi = tl.load(rpos_ptr + i0 + BLOCK_M - 1)
    wrow = tl.load(WROW + b * stride_w_b + slot_c, mask=ok, other=0.0)
    if CHANCE:
        q = 0.0
        lse = pos_f
    else:
        q = tl.load(Q + b * stride_qb + h * stride_qh + slot_c[:, None] * stride_qm + offs_d[None, :],
                    mask=ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
        lse = tl.load(LSE + pid_bh.to(tl.int64) * n_rows + slot_c, mask=ok, other=float("inf"))
    k_base = K + b * stride_kb + h * stride_kh
    kpos_ptr = KPOS_S + b * stride_ks_b

    zero = tl.zeros([BLOCK_M, 4], tl.float32)
    s_in, run = zero, zero
    run_bin = i0 * 0 - 1
    acc = tl.zeros([BLOCK_M, NBP], tl.float32)
    cols = tl.arange(0, NBP)[None, :]
    kb_first = tl.load(KRANGE + (b * n_row_blocks + pid_m) * 2)  # key blocks, not keys: j0 below is then
    kb_end = tl.load(KRANGE + (b * n_row_blocks + pid_m) * 2 + 1)  # a known multiple of BLOCK_N (vector loads)
    kb_end = tl.where(tl.max(ok.to(tl.int32), 0) > 0, kb_end, kb_first)
    for kb in range(kb_first, kb_end):
        j0 = kb * BLOCK_N
        offs_n = j0 + tl.arange(0, BLOCK_N)
        kslot = tl.load(KSLOT_S + b * stride_ks_b + offs_n)
        kpos = tl.load(kpos_ptr + offs_n).to(tl.float32)
        vis = kslot[None, :] <= slot[:, None]  # causal and not null: one compare
        if CHANCE:
            p = tl.where(vis, 1.0, 0.0)
        else:
            kidx = tl.load(KIDX_S + b * stride_ks_b + offs_n)
            k = tl.load(k_base + kidx[:, None] * stride_kn + offs_d[None, :], mask=(offs_d < HEAD_DIM)[None, :],
                        other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
            p = tl.where(vis, tl.math.exp2(qk * qk_scale - lse[:, None]), 0.0)
        rs = _rowsum(p, BLOCK_M, BLOCK_N)
        # distance range of the tile from its corner positions (both axes ascending)
        k_lo = tl.load(kpos_ptr + j0)
        k_hi = tl.load(kpos_ptr + j0 + BLOCK_N - 1)
        d_lo = tl.maximum(tl.maximum(k_lo - r_hi, r_lo - k_hi), 0)
        d_hi = tl.maximum(k_hi - r_lo, r_hi - k_lo)
        # bins above N_NEAR + 1 are empty (max_distance) or, with far edges, the slot pass's: bin
        # N_NEAR + 1 then collects what lies beyond EDGES[N_NEAR - 1], dropped below
        blo = tl.minimum(_bin_of(d_lo), N_NEAR + 1)
        bhi = tl.minimum(_bin_of(d_hi), N_NEAR + 1)
        if (blo != bhi) | (blo != run_bin):
            acc += tl.where(cols == run_bin, tl.sum(run, 1)[:, None], 0.0)
            if blo == bhi:
                run = rs
            else:  # per element, only the edges the tile straddles
                acc, run = _straddle(acc, p, tl.abs(kpos[None, :] - pos_f[:, None]), rs, blo, bhi, N_NEAR,
                                     BLOCK_M, BLOCK_N, NBP)
            run_bin = blo
        else:
            run += rs
        if PARTS:  # S_r: the whole tile, nothing, or one compare per element
            if d_hi <= r:
                s_in += rs
            elif d_lo <= r:
                s_in += _edge_mass(p, tl.abs(kpos[None, :] - pos_f[:, None]), r, BLOCK_M, BLOCK_N)
    acc += tl.where(cols == run_bin, tl.sum(run, 1)[:, None], 0.0)
    hist = acc * wrow[:, None]
    if N_FAR > 0:  # the far bins: differences of the slot pass's per-row fractions
        near = tl.sum(tl.where((cols >= 1) & (cols <= N_NEAR), acc, 0.0), 1) * wrow  # counts x weight, as there
        hist = tl.where(cols == N_NEAR + 1, 0.0, hist)
        far_base = FAR + (pid_bh.to(tl.int64) * FAR_FIELDS + far_field) * n_rows + slot_c
        prev = near
        for e in tl.static_range(N_FAR + 1):
            f = tl.load(far_base + e * n_rows, mask=ok, other=0.0)
            if e < N_FAR:
                hist = tl.where(cols == N_NEAR + 1 + e, (f - prev)[:, None], hist)
            else:  # the field beyond the last far edge: the last bin
                hist = tl.where(cols == N_NEAR + 1 + e, f[:, None], hist)
            prev = f
    tl.store(HIST_OUT + (pid_bh * n_row_blocks + pid_m) * NBP + tl.arange(0, NBP), tl.sum(hist, 0))
    if PARTS:
        s_frac = tl.sum(s_in, 1) * wrow
        row_base = ROWS_OUT + pid_bh.to(tl.int64) * N_ROW_FIELDS_C * n_rows + slot_c
        tl.store(row_base, tl.load(row_base, mask=ok, other=0.0) + s_frac, mask=ok)
        tl.store(row_base + 3 * n_rows, tl.load(row_base + 3 * n_rows, mask=ok, other=0.0) - s_frac, mask=ok)


# ----------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------


def _sorted_frame(pos: Tensor, valid: Tensor, block: int, none: int) -> tuple[Tensor, Tensor]:
    """Positions of the valid entries in ascending order, and their indices (`none` for padding),
    per sequence, padded to a whole number of blocks: ([B, Np] int32 positions, [B, Np] int32 index).
    Invalid entries sort last and repeat the last valid position, so a block's first and last
    positions bound all of its entries' positions."""
    B, n = pos.shape
    n_pad = triton.cdiv(n, block) * block
    big = torch.iinfo(torch.int32).max
    keyed = torch.where(valid, pos.to(torch.int32), big)
    keyed = torch.nn.functional.pad(keyed, (0, n_pad - n), value=big)
    sorted_pos, order = keyed.sort(dim=1)
    is_valid = sorted_pos != big
    sorted_pos = torch.where(is_valid, sorted_pos, -1).cummax(dim=1).values.clamp(min=0)
    index = torch.where(is_valid, order.to(torch.int32), none)
    return sorted_pos.contiguous(), index.contiguous()


def _key_ranges(rpos_s: Tensor, kpos_s: Tensor, block_m: int, block_n: int, theta: int | None) -> Tensor:
    """[B, row blocks, 2] int32: the key blocks [first, end) (block indices) of the position frame
    that hold a key within theta of a row of each row block (all of them for theta None)."""
    B, n_keys = kpos_s.shape
    n_rb = rpos_s.shape[1] // block_m
    if theta is None:
        first = torch.zeros(B, n_rb, dtype=torch.int64, device=kpos_s.device)
        end = torch.full_like(first, n_keys // block_n)
    else:
        r_lo, r_hi = rpos_s[:, ::block_m], rpos_s[:, block_m - 1 :: block_m]  # both axes ascending
        first = torch.searchsorted(kpos_s, (r_lo - theta).contiguous()) // block_n
        end = torch.searchsorted(kpos_s, (r_hi + theta).contiguous(), right=True)
        end = ((end + block_n - 1) // block_n).clamp(max=n_keys // block_n)
    return torch.stack([first, end], dim=-1).to(torch.int32).contiguous()


FAR_EDGES = 2
"""Split edges: the slot pass bins the FAR_EDGES largest distance edges per element; the position
frame the others, over only the key blocks within the largest of them (EDGES[n - 1 - FAR_EDGES])
of its rows: about a quarter of the square. Two is the minimum of the instruction count over the
split at T = 1024, 4096 and 16384 (benchmarks/v3_tile_classes.py; docs/kernel.md, v3)."""


def near_edges_for(n_sem: int) -> int:
    """How many of the n_sem distance edges the position frame bins by default."""
    return max(1, n_sem - FAR_EDGES)


def default_config_v3(device: torch.device) -> dict[str, int]:
    """Launch parameters: slot_* for the slot pass, band_* for the position-frame passes. Not tuned
    on a GPU yet (docs/kernel.md, v3): one warpgroup per program, as v2's statistics pass."""
    if device.type != "cuda":  # interpreter: fewer, larger numpy ops
        return dict(slot_m=64, slot_n=64, slot_warps=4, band_m=64, band_n=64, band_warps=4, num_stages=1)
    return dict(slot_m=64, slot_n=32, slot_warps=4, band_m=64, band_n=64, band_warps=4, num_stages=2)


def probe_stats_v3(q, k, key_pos, row_ref, *, row_own=None, sees_null=None, recency_offset, r, w, scale=None,
                   max_distance=None, per_sequence=False, slot_block=None, band_block=None,
                   near_edges: int | None = None) -> ProbeStats:
    """`probe_stats` without the joint histogram, through the v3 kernels (module docstring).

    Same arguments and result as `workbench.kernels.probe_kernel.probe_stats`, but `joint_mass`
    and `joint_chance` are None. slot_block / band_block: (block_m, block_n) overrides of the two
    frames; near_edges: how many distance edges the position frame bins (the rest go per element
    to the slot pass; default `near_edges_for`). Results do not depend on any of them beyond
    float32 rounding."""
    if near_edges is not None and near_edges < 1:
        raise ValueError(f"near_edges must be >= 1, got {near_edges}")
    cfg = default_config_v3(q.device)
    if slot_block is not None:
        cfg["slot_m"], cfg["slot_n"] = slot_block
    if band_block is not None:
        cfg["band_m"], cfg["band_n"] = band_block
    for bm, bn in ((cfg["slot_m"], cfg["slot_n"]), (cfg["band_m"], cfg["band_n"])):
        if bm < 16 or bn < 16 or bm & (bm - 1) or bn & (bn - 1):
            raise ValueError(f"block sizes must be powers of two >= 16, got {bm} x {bn}")
    # validation, dtypes and the null-key blocks of the slot pass: shared with v2
    pp = _prepare(q, k, key_pos, row_ref, row_own, sees_null, recency_offset, r, w, scale, max_distance,
                  dict(block_m=cfg["slot_m"], block_n=cfg["slot_n"]))
    q, k, key_pos, row_ref = pp.q, pp.k, pp.key_pos, pp.row_ref
    B, H, R, K = pp.shape
    dev = q.device
    c = pp.constexprs
    qk_scale, rec_off = pp.args[2], int(recency_offset)
    common = dict(HEAD_DIM=c["HEAD_DIM"], D_PAD=c["D_PAD"], DOT_PRECISION=c["DOT_PRECISION"],
                  num_stages=cfg["num_stages"])

    # position frames: keys by position (null keys out), rows by reference / own position
    kpos_s, kidx = _sorted_frame(key_pos, key_pos >= 0, cfg["band_n"], -1)
    kslot_s = torch.where(kidx >= 0, kidx, _FAR).contiguous()
    kidx_s = kidx.clamp(min=0).contiguous()
    probed = row_ref >= 0
    frames = [_sorted_frame(row_ref, probed, cfg["band_m"], -1)]
    if pp.has_own:
        frames.append(_sorted_frame(pp.row_own, probed & (pp.row_own >= 0), cfg["band_m"], -1))
    n_sem = c["N_SEM"]
    n_near = min(n_sem, near_edges_for(n_sem) if near_edges is None else near_edges)
    n_far = n_sem - n_near
    theta = EDGES[n_near - 1] if n_far else None  # None: the position frame bins every distance
    s_in_slot = theta is not None and int(r) > theta  # then S_r is not near the position diagonal
    far_fields = (n_far + 1) * (2 if pp.has_own else 1)
    ranges = [_key_ranges(rpos_s, kpos_s, cfg["band_m"], cfg["band_n"], theta) for rpos_s, _ in frames]
    band = dict(BLOCK_M=cfg["band_m"], BLOCK_N=cfg["band_n"], N_NEAR=n_near, N_FAR=n_far, FAR_FIELDS=far_fields,
                NBP=NBP, num_warps=cfg["band_warps"], **common)

    def launch(chance: bool):
        nh = 1 if chance else H
        rows = torch.empty(B * nh, N_ROW_FIELDS, R, dtype=torch.float32, device=dev)
        n_rb = triton.cdiv(R, cfg["slot_m"])
        rec = torch.empty(B * nh, n_rb, NBP, dtype=torch.float32, device=dev)
        lse = rows if chance else torch.empty(B * H, R, dtype=torch.float32, device=dev)
        weights = pp.joint_weights[int(chance)]  # [B, R]: 1 per probed row; chance: 1 / |V|
        far = torch.empty(B * nh, far_fields, R, dtype=torch.float32, device=dev) if n_far else rows  # rows: not read
        _slot_kernel[(n_rb * B * nh,)](
            q, k, key_pos, pp.null_blk, row_ref, pp.row_own, pp.sees, pp.joint_weights[1], lse, rows, rec, far,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), key_pos.stride(0),
            pp.null_blk.stride(0), row_ref.stride(0), nh, R, K, n_rb, qk_scale, rec_off, int(r), int(w),
            BLOCK_M=cfg["slot_m"], BLOCK_N=cfg["slot_n"], MAX_REC_EDGES=_max_rec_edges(cfg["slot_m"], cfg["slot_n"]),
            NBP=NBP, N_NEAR=n_near, N_FAR=n_far, HAS_OWN=pp.has_own and n_far > 0, S_IN_SLOT=s_in_slot,
            CHANCE=chance, NULL_ROWS=c["NULL_ROWS"], num_warps=cfg["slot_warps"], **common)
        hists = []
        for i, ((rpos_s, rslot_s), krange) in enumerate(zip(frames, ranges)):
            n_bb = rpos_s.shape[1] // cfg["band_m"]
            out = torch.empty(B * nh, n_bb, NBP, dtype=torch.float32, device=dev)
            _band_kernel[(n_bb * B * nh,)](
                q, k, kpos_s, kidx_s, kslot_s, rpos_s, rslot_s, krange, weights, lse, rows, far, out,
                q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), kpos_s.stride(0),
                rpos_s.stride(0), weights.stride(0), nh, R, n_bb, qk_scale, int(r), i * (n_far + 1),
                PARTS=i == 0 and not s_in_slot, CHANCE=chance, **band)
            hists.append(out)
        rows = rows.view(B, nh, N_ROW_FIELDS, R)
        block_sum = lambda x: x.view(B, nh, -1, NBP).sum(2, dtype=torch.float64)  # noqa: E731
        rec_h = block_sum(rec)
        null = rec_h[..., 0]  # bin 0 of every histogram: the null keys' mass of the rows it counts
        sem_h = block_sum(hists[0])
        sem_h[..., 0] = null
        stack = [sem_h, rec_h]
        if pp.has_own:
            own_h = block_sum(hists[1])
            own_rows = (probed & (pp.row_own >= 0)).to(torch.float64)  # [B, R]
            own_h[..., 0] = (rows[:, :, 5].double() * own_rows[:, None]).sum(-1)
            stack.append(own_h)
        else:
            stack.append(torch.zeros_like(rec_h))
        hist = torch.stack(stack, dim=2)[..., :N_BINS]
        if per_sequence:
            return rows.double(), hist
        return rows.sum(0, dtype=torch.float64), hist.sum(0)

    rows_m, hist_m = launch(False)
    rows_c, hist_c = launch(True)
    probed_d = probed.double()
    own_rows = probed_d * (pp.row_own >= 0) if pp.has_own else None
    if per_sequence:
        step_rows, n_own = probed_d, (own_rows.sum(-1) if pp.has_own else probed_d.new_zeros(B))
    else:
        step_rows, n_own = probed_d.sum(0), (own_rows.sum() if pp.has_own else probed_d.new_zeros(()))
    return _assemble(rows_m, hist_m, None, rows_c, hist_c, None, step_rows, n_own, n_sem=n_sem, r=int(r), w=int(w),
                     recency_offset=rec_off, has_own=pp.has_own)
