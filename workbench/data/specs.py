"""Entry points from a spec (a string on a command line) to a corpus or a tokenizer.

:func:`load_corpus` detects the kind of a corpus spec and calls its loader; :func:`make_tokenizer`
does the same for ``"char"``, ``"byte"`` or a ``tokenizer.json`` path. Nothing here touches the
network. Corpus kinds:

| kind | spec | documents |
|---|---|---|
| ``stdlib`` | ``"stdlib"`` | the Python standard library's own ``*.py`` files (on every machine) |
| ``text`` | a ``.txt``/``.text``/``.md``/``.rst``/``.py`` file | the whole file |
| ``text_dir`` | a directory | each file matching ``glob``, recursively |
| ``jsonl`` | a ``.jsonl``/``.ndjson`` file | the ``text_field`` of each line's object |
| ``parquet`` | a ``.parquet``/``.pq`` file | each row's ``text_field`` column |
| ``hf`` | a directory written by ``datasets``' ``save_to_disk`` | each row's ``text_field`` |
| ``mediawiki`` | a MediaWiki XML dump (``.xml``: enwik8, enwik9) | each non-redirect page, text8-cleaned by default (``clean="none"`` keeps the wikitext) |

Files and directory entries are read in sorted order (by code point, locale-independent), so a
corpus and its fingerprint are the same on every run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.data.char_tokenizer import CharTokenizer
from workbench.data.corpus import Corpus, CorpusError
from workbench.data.hf_tokenizer import HFTokenizer
from workbench.data.records import load_hf_dataset, load_jsonl, load_parquet
from workbench.data.text_files import load_stdlib, load_text_dir, load_text_file
from workbench.data.tokenizers import ByteTokenizer, Tokenizer
from workbench.data.wiki import load_mediawiki

TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".rst", ".py"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
MEDIAWIKI_SUFFIXES = frozenset({".xml"})
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
    "mediawiki": load_mediawiki,
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
    parameters = inspect.signature(loader).parameters.items()
    accepted = [name for name, p in parameters if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"option(s) {unknown} do not apply to a {kind} corpus; its options are {accepted}"
        )
    if kind == "stdlib":
        return load_stdlib(**options)
    return loader(_existing_path(spec), **options)


def detect_kind(spec: str | Path) -> str:
    """The corpus kind of ``spec``: ``"stdlib"``, or from the path's suffix or directory layout."""
    if str(spec) == "stdlib":
        return "stdlib"
    path = _existing_path(spec)
    if path.is_dir():
        return "hf" if any((path / m).is_file() for m in HF_MARKERS) else "text_dir"
    suffix = path.suffix.lower()
    for kind, suffixes in (
        ("text", TEXT_SUFFIXES),
        ("jsonl", JSONL_SUFFIXES),
        ("parquet", PARQUET_SUFFIXES),
        ("mediawiki", MEDIAWIKI_SUFFIXES),
    ):
        if suffix in suffixes:
            return kind
    raise CorpusError(
        f"cannot tell what kind of corpus {path} is from its suffix {suffix or '(none)'!r}; "
        f"known suffixes: {sorted(TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES | MEDIAWIKI_SUFFIXES)}. Pass "
        "kind='text' to read it as plain text (or kind='jsonl' / 'parquet')."
    )


def _existing_path(spec: str | Path) -> Path:
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"corpus path {path} does not exist. Expected 'stdlib' or a path to a text file, a "
            "directory of text files, a .jsonl or .parquet file, or a datasets save_to_disk "
            "directory."
        )
    return path


def make_tokenizer(spec: str | Path, text: str | None = None) -> Tokenizer:
    """The tokenizer a command line names: ``"char"`` (built from ``text``), ``"byte"``, or a
    path to a local ``tokenizer.json``."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "char":
        if text is None:
            raise ValueError("a 'char' tokenizer is built from a corpus; pass text=corpus.text")
        return CharTokenizer.from_text(text)
    path = Path(spec)
    if not path.exists():
        raise ValueError(
            f"tokenizer {str(spec)!r} is neither 'char', 'byte' nor an existing path to a "
            "tokenizer.json file."
        )
    return HFTokenizer.from_file(path)
