"""A head's label, from the normalised excess of its non-null attention on S_r and R_w.

The **normalised excess** e of a set (S_r or R_w; `workbench.probing.engine.excess`) compares the
head with chance on the scale of the best it could do: per row, with the sink set aside (the
non-null mass n = 1 - null-key mass, and the set's chance c' among the non-null keys),

    e = sum over rows of (mass on the set - n c') / sum over rows of (n - n c'),

over the rows where the set is not empty. A head that puts all its non-null mass on the set in
every such row has e = 1 at every r, w and T (a perfect nearest-key head has e_S = 1, a perfect
most-recent head e_R = 1); uniform attention has e = 0; below 0 the head avoids the set. Lifts
(mass / chance) do not have that property: the largest lift possible grows with T and shrinks
with r or w, so a fixed lift threshold labels the same perfect head differently at other r, w, T,
and a lift at 1024 is not comparable with one at 128. Because the masses are those of the
non-null keys, a head that parks half its attention on the null key and puts the rest on the
nearest key still has e_S = 1: its label says where the rest goes, and the sink is reported next
to it (`sink_flag`, and the null-key mass itself).

Labels, decided in this order (the first rule that holds wins):

| label | rule |
|---|---|
| `semantic` | e_S >= EXCESS_THRESHOLD (0.2) and e_R <= e_S / DOMINANCE (2) |
| `structural` | e_R >= EXCESS_THRESHOLD and e_S <= e_R / DOMINANCE |
| `mixed` | e_S or e_R >= EXCESS_THRESHOLD, but neither dominates the other |
| `sink` | null-key mass >= SINK_MASS (0.5), and the rest is not specialised |
| `diffuse` | entropy >= DIFFUSE_ENTROPY (0.75) x the entropy of uniform attention |
| `other` | focused (low entropy) on keys that are neither near nor recent, e.g. always the first token |

`sink_flag` (null-key mass >= SINK_MASS) is reported with every label: "semantic, with a sink".
e_S and e_R overlap where S_r and R_w share keys (at short lengths they nearly coincide); under
random orders a perfect head of one kind has an excess near 0 on the other set, because a key's
generation step is independent of its position. Under the left-to-right order the nearest key
is the most recent one, and such a head is `mixed`.
"""

from __future__ import annotations

import math

SINK_MASS = 0.5
EXCESS_THRESHOLD = 0.2
DOMINANCE = 2.0
DIFFUSE_ENTROPY = 0.75
LABELS = ("semantic", "structural", "mixed", "sink", "diffuse", "other")


def label(
    *,
    semantic_excess: float,
    structural_excess: float,
    sink_mass: float,
    entropy: float,
    uniform_entropy: float,
) -> str:
    """The head's label by the rules of the module docstring (a NaN excess counts as 0)."""
    e_s = 0.0 if math.isnan(semantic_excess) else semantic_excess
    e_r = 0.0 if math.isnan(structural_excess) else structural_excess
    if e_s >= EXCESS_THRESHOLD and e_r <= e_s / DOMINANCE:
        return "semantic"
    if e_r >= EXCESS_THRESHOLD and e_s <= e_r / DOMINANCE:
        return "structural"
    if e_s >= EXCESS_THRESHOLD or e_r >= EXCESS_THRESHOLD:
        return "mixed"
    if sink_mass >= SINK_MASS:
        return "sink"
    if entropy >= DIFFUSE_ENTROPY * uniform_entropy:
        return "diffuse"
    return "other"
