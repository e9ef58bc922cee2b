"""Render results/nll.json (written by `workbench eval --out`) as the Markdown tables of
docs/results.md: any-order and left-to-right NLL per variant and length with blocked 95% intervals,
the gaps to two_stream paired over the same windows and orders, and the change of each gap from
128 to 1024 (variances added: different models and windows)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("two_stream", "decoupled_rope", "sigma_gpt")
LENGTHS = (128, 1024)
BASE = "two_stream"


def half(e: dict) -> float:
    return (e["ci_high"] - e["ci_low"]) / 2


def signed(e: dict) -> str:
    return f"{e['mean']:+.3f} ± {half(e):.3f}"


def main(path: Path = ROOT / "results" / "nll.json") -> str:
    table = json.loads(path.read_text())
    blocks = {r["any_order_bits"].get("n_blocks") for r in table.values()}
    lines = [f"| variant | length | any-order bits/token (95% CI, {'/'.join(map(str, sorted(blocks)))} blocks) "
             "| left-to-right bits/token | windows x orders | lag-1 autocorrelation |",
             "|---|---:|---:|---:|---:|---:|"]
    for length in LENGTHS:
        for variant in VARIANTS:
            r = table[f"{variant}-{length}"]
            a, l = r["any_order_bits"], r["left_to_right_bits"]
            lines.append(f"| {variant} | {length} | {a['mean']:.3f} ± {half(a):.3f} | {l['mean']:.3f} ± {half(l):.3f} "
                         f"| {r['n_windows']} x {r['n_orders']} | {r['lag1_autocorrelation']['any_order']:.2f} |")
    others = [v for v in VARIANTS if v != BASE]
    lines += ["", "| length | " + " | ".join(f"{v} − {BASE}, {m}" for v in others for m in ("any-order", "left-to-right"))
              + " |", "|---:|" + "---:|" * 2 * len(others)]
    for length in LENGTHS:
        cells = [signed(table[f"{v}-{length}"]["paired_differences"][f"{BASE}-{length}"][m])
                 for v in others for m in ("any_order_bits", "left_to_right_bits")]
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    long, short = LENGTHS[-1], LENGTHS[0]
    lines += ["", f"| change of the any-order gap, {long} minus {short} | " + " | ".join(f"{v} − {BASE}" for v in others)
              + " |", "|---|" + "---:|" * len(others)]
    cells = [signed(table[f"{v}-{long}"]["gap_change_with_length"][f"{BASE}-{long}"][str(short)]) for v in others]
    lines.append(f"| bits/token (95% CI) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(*(Path(a) for a in sys.argv[1:])))
