"""Tokenizers: text <-> token ids, saved inside checkpoints as plain JSON.

Three kinds share one small interface (:class:`Tokenizer`):

- ``char`` (:class:`CharTokenizer`): one id per character of a vocabulary taken from a corpus.
  The paper's setting (character-level text, length 128 vs 1024).
- ``byte`` (:class:`ByteTokenizer`): UTF-8 bytes, vocabulary 256; encodes any text.
- ``hf`` (:class:`HFTokenizer`): a local ``tokenizer.json`` read by the ``tokenizers`` library,
  never fetched from the hub.

None of them adds special tokens: the models' BOS / null key is a learned vector, not a token
(see docs/coordinates.md), so ``decode(encode(text)) == text`` for every kind.

``to_json()`` returns a JSON-able dict with a ``"kind"`` field; ``Tokenizer.from_json(d)`` rebuilds
the right class from it, so a checkpoint rebuilds its tokenizer from the file alone.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Int
from torch import Tensor

UnknownPolicy = Literal["raise", "replace"]

# Characters tried, in order, as the replacement for out-of-vocabulary characters when
# unknown="replace" and no replacement is given.
DEFAULT_REPLACEMENTS = ("?", " ")

# How many distinct unknown characters, and positions of each, an error message quotes.
_QUOTE_CHARS = 5
_QUOTE_POSITIONS = 3


class Tokenizer(ABC):
    """Interface every tokenizer kind implements; also the registry behind :meth:`from_json`.

    Subclasses set ``kind`` (the ``"kind"`` field of their JSON) and get registered on
    definition; a second class claiming the same kind is an error.
    """

    kind: ClassVar[str]
    _registry: ClassVar[dict[str, type[Tokenizer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        first = Tokenizer._registry.get(cls.kind)
        # The same class defined again (a module reload, as Streamlit does) just replaces itself.
        if first is not None and first.__qualname__ != cls.__qualname__:
            raise TypeError(
                f"tokenizer kind {cls.kind!r} is claimed by both {first.__module__}."
                f"{first.__qualname__} and {cls.__module__}.{cls.__qualname__}; "
                "give the new class another kind."
            )
        Tokenizer._registry[cls.kind] = cls

    @property
    @abstractmethod
    def name(self) -> str:
        """Short human-readable name, e.g. ``char-96``, for tables and the app."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct ids; every id from :meth:`encode` is in ``range(vocab_size)``."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""

    @abstractmethod
    def decode(self, ids: Iterable[int] | Tensor) -> str:
        """Text of the token ids ``ids`` (a list, or a 1-D tensor)."""

    @abstractmethod
    def _fields(self) -> dict[str, Any]:
        """The JSON fields besides ``"kind"`` that :meth:`from_json` needs to rebuild this."""

    @classmethod
    @abstractmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Tokenizer:
        """Rebuild from the dict that :meth:`to_json` wrote."""

    def encode_tensor(self, text: str) -> Int[Tensor, " n_tokens"]:
        """Token ids of ``text`` as a 1-D LongTensor (the token stream the data windows cut)."""
        return torch.tensor(self.encode(text), dtype=torch.long)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (``"kind"`` plus the fields) that :meth:`from_json` turns back."""
        return {"kind": self.kind, **self._fields()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_json` output, choosing the class by ``"kind"``.

        Called on :class:`Tokenizer` it accepts any kind; called on a subclass it insists on
        that subclass's kind.
        """
        kind = data.get("kind")
        target = Tokenizer._registry.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise ValueError(
                f"tokenizer JSON has kind {kind!r}; expected one of "
                f"{sorted(Tokenizer._registry)}. Was it written by Tokenizer.to_json()?"
            )
        if not issubclass(target, cls):
            raise ValueError(
                f"{cls.__name__}.from_json got a {kind!r} tokenizer; use Tokenizer.from_json "
                "to rebuild whichever kind the JSON holds."
            )
        return target._from_fields(data)


