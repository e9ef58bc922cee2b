"""From a token stream to model inputs: a train/validation split and fixed-length windows.

A window is ``seq_len`` consecutive tokens, and it is the whole model input: an AO-ARM predicts
every position of the window from the positions generated before it (the BOS / null key is a
learned vector inside the model, not a token), so no extra target token is cut.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.data.corpus import DOCUMENT_SEPARATOR, CorpusError

DEFAULT_VAL_FRACTION = 0.1


class TokenSplit(NamedTuple):
    """The two parts of a token stream (contiguous, disjoint, covering it)."""

    train: Int[Tensor, " n_train"]
    val: Int[Tensor, " n_val"]


def train_val_split(
    tokens: Int[Tensor, " n_tokens"], seq_len: int, val_fraction: float = DEFAULT_VAL_FRACTION
) -> TokenSplit:
    """Validation = the last ``round(val_fraction * n)`` tokens of the stream; train = the rest.

    A contiguous tail rather than a hashed document split: it needs no seed, works for a
    one-document corpus (a single text file), and no window of either part can overlap the
    other. The cost is that validation text is the end of the corpus (for ``stdlib``, the
    modules last in sorted order), not a random sample.

    Both parts must hold at least one window of ``seq_len`` tokens; if not, the error says how
    many tokens the stream has and how many it needs.
    """
    _check_stream(tokens)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    n = tokens.numel()
    n_val = _n_val(n, val_fraction)
    if min(n_val, n - n_val) < seq_len:
        raise CorpusError(
            f"the token stream has {n} tokens; with val_fraction={val_fraction} validation gets "
            f"{n_val} and training {n - n_val}, but each needs at least one window of "
            f"seq_len={seq_len} tokens, so the corpus needs at least "
            f"{_min_tokens(seq_len, val_fraction)} tokens. Use a larger corpus (or max_chars), "
            "a shorter seq_len, or another val_fraction."
        )
    return TokenSplit(train=tokens[: n - n_val], val=tokens[n - n_val :])


def document_split(
    documents: Sequence[str], encode: Callable[[str], Tensor], seq_len: int, val_fraction: float = DEFAULT_VAL_FRACTION
) -> TokenSplit:
    """Validation = whole documents, each held out when the sha256 of its text falls below
    ``val_fraction`` of the hash range; train = the others. Each part is its documents joined by
    DOCUMENT_SEPARATOR, in corpus order, then encoded.

    A held-out set by document, not a cut inside one: no validation window shares text with a
    training document, the choice depends on the text alone (not on its position or the other
    documents), and about ``val_fraction`` of the documents are held out. Both parts must hold
    one window of ``seq_len`` tokens.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    held = [_held_out(d, val_fraction) for d in documents]
    parts = [DOCUMENT_SEPARATOR.join(d for d, h in zip(documents, held) if h == want) for want in (False, True)]
    train, val = (encode(p) for p in parts)
    if min(train.numel(), val.numel()) < seq_len:
        raise CorpusError(
            f"held out by document, validation has {val.numel()} tokens ({sum(held)} of {len(documents)} "
            f"documents) and training {train.numel()}, but each needs at least one window of "
            f"seq_len={seq_len}; use more (or smaller) documents, another val_fraction, or the tail split."
        )
    return TokenSplit(train=train, val=val)


def _held_out(document: str, val_fraction: float) -> bool:
    digest = hashlib.sha256(document.encode("utf-8", errors="surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < val_fraction * 2**64


def _n_val(n: int, val_fraction: float) -> int:
    """Validation length: ``round`` (not ``ceil``, which float error can push up by one)."""
    return min(max(round(n * val_fraction), 1), n - 1)


def _min_tokens(seq_len: int, val_fraction: float) -> int:
    """The fewest tokens for which both parts of the split hold ``seq_len`` tokens."""
    # Start from a lower bound (round(n * f) >= seq_len needs n * f > seq_len - 1) and step up.
    n = max(2 * seq_len, int((seq_len - 1) / min(val_fraction, 1 - val_fraction)))
    while min(_n_val(n, val_fraction), n - _n_val(n, val_fraction)) < seq_len:
        n += 1
    return n


def random_windows(
    tokens: Int[Tensor, " n_tokens"], seq_len: int, batch_size: int, generator: torch.Generator
) -> Int[Tensor, "batch pos"]:
    """``batch_size`` windows with start offsets drawn uniformly from ``0..n - seq_len``.

    For training: every start is equally likely, and the same ``generator`` state gives the
    same batch. Windows may overlap each other.
    """
    n = _check_stream(tokens, seq_len)
    starts = torch.randint(
        n - seq_len + 1, (batch_size,), generator=generator, device=generator.device
    ).to(tokens.device)  # (batch,)
    offsets = torch.arange(seq_len, device=tokens.device)  # (pos,)
    return tokens[starts[:, None] + offsets]  # (batch, pos)


def sequential_windows(tokens: Int[Tensor, " n_tokens"], seq_len: int) -> Int[Tensor, "window pos"]:
    """Non-overlapping windows ``tokens[i*seq_len : (i+1)*seq_len]``, in order.

    For evaluation and probing: each token is seen once, deterministically. The tail of
    ``n % seq_len`` tokens that does not fill a window is dropped.
    """
    n = _check_stream(tokens, seq_len)
    n_windows = n // seq_len
    return tokens[: n_windows * seq_len].view(n_windows, seq_len)


def _check_stream(tokens: Tensor, seq_len: int = 1) -> int:
    """Length of ``tokens`` after checking it is a 1-D integer stream with ``seq_len`` tokens."""
    if tokens.dim() != 1 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(
            f"expected a 1-D integer token stream, got {tokens.dtype} of shape "
            f"{tuple(tokens.shape)}; encode text with tokenizer.encode_tensor(text)."
        )
    if seq_len < 1:
        raise ValueError(f"seq_len must be a positive number of tokens, got {seq_len}")
    n = tokens.numel()
    if n < seq_len:
        raise CorpusError(
            f"the token stream has {n} tokens, fewer than one window of seq_len={seq_len}. "
            "Use a larger corpus (or max_chars) or a shorter seq_len."
        )
    return n
