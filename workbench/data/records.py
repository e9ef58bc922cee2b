"""Loaders for record-shaped corpora: JSONL, Parquet and local HF ``datasets`` directories.

Each record (line, row) gives one document from its ``text_field``. Records are read in file
order and lazily, so a ``max_chars`` cap stops reading early. A missing field, a value that is
not a string, or an unreadable file is an error naming the record and the fix; nothing is
skipped silently (empty strings aside, which add no text).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from workbench.data.corpus import Corpus, CorpusError, take_documents
from workbench.data.text_files import read_text

# Rows fetched per batch from Parquet and Arrow-backed datasets.
_BATCH_ROWS = 1024


def load_jsonl(
    path: str | Path,
    *,
    text_field: str = "text",
    max_chars: int | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Corpus:
    """One JSON object per line; each line's ``text_field`` is a document. Skips blank lines."""
    path = Path(path)
    lines = read_text(path, encoding, errors).split("\n")
    documents = _jsonl_texts(path, lines, text_field)
    settings = {
        "text_field": text_field,
        "max_chars": max_chars,
        "encoding": encoding,
        "errors": errors,
    }
    return Corpus(
        documents=take_documents(documents, max_chars),
        kind="jsonl",
        source=str(path),
        settings=settings,
    )


def _jsonl_texts(path: Path, lines: list[str], text_field: str) -> Iterator[str]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(
                f"{where}: not valid JSON ({exc.msg} at column {exc.colno}). Expected one JSON "
                f"object per line, with a {text_field!r} field."
            ) from exc
        if not isinstance(record, dict):
            raise CorpusError(
                f"{where}: holds a JSON {type(record).__name__}, expected an object with a "
                f"{text_field!r} field."
            )
        yield _text_value(record.get(text_field, _MISSING), text_field, where, list(record))


_MISSING = object()


def _text_value(value: Any, text_field: str, where: str, fields: list[str]) -> str:
    """``value`` if it is a string, else an error naming the record and the available fields."""
    if value is _MISSING:
        raise CorpusError(
            f"{where}: has no {text_field!r} field (its fields: {fields}); pass "
            "text_field=<the field holding the text>."
        )
    if not isinstance(value, str):
        raise CorpusError(
            f"{where}: field {text_field!r} holds {type(value).__name__} {value!r:.40}, expected "
            "a string. Clean the data, or pass text_field=<a string field>."
        )
    return value


def load_parquet(
    path: str | Path, *, text_field: str = "text", max_chars: int | None = None
) -> Corpus:
    """Each row's ``text_field`` string column is a document."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(
            f"cannot read {path} as Parquet ({exc}). Is it a Parquet file? Pass kind=... to "
            "load it as another kind."
        ) from exc
    _check_column(parquet.schema_arrow, text_field, str(path))
    batches = (
        b.column(0).to_pylist()
        for b in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=[text_field])
    )
    return Corpus(
        documents=take_documents(_row_texts(batches, text_field, str(path)), max_chars),
        kind="parquet",
        source=str(path),
        settings={"text_field": text_field, "max_chars": max_chars},
    )


def _check_column(schema: Any, text_field: str, source: str) -> None:
    """Raise unless the Arrow ``schema`` has a string column ``text_field``."""
    import pyarrow as pa

    if text_field not in schema.names:
        raise CorpusError(
            f"{source} has no column {text_field!r} (its columns: {schema.names}); pass "
            "text_field=<the column holding the text>."
        )
    column_type = schema.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise CorpusError(
            f"{source}: column {text_field!r} has type {column_type}, expected strings; pass "
            "text_field=<a string column>."
        )


def _row_texts(batches: Iterable[list[Any]], text_field: str, source: str) -> Iterator[str]:
    """The strings of column batches, with row numbers in any error (nulls are errors)."""
    row = 0
    for batch in batches:
        for value in batch:
            yield _text_value(value, text_field, f"{source} row {row}", [text_field])
            row += 1


def load_hf_dataset(
    path: str | Path,
    *,
    text_field: str = "text",
    split: str | None = None,
    max_chars: int | None = None,
) -> Corpus:
    """A directory saved by ``datasets``' ``save_to_disk``; each row's ``text_field`` is a document.

    For a saved ``DatasetDict``, ``split`` names the split; it may be left out when there is
    only one. (The corpus is split into train/validation later, from its token stream.)
    """
    import datasets  # heavy import, needed only for this kind

    path = Path(path)
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise CorpusError(
            f"cannot load {path} with datasets.load_from_disk ({exc}). Expected a directory "
            "written by Dataset.save_to_disk or DatasetDict.save_to_disk."
        ) from exc
    split, dataset = _pick_split(loaded, split, path)
    _check_column(dataset.features.arrow_schema, text_field, str(path))
    batches = (b[text_field] for b in dataset.select_columns([text_field]).iter(_BATCH_ROWS))
    return Corpus(
        documents=take_documents(_row_texts(batches, text_field, str(path)), max_chars),
        kind="hf",
        source=str(path),
        settings={"text_field": text_field, "split": split, "max_chars": max_chars},
    )


def _pick_split(loaded: Any, split: str | None, path: Path) -> tuple[str | None, Any]:
    """The (split name, Dataset) to read from what ``load_from_disk`` returned."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        if split is not None:
            raise CorpusError(
                f"{path} holds a single Dataset, which has no splits; drop split={split!r}."
            )
        return None, loaded
    names = list(loaded)
    if split is None and len(names) == 1:
        split = names[0]
    if split not in names:
        raise CorpusError(
            f"{path} holds a DatasetDict with splits {names}; pass split=<one of them> "
            f"(got {split!r})."
        )
    return split, loaded[split]