def _as_id_list(ids: Iterable[int] | Tensor) -> list[int]:
    """Token ids as a plain list, accepting a 1-D tensor too (as the app and probes hold them)."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1:
            raise ValueError(f"decode expects a 1-D tensor of ids, got shape {tuple(ids.shape)}")
        return ids.tolist()
    return list(ids)


def _check_ids(ids: list[int], vocab_size: int, who: str) -> None:
    """Raise if any id is outside ``range(vocab_size)``, naming the first offender."""
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise ValueError(
            f"{who}: id {bad} is out of range; valid ids are 0..{vocab_size - 1}. "
            "Were these ids made by a different tokenizer?"
        )


@dataclasses.dataclass(frozen=True)
class CharTokenizer(Tokenizer):
    """One id per character; id ``i`` is ``chars[i]``.

    Build it with :meth:`from_text` from the training corpus (characters sorted by code point,
    so the same text always gives the same ids). Characters outside the vocabulary follow
    ``unknown``:

    - ``"raise"`` (default): :meth:`encode` raises a ValueError naming the first few offending
      characters with their code points and positions. Silent replacement would hide a
      corpus/tokenizer mismatch, so it must be asked for.
    - ``"replace"``: each one becomes ``replacement``, a character in the vocabulary (default:
      the first of ``'?'``, ``' '`` that is). Decoding then shows the replacement, so the round
      trip holds only for in-vocabulary text.
    """

    kind: ClassVar[str] = "char"

    chars: str
    unknown: UnknownPolicy = "raise"
    replacement: str | None = None
    _index: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.chars:
            raise ValueError("CharTokenizer needs at least one character; got an empty vocabulary")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("CharTokenizer chars must be distinct; build it with from_text(text)")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})
        object.__setattr__(self, "replacement", self._resolve_replacement())

    def _resolve_replacement(self) -> str | None:
        """Check ``unknown`` and ``replacement`` agree; pick the default replacement."""
        if self.unknown == "raise":
            if self.replacement is not None:
                raise ValueError(
                    f"replacement={self.replacement!r} only applies with unknown='replace'"
                )
            return None
        if self.unknown != "replace":
            raise ValueError(f"unknown must be 'raise' or 'replace', got {self.unknown!r}")
        if self.replacement is None:
            found = next((c for c in DEFAULT_REPLACEMENTS if c in self._index), None)
            if found is None:
                raise ValueError(
                    f"unknown='replace' needs a replacement character, and none of "
                    f"{DEFAULT_REPLACEMENTS} is in the vocabulary; pass replacement=<a "
                    "character of the vocabulary>."
                )
            return found
        if self.replacement not in self._index:
            raise ValueError(
                f"replacement {self.replacement!r} is not in the vocabulary; choose a "
                "character the tokenizer knows, so replaced text stays encodable."
            )
        return self.replacement

    @classmethod
    def from_text(
        cls, text: str, unknown: UnknownPolicy = "raise", replacement: str | None = None
    ) -> CharTokenizer:
        """Vocabulary = the distinct characters of ``text``, sorted by code point."""
        return cls("".join(sorted(set(text))), unknown=unknown, replacement=replacement)

    @property
    def name(self) -> str:
        return f"char-{len(self.chars)}"

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        index = self._index
        try:
            return [index[c] for c in text]  # fast path: every character is known
        except KeyError:
            if self.unknown == "raise":
                raise ValueError(self._unknown_message(text)) from None
        fallback = index[self.replacement]  # type: ignore[index]
        return [index.get(c, fallback) for c in text]

    def _unknown_message(self, text: str) -> str:
        """Name the first few out-of-vocabulary characters and say how to proceed."""
        positions: dict[str, list[int]] = {}
        unknown = [(pos, c) for pos, c in enumerate(text) if c not in self._index]
        for pos, c in unknown:
            if c in positions or len(positions) < _QUOTE_CHARS:
                positions.setdefault(c, []).append(pos)
        n_distinct = len({c for _, c in unknown})
        quoted = "; ".join(
            f"{c!r} (U+{ord(c):04X}) at position{'s' if len(ps) > 1 else ''} "
            + ", ".join(map(str, ps[:_QUOTE_POSITIONS]))
            + (", ..." if len(ps) > _QUOTE_POSITIONS else "")
            for c, ps in positions.items()
        )
        more = n_distinct - len(positions)
        return (
            f"tokenizer {self.name} cannot encode {len(unknown)} character(s) of the text: "
            "they are not in its vocabulary, which holds the characters of the text it was "
            f"built from. {quoted}{f'; and {more} more distinct' if more else ''}. "
            "Fix: build the tokenizer from text that contains them, or map them to a known "
            "character with unknown='replace' (CharTokenizer.from_text(text, unknown='replace'), "
            "or dataclasses.replace(tokenizer, unknown='replace') for an existing one), or use "
            "the byte tokenizer, which encodes any text."
        )

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        id_list = _as_id_list(ids)
        _check_ids(id_list, len(self.chars), self.name)
        return "".join(self.chars[i] for i in id_list)

    def _fields(self) -> dict[str, Any]:
        return {"chars": self.chars, "unknown": self.unknown, "replacement": self.replacement}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> CharTokenizer:
        return cls(fields["chars"], unknown=fields["unknown"], replacement=fields["replacement"])


@dataclasses.dataclass(frozen=True)
class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255: encodes any text, needs no corpus.

    Non-ASCII characters take several ids. Decoding uses ``errors="replace"``, so ids that cut
    a multi-byte character (e.g. a window edge) decode to U+FFFD instead of failing.
    """

    kind: ClassVar[str] = "byte"

    @property
    def name(self) -> str:
        return "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        id_list = _as_id_list(ids)
        _check_ids(id_list, 256, self.name)
        return bytes(id_list).decode("utf-8", errors="replace")

    def _fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> ByteTokenizer:
        return cls()


