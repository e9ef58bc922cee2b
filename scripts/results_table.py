"""Render results/nll.json (written by `workbench eval --out`) as the Markdown table of
docs/results.md: any-order and left-to-right NLL per variant and length, and the gap
decoupled_rope - two_stream with its 95% interval (the two intervals combined in quadrature)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def half(e: dict) -> float:
    return (e["ci_high"] - e["ci_low"]) / 2


def main(path: Path = ROOT / "results" / "nll.json") -> str:
    table = json.loads(path.read_text())
    lines = ["| variant | length | any-order bits/token (95% CI) | left-to-right bits/token | windows x orders |",
             "|---|---:|---:|---:|---:|"]
    for length in (128, 1024):
        for variant in ("two_stream", "decoupled_rope", "sigma_gpt"):
            r = table[f"{variant}-{length}"]
            a, l = r["any_order_bits"], r["left_to_right_bits"]
            lines.append(f"| {variant} | {length} | {a['mean']:.3f} ± {half(a):.3f} | {l['mean']:.3f} ± {half(l):.3f} "
                         f"| {r['n_windows']} x {r['n_orders']} |")
    lines += ["", "| length | decoupled_rope − two_stream (any-order bits/token) | sigma_gpt − two_stream |", "|---:|---:|---:|"]
    for length in (128, 1024):
        two = table[f"two_stream-{length}"]["any_order_bits"]
        gaps = []
        for other in ("decoupled_rope", "sigma_gpt"):
            o = table[f"{other}-{length}"]["any_order_bits"]
            gaps.append(f"{o['mean'] - two['mean']:+.3f} ± {math.hypot(half(o), half(two)):.3f}")
        lines.append(f"| {length} | {gaps[0]} | {gaps[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(*(Path(a) for a in sys.argv[1:])))
