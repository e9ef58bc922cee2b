"""One probe_stats call for Nsight Compute, the second of two (the first compiles and warms up):

    ncu --profile-from-start off [sections] python benchmarks/profile_kernel.py [T] [B] [--v3] [--own]

Only the second call's launches are profiled: it runs between cudaProfilerStart and
cudaProfilerStop, so `--profile-from-start off` selects them whatever the number of launches per
call (v2: LSE, statistics and chance passes; v3: its own). --v3 runs probe_stats(joint=False),
i.e. the v3 kernels; --own adds the own-distance histograms. Loads workbench.kernels without the
model code. Defaults: T = 1024, B = 64.
"""

import argparse
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
pkg = types.ModuleType("workbench")
pkg.__path__ = [str(ROOT / "workbench")]
sys.modules.setdefault("workbench", pkg)
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_kernel import make_inputs  # noqa: E402

from workbench.kernels.probe_kernel import probe_stats  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("T", type=int, nargs="?", default=1024)
parser.add_argument("B", type=int, nargs="?", default=64)
parser.add_argument("--v3", action="store_true", help="the v3 kernels (probe_stats(joint=False))")
parser.add_argument("--own", action="store_true", help="with the own-distance histograms")
args = parser.parse_args()
q, k, v, key_pos, row_ref, row_own = make_inputs(args.B, args.T)


def call():
    probe_stats(q, k, key_pos, row_ref, row_own=row_own if args.own else None, recency_offset=0, r=4, w=16,
                max_distance=args.T - 1, joint=not args.v3)


call()
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStart()
call()
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
