"""A probe run's --out directory: one run at a time (a lock), and what a killed run left behind.

The lock is an advisory `flock` on the --out directory itself, held by rank 0 for the whole run
and released by the kernel when the process ends however it ends (no stale lock file to delete).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from workbench.results_io import remove_temporaries

SHARD_GLOB = "*/*.safetensors"


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold `out` for this run; refuse at once (a ValueError naming the holder's pid where the
    system says it) when another run holds it."""
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _lock_holder(out)
            raise ValueError(
                f"{out} is in use by another probe run{f' (pid {pid})' if pid else ''}; wait for it to "
                "finish (then run this command again: it resumes or reuses that run), or use another --out."
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(path: Path) -> int | None:
    """The pid holding a flock on `path`, from /proc/locks (Linux); None where unknown."""
    st = path.stat()
    device_inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device_inode and fields[4].isdigit():
            return int(fields[4])
    return None


def saved_batches(workdir: Path) -> int:
    """How many finished batches a (partial) run directory holds."""
    return sum(1 for _ in workdir.glob(SHARD_GLOB)) if workdir.is_dir() else 0


def remove_leftovers(out: Path, workdir: Path, names: tuple[str, ...]) -> None:
    """Delete what a killed run left: temporaries of the result files `names` in `out`, of the
    batch files in `workdir`, and empty batch directories. Only under the lock."""
    for name in names:
        remove_temporaries(out, of=name)
    if workdir.is_dir():
        remove_temporaries(workdir)
        for shard_dir in (d for d in workdir.iterdir() if d.is_dir()):
            remove_temporaries(shard_dir)
            if not any(shard_dir.iterdir()):
                shard_dir.rmdir()


def forget_if_nothing_done(workdir: Path | None, created: list[Path]) -> None:
    """After a failure: if no batch was saved, remove the partial directory and the directories
    this run created (a failure before any work leaves nothing behind); otherwise keep it, to
    resume from."""
    if workdir is None or saved_batches(workdir):
        return
    shutil.rmtree(workdir, ignore_errors=True)
    for directory in reversed(created):  # OUT (and parents) if this run made them, innermost first
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
