"""Collect what the study's runs left (`scripts/study.py`, docs/study.md) into the committed
results, on the CPU, with no model:

- results/study-curves.json: every run's validation curve (any-order and left-to-right bits at
  each evaluation, in tokens) and where its minimum was, and the size sweep's runs beside them;
- results/study-emergence.json: for each probed run and model (the log-spaced snapshots, then
  best/), per stream the heads labelled semantic / structural / with a sink, the median index
  over chance and the median normalised semantic excess e_S (`workbench.app_data.stream_summary`,
  the app's per-stream summary);
- results/probes/<variant>-<length>/: the probe results of each bundled model (best/ of seed 0);
  `--probes-dir study-probes` while the study's models are not the bundled ones yet.

    python scripts/study_results.py --runs runs/study --sweeps 'runs/sweep-*'
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def curve(run_dir: Path) -> dict:
    """One run's settings summary and validation curve, from its metrics.jsonl and settings.json."""
    settings = json.loads((run_dir / "settings.json").read_text())["settings"]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [{"tokens": m["tokens"], "any_order_bits": m["val_any_order_bits"],
              "left_to_right_bits": m["val_left_to_right_bits"]} for m in lines if "val_any_order_bits" in m]
    speeds = [m["tokens_per_s"] for m in lines if "tokens_per_s" in m]
    best = min(evals, key=lambda e: e["any_order_bits"]) if evals else None
    return {
        "variant": settings["variant"], "seq_len": settings["seq_len"], "seed": settings["seed"],
        "size": [settings[k] for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp")],
        "train_tokens": settings["train_tokens"], "evals": evals,
        "best_tokens": best["tokens"] if best else None, "best_any_order_bits": best["any_order_bits"] if best else None,
        "last_tokens": evals[-1]["tokens"] if evals else 0,
        "compiled": all(m.get("compiled", True) for m in lines if "tokens_per_s" in m),
        "median_tokens_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,
    }


def emergence(run_dir: Path, best_tokens: int | None) -> list[dict]:
    """Per probed model of one run (snapshots `step-NNNNNN` by step, then best/), the per-stream
    summary, with the tokens the model had seen."""
    from workbench.app_data import head_frame, stream_summary
    from workbench.probing.table import read_table

    per_step = json.loads((run_dir / "settings.json").read_text())["settings"]["tokens_per_step"]
    rows = []
    for probed in sorted((run_dir / "probes").glob("*"), key=lambda p: (p.name == "best", p.name)):
        if not (probed / "probes.parquet").is_file():
            continue
        meta = json.loads((probed / "metadata.json").read_text())
        tokens = best_tokens if probed.name == "best" else int(probed.name.removeprefix("step-")) * per_step
        summary = stream_summary(head_frame(read_table(probed / "probes.parquet")))
        for row in summary.to_dict("records"):
            rows.append({"model": probed.name, "tokens": tokens, "n_sequences": meta["data"]["n_sequences"],
                         **{k: (float(v) if isinstance(v, float) else v) for k, v in row.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/study")
    parser.add_argument("--sweeps", default="runs/sweep-*", help="glob of the size sweep's run folders")
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--probes-dir", default="probes",
                        help="folder under --results for seed 0's best/ probe results (probes: they are the bundled models')")
    args = parser.parse_args()
    from workbench.results_io import write_json_atomic

    runs = sorted(p for p in Path(args.runs).glob("*-s*") if (p / "metrics.jsonl").is_file())
    sweeps = sorted(Path(p) for pattern in [args.sweeps] for d in glob.glob(pattern) for p in Path(d).glob("*-s*")
                    if (Path(p) / "metrics.jsonl").is_file())
    results = Path(args.results)
    curves = {r.name: curve(r) for r in runs}
    write_json_atomic(results / "study-curves.json", {"runs": curves,
                                                      "sweep": {f"{s.parent.name}/{s.name}": curve(s) for s in sweeps}})
    probed = [r for r in runs if (r / "probes").is_dir()]
    write_json_atomic(results / "study-emergence.json", {r.name: emergence(r, curves[r.name]["best_tokens"]) for r in probed})
    for run in probed:
        best = run / "probes" / "best"
        if (best / "probes.parquet").is_file():
            dest = results / args.probes_dir / run.name.rsplit("-s", 1)[0]
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(best, dest)
    print(f"{len(runs)} runs, {len(sweeps)} sweep runs, {len(probed)} probed -> {results}")


if __name__ == "__main__":
    main()
