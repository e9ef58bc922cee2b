"""Probes: how each attention head splits its mass between semantic and structural keys.

    from workbench.probing import run_probes, probe, Row, discover
    result = run_probes("two_stream-128", out="results/probes/two_stream-128")

Modules, one job each: `registry` (probe definitions by name), `context` (what a probe sees; the
resumable batch map), `sources` (one batch -> statistics: patterns or the kernel), `engine` (attention statistics
pooled over a dataset, with CIs), `causal` (ablation and knockout), `divergence` (model-free
order divergence), `specialisation` (labels), `readout` (the parts at any r, w from the joint
histogram), `table` (the tidy results table), `runner` (a whole run: validation, resume, atomic
output), `cli` (`workbench probe`). The probes themselves live in the top-level `probes/` package.
"""

from workbench.probing.registry import Probe, ProbeRegistryError, discover, probe
from workbench.probing.table import COLUMNS, Row, read_table

__all__ = ["COLUMNS", "Probe", "ProbeRegistryError", "Row", "discover", "probe", "read_table", "run_probes"]


def __getattr__(name: str):
    if name == "run_probes":  # the runner imports the models; keep `import workbench.probing` light
        from workbench.probing.runner import run_probes

        return run_probes
    raise AttributeError(f"module 'workbench.probing' has no attribute {name!r}")
