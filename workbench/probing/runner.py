"""A whole probe run: validate everything, run the probes (resumably), write the table and metadata.

    run_probes("two_stream-128", out="results/probes/two_stream-128")

Output directory:

    probes.parquet   the tidy table (workbench/probing/table.py lists the columns)
    metadata.json    checkpoint, data fingerprint, seed, rows probed, the unit of the confidence
                     intervals (`ci_unit`), versions, git commit, ...
    .partial/        while running: state.json + one file per finished batch; removed at the end

Guarantees:

- every argument, the checkpoint and the data are checked before anything is written, so a bad
  call leaves no output at all;
- the table and the metadata are written atomically (temp file + os.replace), never half;
- a run killed midway resumes from its finished batches when started again with the same
  arguments (deleting the temporaries the kill left), and gives exactly the table an
  uninterrupted run gives; a directory holding a run with other arguments is refused, naming the
  arguments that differ; a failure before the first batch is saved leaves nothing behind;
- one run per --out at a time: a second one is refused at once, naming the first one's pid
  (workbench/probing/out_dir.py);
- results are deterministic for a seed (each sequence's order is seeded by (seed, sequence)).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workbench.devices import parse_device
from workbench.models import HookedAOModel
from workbench.probing import distributed, out_dir, registry
from workbench.probing.context import ProbeContext, ProbeSettings
from workbench.probing.sources import make_source
from workbench.probing.table import TABLE_FILE, Row, read_table, rows_to_table, write_table
from workbench.results_io import write_json_atomic
from workbench.stats import ci_unit

METADATA_FILE = "metadata.json"
PARTIAL_DIR = ".partial"
STATE_FILE = "state.json"
FORMAT = "aoarm-workbench/probes/1"
SPLITS = ("val", "train", "all")
ORDERS = ("random", "left_to_right")
PACKAGES = ("aoarm-workbench", "torch", "transformer-lens", "numpy", "pyarrow", "safetensors", "triton", "einops", "jaxtyping")


@dataclass
class ProbeRun:
    """What `run_probes` returns: the table (a pandas DataFrame), the metadata, the output dir."""

    table: Any
    metadata: dict[str, Any]
    out: Path | None


def run_probes(
    checkpoint: str | Path | HookedAOModel,
    *,
    data: str | Path | Tensor | None = None,
    probes: Iterable[str] | str | None = None,
    out: str | Path | None = None,
    r: int = 4,
    w: int = 4,
    seq_len: int | None = None,
    max_sequences: int | None = 64,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    fast: bool = False,
    split: str = "val",
    orders: str | Tensor = "random",
    causal_sequences: int = 32,
    heads: Iterable[str] | str | None = None,
    max_heads: int = 2,
    options: dict[str, Any] | None = None,
    progress: bool = True,
    on_shard: Callable[[str, int], None] | None = None,
) -> ProbeRun:
    """Run `probes` (default: all registered) on `checkpoint` over `data`; see the module doc.

    checkpoint: a bundled name, a checkpoint directory, or a model object (a hand-built model).
    data: a corpus spec for workbench.data.load_corpus, a [sequence, pos] tensor of token ids, or
        None for the checkpoint's own validation text. `split` picks the part of a corpus spec
        (val: the last 10%, as in training). Windows are non-overlapping, `seq_len` tokens each
        (default: a data tensor's length, else the model's n_ctx); the first `max_sequences` are
        probed (None: all).
    orders: "random" (one seeded order per sequence), "left_to_right", or a tensor of generation
        orders: [sequence, pos] (one per row of a data tensor) or [pos] (shared), e.g. the order
        you just studied; its fingerprint is part of the run's identity (a resume must match).
    r, w: semantic radius and structural window (1 <= r, w < seq_len).
    heads: for the knockout probe, "layer.head" or "layer.head.stream" entries (a comma-separated
        string or a list); default: the heads labelled semantic / structural, `max_heads` of each
        per stream. causal_sequences: how many sequences the causal probes use.
    fast: statistics from the fused kernel (CUDA); without CUDA, falls back to the reference with
        a warning. batch_size: sequences per batch (default: 64 on the kernel path, where small
        batches leave the GPU waiting on Python; 8 on the reference path, which holds
        [batch, head, T, T] patterns). out: the output directory (None: nothing written, nothing resumable).
    on_shard: called as (key, batch) after each batch is saved (progress hooks, tests).
    Under `torchrun --nproc_per_node=N` the batches are shared out over the ranks and rank 0 writes
    the table a one-process run writes (workbench/probing/distributed.py).
    """
    started = time.time()
    names = _probe_names(probes)
    _check_ints(r=r, w=w, causal_sequences=causal_sequences, max_heads=max_heads, seed=seed)
    if batch_size is not None:
        _check_ints(batch_size=batch_size)
    if max_sequences is not None:
        _check_ints(max_sequences=max_sequences)
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; use one of {', '.join(SPLITS)}.")
    given_orders = None
    if isinstance(orders, Tensor):
        given_orders, orders = orders, "given"
    elif not isinstance(orders, str) or orders not in ORDERS:
        shown = repr(orders) if isinstance(orders, str) else f"a {type(orders).__name__}"
        raise ValueError(f"orders={shown} is unknown; use one of {', '.join(ORDERS)} or a [sequence, pos] tensor of orders.")
    if isinstance(data, Tensor) and seq_len is None:
        seq_len = data.shape[-1]  # the tensor says it
    selected = registry.get(names)
    device, joined = distributed.init_from_env(parse_device(device))
    held = ExitStack()
    try:
        model, ckpt = _model(checkpoint, device)
        seq_len = model.cfg.n_ctx if seq_len is None else seq_len
        _check_ints(seq_len=seq_len)
        if not 2 <= seq_len <= model.cfg.n_ctx:
            raise ValueError(f"seq_len={seq_len} must be between 2 and the model's n_ctx={model.cfg.n_ctx}.")
        for name, value in (("r", r), ("w", w)):
            if not 1 <= value < seq_len:
                raise ValueError(
                    f"{name}={value} is out of range: it must be at least 1 (the contract's smallest useful "
                    f"{'radius' if name == 'r' else 'window'}) and below seq_len={seq_len} (a set that "
                    "covers every key measures nothing). Typical values: 1, 4, 16."
                )
        windows, data_meta = _windows(model, ckpt, data, split, seq_len)
        if given_orders is not None:
            given_orders = _given_orders(given_orders, windows.shape[0], seq_len)
        if max_sequences is not None:
            windows = windows[:max_sequences]
            given_orders = None if given_orders is None else given_orders[:max_sequences]
        head_list = _heads(heads, model)
        source, source_note = make_source(fast, device, model)
        if batch_size is None:
            batch_size = 64 if source.name == "kernel" else 8
        settings = ProbeSettings(
            r=r, w=w, seed=seed, batch_size=batch_size, causal_sequences=causal_sequences, heads=head_list,
            max_heads=max_heads, orders=orders, extra=dict(options or {}),
        )
        spec = {
            "checkpoint": ckpt["name"], "checkpoint_sha256": ckpt["sha256"], "data_fingerprint": data_meta["fingerprint"],
            "split": data_meta["split"], "seq_len": seq_len, "n_sequences": int(windows.shape[0]), "probes": names or sorted(p.name for p in selected),
            "source": source.name, "device": device.type, **{k: v for k, v in asdict(settings).items()},
        }
        if given_orders is not None:
            spec["orders_fingerprint"] = hashlib.sha256(given_orders.numpy().data).hexdigest()[:16]
        spec = json.loads(json.dumps(spec))  # tuples -> lists, as they come back from state.json

        workdir, created = None, []
        if out is not None:
            out = Path(out)
            if out.exists() and not out.is_dir():
                raise ValueError(f"--out {out} is a file; give a directory.")
            workdir = out / PARTIAL_DIR
            if distributed.is_main():  # rank 0 creates the run directory and holds it; the others wait for it
                created = [d for d in (workdir, *workdir.parents) if not d.exists()][::-1]  # outermost first
                out.mkdir(parents=True, exist_ok=True)
                held.enter_context(out_dir.locked(out))
                out_dir.remove_leftovers(out, workdir, (TABLE_FILE, METADATA_FILE))
            done = _prepare_out(out, spec)
            if done is not None:
                return done
            if distributed.is_main():
                workdir.mkdir(exist_ok=True)
                if not (workdir / STATE_FILE).is_file():
                    write_json_atomic(workdir / STATE_FILE, {"format": FORMAT, "spec": spec})
            distributed.barrier()

        ctx = ProbeContext(
            model, windows, settings, checkpoint=ckpt["name"], source=source, workdir=workdir,
            progress=progress, on_shard=on_shard, orders=given_orders,
        )
        try:
            rows = _run(selected, ctx, ckpt["name"])
        except BaseException:
            if distributed.is_main():
                out_dir.forget_if_nothing_done(workdir, created)
            raise
        table = rows_to_table(rows)

        stats = ctx.__dict__.get("stats")  # only if a probe asked for it
        metadata = {
            "format": FORMAT,
            "checkpoint": {k: v for k, v in ckpt.items()},
            "data": {**data_meta, "seq_len": seq_len, "n_sequences": int(windows.shape[0]), "orders": orders},
            "seed": seed,
            "r": r,
            "w": w,
            "probes": [{"name": p.name, "needs": sorted(p.needs), "description": p.description} for p in selected],
            "rows_probed": {
                stream: int(pooled.total("rows")[0]) for (layer, stream), pooled in (stats or {}).items() if layer == 0
            },
            "sequences_probed": int(windows.shape[0]),
            "causal_sequences": min(causal_sequences, int(windows.shape[0])),
            # what the table's `ci` is over: blocks of contiguous windows, or sequences when too few
            "ci_unit": {"statistics": ci_unit(int(windows.shape[0])),
                        "causal": ci_unit(min(causal_sequences, int(windows.shape[0])))},
            "statistics_source": {"requested": "kernel" if fast else "reference", "used": source_note},
            "device": str(device),
            "world_size": distributed.world_size(),
            "versions": _versions(),
            "git_commit": _git_commit(),
            "table": TABLE_FILE,
            "columns": list(table.schema.names),
            "n_table_rows": table.num_rows,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - started, 2),
            "spec": spec,
        }
        if out is None or not distributed.is_main():  # under torchrun rank 0 alone writes
            return ProbeRun(table.to_pandas(), metadata, out)
        write_table(table, out / TABLE_FILE)
        write_json_atomic(out / METADATA_FILE, metadata)
        shutil.rmtree(workdir)
        return ProbeRun(table.to_pandas(), metadata, out)
    finally:
        held.close()  # the --out lock
        distributed.finish(joined)


def _run(selected: list[registry.Probe], ctx: ProbeContext, checkpoint: str) -> list[tuple[str, str, Row]]:
    rows = []
    for entry in selected:
        for row in entry(ctx) or ():
            if not isinstance(row, Row):
                raise TypeError(f"probe {entry.name!r} ({entry.source}) yielded {type(row).__name__}; probes must yield workbench.probing.Row.")
            rows.append((checkpoint, entry.name, row))
    return rows


def _given_orders(orders: Tensor, n_sequences: int, seq_len: int) -> Tensor:
    """A user's orders tensor as int64 [n_sequences, seq_len] on the CPU, checked (no tensor dumped)."""
    from workbench.orders import check_order

    if orders.ndim == 2 and orders.shape[0] != n_sequences:
        raise ValueError(
            f"orders has {orders.shape[0]} rows but the data has {n_sequences} sequences; give one order per "
            "sequence, or one [pos] order for all."
        )
    if orders.ndim not in (1, 2) or orders.shape[-1] != seq_len:
        raise ValueError(f"orders must be [sequence, pos] or [pos] with pos = seq_len = {seq_len}, got shape {tuple(orders.shape)}.")
    return check_order(orders.cpu(), n_sequences, seq_len, torch.device("cpu")).contiguous()


