"""Tile classes of the v3 kernels and the instructions they predict (docs/kernel.md, v3). No GPU.

    python benchmarks/v3_tile_classes.py [--sizes 1024,4096,16384] [--slot 64x32] [--band 64x64]

For the benchmark's layout (single stream, T rows and keys, key 0 null, a random generation order)
it walks the tiles of one (sequence, head) exactly as the kernels do, counts each class, and
multiplies by the SASS instructions per element of that class (per thread and element, counted
with `benchmarks/sass_kernel.py --kernel v3-slot|v3-band`, Triton 3.9's ptxas, sm_90a, bf16,
d_head 64, 4 warps; the constants below). The result is instructions per *visible* (row, key)
pair, the unit of docs/kernel.md's v2 numbers (54 per pair in v2's statistics pass).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

# SASS instructions per element a thread holds, per class (see the module docstring)
SLOT = {  # 64 x 32 tile: 16 elements per thread
    "common": 236 / 16,  # dot, online softmax + entropy, rescaling, row sums, run add, R_w test, loop
    "far": (120 + 8) / 2 / 16,  # each far semantic edge (split edges), per element of every tile
    "flush": 80 / 16,  # the run ends: rescale the [rows, bins] accumulator, add the run
    "edge": 83 / 16,  # each recency edge a tile straddles (the first: 72)
    "near_w": 150 / 16,  # recency <= w: R_w per element (straddle) and S_r & R_w
}
FAR_EDGES = 2  # workbench.kernels.probe_v3.FAR_EDGES (--far: other splits)
BAND = {  # 64 x 64 tile: 32 elements per thread
    "common": 302 / 32,  # gathered k, dot, exp2 against the LSE, visibility compare, row sums, loop
    "flush": 33 / 32,
    "edge": 114 / 32,  # each distance edge a tile straddles (runtime loop)
    "s_r": 113 / 32,  # a tile across r: one compare per element
}


def bin_of(x):
    x = np.asarray(x)
    return np.where(x <= 0, 1, np.minimum(2 + np.ceil(np.log2(np.maximum(x, 1))).astype(int), 17))


def n_edges(T):
    return 1 + math.ceil(math.log2(T - 1))  # semantic edges the kernels evaluate (max distance T - 1)


def near_edges(T):
    return max(1, n_edges(T) - FAR_EDGES)  # workbench.kernels.probe_v3.near_edges_for


def slot_counts(T, bm, bn, w, rec_off=0):
    """Element counts per class in the slot frame (causal half, diagonal blocks included)."""
    c = dict(common=0, far=0, flush=0, edge=0, near_w=0)
    n_far = n_edges(T) - near_edges(T)
    for i0 in range(0, T, bm):
        run_bin = -1
        hi = min(i0 + bm, T)
        lo = min((i0 + 1) // bn * bn, hi)
        for j0 in range(0, hi, bn):
            rlo = i0 + rec_off - (j0 + bn - 1)
            if j0 >= lo:
                rlo = max(rlo, rec_off)
            rhi = i0 + bm - 1 + rec_off - j0
            blo, bhi = int(bin_of(rlo)), int(bin_of(rhi))
            n = bm * bn
            c["common"] += n
            c["far"] += n * n_far
            if blo != bhi or blo != run_bin:
                c["flush"] += n
                c["edge"] += n * (bhi - blo)
                run_bin = blo
            if rlo <= w:
                c["near_w"] += n
    return c


def band_counts(T, bm, bn, r, seed=0):
    """Element counts per class in the position frame (full square, but with split edges only the
    key blocks within EDGES[near edges - 1] of each row block): positions of rows and keys sorted
    (single stream: keys hold positions 0..T-2 and the null key, rows 0..T-1)."""
    g = np.random.default_rng(seed)
    order = g.permutation(T)
    key_pos = np.sort(np.concatenate([order[:-1]]))  # the null key is left out of this frame
    kp = np.concatenate([key_pos, np.full((-len(key_pos)) % bn, key_pos[-1])])
    rp = np.sort(order)
    rp = np.concatenate([rp, np.full((-len(rp)) % bm, rp[-1])])
    c = dict(common=0, flush=0, edge=0, s_r=0)
    n_near = near_edges(T)
    split = n_edges(T) > n_near
    theta = (1 << (n_near - 1)) >> 1  # EDGES[n_near - 1]
    for i0 in range(0, len(rp), bm):
        r_lo, r_hi = rp[i0], rp[i0 + bm - 1]
        run_bin = -1
        first, end = 0, len(kp)
        if split:  # workbench.kernels.probe_v3._key_ranges
            first = int(np.searchsorted(kp, r_lo - theta)) // bn * bn
            end = min(-(-int(np.searchsorted(kp, r_hi + theta, side="right")) // bn) * bn, len(kp))
        for j0 in range(first, end, bn):
            k_lo, k_hi = kp[j0], kp[j0 + bn - 1]
            d_lo = max(k_lo - r_hi, r_lo - k_hi, 0)
            d_hi = max(k_hi - r_lo, r_hi - k_lo)
            blo, bhi = min(int(bin_of(d_lo)), n_near + 1), min(int(bin_of(d_hi)), n_near + 1)
            n = bm * bn
            c["common"] += n
            if blo != bhi or blo != run_bin:
                c["flush"] += n
                c["edge"] += n * (bhi - blo)
                run_bin = blo
            if d_lo <= r < d_hi:
                c["s_r"] += n
    return c


def main() -> None:
    global FAR_EDGES
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,4096,16384")
    ap.add_argument("--slot", default="64x32")
    ap.add_argument("--band", default="64x64")
    ap.add_argument("--r", type=int, default=4)
    ap.add_argument("--w", type=int, default=16)
    ap.add_argument("--far", type=int, default=FAR_EDGES, help="distance edges binned in the slot pass (split)")
    args = ap.parse_args()
    FAR_EDGES = args.far
    sm, sn = (int(x) for x in args.slot.split("x"))
    bm, bn = (int(x) for x in args.band.split("x"))
    print(f"slot tile {args.slot}, position-frame tile {args.band}, r={args.r}, w={args.w}, {FAR_EDGES} far edges; "
          "instructions per visible "
          "pair (softmax passes, per head; the chance passes run once per batch: divide by the heads)")
    print("| T | slot: common / far edges / flush / edges / near w | position: common / flush / edges / S_r | slot "
          "| position | both |")
    print("|---|---|---|---|---|---|")
    for T in (int(t) for t in args.sizes.split(",")):
        visible = T * (T + 1) / 2
        s, b = slot_counts(T, sm, sn, args.w), band_counts(T, bm, bn, args.r)
        s_i = {k: s[k] * SLOT[k] / visible for k in SLOT}
        b_i = {k: b[k] * BAND[k] / visible for k in BAND}
        fmt = lambda d: " / ".join(f"{v:.1f}" for v in d.values())  # noqa: E731
        print(f"| {T} | {fmt(s_i)} | {fmt(b_i)} | {sum(s_i.values()):.1f} | {sum(b_i.values()):.1f} "
              f"| {sum(s_i.values()) + sum(b_i.values()):.1f} |")


if __name__ == "__main__":
    main()
