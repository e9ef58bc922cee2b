"""A probe run's --out: one run at a time (a lock naming the other run's pid), the temporaries
and empty directories a killed run leaves are removed on resume, and Ctrl-C on `workbench probe`
says how many batches were kept; the rerun says it resumes."""

from __future__ import annotations

import os

import pytest

from tests.test_probes_runner import TEXT, tiny
from workbench.checkpoint import save
from workbench.cli import main as cli_main
from workbench.probing import run_probes, runner
from workbench.probing.out_dir import locked

ARGS = dict(probes="parts,sink", max_sequences=6, batch_size=2, causal_sequences=2, progress=False, device="cpu")
CLI = ["--probes", "parts,sink", "--max-sequences", "6", "--batch-size", "2", "--causal-sequences", "2",
       "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-16"
    save(tiny(), path, data={"val_text": "val.txt"}, extra_files={"val.txt": TEXT[-400:].encode()})
    return path


class Stop(Exception):
    pass


def _stop_after(n: int, error: type[BaseException] = Stop):
    def on_shard(key, batch):
        if batch == n - 1:
            raise error

    return on_shard


def test_a_second_run_on_the_same_out_is_refused_naming_the_first(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with locked(out):  # another run holds it (this process: the lock is per open directory)
        with pytest.raises(ValueError, match=f"in use by another probe run \\(pid {os.getpid()}\\)"):
            run_probes(checkpoint, out=out, **ARGS)
        assert list(out.iterdir()) == []  # the refused run wrote nothing
    assert (run_probes(checkpoint, out=out, **ARGS).out / "probes.parquet").is_file()


def test_a_resume_removes_what_a_killed_run_left(checkpoint, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Stop):
        run_probes(checkpoint, out=out, on_shard=_stop_after(2), **ARGS)
    leftovers = [out / ".probes.parquet.tmp-0123abcd", out / ".probes.parquet.k2x9_q0a",  # now / earlier versions
                 out / ".metadata.json.tmp-89abcdef", out / ".partial" / ".state.json.tmp-00000000"]
    shard_dir = next(d for d in (out / ".partial").iterdir() if d.is_dir())
    leftovers.append(shard_dir / ".00002.safetensors.tmp-11111111")
    for path in leftovers:
        path.write_bytes(b"half")
    (out / ".partial" / "empty_key").mkdir()
    user_file = out / "notes.txt"
    user_file.write_text("mine")
    run_probes(checkpoint, out=out, **ARGS)
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "notes.txt", "probes.parquet"]


def test_a_failure_before_the_first_batch_leaves_no_partial_directory(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(Stop):
        run_probes(checkpoint, out=out, on_shard=_stop_after(1), **ARGS)
    for shard in out.glob(".partial/*/*.safetensors"):  # as if the kill had come before the first save
        shard.unlink()
    assert sorted(p.name for p in (out / ".partial").iterdir()) != ["state.json"]  # a batch directory too

    def fails(*args):
        raise Stop

    monkeypatch.setattr(runner, "_run", fails)
    with pytest.raises(Stop):
        run_probes(checkpoint, out=out, **ARGS)
    assert list(out.iterdir()) == []


def test_ctrl_c_says_what_was_kept_and_the_rerun_says_it_resumes(checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real = runner.ProbeContext

    def interrupted_after_two(*args, **kwargs):  # Ctrl-C arrives after the second saved batch
        return real(*args, **{**kwargs, "on_shard": _stop_after(2, KeyboardInterrupt)})

    monkeypatch.setattr(runner, "ProbeContext", interrupted_after_two)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["probe", "--checkpoint", str(checkpoint), "--out", str(out), *CLI])
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert err.strip() == f"workbench probe: interrupted: 2 batches saved in {out / '.partial'}, rerun the same command to resume."
    monkeypatch.setattr(runner, "ProbeContext", real)
    assert cli_main(["probe", "--checkpoint", str(checkpoint), "--out", str(out), *CLI]) == 0
    assert f"resuming {out}: 2 batches saved by an earlier run are reused" in capsys.readouterr().out
