"""Compile the statistics kernel for sm_90a on any machine (no GPU needed) and count its SASS.

    python benchmarks/sass_kernel.py                # default tile, bf16, d_head 64, 11 edges
    python benchmarks/sass_kernel.py --own --edges 15 --sass /tmp/k.sass

Prints the registers and, for the first loop (the unmasked key loop), the instructions of each
straight-line block with its most frequent opcodes: the per-tile instruction counts quoted in
docs/kernel.md. Needs triton's bundled ptxas / cuobjdump / nvdisasm (pip triton has them); the
compiler version is this machine's, not necessarily the device machine's.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile, do not interpret
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
import triton.backends.nvidia as nvidia_backend  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import workbench.kernels.probe_kernel as pk  # noqa: E402

POINTERS = dict(Q="*{dt}", K="*{dt}", KPOS="*i32", NULL_BLK="*i32", REF="*i32", OWN="*i32", SEES="*i32", JW="*fp32",
                LSE="*fp32", ROWS_OUT="*fp32", HIST_OUT="*fp32", JOINT_OUT="*fp32")


def compile_stats(block_m, block_n, d_head, dtype, n_sem, r, has_own, num_warps, num_stages, maxnreg, chance=False):
    fn = pk._probe_stats_kernel
    names = fn.arg_names
    s_mode, r_idx = pk._s_mode(r, n_sem, max_distance=2 * pk.EDGES[n_sem - 1] - 1)  # positions needing n_sem edges
    consts = dict(HEAD_DIM=d_head, D_PAD=d_head, BLOCK_M=block_m, BLOCK_N=block_n, N_SEM=n_sem, HAS_OWN=has_own,
                  S_MODE=s_mode, R_IDX=r_idx, MAX_REC_EDGES=pk._max_rec_edges(block_m, block_n), NBP=pk.NBP,
                  JS=pk.JS, CHANCE=chance, NULL_ROWS=False, DOT_PRECISION="tf32x3" if dtype == "fp32" else "tf32")
    sig = {n: POINTERS[n].format(dt=dtype) if n in POINTERS else "constexpr" if n in consts
           else "fp32" if n == "qk_scale" else "i32" for n in names}
    # what the launcher specialises on at run time: 16-byte aligned pointers, strides divisible by 16
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n in POINTERS or n.startswith("stride")}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    options = dict(num_warps=num_warps, num_stages=num_stages, **({"maxnreg": maxnreg} if maxnreg else {}))
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


V3_POINTERS = dict(Q="*{dt}", K="*{dt}", KPOS="*i32", NULL_BLK="*i32", REF="*i32", OWN="*i32", SEES="*i32",
                   KPOS_S="*i32", KIDX_S="*i32", KSLOT_S="*i32", RPOS_S="*i32", RSLOT_S="*i32", KRANGE="*i32",
                   WROW="*fp32", LSE="*fp32", ROWS_OUT="*fp32", HIST_OUT="*fp32", FAR_OUT="*fp32", FAR="*fp32")


def compile_v3(which, block_m, block_n, d_head, dtype, n_sem, num_warps, num_stages, chance=False, has_own=False):
    """The v3 slot-frame kernel (which="slot") or position-frame kernel ("band", with S_r) for sm_90a,
    with v3's default split of the n_sem distance edges between the two frames."""
    import workbench.kernels.probe_v3 as v3

    fn = v3._slot_kernel if which == "slot" else v3._band_kernel
    names = fn.arg_names
    consts = dict(HEAD_DIM=d_head, D_PAD=d_head, BLOCK_M=block_m, BLOCK_N=block_n, NBP=pk.NBP, CHANCE=chance,
                  DOT_PRECISION="tf32x3" if dtype == "fp32" else "tf32")
    n_near = v3.near_edges_for(n_sem)
    if which == "slot":
        consts.update(MAX_REC_EDGES=pk._max_rec_edges(block_m, block_n), NULL_ROWS=False, N_NEAR=n_near,
                      N_FAR=n_sem - n_near, HAS_OWN=has_own and n_sem > n_near, S_IN_SLOT=False)
    else:
        consts.update(N_NEAR=n_near, N_FAR=n_sem - n_near, FAR_FIELDS=(n_sem - n_near + 1) * (1 + has_own),
                      PARTS=True)
    sig = {n: V3_POINTERS[n].format(dt=dtype) if n in V3_POINTERS else "constexpr" if n in consts
           else "fp32" if n == "qk_scale" else "i32" for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n in V3_POINTERS or n.startswith("stride")}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps,
                                                                               num_stages=num_stages))


