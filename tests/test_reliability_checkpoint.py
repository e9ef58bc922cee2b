"""Checkpoints: crash-safe saves (a kill injected at every filesystem step), recovery of what an
interrupted save leaves, the umask, a local directory shadowing a bundled name, and a fully
validated checkpoint.json checked against the weights before anything is allocated."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch

from tests.conftest import tiny_config
from workbench import checkpoint as ckpt
from workbench.checkpoint import CheckpointError
from workbench.config import AOConfig
from workbench.data import make_tokenizer
from workbench.models import from_config
from workbench.results_io import write_bytes_atomic

KILLED = 17
STEPS = ("replace", "rename", "fsync", "unlink", "rmdir", "mkdir")  # os functions a save may call


def _model(seed: int, variant: str = "decoupled_rope"):
    model = from_config(tiny_config(variant, seed=seed, d_vocab=5))
    model.tokenizer = make_tokenizer("char", "abcde")
    return model


def _weights(path) -> torch.Tensor:
    return ckpt.load(path).W_E.detach().clone()


def _save_killed_at(k: int, model, path) -> bool:
    """Save in a forked child that dies (os._exit, no cleanup runs) just before its k-th call of a
    filesystem step; True if the child died there, False if the save finished first."""
    pid = os.fork()
    if pid == 0:  # the child
        try:
            calls = [0]

            def kill_on_kth(real):
                def step(*args, **kwargs):
                    calls[0] += 1
                    if calls[0] == k:
                        os._exit(KILLED)
                    return real(*args, **kwargs)

                return step

            for name in STEPS:
                setattr(os, name, kill_on_kth(getattr(os, name)))
            ckpt.save(model, path, extra_files={"trainer_state.json": b"{}"})
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, KILLED), f"the save failed in the child (exit {code}) instead of finishing or dying"
    return code == KILLED


def test_a_save_killed_at_any_step_recovers_to_the_old_or_the_new_checkpoint(tmp_path):
    old_model, new_model = _model(0), _model(1)
    old_w, new_w = old_model.W_E.detach(), new_model.W_E.detach()
    outcomes = []
    for k in range(1, 200):
        run = tmp_path / f"run{k}"
        path = run / "checkpoint"
        ckpt.save(old_model, path)
        if not _save_killed_at(k, new_model, path):
            break
        if path.is_dir():  # a reader never sees half a checkpoint
            assert torch.equal(_weights(path), old_w) or torch.equal(_weights(path), new_w)
        else:
            with pytest.raises(CheckpointError, match="interrupted.*recover"):
                ckpt.load(path)
        ckpt.recover(path)
        assert sorted(p.name for p in run.iterdir()) == ["checkpoint"], f"kill at step {k} left {sorted(run.iterdir())}"
        got = _weights(path)
        outcomes.append("new" if torch.equal(got, new_w) else "old" if torch.equal(got, old_w) else "neither")
        ckpt.save(new_model, path)  # and the next save works
        assert torch.equal(_weights(path), new_w) and sorted(p.name for p in run.iterdir()) == ["checkpoint"]
        shutil.rmtree(run)
    else:
        pytest.fail("the save never finished")
    assert len(outcomes) >= 8, outcomes  # the kill points really covered the save
    # Before the commit point the old checkpoint survives; from it on, the new one.
    assert outcomes == sorted(outcomes, key=lambda o: o != "old") and "neither" not in outcomes, outcomes
    assert outcomes[0] == "old" and outcomes[-1] == "new", outcomes


def test_the_wedge_an_earlier_save_left_is_rolled_back(tmp_path):
    """The earlier save's kill between its renames: no checkpoint/, a .checkpoint.old and a staging
    directory; every later save failed with 'Directory not empty'."""
    path = tmp_path / "checkpoint"
    ckpt.save(_model(0), path)
    os.replace(path, tmp_path / ".checkpoint.old")
    ckpt.save(_model(1), tmp_path / "elsewhere")
    os.replace(tmp_path / "elsewhere", tmp_path / ".checkpoint.k2x9_q0a")  # a mkdtemp staging dir
    assert "rolled back" in ckpt.recover(path)
    assert torch.equal(_weights(path), _model(0).W_E.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    ckpt.save(_model(1), path)
    assert torch.equal(_weights(path), _model(1).W_E.detach())
    assert ckpt.recover(path) is None


def test_a_failing_save_leaves_the_old_checkpoint_and_no_staging(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint"
    ckpt.save(_model(0), path)
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space"):
        ckpt.save(_model(1), path)
    monkeypatch.setattr(os, "fsync", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert torch.equal(_weights(path), _model(0).W_E.detach())


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_and_checkpoints_honour_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        ckpt.save(_model(0), tmp_path / "checkpoint")
        write_bytes_atomic(tmp_path / "results" / "probes.parquet", b"x")
    finally:
        os.umask(previous)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "checkpoint") == 0o777 & ~umask
    for f in (tmp_path / "checkpoint" / "model.safetensors", tmp_path / "checkpoint" / "checkpoint.json",
              tmp_path / "results" / "probes.parquet"):
        assert mode(f) == 0o666 & ~umask, f


def test_a_local_directory_does_not_shadow_a_bundled_name(tmp_path, monkeypatch):
    name = ckpt.list_checkpoints()[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()  # e.g. a probe run's --out, named like the checkpoint
    with pytest.warns(UserWarning, match=f"took the bundled one.*./{name}"):
        assert ckpt.resolve(name) == ckpt.BUNDLED_DIR / name
    ckpt.save(_model(0), tmp_path / "mine")
    assert ckpt.resolve("./mine").resolve() == tmp_path / "mine" == ckpt.resolve("mine").resolve()


# ---- checkpoint.json validation ------------------------------------------------------------


def _edited(tmp_path, edit):
    path = tmp_path / "checkpoint"
    ckpt.save(_model(0), path)
    meta = json.loads((path / "checkpoint.json").read_text())
    edit(meta)
    (path / "checkpoint.json").write_text(json.dumps(meta))
    return path


@pytest.fixture
def no_real_allocation(monkeypatch):
    """Fail if the checkpoint code builds a model anywhere but on the meta device."""
    real = ckpt.from_config

    def guarded(cfg):
        assert torch.empty(0).device.type == "meta", f"a model of {cfg} was allocated before the checks"
        return real(cfg)

    monkeypatch.setattr(ckpt, "from_config", guarded)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("layer_norm_eps", -1, "layer_norm_eps=-1 must be a finite number > 0"),
        ("layer_norm_eps", "abc", "layer_norm_eps='abc' must be a finite number"),
        ("rope_base", None, "rope_base=None must be a finite number > 1"),
        ("init_range", float("nan"), "init_range=nan"),
        ("seed", "x", "seed='x' must be a non-negative integer"),
        ("n_ctx", 1e9, "n_ctx=1000000000.0 must be a positive integer"),
        ("act_fn", ["gelu"], "act_fn=\\['gelu'\\] is unknown"),
    ],
)
def test_bad_config_values_are_refused_with_the_field_named(tmp_path, field, value, message):
    path = _edited(tmp_path, lambda m: m["config"].__setitem__(field, value))
    with pytest.raises(CheckpointError, match=message):
        ckpt.load(path)
    with pytest.raises(ValueError, match=message):
        AOConfig(**{**tiny_config("decoupled_rope").to_dict(), field: value})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["tokenizer"].pop("chars"), "bad tokenizer: field 'chars' is missing"),
        (lambda m: m["tokenizer"].__setitem__("chars", ""), "bad tokenizer: .*at least one character"),
        (lambda m: m.__setitem__("tokenizer", "char"), "bad tokenizer: it must be an object"),
        (lambda m: m["tokenizer"].__setitem__("chars", "abcdef"), "6 tokens but the config's d_vocab is 5"),
        (lambda m: m.__setitem__("config", None), "bad config: 'config' must be an object"),
        (lambda m: m.__setitem__("metrics", [1]), "'metrics' must be an object"),
        (lambda m: m.__setitem__("data", {"val_text": "../../etc/passwd"}), "val_text=.* must be a file name inside"),
        (lambda m: m.__setitem__("data", {"val_text": 5}), "val_text=5 must be a file name"),
    ],
)
def test_bad_checkpoint_json_is_refused_before_the_weights_are_read(tmp_path, edit, message, no_real_allocation):
    path = _edited(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        ckpt.read_info(path)


@pytest.mark.parametrize(
    "variant, field, value, message",
    [
        ("decoupled_rope", "n_ctx", 10**9, "needs .* GiB .*rotary.* is n_ctx right"),  # not in the weights
        ("sigma_gpt", "n_ctx", 10**9, "wrong shapes"),
        ("decoupled_rope", "d_vocab", 10**8, "wrong shapes: W_E"),
        ("two_stream", "d_mlp", 10**7, "wrong shapes"),
    ],
)
def test_a_config_that_does_not_match_the_weights_allocates_nothing(tmp_path, variant, field, value, message, no_real_allocation):
    path = tmp_path / "checkpoint"
    model = from_config(tiny_config(variant, seed=0))
    ckpt.save(model, path)
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["config"][field] = value
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        ckpt.load(path)


def test_the_cli_takes_the_bundled_checkpoint_and_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    from workbench.cli import main as cli_main

    name = next(n for n in ckpt.list_checkpoints() if n.endswith("-128"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()  # `probe --checkpoint NAME --out NAME` made it: the second run failed
    assert cli_main(["eval", "--checkpoint", name, "--orders", "1", "--max-windows", "2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err.strip()
    assert err == (f"workbench eval: warning: {name!r} names both a bundled checkpoint and a directory here; took the "
                   f"bundled one ({ckpt.BUNDLED_DIR / name}). Write ./{name} for the directory.")
