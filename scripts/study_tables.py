"""Render results/study.json (written by `scripts/study.py evaluate`) as the Markdown tables of
docs/results.md: every run, the gaps to two_stream over seeds, and the change of each gap with
length over seeds.

    python scripts/study_tables.py [results/study.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pm(e: dict) -> str:
    half = (e["ci_high"] - e["ci_low"]) / 2
    return f"{e['mean']:+.3f} ± {half:.3f}" if half == half else f"{e['mean']:+.3f} (one seed: no interval)"


def tables(study: dict) -> str:
    lines = ["| variant | length | seed | params | tokens (at best) | PFLOPs | any-order bits/token | left-to-right |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(study["runs"], key=lambda r: (r["seq_len"], r["variant"], r["seed"])):
        a, l = r["any_order"], r["left_to_right"]
        lines.append(f"| {r['variant']} | {r['seq_len']} | {r['seed']} | {r['n_params'] / 1e6:.2f}M | {r['tokens'] / 1e6:.0f}M | "
                     f"{r['flops'] / 1e15:.2f} | {a['mean']:.3f} ± {(a['ci_high'] - a['ci_low']) / 2:.3f} | "
                     f"{l['mean']:.3f} ± {(l['ci_high'] - l['ci_low']) / 2:.3f} |")
    lines += ["", "Gap to two_stream (any-order bits/token; paired within each seed, 95% t interval over seeds):", "",
              "| variant | length | seeds | gap |", "|---|---:|---:|---:|"]
    for g in study["gaps_over_seeds"]:
        lines.append(f"| {g['variant']} | {g['seq_len']} | {len(g['seeds'])} | {_pm(g)} |")
    lines += ["", "Change of the gap with length (one value per seed, 95% t interval over seeds):", "",
              "| variant | from | to | change of the gap | per seed |", "|---|---:|---:|---:|---|"]
    for e in study["length_effect"]:
        per_seed = ", ".join(f"{v:+.3f}" for v in e["per_seed"].values())
        lines.append(f"| {e['variant']} | {e['from']} | {e['to']} | {_pm(e)} | {per_seed} |")
    return "\n".join(lines)


def main(path: Path = ROOT / "results" / "study.json") -> str:
    text = tables(json.loads(Path(path).read_text()))
    print(text)
    return text


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "results" / "study.json")
