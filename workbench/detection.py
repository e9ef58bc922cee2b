"""Detection patterns for `transformer_lens.head_detector.detect_head` in a stream view's slot
coordinates (`StreamView.detection_pattern` builds them for one sequence).

A position-coordinate rule ("the key at position p-1") becomes lower triangular once rows and keys
are put in generation order and keys the row cannot see are dropped; docs/hooks.md ("detect_head
in generation order") has the table of rules.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.orders import slot_positions

DETECTION_PATTERNS = ("previous_step", "previous_position", "adjacent_position", "duplicate_token", "induction")


def position_detection_pattern(name: str, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos pos"]:
    """Rule `name` in sequence-position coordinates: entry [p, q] = 1 when a row whose reference
    position is p should attend to the key at position q (no causality: any-order rows may see
    keys on both sides)."""
    batch, n = tokens.shape
    p = torch.arange(n, device=tokens.device)[:, None]
    q = torch.arange(n, device=tokens.device)[None, :]
    if name == "previous_position":
        rule = (q == p - 1).expand(batch, n, n)
    elif name == "adjacent_position":
        rule = ((q - p).abs() == 1).expand(batch, n, n)
    elif name == "duplicate_token":  # the same token elsewhere
        rule = (tokens[:, :, None] == tokens[:, None, :]) & (p != q)
    elif name == "induction":  # the token after an earlier (in position) occurrence of the row's token
        prev = torch.cat([torch.full_like(tokens[:, :1], -1), tokens[:, :-1]], dim=1)  # token at q-1
        rule = (tokens[:, :, None] == prev[:, None, :]) & (q - 1 != p) & (q >= 1)
    else:
        raise ValueError(f"unknown position rule {name!r}; use one of {DETECTION_PATTERNS[1:]}.")
    return rule.float()


def generation_order_detection_pattern(
    name: str | Float[Tensor, "pos pos"] | Float[Tensor, "batch pos pos"],
    tokens: Int[Tensor, "batch pos"],
    order: Int[Tensor, "batch step"],
    stream: str,
) -> Float[Tensor, "batch slot key"]:
    """A detection pattern in a stream view's [slot, key] coordinates (T x T, lower triangular).

    - "previous_step": the key generated one step before the row's own token (content / main:
      key i-1 of row i >= 2), or, for query rows, the most recently generated key (key i of row
      i >= 1): recency 1 in the probe contract. TransformerLens's own "previous_token_head"
      (key i-1 of every row i >= 1) equals this for content / main apart from row 1, where it
      points at the null key; on a query view it means recency 2.
    - a position rule (`position_detection_pattern` names, or a [pos, pos] tensor): entry
      [i, j] = rule[ref(i), pos(j)] for visible keys j <= i, j >= 1, where ref(i) is the row's
      reference position (content: held; query / main: predicted) and pos(j) the key's position.
      For a query row "duplicate_token" thus marks earlier copies of the token it must predict.
    """
    n = tokens.shape[1]
    slots = torch.arange(n, device=tokens.device)
    visible = slots[None, :] <= slots[:, None]  # [slot, key]
    if isinstance(name, str) and name == "previous_step":
        offset = 0 if stream == "query" else 1
        rule = (slots[None, :] == slots[:, None] - offset) & (slots[None, :] >= 1)
        return rule.float().expand(tokens.shape[0], n, n).clone()
    rule = position_detection_pattern(name, tokens) if isinstance(name, str) else name.float()
    if rule.ndim == 2:
        rule = rule.expand(tokens.shape[0], n, n)
    row_pos = slot_positions(order, stream, "row")[:, :n]  # [batch, slot]
    key_pos = slot_positions(order, stream, "key")[:, :n]
    picked = rule.gather(1, row_pos.clamp(min=0)[:, :, None].expand(-1, -1, n))  # rows by reference position
    picked = picked.gather(2, key_pos.clamp(min=0)[:, None, :].expand(-1, n, -1))  # keys by their position
    keep = visible & (row_pos[:, :, None] >= 0) & (key_pos[:, None, :] >= 0)
    return picked * keep
