"""OS and device errors are one-line errors naming the file and the fix (exit 2), never
tracebacks: a bad --device or CUDA without CUDA, --out under a file, a full or read-only disk,
`python -m workbench.convert` errors; a torn last line of metrics.jsonl is dropped on resume."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from tests.test_probes_runner import TEXT, tiny
from workbench.checkpoint import save
from workbench.cli import describe_error
from workbench.cli import main as cli_main
from workbench.convert.xlnet import main as convert_main
from workbench.training.run_dir import truncate_metrics

PROBE = ["--probes", "parts", "--max-sequences", "2", "--batch-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-16"
    save(tiny(), path, data={"val_text": "val.txt"}, extra_files={"val.txt": TEXT[-400:].encode()})
    return path


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def one_line_error(capsys, argv) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def commands(checkpoint, corpus, out, device: str | None = None) -> dict[str, list[str]]:
    dev = ["--device", device] if device else []
    return {
        "probe": ["probe", "--checkpoint", str(checkpoint), "--out", str(out), *PROBE, *dev],
        "eval": ["eval", "--checkpoint", str(checkpoint), "--orders", "1", "--max-windows", "2", "--out", str(out / "nll.json"), *dev],
        "train": ["train", "--variant", "sigma_gpt", "--data", str(corpus), "--seq-len", "8", "--n-layers", "1",
                  "--d-model", "8", "--n-heads", "1", "--d-head", "8", "--d-mlp", "8", "--train-tokens", "16",
                  "--tokens-per-step", "16", "--warmup-tokens", "0", "--eval-every-tokens", "16", "--eval-windows", "2",
                  "--out", str(out), "--no-progress", *dev],
    }


@pytest.mark.parametrize("command", ["probe", "eval", "train"])
def test_a_bad_device_is_one_line_before_any_work(checkpoint, corpus, tmp_path, capsys, monkeypatch, command):
    out = tmp_path / "out"
    err = one_line_error(capsys, commands(checkpoint, corpus, out, "banana")[command])
    assert "device='banana' is not a device the workbench runs on; use cpu, cuda, cuda:N or auto" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = one_line_error(capsys, commands(checkpoint, corpus, out, "cuda")[command])
    assert "no CUDA device is available; use cpu" in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["probe", "eval", "train"])
def test_out_under_a_file_is_one_line_naming_it(checkpoint, corpus, tmp_path, capsys, command):
    (tmp_path / "file").write_text("not a directory")
    err = one_line_error(capsys, commands(checkpoint, corpus, tmp_path / "file" / "sub", "cpu")[command])
    assert str(tmp_path / "file" / "sub") in err and "is a file, not a directory" in err


def test_a_full_disk_is_one_line_naming_the_file_not_a_temporary(checkpoint, corpus, tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a failed write: no file name

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "out"
    err = one_line_error(capsys, commands(checkpoint, corpus, out, "cpu")["probe"])
    assert err.startswith(f"workbench probe: error: {out / '.partial' / 'state.json'}: the disk is full: free some space")
    err = one_line_error(capsys, commands(checkpoint, corpus, out, "cpu")["train"])
    assert f"{out / 'settings.json'}: the disk is full" in err and ".tmp-" not in err


def test_a_read_only_disk_is_one_line_naming_the_path(checkpoint, corpus, tmp_path, capsys, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "mkdir", read_only)
    for command, argv in commands(checkpoint, corpus, tmp_path / "out", "cpu").items():
        err = one_line_error(capsys, argv)
        assert str(tmp_path / "out") in err and "the file system is read-only: choose a writable location" in err, command


@pytest.mark.parametrize("code, fix", [(errno.EACCES, "permission denied"), (errno.EDQUOT, "quota"), (errno.EEXIST, "not a directory"),
                                       (errno.EIO, "Input/output error")])
def test_every_os_error_names_its_file(code, fix):
    message = describe_error(OSError(code, os.strerror(code), "/some/file"))
    assert message.startswith("/some/file: ") and fix in message and f"[Errno {code}]" in message


def test_a_torn_last_metrics_line_is_dropped_and_a_bad_earlier_one_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 50, "loss_bits": 3.1}\n{"step": 100, "loss_bits": 2.9}\n{"step": 150, "lo')
    truncate_metrics(path, 100)
    assert path.read_text() == '{"step": 50, "loss_bits": 3.1}\n{"step": 100, "loss_bits": 2.9}\n'
    path.write_text('{"step": 50}\n{"step": 1\n{"step": 100}\n')
    with pytest.raises(ValueError, match=f"{path} line 2 is not a metrics record .*fix or delete that line"):
        truncate_metrics(path, 100)


def test_convert_errors_are_one_line(tmp_path, capsys):
    for source, message in ((tmp_path / "missing", "is not a directory"), (tmp_path, "has no config.json")):
        with pytest.raises(SystemExit) as exit_info:
            convert_main([str(source), str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    (tmp_path / "config.json").write_text('{"model_type": "xln')
    with pytest.raises(SystemExit):
        convert_main([str(tmp_path), str(tmp_path / "out")])
    assert f"{tmp_path / 'config.json'} is not valid JSON" in capsys.readouterr().err
