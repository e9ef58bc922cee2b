"""`load_corpus`: one entry point that detects the kind of a corpus spec and calls its loader.

Nothing here touches the network. Kinds:

| kind | spec | documents |
|---|---|---|
| ``stdlib`` | ``"stdlib"`` | the Python standard library's ``*.py`` files (every machine has them) |
| ``text`` | a ``.txt``/``.text``/``.md``/``.rst``/``.py`` file | the whole file |
| ``text_dir`` | a directory | each file matching ``glob``, recursively |
| ``jsonl`` | a ``.jsonl``/``.ndjson`` file | the ``text_field`` of each line's object |
| ``parquet`` | a ``.parquet``/``.pq`` file | each row's ``text_field`` column |
| ``hf`` | a directory written by ``datasets``' ``save_to_disk`` | each row's ``text_field`` |

Files and directory entries are read in sorted order (by code point, locale-independent), so a
corpus and its fingerprint are the same on every run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.data.corpus import Corpus, CorpusError
from workbench.data.records import load_hf_dataset, load_jsonl, load_parquet
from workbench.data.text_files import load_stdlib, load_text_dir, load_text_file

TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".rst", ".py"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
# Files that `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk` write.
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")

Loader = Callable[..., Corpus]
LOADERS: dict[str, Loader] = {
    "stdlib": load_stdlib,
    "text": load_text_file,
    "text_dir": load_text_dir,
    "jsonl": load_jsonl,
    "parquet": load_parquet,
    "hf": load_hf_dataset,
}


def load_corpus(spec: str | Path, *, kind: str | None = None, **options: Any) -> Corpus:
    """Load a corpus from ``"stdlib"`` or a path, detecting its kind (see the module table).

    ``kind`` overrides detection (e.g. ``kind="text"`` for a file with an unusual suffix).
    ``options`` go to that kind's loader; one it does not take is an error listing those it
    does, e.g. ``load_corpus("docs/", glob="**/*.md")``.
    """
    kind = kind or detect_kind(spec)
    loader = LOADERS.get(kind)
    if loader is None:
        raise CorpusError(f"unknown corpus kind {kind!r}; expected one of {sorted(LOADERS)}")
    accepted = [n for n, p in inspect.signature(loader).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"option(s) {unknown} do not apply to a {kind} corpus; its options are {accepted}"
        )
    if kind == "stdlib":
        return load_stdlib(**options)
    return loader(Path(spec).expanduser(), **options)


def detect_kind(spec: str | Path) -> str:
    """The corpus kind of ``spec``: ``"stdlib"``, or from the path's suffix or directory layout."""
    if str(spec) == "stdlib":
        return "stdlib"
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"corpus path {path} does not exist. Expected 'stdlib' or a path to a text file, a "
            "directory of text files, a .jsonl or .parquet file, or a datasets save_to_disk "
            "directory."
        )
    if path.is_dir():
        return "hf" if any((path / m).is_file() for m in HF_MARKERS) else "text_dir"
    suffix = path.suffix.lower()
    for kind, suffixes in (
        ("text", TEXT_SUFFIXES),
        ("jsonl", JSONL_SUFFIXES),
        ("parquet", PARQUET_SUFFIXES),
    ):
        if suffix in suffixes:
            return kind
    raise CorpusError(
        f"cannot tell what kind of corpus {path} is from its suffix {suffix or '(none)'!r}; "
        f"known suffixes: {sorted(TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES)}. Pass "
        "kind='text' to read it as plain text (or kind='jsonl' / 'parquet')."
    )
