"""A ``tokenizers`` library tokenizer, read from a local ``tokenizer.json`` (no hub access)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from workbench.data.tokenizers import Tokenizer, as_id_list, check_ids


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
        id_list = as_id_list(ids)
        check_ids(id_list, self.vocab_size, self.name)
        return self._backend.decode(id_list, skip_special_tokens=False)

    def _fields(self) -> dict[str, Any]:
        return {"name": self.label, "tokenizer": json.loads(self.tokenizer_json)}

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> HFTokenizer:
        return cls(json.dumps(fields["tokenizer"]), label=fields["name"])