def disassemble(kernel) -> tuple[str, str]:
    """(resource usage, SASS) of a compiled kernel, through triton's bundled cuobjdump / nvdisasm."""
    tools = Path(nvidia_backend.__file__).parent / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([tools / "cuobjdump", "-res-usage", cubin], capture_output=True, text=True, check=True)
        sass = subprocess.run([tools / "nvdisasm", "-c", cubin], capture_output=True, text=True, check=True)
    return usage.stdout, sass.stdout


def first_loop_blocks(sass: str):
    """(instructions, blocks of the first backward-branch loop as (count, Counter of opcodes))."""
    ins, labels = [], {}
    for line in sass.splitlines():
        if m := re.match(r"\s*(\.L_x_\d+):", line):
            labels[len(ins)] = m.group(1)
        elif m := re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(.*?);", line):
            ins.append(m.group(1).strip())
    where = {v: k for k, v in labels.items()}
    for i, text in enumerate(ins):
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", text)
        if m and where.get(m.group(1), i) < i:  # the first backward branch closes the first loop
            start, blocks, ops = where[m.group(1)], [], collections.Counter()
            for j in range(start, i + 1):
                ops[re.sub(r"^@!?U?P\w+\s+", "", ins[j]).split()[0]] += 1
                if j + 1 in labels or any(op in ins[j] for op in ("BRA", "BSSY", "BSYNC", "EXIT")):
                    blocks.append((sum(ops.values()), ops))
                    ops = collections.Counter()
            return len(ins), blocks
    return len(ins), []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", default="64x32x4x2", help="BLOCK_M x BLOCK_N x warps x stages")
    ap.add_argument("--d-head", type=int, default=64)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--edges", type=int, default=11, help="semantic edges (11 at T = 1024)")
    ap.add_argument("--r", type=int, default=4, help="semantic radius (4: one of the edges)")
    ap.add_argument("--own", action="store_true", help="with own distances (single stream)")
    ap.add_argument("--maxnreg", type=int, default=None)
    ap.add_argument("--chance", action="store_true", help="the chance pass (CHANCE: p = 1 on visible keys, no q k^T)")
    ap.add_argument("--sass", default=None, help="also write the SASS here")
    ap.add_argument("--kernel", default="v2", choices=("v2", "v3-slot", "v3-band"),
                    help="v2's statistics pass, or one of the two v3 kernels (--maxnreg does not apply)")
    args = ap.parse_args()
    bm, bn, nw, ns = (int(x) for x in args.tile.split("x"))
    if args.kernel == "v2":
        kernel = compile_stats(bm, bn, args.d_head, args.dtype, args.edges, args.r, args.own, nw, ns, args.maxnreg, args.chance)
    else:
        kernel = compile_v3(args.kernel[3:], bm, bn, args.d_head, args.dtype, args.edges, nw, ns, chance=args.chance, has_own=args.own)
    usage, sass = disassemble(kernel)
    if args.sass:
        Path(args.sass).write_text(sass)
    regs = re.search(r"REG:\d+", usage).group(0)
    own = (" + own" if args.own else "") + (", chance pass" if args.chance else "")
    print(f"{args.kernel}: triton {triton.__version__}, sm_90a, tile {args.tile}, {args.dtype} d_head {args.d_head}, "
          f"r {args.r}, {args.edges} edges{own}: {regs}")
    total, blocks = first_loop_blocks(sass)
    print(f"{total} instructions in the kernel; first loop: {sum(n for n, _ in blocks)} in {len(blocks)} blocks")
    for n, ops in blocks:
        if n >= 20:
            print(f"  {n:5d}  " + ", ".join(f"{k} {v}" for k, v in ops.most_common(6)))


if __name__ == "__main__":
    main()