# ---- validation --------------------------------------------------------------------------------


def _probe_names(probes: Iterable[str] | str | None) -> list[str] | None:
    if probes is None:
        return None
    names = [p.strip() for p in probes.split(",")] if isinstance(probes, str) else [str(p).strip() for p in probes]
    names = [n for n in names if n]
    if not names:
        raise ValueError("probes is empty; name at least one probe, or leave it out for all of them.")
    return names


def _check_ints(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be an integer.")
        if name in ("r", "w"):  # their range depends on seq_len: checked once it is known
            continue
        if value < (0 if name == "seed" else 1):
            raise ValueError(f"{name}={value} must be {'>= 0' if name == 'seed' else 'a positive integer'}.")


def _model(checkpoint: str | Path | HookedAOModel, device: torch.device) -> tuple[HookedAOModel, dict[str, Any]]:
    if isinstance(checkpoint, HookedAOModel):
        model = checkpoint.to(device).eval()
        info = getattr(model, "checkpoint", None)
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        name = info.name if info is not None else "model"
        return model, {"name": name, "path": None, "sha256": digest.hexdigest()[:16], "variant": model.cfg.variant, "config": model.cfg.to_dict()}
    from workbench.checkpoint import WEIGHTS, load, resolve

    path = resolve(checkpoint)  # a clear error for a missing checkpoint
    model = load(path, device=device)
    digest = hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()[:16]
    return model, {
        "name": model.checkpoint.name, "path": str(path.resolve()), "sha256": digest,
        "variant": model.cfg.variant, "config": model.cfg.to_dict(),
        "training_data_fingerprint": model.checkpoint.data.get("corpus", {}).get("fingerprint"),
    }


def _windows(model: HookedAOModel, ckpt: dict, data, split: str, seq_len: int) -> tuple[Tensor, dict[str, Any]]:
    """[sequence, pos] windows of token ids and a description of where they came from."""
    from workbench.data import load_corpus, sequential_windows, train_val_split

    if isinstance(data, Tensor):
        if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] != seq_len:
            raise ValueError(f"data tensor must be [sequence, pos] with pos = seq_len = {seq_len} and at least one sequence, got {tuple(data.shape)}.")
        if data.is_floating_point() or int(data.min()) < 0 or int(data.max()) >= model.cfg.d_vocab:
            raise ValueError(f"data tensor must hold token ids in [0, {model.cfg.d_vocab}).")
        data = data.long().cpu().contiguous()
        digest = hashlib.sha256(data.numpy().data).hexdigest()[:16]  # the array's buffer, not a copy
        return data, {"spec": "tensor", "split": "all", "fingerprint": digest}
    if model.tokenizer is None:
        raise ValueError("this model has no tokenizer, so text data cannot be tokenised; pass data as a [sequence, pos] tensor of token ids.")
    info = getattr(model, "checkpoint", None)
    if data is None:
        val_text = info.data.get("val_text") if info is not None else None
        if val_text is None or not (info.path / val_text).is_file():
            where = info.data.get("corpus", {}).get("source", "unknown") if info is not None else "unknown"
            raise ValueError(
                f"checkpoint {ckpt['name']} bundles no validation text; pass --data with a corpus "
                f"(the one it was trained on: {where})."
            )
        if split != "val":
            raise ValueError(f"split={split!r} needs --data: the checkpoint bundles only its validation text.")
        text = (info.path / val_text).read_text(encoding="utf-8")
        tokens = model.tokenizer.encode_tensor(text)
        meta = {
            "spec": f"{ckpt['name']}:{val_text}", "split": "val", "corpus": info.data.get("corpus"),
            "fingerprint": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16],
        }
    else:
        corpus = load_corpus(data)
        tokens = model.tokenizer.encode_tensor(corpus.text)
        val_fraction = info.data.get("val_fraction", 0.1) if info is not None else 0.1
        if split != "all":
            parts = train_val_split(tokens, seq_len, val_fraction)
            tokens = parts.val if split == "val" else parts.train
        meta = {"spec": str(data), "split": split, "corpus": corpus.metadata(), "fingerprint": corpus.fingerprint, "val_fraction": val_fraction}
    if tokens.numel() < seq_len:
        raise ValueError(f"the data has {tokens.numel()} tokens, fewer than one window of seq_len={seq_len}; use more data or a shorter --seq-len.")
    return sequential_windows(tokens, seq_len), meta


