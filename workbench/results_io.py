"""Atomic writes: a result file is either the old one or the complete new one, never half.

Files and directories are created with mode 0o666 / 0o777 less the process umask, like any file
`open()` creates (a temp-file helper's private 0600 would make shared results unreadable). A
temporary name is `.NAME.tmp-XXXXXXXX` next to NAME; `remove_temporaries` clears those a killed
writer left behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_MARK = ".tmp-"


def temporary_name(path: Path) -> Path:
    """A fresh name for a temporary sibling of `path` (`.NAME.tmp-XXXXXXXX`)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{secrets.token_hex(4)}")


def is_temporary(name: str, of: str | None = None) -> bool:
    """Whether `name` is a temporary left by a writer (of `of`, when given). Also matches the
    `.NAME.XXXXXXXX` names of `tempfile.mkstemp` that earlier versions used."""
    base = re.escape(of) if of is not None else ".+"
    return re.fullmatch(rf"\.{base}(\.tmp-[0-9a-f]{{8}}|\.[a-z0-9_]{{8}})", name) is not None


def remove_temporaries(directory: Path, of: str | None = None) -> list[Path]:
    """Delete the temporaries (files or directories) in `directory` that `is_temporary` names;
    returns what was removed. Call it only where no other writer is at work (under a lock)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        if is_temporary(entry.name, of):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def write_file_durable(path: Path, data: bytes) -> None:
    """Create `path` (which must not exist) with `data`, flushed to disk; umask honoured."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_directory(directory: Path) -> None:
    """Make renames inside `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


@contextmanager
def errors_name(path: Path) -> Iterator[None]:
    """Re-raise an OS error (a full disk: a failed write names no file) as one about `path`, the
    file the user asked for rather than a temporary."""
    try:
        yield
    except OSError as err:
        if err.errno is None or err.filename == str(path):
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    with errors_name(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(path)
        try:
            write_file_durable(tmp, data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_directory(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))
