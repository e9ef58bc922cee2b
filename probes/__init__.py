"""Probe definitions, one or more per file, found by `workbench.probing.registry.discover()`.

Each probe is `fn(ctx) -> Iterable[Row]` registered with `@probe(name, needs=...)`; see
docs/probes.md for the contract, the metrics each probe writes, and how to add one.
"""
