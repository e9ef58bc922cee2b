"""Loaders for plain text on disk: the stdlib's own source, one file, a directory of files.

Files are read in sorted order (by code point, locale-independent), so a corpus and its
fingerprint are the same on every run. Decoding and permission failures name the file and the fix.
"""

from __future__ import annotations

import os
import sysconfig
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from workbench.data.corpus import Corpus, CorpusError, take_documents

# Default cap for the stdlib corpus: a few MB reads in well under a second and is ample for the
# small models and probes here (on CPython 3.11 it is the top-level modules, `__future__` to
# `threading`); pass max_chars=None for all of it (~12 MB).
STDLIB_MAX_CHARS = 4_000_000

# Directories of the stdlib tree that are not the standard library's own source:
# installed packages, test suites (which hold deliberately odd encodings) and caches.
STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)


def read_text(path: Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Decode one file, turning OS and decoding failures into errors that say how to fix them."""
    try:
        data = path.read_bytes()
    except PermissionError as exc:
        raise PermissionError(
            f"cannot read {path}: permission denied. Fix its permissions (chmod +r) or copy "
            "it somewhere readable."
        ) from exc
    try:
        return data.decode(encoding, errors=errors)
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"cannot decode {path} as {encoding}: byte {data[exc.start]:#04x} at offset "
            f"{exc.start} is invalid ({exc.reason}). Fix: pass the file's real encoding "
            "(e.g. encoding='latin-1'), or errors='replace' to read undecodable bytes as "
            "U+FFFD."
        ) from exc
    except LookupError as exc:
        raise CorpusError(f"unknown encoding {encoding!r}; use a Python codec name") from exc


def load_stdlib(
    *, max_chars: int | None = STDLIB_MAX_CHARS, encoding: str = "utf-8", errors: str = "strict"
) -> Corpus:
    """The standard library's own ``*.py`` files, one document each.

    Walks ``sysconfig.get_paths()["stdlib"]`` depth-first with directories and files sorted by
    name, skipping :data:`STDLIB_SKIP_DIRS`, and stops reading at ``max_chars``.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = list(_stdlib_files(root))
    if not files:
        raise CorpusError(
            f"found no .py files under the standard library directory {root} (is the stdlib "
            "zipped or stripped on this machine?). Load a text corpus from a path instead."
        )
    documents = (read_text(path, encoding, errors) for path in files)  # read lazily, up to the cap
    settings = {"max_chars": max_chars, "encoding": encoding, "errors": errors}
    return Corpus(
        documents=take_documents(documents, max_chars),
        kind="stdlib",
        source=f"stdlib:{root}",
        settings=settings,
    )


def _stdlib_files(root: Path) -> Iterator[Path]:
    """``*.py`` files under ``root`` in a deterministic depth-first order, lazily."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in STDLIB_SKIP_DIRS)
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(directory, name)


def load_text_file(
    path: str | Path,
    *,
    max_chars: int | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Corpus:
    """One plain-text file as one document."""
    path = Path(path)
    text = read_text(path, encoding, errors)
    settings = {"max_chars": max_chars, "encoding": encoding, "errors": errors}
    return Corpus(
        documents=take_documents([text], max_chars),
        kind="text",
        source=str(path),
        settings=settings,
    )


def load_text_dir(
    path: str | Path,
    *,
    glob: str = "**/*.txt",
    max_chars: int | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Corpus:
    """Every file under ``path`` matching ``glob``, one document each, sorted by relative path.

    Hidden files and directories (names starting with ``.``, e.g. ``.ipynb_checkpoints``) are
    skipped: they hold copies and tool state, not corpus text.
    """
    root = Path(path)
    files = sorted(
        (p for p in root.glob(glob) if p.is_file() and not _is_hidden(p.relative_to(root))),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise CorpusError(
            f"no files under {root} match glob={glob!r}{_suffix_summary(root)}. Pass a glob "
            "that matches the text files, e.g. glob='**/*.md'."
        )
    documents = (read_text(p, encoding, errors) for p in files)
    settings = {"glob": glob, "max_chars": max_chars, "encoding": encoding, "errors": errors}
    return Corpus(
        documents=take_documents(documents, max_chars),
        kind="text_dir",
        source=str(root),
        settings=settings,
    )


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _suffix_summary(root: Path) -> str:
    """A hint listing what the directory does hold, e.g. ``" (it holds 12 .md, 3 .py files)"``."""
    counts = Counter(
        p.suffix or "(no suffix)"
        for p in root.rglob("*")
        if p.is_file() and not _is_hidden(p.relative_to(root))
    )
    if not counts:
        return " (the directory holds no files)"
    listed = ", ".join(f"{n} {suffix}" for suffix, n in counts.most_common(5))
    return f" (it holds {listed} files)"