def _heads(heads: Iterable[str] | str | None, model: HookedAOModel) -> list[tuple[int, str, int]] | None:
    if heads is None:
        return None
    items = [h.strip() for h in heads.split(",")] if isinstance(heads, str) else [str(h).strip() for h in heads]
    out = []
    for item in filter(None, items):
        parts = item.split(".")
        try:
            layer, head = int(parts[0]), int(parts[1])
            streams = [parts[2]] if len(parts) == 3 else list(model.stream_names)
            if len(parts) not in (2, 3):
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(f"head {item!r} is not 'layer.head' or 'layer.head.stream' (e.g. 2.3 or 2.3.query).") from None
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads) or any(s not in model.stream_names for s in streams):
            raise ValueError(
                f"head {item!r} is not in the model: layers 0..{model.cfg.n_layers - 1}, heads "
                f"0..{model.cfg.n_heads - 1}, streams {', '.join(model.stream_names)}."
            )
        out.extend((layer, s, head) for s in streams)
    if not out:
        raise ValueError("heads is empty; give 'layer.head[.stream]' entries or leave it out.")
    return out


def _prepare_out(out: Path, spec: dict[str, Any]) -> ProbeRun | None:
    """Check `out` against this run's spec: None to go on (fresh or resuming), a ProbeRun when the
    same run is already complete; raise when `out` holds a different run."""
    state = out / PARTIAL_DIR / STATE_FILE
    if state.is_file():
        saved = json.loads(state.read_text())
        _compare(saved.get("spec", {}), spec, out, "a partial run")
        n = out_dir.saved_batches(out / PARTIAL_DIR)
        if n and distributed.is_main():
            print(f"workbench probe: resuming {out}: {n} batches saved by an earlier run are reused.")
        return None
    meta_file = out / METADATA_FILE
    if meta_file.is_file() and (out / TABLE_FILE).is_file():
        saved = json.loads(meta_file.read_text())
        _compare(saved.get("spec", {}), spec, out, "a finished run")
        print(f"workbench probe: {out} already holds this run's results; nothing to do.")
        return ProbeRun(read_table(out), saved, out)
    return None


def _compare(saved: dict[str, Any], spec: dict[str, Any], out: Path, what: str) -> None:
    differ = sorted(k for k in set(saved) | set(spec) if saved.get(k) != spec.get(k))
    if differ:
        details = "; ".join(f"{k}: {saved.get(k)!r} there, {spec.get(k)!r} now" for k in differ)
        raise ValueError(
            f"{out} holds {what} with other arguments ({details}); a run resumes only with the "
            "same arguments. Use another --out directory, or delete this one to start over."
        )


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
