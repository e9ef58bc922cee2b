"""Character-level tokenizer: one id per character of a vocabulary taken from a corpus.

The paper's setting (character-level text at lengths 128 and 1024). Out-of-vocabulary
characters raise by default, with an error naming them; replacing them must be asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

from torch import Tensor

from workbench.data.tokenizers import Tokenizer, as_id_list, check_ids

UnknownPolicy = Literal["raise", "replace"]

# Characters tried, in order, as the replacement for out-of-vocabulary characters when
# unknown="replace" and no replacement is given.
DEFAULT_REPLACEMENTS = ("?", " ")

# How many distinct unknown characters, and positions of each, an error message quotes.
_QUOTE_CHARS = 5
_QUOTE_POSITIONS = 3


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
        id_list = as_id_list(ids)
        check_ids(id_list, len(self.chars), self.name)
        return "".join(self.chars[i] for i in id_list)

    def _fields(self) -> dict[str, Any]:
        return {"chars": self.chars, "unknown": self.unknown, "replacement": self.replacement}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> CharTokenizer:
        return cls(fields["chars"], unknown=fields["unknown"], replacement=fields["replacement"])
