"""`--fast` writes the reference's table, and `torchrun --nproc_per_node=2 ... probe` writes the
table of a one-process run (CPU: the kernel through Triton's interpreter, gloo for the ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workbench.checkpoint import save
from workbench.probing import read_table, run_probes
from tests.test_probes_runner import TEXT, tiny

REPO = Path(__file__).resolve().parents[1]
OBSERVATIONAL = "parts,histograms,specialisation,sink,entropy,by_step"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny-16"
    save(tiny(d_head=16), path, data={"val_text": "val.txt", "val_fraction": 0.1, "corpus": {"fingerprint": "test"}},
         extra_files={"val.txt": TEXT[-400:].encode()})
    return path


def test_fast_writes_the_reference_table(checkpoint, monkeypatch):
    """The kernel source (interpreted on CPU) against the reference: the same table, by_step sink
    rows included, within float tolerance."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from workbench.probing import runner, sources

    monkeypatch.setattr(runner, "make_source", lambda fast, device, model: (sources.KernelSource(), "kernel (test)"))
    args = dict(probes=OBSERVATIONAL, max_sequences=7, batch_size=3, progress=False, r=2, w=3)
    fast = run_probes(checkpoint, **args).table
    monkeypatch.undo()
    ref = run_probes(checkpoint, **args).table
    assert len(fast) == len(ref) and (ref.metric == "sink").any()
    assert ((ref.probe == "by_step") & (ref.metric == "sink")).sum() > 0
    keys = ["probe", "metric", "layer", "stream", "head", "x"]
    pd.testing.assert_frame_equal(fast[keys].reset_index(drop=True), ref[keys].reset_index(drop=True))
    for column in ("value", "chance", "ci"):
        a, b = fast[column].to_numpy(float), ref[column].to_numpy(float)
        ok = (abs(a - b) <= 1e-4 + 1e-4 * abs(b)) | (pd.isna(a) & pd.isna(b))
        assert ok.all(), ref[~ok].assign(fast=a[~ok])
    if "label" in set(ref.metric):
        pd.testing.assert_series_equal(fast.label.reset_index(drop=True), ref.label.reset_index(drop=True))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(args: list[str], nproc: int | None, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                                         "--master_port", str(_free_port())]
    cmd = [sys.executable, *launcher, "-m", "workbench.cli", "probe", *args]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=120)


def _one_process_then_two_ranks(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """Run `args` alone (--out tmp/one), then under torchrun on 2 ranks (--out tmp/two); both must succeed."""
    for out, nproc in (("one", None), ("two", 2)):
        run = _cli([*args, "--out", str(tmp / out)], nproc, tmp)
        assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_torchrun_two_ranks_write_the_one_process_table(checkpoint, tmp_path):
    args = ["--checkpoint", str(checkpoint), "--probes", "parts,sink,by_step,knockout", "--max-sequences", "10",
            "--batch-size", "2", "--causal-sequences", "5", "--heads", "0.1", "--device", "cpu", "--threads", "1",
            "--no-progress"]
    two = _one_process_then_two_ranks(args, tmp_path)
    assert two.stdout.count("probed 10 sequences") == 1  # rank 0 reports
    a, b = read_table(tmp_path / "one"), read_table(tmp_path / "two")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["metadata.json", "probes.parquet"]
    meta = json.loads((tmp_path / "two" / "metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["sequences_probed"] == 10


def test_torchrun_block_sums_give_the_one_process_table(checkpoint, tmp_path):
    """Enough batches (66 > 64) that the statistics are summed in blocks of two batches, runs of
    blocks dealt to the ranks, which exchange the sums of their subtrees of the pairwise tree:
    still the one-process table, bit for bit.
    r and w as --radius / --window: torchrun's own parser would take --r for its --rdzv-* options."""
    args = ["--checkpoint", str(checkpoint), "--probes", "parts,by_step", "--seq-len", "5", "--radius", "2",
            "--window", "3", "--max-sequences", "66", "--batch-size", "1", "--device", "cpu", "--threads", "1",
            "--no-progress"]
    two = _one_process_then_two_ranks(args, tmp_path)
    pd.testing.assert_frame_equal(read_table(tmp_path / "one"), read_table(tmp_path / "two"), check_exact=True)
    meta = json.loads((tmp_path / "two" / "metadata.json").read_text())
    assert (meta["r"], meta["w"]) == (2, 3)
    assert meta["ci_unit"]["statistics"] == {"unit": "block", "n_units": 16, "n_sequences": 66}  # blocks of 4-5 windows


def test_resume_loads_batches_by_global_index(checkpoint, tmp_path):
    """Shards are keyed by the global batch index (the same names under any world size): a killed
    run resumes with only the missing batches and gives the uninterrupted table."""
    class Killed(Exception):
        pass

    def kill(key, batch):
        if batch == 2:
            raise Killed

    args = dict(probes="parts,sink", max_sequences=10, batch_size=2, progress=False, device="cpu")
    with pytest.raises(Killed):
        run_probes(checkpoint, out=tmp_path / "r", on_shard=kill, **args)
    seen = []
    resumed = run_probes(checkpoint, out=tmp_path / "r", on_shard=lambda k, b: seen.append(b), **args)
    assert seen == [3, 4]
    full = run_probes(checkpoint, **args)
    pd.testing.assert_frame_equal(resumed.table, full.table, check_exact=True)
