"""Gaps between models: paired over shared windows and orders, and their change with length."""

from __future__ import annotations

from collections import Counter

from workbench.evaluation.core import WindowValues
from workbench.stats import Estimate, difference, paired_difference

Gaps = dict[str, dict[str, dict[str, Estimate]]]  # model -> other -> measure -> model - other


def paired_gaps(values: dict[str, WindowValues]) -> Gaps:
    """model - other, any-order and left-to-right bits/token, for every two models evaluated on
    the same windows with the same orders (`WindowValues.pairable_with`): the blocked mean of the
    per-window difference."""
    gaps: Gaps = {}
    for key, mine in values.items():
        gaps[key] = {
            other: {
                "any_order_bits": paired_difference(mine.any_order_per_window, theirs.any_order_per_window),
                "left_to_right_bits": paired_difference(mine.left_to_right, theirs.left_to_right),
            }
            for other, theirs in values.items()
            if other != key and mine.pairable_with(theirs)
        }
    return gaps


Changes = dict[str, dict[str, dict[int, tuple[tuple[str, str], Estimate]]]]  # model -> other -> shorter length -> ((A', B'), change)


def gap_changes(values: dict[str, WindowValues], variants: dict[str, str], gaps: Gaps) -> Changes:
    """For model A and model B at a length L, and the same two variants A', B' at every shorter
    length l: (A - B) - (A' - B') in any-order bits/token, the change of the gap with length.
    The two gaps come from different models on different windows, so their variances add
    (`workbench.stats.difference`). Only (variant, length) cells holding one model take part
    (with several runs per cell, which one pairs with which is the caller's choice)."""
    counts = Counter((variants[k], v.seq_len) for k, v in values.items())
    cell = {(variants[k], v.seq_len): k for k, v in values.items() if counts[(variants[k], v.seq_len)] == 1}
    changes: Changes = {}
    for (variant, length), key in cell.items():
        for other in gaps.get(key, {}):
            other_variant = variants[other]
            if (other_variant, length) not in cell or cell[(other_variant, length)] != other:
                continue
            for (v, shorter), short_key in sorted(cell.items(), key=lambda c: c[0][1]):
                short_other = cell.get((other_variant, shorter))
                if v != variant or shorter >= length or short_other not in gaps.get(short_key, {}):
                    continue
                change = difference(gaps[key][other]["any_order_bits"], gaps[short_key][short_other]["any_order_bits"])
                changes.setdefault(key, {}).setdefault(other, {})[shorter] = ((short_key, short_other), change)
    return changes
