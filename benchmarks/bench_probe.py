"""End-to-end `workbench probe --fast` against a plain forward, and its speed-up on several GPUs.

    python benchmarks/bench_probe.py --json single.json                          # 1 GPU
    torchrun --nproc_per_node=2 benchmarks/bench_probe.py --json dist.json       # 2 GPUs
    python benchmarks/bench_probe.py --report single.json dist.json --out-dir benchmarks/results

Data: each bundled checkpoint's val.txt in windows of n_ctx tokens, repeated `--repeat` times,
random generation orders (the runner's, seeded). For each checkpoint, one process:

Every time is the median of three runs.

- `forward`: `model(tokens, order)` under torch.no_grad over every batch (batch size
  `--batch-size`, fp32 like the probe run; the faster of batches on the device beforehand and
  batches on the CPU as the probe run gets them): the floor;
- `statistics`: the attention statistics alone through the kernel (forward with hooks, kernel,
  accumulation, pooling; no model load, no table): where the run's time goes;
- `probe`: `run_probes(..., fast=True, probes=<observational>)` end to end (model load, hooks,
  kernel, accumulation, pooling, the table), warm (one small run first compiles the kernels);
- `check`: a `--check-sequences` run of the same probes through the reference path, and the
  largest |fast - reference| over the table's value / chance / ci columns.

Under torchrun (2+ ranks) only `probe` is timed (same data, batches shared out), and the table is
compared with the one-process table saved by the single run. `--report` merges both JSON files into
`probe-<device>-<date>.{json,md}`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS, device_name, result_stem, write_results  # noqa: E402

OBSERVATIONAL = "parts,histograms,specialisation,sink,entropy,by_step"


def windows_of(name: str, repeat: int):
    from workbench.checkpoint import load, resolve
    from workbench.data import sequential_windows

    model = load(resolve(name), device="cpu")
    text = (model.checkpoint.path / "val.txt").read_text(encoding="utf-8")
    windows = sequential_windows(model.tokenizer.encode_tensor(text), model.cfg.n_ctx)
    return windows.repeat(repeat, 1)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


REPEATS = 3  # every timing is the median of this many runs (the host-bound parts vary by ~0.3 s)


def median_time(run) -> float:
    times = []
    for _ in range(REPEATS):
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_forward(name: str, windows, batch_size: int, device: str) -> float:
    """The faster of two plain-forward loops: batches already on the device (checked there: each
    check waits for the device), or on the CPU as the probe run gets them (checked on the CPU,
    copied asynchronously)."""
    from workbench.checkpoint import load, resolve
    from workbench.probing.context import ProbeContext, ProbeSettings

    model = load(resolve(name), device=device).eval()
    ctx = ProbeContext(model, windows, ProbeSettings(batch_size=batch_size), progress=False)
    on_cpu = [ctx.batch(i) for i in range(ctx.n_batches())]
    on_device = [(tokens.to(device), order.to(device)) for tokens, order in on_cpu]
    times = []
    with torch.no_grad():
        for batches in (on_device, on_cpu):
            model(*batches[0])
            times.append(median_time(lambda: [model(tokens, order) for tokens, order in batches]))
    return min(times)


def time_statistics(name: str, windows, batch_size: int, device: str) -> float:
    """The attention statistics alone, through the kernel: forward with hooks, kernel calls,
    accumulation, copies to the host and pooling; no model load, no table."""
    from workbench.checkpoint import load, resolve
    from workbench.probing.context import ProbeContext, ProbeSettings
    from workbench.probing.sources import KernelSource

    model = load(resolve(name), device=device).eval()
    settings = ProbeSettings(batch_size=batch_size)
    _ = ProbeContext(model, windows[:batch_size], settings, source=KernelSource(), progress=False).stats  # warm
    return median_time(lambda: ProbeContext(model, windows, settings, source=KernelSource(), progress=False).stats)


def time_probe(name: str, windows, batch_size: int, device: str):
    from workbench.probing import run_probes
    from workbench.probing import distributed

    kw = dict(probes=OBSERVATIONAL, batch_size=batch_size, max_sequences=None, fast=True, device=device, progress=False)
    run_probes(name, data=windows[: 2 * batch_size * distributed.world_size()], **kw)  # compile the kernels
    runs = []

    def probe():
        distributed.barrier()  # every rank starts together; the time is the slowest rank's
        runs.append(run_probes(name, data=windows, **kw))
        sync()
        distributed.barrier()

    return median_time(probe), runs[-1]


def check(name: str, windows, batch_size: int, device: str) -> dict:
    import numpy as np

    from workbench.probing import run_probes

    kw = dict(probes=OBSERVATIONAL, batch_size=batch_size, max_sequences=None, device=device, progress=False)
    fast = run_probes(name, data=windows, fast=True, **kw)
    ref = run_probes(name, data=windows, fast=False, **kw)
    a, b = fast.table, ref.table
    same_rows = bool((a[["probe", "metric", "layer", "stream", "head", "x"]].values ==
                      b[["probe", "metric", "layer", "stream", "head", "x"]].values).all()) and len(a) == len(b)
    out = {"sequences": int(windows.shape[0]), "rows": len(b), "same_rows": same_rows,
           "fast_source": fast.metadata["statistics_source"]["used"],
           "by_step_sink_rows": int(((a.probe == "by_step") & (a.metric == "sink")).sum())}
    for column in ("value", "chance", "ci"):
        x, y = a[column].to_numpy(float), b[column].to_numpy(float)
        both = np.isfinite(x) & np.isfinite(y)
        out[f"max_abs_diff_{column}"] = float(np.abs(x - y)[both].max()) if both.any() else 0.0
        out[f"nan_mismatch_{column}"] = int((np.isfinite(x) != np.isfinite(y)).sum())
    if "label" in a:
        out["label_mismatches"] = int((a.label.fillna("") != b.label.fillna("")).sum())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", default="two_stream-1024,decoupled_rope-1024")
    p.add_argument("--repeat", type=int, default=4, help="val.txt windows, repeated this many times")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="at most this many sequences (quick tries)")
    p.add_argument("--check-sequences", type=int, default=16)
    p.add_argument("--json", help="write this run's results here")
    p.add_argument("--tables", default="/tmp/bench_probe_tables", help="one-process tables, for the multi-GPU comparison")
    p.add_argument("--report", nargs="+", help="merge these JSON files into a report")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args()
    if args.report:
        return report(args.report, Path(args.out_dir))

    from workbench.probing import distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device, joined = distributed.init_from_env(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    device = str(device)  # "cuda" alone, "cuda:LOCAL_RANK" under torchrun, or "cpu"
    tables = Path(args.tables)
    tables.mkdir(parents=True, exist_ok=True)
    results = {"world_size": world, "device_name": device_name(),
               "date": dt.date.today().isoformat(), "torch": torch.__version__, "batch_size": args.batch_size,
               "repeat": args.repeat, "probes": OBSERVATIONAL, "dtype": "fp32 (model weights as saved; no autocast)",
               "checkpoints": {}}
    for name in args.checkpoints.split(","):
        windows = windows_of(name, args.repeat)[: args.limit]
        row = {"sequences": int(windows.shape[0]), "seq_len": int(windows.shape[1])}
        seconds, result = time_probe(name, windows, args.batch_size, device)
        row["probe_s"] = seconds
        table_file = tables / f"{name}.parquet"
        if world == 1:
            row["forward_s"] = time_forward(name, windows, args.batch_size, device)
            row["statistics_s"] = time_statistics(name, windows, args.batch_size, device)
            row["ratio"] = row["probe_s"] / row["forward_s"]
            result.table.to_parquet(table_file)
            row["check"] = check(name, windows[: args.check_sequences], args.batch_size, device)
        elif distributed.is_main() and table_file.is_file():
            import pandas as pd

            one = pd.read_parquet(table_file)
            try:
                pd.testing.assert_frame_equal(one.reset_index(drop=True), result.table.reset_index(drop=True), check_exact=True)
                row["same_table_as_one_process"] = True
            except AssertionError as err:
                row["same_table_as_one_process"] = False
                row["table_difference"] = str(err)[:500]
        results["checkpoints"][name] = row
        if distributed.is_main():
            print(name, json.dumps(row, default=str), flush=True)
    if distributed.is_main() and args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    distributed.finish(joined)


def report(files: list[str], out_dir: Path) -> None:
    runs = [json.loads(Path(f).read_text()) for f in files]
    single = next(r for r in runs if r["world_size"] == 1)
    multi = [r for r in runs if r["world_size"] > 1]
    stem = result_stem(out_dir, "probe", single["device_name"], single["date"], f"bs{single['batch_size']}-x{single['repeat']}")
    lines = [
        f"# `workbench probe --fast` end to end ({single['device_name']}, {single['date']})",
        "",
        f"Probes: {single['probes']}; batch size {single['batch_size']}; data: val.txt windows x "
        f"{single['repeat']}; {single['dtype']}; torch {single['torch']}.",
        "",
        "| checkpoint | sequences x T | forward s | statistics s | probe --fast s | ratio (target <= 1.5) | "
        + " | ".join(f"{m['world_size']} GPUs s | speed-up (target >= 1.8) | same table" for m in multi) + " |",
        "|---|---|---|---|---|---|" + "---|---|---|" * len(multi),
    ]
    for name, row in single["checkpoints"].items():
        cells = [name, f"{row['sequences']} x {row['seq_len']}", f"{row['forward_s']:.2f}",
                 f"{row['statistics_s']:.2f}", f"{row['probe_s']:.2f}", f"{row['ratio']:.2f}"]
        for m in multi:
            mrow = m["checkpoints"].get(name)
            if mrow is None:
                cells += ["-", "-", "-"]
            else:
                cells += [f"{mrow['probe_s']:.2f}", f"{row['probe_s'] / mrow['probe_s']:.2f}",
                          str(mrow.get("same_table_as_one_process", "?"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Fast vs reference table (`check`, first sequences):", "",
              "| checkpoint | sequences | table rows | same rows | by_step sink rows | max abs diff value / chance / ci | label mismatches |",
              "|---|---|---|---|---|---|---|"]
    for name, row in single["checkpoints"].items():
        c = row["check"]
        lines.append(f"| {name} | {c['sequences']} | {c['rows']} | {c['same_rows']} | {c['by_step_sink_rows']} | "
                     f"{c['max_abs_diff_value']:.2e} / {c['max_abs_diff_chance']:.2e} / {c['max_abs_diff_ci']:.2e} | "
                     f"{c.get('label_mismatches', '-')} |")
    write_results(stem, {"single": single, "multi": multi}, "\n".join(lines), indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
