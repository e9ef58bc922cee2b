"""Key/value cache for any-order decoding.

Slots are appended in generation order, so the cache of an any-order model is an ordinary
append-only cache: each step adds one slot. Keys are kept both unrotated and rotated (with the
position of each key), so that a hook on the two-stream query stream's own `hook_k` sees and edits
the same tensor as in a full forward.

Extending never writes into an existing tensor (`torch.cat` makes new ones), so `rollback_on_error`
restores a cache to its state before a step by keeping the old references: a step that raises
(a hook, Ctrl-C, a bad input found late) leaves the cache as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor


def _cat(old: Tensor | None, new: Tensor) -> Tensor:
    return new if old is None else torch.cat([old, new], dim=1)


@dataclass
class LayerKV:
    k: Tensor | None = None  # [batch, key, head, d_head], unrotated
    k_rot: Tensor | None = None  # rotated by each key's own position
    v: Tensor | None = None

    def extend(self, k: Tensor, k_rot: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append new slots and return the whole cache (k, k_rot, v)."""
        self.k, self.k_rot, self.v = _cat(self.k, k), _cat(self.k_rot, k_rot), _cat(self.v, v)
        return self.k, self.k_rot, self.v


@dataclass
class KVCache:
    layers: list[LayerKV]
    key_pos: Tensor | None = None  # [batch, key], position of each cached key (-1: null key)

    @classmethod
    def empty(cls, n_layers: int) -> KVCache:
        return cls([LayerKV() for _ in range(n_layers)])

    @property
    def n_slots(self) -> int:
        return 0 if self.key_pos is None else self.key_pos.shape[1]

    def add_positions(self, pos: Tensor) -> Tensor:
        """Record the positions of new key slots; returns all key positions."""
        self.key_pos = _cat(self.key_pos, pos)
        return self.key_pos

    @contextmanager
    def rollback_on_error(self) -> Iterator[None]:
        """Run a step; if it raises (any exception, KeyboardInterrupt too), put every field of the
        cache and of its layers back as it was before, then re-raise."""
        saved = dict(vars(self)), [dict(vars(layer)) for layer in self.layers]
        try:
            yield
        except BaseException:
            vars(self).update(saved[0])
            for layer, fields in zip(self.layers, saved[1]):
                vars(layer).update(fields)
            raise
