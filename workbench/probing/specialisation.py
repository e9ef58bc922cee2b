"""A head's specialisation index and label, from its pooled four-part masses.

index = (S-only mass - R-only mass) / (S-only mass + R-only mass), in [-1, 1]: +1 when the head's
exclusive mass all sits on keys near the target position, -1 when it all sits on recent keys.
Masses are pooled over every probed row of the dataset. The parts where the two sets agree
("both") or neither applies do not enter the index: at short lengths "both" is large and says
nothing about which notion of "near" the head uses.

Labels, decided in this order (the first rule that holds wins):

| label | rule |
|---|---|
| `sink` | null-key mass >= SINK_MASS (0.5): the head mostly parks on the null key |
| `semantic` | index >= INDEX_THRESHOLD (0.3) and lift(S-only) >= LIFT_THRESHOLD (2.0) |
| `structural` | index <= -INDEX_THRESHOLD and lift(R-only) >= LIFT_THRESHOLD |
| `mixed` | lift of S-only, R-only or both >= LIFT_THRESHOLD, but the index is not decisive |
| `diffuse` | no set above LIFT_THRESHOLD x chance, and entropy >= DIFFUSE_ENTROPY (0.75) x the entropy of uniform attention |
| `other` | focused (low entropy) on keys that are neither near nor recent, e.g. always the first token |

The lift condition keeps a head whose index is high only because both exclusive masses are tiny
(below chance) from being called semantic or structural.
"""

from __future__ import annotations

import math

SINK_MASS = 0.5
INDEX_THRESHOLD = 0.3
LIFT_THRESHOLD = 2.0
DIFFUSE_ENTROPY = 0.75
LABELS = ("sink", "semantic", "structural", "mixed", "diffuse", "other")


def specialisation_index(s_only: float, r_only: float) -> float:
    """(S-only - R-only) / (S-only + R-only); NaN when both are zero."""
    total = s_only + r_only
    return (s_only - r_only) / total if total > 0 else math.nan


def label(
    *,
    index: float,
    sink_mass: float,
    lift_s_only: float,
    lift_r_only: float,
    lift_both: float,
    entropy: float,
    uniform_entropy: float,
) -> str:
    """The head's label by the rules of the module docstring (NaN lifts count as "not above")."""
    lifted = lambda lift: not math.isnan(lift) and lift >= LIFT_THRESHOLD  # noqa: E731
    if sink_mass >= SINK_MASS:
        return "sink"
    if not math.isnan(index) and index >= INDEX_THRESHOLD and lifted(lift_s_only):
        return "semantic"
    if not math.isnan(index) and index <= -INDEX_THRESHOLD and lifted(lift_r_only):
        return "structural"
    if lifted(lift_s_only) or lifted(lift_r_only) or lifted(lift_both):
        return "mixed"
    if entropy >= DIFFUSE_ENTROPY * uniform_entropy:
        return "diffuse"
    return "other"
