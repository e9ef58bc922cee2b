"""Tokenizers: text <-> token ids, saved inside checkpoints as plain JSON.

Three kinds share one small interface (:class:`Tokenizer`, here, with the JSON registry):

- ``char`` (``char_tokenizer.CharTokenizer``): one id per character of a vocabulary taken
  from a corpus.
- ``byte`` (:class:`ByteTokenizer`, here): UTF-8 bytes, vocabulary 256; encodes any text.
- ``hf`` (``hf_tokenizer.HFTokenizer``): a local ``tokenizer.json`` read by the ``tokenizers``
  library, never fetched from the hub.

None of them adds special tokens: the models' BOS / null key is a learned vector, not a token
(see docs/coordinates.md), so ``decode(encode(text)) == text`` for every kind (for the byte kind,
text without lone surrogates, which UTF-8 cannot hold).

``to_json()`` returns a JSON-able dict with a ``"kind"`` field; ``Tokenizer.from_json(d)``
rebuilds the right class from it, so a checkpoint rebuilds its tokenizer from the file alone.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from jaxtyping import Int
from torch import Tensor


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


def as_id_list(ids: Iterable[int] | Tensor) -> list[int]:
    """Token ids as a plain list, accepting a 1-D tensor too (as the app and probes hold them)."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1:
            raise ValueError(f"decode expects a 1-D tensor of ids, got shape {tuple(ids.shape)}")
        return ids.tolist()
    return list(ids)


def check_ids(ids: list[int], vocab_size: int, who: str) -> None:
    """Raise if any id is outside ``range(vocab_size)``, naming the first offender."""
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise ValueError(
            f"{who}: id {bad} is out of range; valid ids are 0..{vocab_size - 1}. "
            "Were these ids made by a different tokenizer?"
        )


@dataclasses.dataclass(frozen=True)
class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255: encodes any text, needs no corpus.

    Non-ASCII characters take several ids; a lone surrogate (U+D800..U+DFFF, not valid in UTF-8)
    takes the three bytes of its code point and decodes to U+FFFD. Decoding uses
    ``errors="replace"``, so ids that cut a multi-byte character (e.g. a window edge) decode to
    U+FFFD instead of failing.
    """

    kind: ClassVar[str] = "byte"

    @property
    def name(self) -> str:
        return "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        # surrogatepass: a lone surrogate (which no UTF-8 text holds, but a str may) becomes its
        # three bytes instead of an error; decoding turns them into U+FFFD.
        return list(text.encode("utf-8", errors="surrogatepass"))

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        id_list = as_id_list(ids)
        check_ids(id_list, 256, self.name)
        return bytes(id_list).decode("utf-8", errors="replace")

    def _fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> ByteTokenizer:
        return cls()
