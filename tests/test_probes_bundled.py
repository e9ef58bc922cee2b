"""Integration (slow): probes on the bundled checkpoints.

The causal check of a label: knocking out a semantic-labelled head's semantic set S_r must raise
the NLL more than knocking out a random set of the same size per row (the paired excess and its
95% interval are printed before the assertion). It is asserted for the most semantic head of the
stream the logits come from (query / main); content-stream heads are printed too, and their single-
head knockouts are often within noise of the random control (see docs/probes.md).
"""

from __future__ import annotations

import pytest

from workbench import list_checkpoints
from workbench.probing import run_probes

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["two_stream-128", "decoupled_rope-128"])
def test_knocking_out_a_semantic_heads_set_hurts_more_than_a_random_set(name):
    if name not in list_checkpoints():
        pytest.skip(f"bundled checkpoint {name} is not in checkpoints/")
    result = run_probes(name, probes="specialisation,knockout", max_sequences=16, causal_sequences=16, max_heads=1,
                        batch_size=8, progress=False, device="cpu")
    table = result.table
    knock = table[(table.probe == "knockout") & (table.label == "semantic")]
    excess = knock[knock.metric == "knockout_semantic_excess"]
    print(knock[["layer", "stream", "head", "metric", "value", "chance", "ci"]].to_string())
    assert len(excess) >= 1, f"{name} has no semantic-labelled head to knock out"
    logit_stream = "query" if name.startswith("two_stream") else "main"
    for _, row in excess.iterrows():
        semantic = knock[(knock.metric == "knockout_semantic") & (knock.layer == row.layer) & (knock.stream == row.stream)
                         & (knock["head"] == row["head"])].iloc[0]
        print(f"{name} L{row.layer} {row.stream} H{row['head']}: semantic knockout {semantic.value:+.4f} bits/token, "
              f"random same-size set {semantic.chance:+.4f}, excess {row.value:+.4f} ± {row.ci:.4f}")
    logit_heads = excess[excess.stream == logit_stream]
    assert len(logit_heads) >= 1, f"{name} has no semantic-labelled head in its {logit_stream} stream"
    row = logit_heads.iloc[0]
    assert row.value - row.ci > 0, "the semantic set's knockout is not distinguishable from a random set's"
