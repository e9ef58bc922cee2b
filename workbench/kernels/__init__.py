"""Probe statistics from q and k: the contract, a PyTorch reference and the fused Triton kernel.

    from workbench.kernels import probe_stats, reference_probe_stats, pattern_stats, ProbeStats

`probe_stats` (Triton) and `reference_probe_stats` (PyTorch, any device) share one interface and
return the same `ProbeStats`; `pattern_stats` computes it from a materialised pattern (the
definition, used by the hooks-based probes). docs/coordinates.md states the contract and
docs/kernel.md the kernel's design and numbers.

`probe_stats` is imported lazily: importing this package needs neither Triton nor a GPU. The Triton
code lives in `workbench.kernels.probe_kernel` (a module name distinct from the function, so that
`from workbench.kernels import probe_stats` always gives the function).
"""

from workbench.kernels.contract import (
    EDGES,
    N_BINS,
    PARTS,
    ProbeStats,
    distance_bin,
    empty_stats,
    pattern_stats,
)
from workbench.kernels.reference import reference_probe_stats

__all__ = [
    "EDGES", "N_BINS", "PARTS", "ProbeStats", "distance_bin", "empty_stats", "pattern_stats",
    "probe_stats", "reference_probe_stats",
]


def __getattr__(name: str):
    if name == "probe_stats":  # needs triton; see the caveats in workbench/kernels/probe_kernel.py
        from workbench.kernels.probe_kernel import probe_stats

        return probe_stats
    raise AttributeError(f"module 'workbench.kernels' has no attribute {name!r}")
