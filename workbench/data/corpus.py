"""The :class:`Corpus`: documents of text, where they came from, and a content fingerprint.

Loaders (``workbench.data.loaders``) build corpora; tokenizers turn ``corpus.text`` into a token
stream; ``workbench.data.windows`` splits and cuts that stream into model-sized sequences.

Content is normalised as it is loaded, so the same text gives the same corpus on every machine:
a leading byte-order mark is dropped, ``\\r\\n`` and ``\\r`` become ``\\n``, and empty documents
are skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Any

# Joins documents into one text (and token stream). A blank line reads as a document break in
# prose and in source code alike.
DOCUMENT_SEPARATOR = "\n\n"

# Hex digits kept from the sha256: 64 bits, plenty to tell corpora apart, short enough to read.
FINGERPRINT_LENGTH = 16


class CorpusError(ValueError):
    """A corpus cannot be built or used as asked: the message says why and how to fix it."""


def normalise_text(text: str) -> str:
    """Drop a leading byte-order mark and turn ``\\r\\n`` / ``\\r`` line ends into ``\\n``."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def take_documents(documents: Iterable[str], max_chars: int | None) -> tuple[str, ...]:
    """Normalise ``documents``, skip empty ones, and stop once the joined text has ``max_chars``.

    The document that crosses the cap is cut, so ``len(corpus.text) <= max_chars`` (separators
    count). ``documents`` is consumed lazily: loaders pass generators so a capped corpus reads
    only what it keeps.
    """
    if max_chars is not None and max_chars < 1:
        raise CorpusError(f"max_chars must be a positive number of characters, got {max_chars}")
    kept: list[str] = []
    budget = max_chars
    for document in documents:
        document = normalise_text(document)
        if not document:
            continue
        if budget is not None:
            if kept:
                budget -= len(DOCUMENT_SEPARATOR)
            if budget <= 0:
                break
            document = document[:budget]
            budget -= len(document)
        kept.append(document)
        if budget == 0:
            break
    return tuple(kept)


@dataclasses.dataclass(frozen=True, repr=False)
class Corpus:
    """Text documents plus provenance.

    ``settings`` are the loader options that shape the content (kind, caps, field names,
    encoding); with the documents they make the :attr:`fingerprint`. ``source`` (a path) is
    for people and is left out of the fingerprint, so the same data hashes the same on every
    machine.
    """

    documents: tuple[str, ...]
    kind: str
    source: str
    settings: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not any(self.documents):
            raise CorpusError(
                f"the {self.kind} corpus at {self.source} holds no text (no documents, or all "
                "empty). Expected at least one non-empty document: check the path, the glob "
                "or the text field."
            )

    @cached_property
    def text(self) -> str:
        """All documents joined by :data:`DOCUMENT_SEPARATOR`: what tokenizers encode."""
        return DOCUMENT_SEPARATOR.join(self.documents)

    @property
    def n_documents(self) -> int:
        return len(self.documents)

    @property
    def n_chars(self) -> int:
        """Characters of :attr:`text`, separators included."""
        return len(self.text)

    @cached_property
    def fingerprint(self) -> str:
        """Short sha256 hex of the settings and the normalised documents.

        Stable across runs, machines and paths; changes when any document, the document
        boundaries, or a loader setting changes. Checkpoints store it to name their data.
        """
        header = {"kind": self.kind, "settings": dict(self.settings), "sep": DOCUMENT_SEPARATOR}
        digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode("utf-8"))
        for document in self.documents:
            # surrogatepass: text read with errors="surrogateescape" may hold lone surrogates.
            data = document.encode("utf-8", errors="surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))  # length prefix marks boundaries
            digest.update(data)
        return digest.hexdigest()[:FINGERPRINT_LENGTH]

    def metadata(self) -> dict[str, Any]:
        """JSON-able description (no text) for checkpoints and run tables."""
        return {
            "kind": self.kind,
            "source": self.source,
            "settings": dict(self.settings),
            "n_documents": self.n_documents,
            "n_chars": self.n_chars,
            "fingerprint": self.fingerprint,
        }

    def __repr__(self) -> str:
        return (
            f"Corpus(kind={self.kind!r}, source={self.source!r}, documents={self.n_documents}, "
            f"chars={self.n_chars}, fingerprint={self.fingerprint!r})"
        )
