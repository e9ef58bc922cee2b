"""Text and generation orders for the sample browser: validation windows, pasted text turned into
tokens (with a message for every problem), and orders (random, left to right, custom)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench.app_data.common import AppInputError
from workbench.checkpoint import read_info
from workbench.orders import random_orders

__all__ = ["MAX_TEXT_CHARS", "val_samples", "PreparedText", "read_text_upload", "unknown_characters", "prepare_text", "token_strings", "display_char", "ORDER_KINDS", "make_order", "parse_order"]


MAX_TEXT_CHARS = 200_000
"""Pasted text beyond this is cut before tokenising: the app never holds a book in a widget."""


def val_samples(checkpoint_path: Path, n_ctx: int, count: int = 12, max_chars: int = MAX_TEXT_CHARS) -> list[tuple[int, str]]:
    """(character offset, text) of `count` windows of `n_ctx` characters spread evenly over the
    checkpoint's validation text (`val.txt`); [] if it bundles none."""
    info = read_info(checkpoint_path)
    name = info.data.get("val_text") or "val.txt"
    path = info.path / name
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")[:max_chars]
    if len(text) <= n_ctx:
        return [(0, text)] if text else []
    starts = np.linspace(0, len(text) - n_ctx, count).astype(int)
    return [(int(s), text[s : s + n_ctx]) for s in dict.fromkeys(starts.tolist())]


@dataclass(frozen=True)
class PreparedText:
    """Text ready for the model: its token ids, per-token display strings, and notes for the user."""

    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    notes: tuple[str, ...] = ()
    n_total: int = 0
    """Tokens in the whole (possibly longer) text."""
    start: int = 0
    """First token of the window shown."""


def read_text_upload(data: bytes, name: str = "the file") -> str:
    """An uploaded text file as text: UTF-8 (a BOM is dropped), else an AppInputError that says so."""
    if b"\x00" in data[:4096]:
        raise AppInputError(f"{name} looks binary (it has NUL bytes): upload a plain-text file.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise AppInputError(f"{name} is not UTF-8 text (byte {err.start} cannot be decoded): save it as UTF-8 and upload again.") from err
    if not text.strip():
        raise AppInputError(f"{name} is empty.")
    return text[:MAX_TEXT_CHARS]


def unknown_characters(text: str, tokenizer) -> list[str]:
    """The distinct characters a character tokenizer cannot encode ([] for other tokenizers)."""
    chars = getattr(tokenizer, "chars", None)
    if chars is None:
        return []
    known = set(chars)
    return sorted({c for c in text if c not in known})


def prepare_text(text: str, tokenizer, n_ctx: int, *, replace_unknown: bool = False, start: int = 0) -> PreparedText:
    """Tokenise `text` for a model of context `n_ctx`: empty text and unknown characters raise
    AppInputError (the latter unless `replace_unknown`); text longer than n_ctx tokens gives the
    window of n_ctx tokens starting at token `start` (clamped), with a note saying so."""
    if tokenizer is None:
        raise AppInputError("this checkpoint has no tokenizer, so text cannot be turned into tokens.")
    notes = []
    if len(text) > MAX_TEXT_CHARS:
        notes.append(f"The text has {len(text):,} characters; only the first {MAX_TEXT_CHARS:,} are used.")
        text = text[:MAX_TEXT_CHARS]
    if not text:
        raise AppInputError("The text is empty: paste some text or pick a validation sample.")
    unknown = unknown_characters(text, tokenizer)
    if unknown and not replace_unknown:
        shown = ", ".join(repr(c) for c in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise AppInputError(
            f"The text has {len(unknown)} character(s) this model's tokenizer does not know: {shown}. "
            "Tick 'replace unknown characters' to map them to a known one, or edit the text."
        )
    if unknown:
        tokenizer = dataclasses.replace(tokenizer, unknown="replace", replacement=None)
        notes.append(f"Replaced {len(unknown)} unknown character(s) ({', '.join(repr(c) for c in unknown[:8])}) "
                     f"by {tokenizer.replacement!r}.")
    try:
        ids = tokenizer.encode(text)
    except ValueError as err:
        raise AppInputError(f"The text cannot be tokenised: {err}") from err
    if not ids:
        raise AppInputError("The text gives no tokens: paste some text or pick a validation sample.")
    n_total = len(ids)
    if n_total > n_ctx:
        start = int(min(max(start, 0), n_total - n_ctx))
        ids = ids[start : start + n_ctx]
        notes.append(f"The text is {n_total:,} tokens long; the model reads at most {n_ctx}. "
                     f"Showing tokens {start:,}-{start + n_ctx - 1:,} (move the window to see others).")
    else:
        start = 0
    return PreparedText(tuple(ids), tuple(token_strings(tokenizer, ids)), tuple(notes), n_total, start)


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """One display string per token id (characters for a character tokenizer)."""
    chars = getattr(tokenizer, "chars", None)
    if chars is not None:
        return [chars[i] for i in ids]
    out = []
    for i in ids:
        try:
            out.append(tokenizer.decode([i]))
        except Exception:  # noqa: BLE001 (a byte that is not a whole character)
            out.append(f"<{i}>")
    return out


def display_char(s: str) -> str:
    """A token string made visible: newline, tab and space get symbols."""
    return s.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣") or "∅"


ORDER_KINDS = ("random", "left-to-right", "right-to-left", "custom")


def make_order(kind: str, length: int, seed: int = 0, custom: str = "") -> np.ndarray:
    """A generation order σ (σ[t] = position generated at step t) of `length` positions.

    random: uniformly random, seeded; custom: positions separated by commas or spaces, ranges
    `a-b` allowed (e.g. "0-9, 20, 10-19"), and positions left out are appended left to right."""
    if length < 1:
        raise AppInputError("there are no positions to order.")
    if kind == "random":
        generator = torch.Generator().manual_seed(int(seed))
        return random_orders(1, length, generator)[0].numpy()
    if kind == "left-to-right":
        return np.arange(length)
    if kind == "right-to-left":
        return np.arange(length)[::-1].copy()
    if kind == "custom":
        return parse_order(custom, length)
    raise AppInputError(f"unknown order kind {kind!r}; use one of {', '.join(ORDER_KINDS)}.")


def parse_order(text: str, length: int) -> np.ndarray:
    """A custom order from text (see `make_order`); every problem raises AppInputError."""
    items = [t for t in re.split(r"[,\s;]+", text.strip()) if t]
    if not items:
        raise AppInputError(f"The custom order is empty: give positions 0-{length - 1}, e.g. '0-9, 20, 10-19'.")
    positions: list[int] = []
    for item in items:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise AppInputError(f"{item!r} in the custom order is not a position or a range a-b.")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        positions.extend(range(a, b + 1) if a <= b else range(a, b - 1, -1))
        if len(positions) > 4 * length:
            break
    bad = sorted({p for p in positions if p >= length})
    if bad:
        raise AppInputError(f"The custom order names position(s) {bad[:5]} but the text has positions 0-{length - 1} only.")
    seen: set[int] = set()
    repeated = sorted({p for p in positions if p in seen or seen.add(p)})
    if repeated:
        raise AppInputError(f"The custom order repeats position(s) {repeated[:5]}: each position is generated once.")
    rest = [p for p in range(length) if p not in seen]
    return np.array(positions + rest, dtype=np.int64)
