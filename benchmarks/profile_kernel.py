"""One probe_stats call at T=1024 for Nsight Compute: `ncu ... python benchmarks/profile_kernel.py`.

The first call compiles and warms up; profile the second call's launches (LSE pass, statistics
pass, chance pass: --launch-skip 3 --launch-count 3). Loads workbench.kernels without the model code.
"""

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

T = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
B = int(sys.argv[2]) if len(sys.argv) > 2 else 64
q, k, v, key_pos, row_ref, row_own = make_inputs(B, T)
for _ in range(2):
    probe_stats(q, k, key_pos, row_ref, recency_offset=0, r=4, w=16, max_distance=T - 1)
torch.cuda.synchronize()