@dataclasses.dataclass(frozen=True)
class HFTokenizer(Tokenizer):
    """A ``tokenizers`` library tokenizer read from a local ``tokenizer.json``.

    Build it with :meth:`from_file`; nothing is downloaded. ``tokenizer_json`` holds the whole
    tokenizer (canonicalised by the library), and :meth:`to_json` stores it inline, so a
    checkpoint does not depend on the original file. Special tokens are neither added on
    encode nor skipped on decode.
    """

    kind: ClassVar[str] = "hf"

    tokenizer_json: str = dataclasses.field(repr=False)
    label: str = "hf"
    _backend: Any = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from tokenizers import Tokenizer as Backend  # optional dependency, needed only here

        backend = Backend.from_str(self.tokenizer_json)
        object.__setattr__(self, "_backend", backend)
        object.__setattr__(self, "tokenizer_json", backend.to_str())

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        """Read ``path`` (a ``tokenizer.json``, or a directory holding one).

        The name is the directory's name for ``<dir>/tokenizer.json`` (as HF model folders are
        laid out), otherwise the file's stem.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"no tokenizer file at {path}; expected a tokenizer.json saved by the "
                "tokenizers library (Tokenizer.save) or by transformers (save_pretrained)."
            )
        text = path.read_text(encoding="utf-8", errors="replace")
        label = path.parent.name if path.name == "tokenizer.json" else path.stem
        try:
            return cls(text, label=label or "hf")
        except Exception as exc:  # the library raises a bare Exception on malformed JSON
            raise ValueError(
                f"{path} is not a tokenizers JSON file ({exc}); expected a tokenizer.json saved "
                "by tokenizers.Tokenizer.save or transformers' save_pretrained (not a vocab.txt, "
                "merges.txt or tokenizer_config.json)."
            ) from exc

    @property
    def name(self) -> str:
        return self.label

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        id_list = _as_id_list(ids)
        _check_ids(id_list, self.vocab_size, self.name)
        return self._backend.decode(id_list, skip_special_tokens=False)

    def _fields(self) -> dict[str, Any]:
        return {"label": self.label, "tokenizer": json.loads(self.tokenizer_json)}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> HFTokenizer:
        return cls(json.dumps(fields["tokenizer"]), label=fields["label"])


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
