"""Probes on hand-built models whose heads attend exactly to known keys.

Every layer and stream of a tiny model gets its attention scores replaced (a permanent hook on
`hook_attn_scores`) so that head h attends exactly to:

    0 recent   the most recent key (key i of row i; key i - 1 in the content stream, whose key i
               is the row's own token)
    1 nearest  the non-null key nearest the row's reference position (the own token excluded)
    2 null     the null key (BOS)
    3 uniform  every visible key alike
    4 first    the first generated token (key 1)

(0 where the head looks, -1e4 on the other visible keys: float32 softmax gives exact zeros, and a
knockout that removes the target leaves finite scores.) The probes then run through the normal
path, and everything is compared with a brute-force count written from docs/coordinates.md alone.
"""

from __future__ import annotations

import math

import pytest
import torch

from workbench import AOConfig, from_config
from workbench.hook_names import hook_name
from workbench.probing import discover, run_probes
from workbench.probing.context import ProbeContext, ProbeSettings

KNOWN = ("recent", "nearest", "null", "uniform", "first")
EXPECTED_LABELS = {"recent": "structural", "nearest": "semantic", "null": "sink", "uniform": "diffuse", "first": "other"}
VARIANTS = ("two_stream", "decoupled_rope", "sigma_gpt")
T, N_SEQ, R, W = 24, 6, 2, 2
STAT_PROBES = "parts,histograms,specialisation,sink,entropy,by_step"


# ---- the hand-built models --------------------------------------------------------------------


def key_positions(order: list[int]) -> list[int]:
    """Key j >= 1 holds the token generated at step j-1, at position order[j-1]; key 0 is null."""
    return [-1] + list(order)


def rows_of(order: list[int], stream: str):
    """(row index i, reference position, own position or None, recency offset) per probed row."""
    n = len(order)
    if stream == "content":  # row i >= 1 holds the token at order[i-1]; the BOS row is not probed
        return [(i, order[i - 1], None, 0) for i in range(1, n + 1)]
    if stream == "query":  # row i predicts order[i], sees keys 0..i (the most recent has recency 1)
        return [(i, order[i], None, 1) for i in range(n)]
    return [(i, order[i], order[i - 1] if i >= 1 else None, 0) for i in range(n)]  # main


def known_target(head: int, i: int, ref: int, keys: list[int], stream: str) -> int | None:
    """The one key head `head` attends to in row i (None: uniform over keys 0..i)."""
    name = KNOWN[head]
    real = list(range(1, i + 1))
    if name == "recent":  # content rows hold their own token in key i: the most recent *other* key
        return i - 1 if stream == "content" else i
    if name == "nearest":
        candidates = [j for j in real if keys[j] != ref]
        return min(candidates, key=lambda j: (abs(keys[j] - ref), j)) if candidates else 0
    if name == "null":
        return 0
    if name == "first":
        return 1 if i >= 1 else 0
    return None


def install_known_heads(model) -> None:
    """Replace every layer's and stream's scores by the KNOWN heads' (a permanent hook)."""
    assert model.cfg.n_heads == len(KNOWN)
    state = {}

    def keep_order(order, hook):
        state["order"] = order
        return order

    def scores_hook(scores, hook):  # [batch, head, row, key], -inf above the diagonal
        stream = "main" if ".attn." in hook.name and hook.name.count(".") == 3 else hook.name.split(".")[2]
        new = torch.full_like(scores, -1e4)
        for b, order in enumerate(state["order"].tolist()):
            keys = key_positions(order)
            for i, ref, _, _ in _all_rows(order, stream):
                for h in range(len(KNOWN)):
                    target = known_target(h, i, ref, keys, stream)
                    if target is None:
                        new[b, h, i, : i + 1] = 0.0
                    else:
                        new[b, h, i, target] = 0.0
        return new.masked_fill(scores == float("-inf"), float("-inf"))

    model.add_hook("hook_order", keep_order, is_permanent=True)
    for layer in range(model.cfg.n_layers):
        for stream in model.stream_names:
            model.add_hook(hook_name("attn_scores", layer, stream), scores_hook, is_permanent=True)


def _all_rows(order, stream):
    rows = rows_of(order, stream)
    return ([(0, -1, None, 0)] if stream == "content" else []) + rows  # the BOS row needs a pattern too


def hand_built(variant: str, n_layers: int = 2):
    cfg = AOConfig(variant=variant, n_layers=n_layers, d_model=20, n_heads=len(KNOWN), d_head=4, d_mlp=24,
                   n_ctx=T, d_vocab=11, seed=0)
    model = from_config(cfg).eval()
    with torch.no_grad():  # head 3 (uniform) writes nothing: its ablation / knockout must change nothing
        for block in model.blocks:
            block.attn.W_O[3] = 0.0
    install_known_heads(model)
    return model


def windows(n: int = N_SEQ, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 11, (n, T), generator=torch.Generator().manual_seed(seed))


# ---- the brute force (docs/coordinates.md, nothing from workbench) ------------------------------


def log2_bin(d: int | None) -> int:
    if d is None:
        return 0
    return 1 if d == 0 else min(2 + math.ceil(math.log2(d)), 17)


def brute_force(orders: list[list[int]], stream: str, head: int, r: int = R, w: int = W) -> dict:
    """Pooled sums over every probed row of every order, for one head of one stream."""
    acc = {k: 0.0 for k in ("rows", "own_rows", "entropy", "uniform_entropy", "sink", "sink_chance")}
    for part in ("S_only", "R_only", "both", "neither"):
        acc[f"{part}_mass"] = acc[f"{part}_chance"] = 0.0
    hists = {f"{h}_{kind}": [0.0] * 18 for h in ("semantic", "recency", "own") for kind in ("mass", "chance")}
    hists.update({f"joint_{kind}": [[0.0] * 18 for _ in range(18)] for kind in ("mass", "chance")})
    for order in orders:
        keys = key_positions(order)
        for i, ref, own, offset in rows_of(order, stream):
            target = known_target(head, i, ref, keys, stream)
            p = [1.0 / (i + 1) if target is None else float(j == target) for j in range(i + 1)]
            acc["rows"] += 1
            acc["entropy"] += -sum(x * math.log2(x) for x in p if x > 0)
            acc["uniform_entropy"] += math.log2(i + 1)
            acc["sink"] += p[0]
            acc["sink_chance"] += 1.0 / (i + 1)
            if own is not None:
                acc["own_rows"] += 1
            for j in range(i + 1):
                chance = 1.0 / (i + 1)
                if j == 0:
                    dist = rec = own_d = None
                    in_s = in_r = False
                else:
                    dist, rec = abs(keys[j] - ref), i - j + offset  # recency: row step - key step
                    own_d = abs(keys[j] - own) if own is not None else None
                    in_s, in_r = dist <= r, rec <= w
                part = "both" if in_s and in_r else "S_only" if in_s else "R_only" if in_r else "neither"
                acc[f"{part}_mass"] += p[j]
                acc[f"{part}_chance"] += chance
                hists["semantic_mass"][log2_bin(dist)] += p[j]
                hists["semantic_chance"][log2_bin(dist)] += chance
                hists["recency_mass"][log2_bin(rec)] += p[j]
                hists["recency_chance"][log2_bin(rec)] += chance
                hists["joint_mass"][log2_bin(dist)][log2_bin(rec)] += p[j]
                hists["joint_chance"][log2_bin(dist)][log2_bin(rec)] += chance
                if own is not None:
                    hists["own_mass"][log2_bin(own_d)] += p[j]
                    hists["own_chance"][log2_bin(own_d)] += chance
    return {**acc, **hists}


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=VARIANTS)
def known_run(request):
    """(variant, orders, table) of one run of every statistics probe on a hand-built model."""
    model = hand_built(request.param)
    data = windows()
    result = run_probes(model, data=data, probes=STAT_PROBES, r=R, w=W, batch_size=4, progress=False)
    ctx = ProbeContext(model, data, ProbeSettings(r=R, w=W), progress=False)
    orders = [ctx.order(s).tolist() for s in range(N_SEQ)]
    return request.param, model, orders, result.table


def value(table, **where):
    rows = table
    for column, wanted in where.items():
        rows = rows[rows[column] == wanted]
    assert len(rows) == 1, f"expected one row for {where}, found {len(rows)}"
    return rows.iloc[0]


# ---- the statistics probes: known values and labels ---------------------------------------------


def test_registry_finds_every_builtin_probe():
    names = set(discover())
    print("registered probes:", sorted(names))
    assert {"parts", "histograms", "specialisation", "sink", "entropy", "by_step", "divergence", "ablation",
            "knockout"} <= names


def test_labels_are_the_known_ones(known_run):
    variant, model, _, table = known_run
    labels = table[table.metric == "label"]
    print(labels[["layer", "stream", "head", "value", "label"]].to_string())
    for _, row in labels.iterrows():
        assert row.label == EXPECTED_LABELS[KNOWN[row["head"]]], (variant, row.stream, KNOWN[row["head"]], row.label)
    assert len(labels) == model.cfg.n_layers * len(model.stream_names) * len(KNOWN)


def test_scalars_match_the_brute_force(known_run):
    variant, model, orders, table = known_run
    for stream in model.stream_names:
        for head, name in enumerate(KNOWN):
            bf = brute_force(orders, stream, head)
            where = dict(layer=1, stream=stream, head=head)
            for part in ("S_only", "R_only", "both", "neither"):
                row = value(table, probe="parts", metric=part, **where)
                print(variant, stream, name, part, row.value, bf[f"{part}_mass"] / bf["rows"], row.chance)
                assert row.value == pytest.approx(bf[f"{part}_mass"] / bf["rows"], abs=1e-6)
                assert row.chance == pytest.approx(bf[f"{part}_chance"] / bf["rows"], abs=1e-12)
                assert row.n == bf["rows"]
            assert value(table, probe="sink", metric="sink", **where).value == pytest.approx(bf["sink"] / bf["rows"], abs=1e-6)
            assert value(table, probe="sink", metric="sink", **where).chance == pytest.approx(bf["sink_chance"] / bf["rows"], abs=1e-12)
            entropy = value(table, probe="entropy", metric="entropy", **where)
            assert entropy.value == pytest.approx(bf["entropy"] / bf["rows"], abs=1e-6)
            assert entropy.chance == pytest.approx(bf["uniform_entropy"] / bf["rows"], abs=1e-12)
            s, r = bf["S_only_mass"], bf["R_only_mass"]
            index = value(table, probe="specialisation", metric="index", **where).value
            if s + r > 0:
                assert index == pytest.approx((s - r) / (s + r), abs=1e-6)
            else:
                assert math.isnan(index)


def test_known_heads_exact_values(known_run):
    """Values known without any counting: the null head, the uniform head, the recent head."""
    variant, model, orders, table = known_run
    for stream in model.stream_names:
        at = dict(layer=0, stream=stream)
        null = value(table, probe="sink", metric="sink", head=2, **at)
        assert null.value == pytest.approx(1.0, abs=1e-12)
        assert value(table, probe="parts", metric="neither", head=2, **at).value == pytest.approx(1.0, abs=1e-12)
        assert value(table, probe="entropy", metric="entropy", head=2, **at).value == pytest.approx(0.0, abs=1e-6)
        uniform = table[(table["head"] == 3) & (table.stream == stream) & (table.probe == "parts") & ~table.metric.str.endswith("lift")]
        assert (uniform.value - uniform.chance).abs().max() < 1e-6  # uniform attention *is* chance
        lifts = table[(table["head"] == 3) & (table.stream == stream) & table.metric.str.endswith("_lift")]
        assert (lifts.value - 1).abs().max() < 1e-6
        # The recent head puts every row's mass on recency 1 (0 in the main stream, whose most
        # recent key is the row's own token), except the one row per sequence that sees no other
        # real key and so looks at the null key (content row 1, query and main row 0).
        recency = table[(table.metric == "recency_hist") & (table["head"] == 0) & (table.stream == stream) & (table.layer == 0)]
        offset_bin = 1 if stream == "main" else 2
        null_rows = 1
        expected = {0: null_rows / T, offset_bin: 1 - null_rows / T}
        for _, row in recency.iterrows():
            assert row.value == pytest.approx(expected.get(row.x, 0.0), abs=1e-6), (stream, row.x)
        assert value(table, probe="parts", metric="structural_set", head=0, **at).value == pytest.approx(1 - null_rows / T, abs=1e-6)


def test_histograms_match_the_brute_force_and_sum_to_the_rows(known_run):
    variant, model, orders, table = known_run
    hists = table[table.probe == "histograms"]
    for stream in model.stream_names:
        kinds = ("semantic", "recency") + (("own",) if stream == "main" else ())
        assert set(hists[hists.stream == stream].metric) == {f"{k}_hist" for k in kinds} | {"joint_hist"}
        for head in range(len(KNOWN)):
            bf = brute_force(orders, stream, head)
            joint = hists[(hists.stream == stream) & (hists["head"] == head) & (hists.metric == "joint_hist") & (hists.layer == 0)]
            assert (joint.n == bf["rows"]).all()
            cells = {(x, y) for x in range(18) for y in range(18) if bf["joint_chance"][x][y] > 0}
            assert set(zip(joint.x, joint.y)) == cells  # every cell a key can reach, no other
            for _, row in joint.iterrows():
                assert row.value == pytest.approx(bf["joint_mass"][row.x][row.y] / bf["rows"], abs=1e-6)
                assert row.chance == pytest.approx(bf["joint_chance"][row.x][row.y] / bf["rows"], abs=1e-12)
            for kind in kinds:
                rows = hists[(hists.stream == stream) & (hists["head"] == head) & (hists.metric == f"{kind}_hist") & (hists.layer == 0)].sort_values("x")
                n = bf["own_rows"] if kind == "own" else bf["rows"]
                assert (rows.n == n).all()
                # Each histogram, as a mean per row, sums to 1 (the raw sums to the number of rows).
                assert rows.value.sum() == pytest.approx(1.0, abs=1e-6) and rows.chance.sum() == pytest.approx(1.0, abs=1e-12)
                assert rows.value.tolist() == pytest.approx([m / n for m in bf[f"{kind}_mass"]], abs=1e-6)
                assert rows.chance.tolist() == pytest.approx([c / n for c in bf[f"{kind}_chance"]], abs=1e-12)


def test_parts_at_any_edge_r_w_are_read_from_the_joint_histogram(known_run):
    """readout.parts_table on the joint_hist rows: at the run's (r, w) it gives the parts probe's
    values; at other (r, w) on bin edges, the brute force's; r, w inside a bin are refused."""
    from workbench.probing.readout import parts_table

    variant, model, orders, table = known_run
    for r, w in [(R, W), (1, 4), (0, 8), (4, 1)]:
        parts = parts_table(table, r, w).query("layer == 1")
        for stream in model.stream_names:
            for head in range(len(KNOWN)):
                bf = brute_force(orders, stream, head, r=r, w=w)
                for part in ("S_only", "R_only", "both", "neither"):
                    got = value(parts, stream=stream, head=head, part=part)
                    assert got.mass == pytest.approx(bf[f"{part}_mass"] / bf["rows"], abs=1e-6), (r, w, stream, head, part)
                    assert got.chance == pytest.approx(bf[f"{part}_chance"] / bf["rows"], abs=1e-12)
                    if (r, w) == (R, W):
                        assert got.mass == pytest.approx(value(table, probe="parts", metric=part, layer=1, stream=stream,
                                                               head=head).value, abs=1e-9)
    with pytest.raises(ValueError, match="not on a bin edge"):
        parts_table(table, 3, 4)


def test_parts_sum_to_one_per_row_and_per_step(known_run):
    """Per row: through pattern_stats on the captured pattern; per step bucket: in the table."""
    from workbench.kernels import pattern_stats
    from workbench.orders import probe_layout

    variant, model, orders, table = known_run
    tokens, order = windows(2), torch.tensor(orders[:2])
    names = [hook_name("pattern", 0, s) for s in model.stream_names]
    _, cache = model.run_with_cache(tokens, order, names_filter=lambda n: n in names)
    for stream in model.stream_names:
        lay = probe_layout(order, stream)
        stats = pattern_stats(cache[hook_name("pattern", 0, stream)], lay.key_pos, lay.row_ref, lay.row_own,
                              recency_offset=lay.recency_offset, r=R, w=W)
        per_row = stats.step_parts_mass.sum(-1)  # [head, row]
        assert torch.allclose(per_row, stats.step_rows.expand_as(per_row), atol=1e-6)
        assert torch.allclose(stats.step_parts_chance.sum(-1), stats.step_rows.expand_as(per_row), atol=1e-12)
        assert torch.allclose(stats.sem_mass.sum(-1), stats.n_rows.expand(len(KNOWN)), atol=1e-6)
        assert torch.allclose(stats.rec_chance.sum(-1), stats.n_rows.expand(len(KNOWN)), atol=1e-6)
    steps = table[(table.probe == "by_step") & table.metric.isin(["S_only", "R_only", "both", "neither"])]
    sums = steps.groupby(["layer", "stream", "head", "x"])[["value", "chance"]].sum()
    print(sums.describe())
    assert (sums.value - 1).abs().max() < 1e-6 and (sums.chance - 1).abs().max() < 1e-12  # float32 patterns


def test_by_step_matches_the_brute_force_per_bucket(known_run):
    variant, model, orders, table = known_run
    stream = model.stream_names[-1]
    buckets = sorted(set(table[(table.probe == "by_step") & (table.stream == stream)].x))
    assert buckets == [b for b in (0, 1, 2, 4, 8, 16) if not (stream == "content" and b == 0)]
    for start in buckets:
        stop = 1 if start == 0 else 2 * start
        bf_rows = [i for o in orders for i, _, _, _ in rows_of(o, stream) if start <= i < stop]
        sink = sum(1.0 for i in bf_rows if i == 0)  # rows that see only the null key
        row = value(table, probe="by_step", metric="sink", layer=0, stream=stream, head=0, x=start)
        assert row.n == len(bf_rows)
        assert row.value == pytest.approx(sink / len(bf_rows), abs=1e-12)  # the recent head sinks only on row 0
        null = value(table, probe="by_step", metric="sink", layer=0, stream=stream, head=2, x=start)
        assert null.value == pytest.approx(1.0, abs=1e-12)


def test_confidence_intervals_are_finite_and_cover_zero_width_when_exact(known_run):
    _, model, _, table = known_run
    parts = table[(table.probe == "parts") & (table.metric == "S_only")]
    assert parts.ci.notna().all() and (parts.ci >= 0).all()
    null_sink = table[(table.probe == "sink") & (table["head"] == 2)]
    assert (null_sink.ci < 1e-6).all()  # the null head's sink mass is 1 in every sequence


def test_summed_batch_maps_add_blocks_of_batches_by_a_fixed_tree():
    """map_batches(summed=True): blocks of consecutive batches (a block size that depends only on
    the number of batches) summed in order, the blocks by a fixed pairwise tree: one total."""
    from workbench.probing.context import sum_block, tree_sum

    model = from_config(AOConfig(variant="decoupled_rope", n_layers=1, d_model=8, n_heads=1, d_head=8, d_mlp=8,
                                 n_ctx=4, d_vocab=5))
    windows = torch.zeros(150, 4, dtype=torch.long)
    ctx = ProbeContext(model, windows, ProbeSettings(batch_size=1), progress=False)
    assert (sum_block(64), sum_block(65), sum_block(150)) == (1, 2, 3)
    values = torch.rand(150, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10.0 ** torch.arange(-8, 7, 7.0)
    [total] = ctx.map_batches("x", lambda i, t, o: {"v": values[i], "one": torch.ones(2)}, summed=True)
    blocks = {b: {"v": values[3 * b] + values[3 * b + 1] + values[3 * b + 2]} for b in range(50)}
    expected = tree_sum(blocks, 50)["v"]
    by_hand = (((blocks[0]["v"] + blocks[1]["v"]) + (blocks[2]["v"] + blocks[3]["v"])))  # the tree's first node of 4
    assert torch.equal(tree_sum(blocks, 50, (0, 4))["v"], by_hand)
    assert torch.equal(total["v"], expected) and torch.equal(total["one"], torch.full((2,), 150.0))
    plain = ctx.map_batches("y", lambda i, t, o: {"i": torch.tensor(float(i))})
    assert [float(b["i"]) for b in plain] == list(range(150))


@pytest.mark.parametrize("n_leaves", [1, 2, 5, 50, 64])
def test_tree_sums_are_the_same_bits_however_the_leaves_are_split(n_leaves):
    """What ranks do: each sums the subtrees covering its contiguous run of leaves (dyadic_cover),
    and the root from those subtree sums is bit-identical to the root from all leaves, for any
    number of ranks (float64 values of very different sizes, so the order of additions matters)."""
    from workbench.probing.context import dyadic_cover, tree_sum

    gen = torch.Generator().manual_seed(n_leaves)
    leaves = {b: {"v": torch.randn(4, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(-9, 9, (4,), generator=gen)}
              for b in range(n_leaves)}
    alone = tree_sum(leaves, n_leaves)["v"]
    for world in (1, 2, 3, 5, 7, 70):
        nodes = {}
        for rank in range(world):
            first, stop = rank * n_leaves // world, (rank + 1) * n_leaves // world
            spans = dyadic_cover(first, stop)
            assert [s for span in spans for s in range(*span)] == list(range(first, stop))
            nodes.update({span: tree_sum(leaves, n_leaves, span) for span in spans})
        assert torch.equal(tree_sum(nodes, n_leaves)["v"], alone), world
    in_order = sum((leaves[b]["v"] for b in range(1, n_leaves)), leaves[0]["v"])
    assert torch.allclose(alone, in_order, rtol=1e-12, atol=0)


def test_closed_form_ratio_estimates_match_autograd():
    """Pooled.estimate takes a Ratio's gradient in closed form; the same function as a plain
    lambda goes through autograd. Values and CIs agree, 0 / 0 rows included (NaN in both)."""
    from workbench.probing.engine import F, FIELDS, Pooled, excess, index_fn, lift, per_row, summed

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 5, 40, len(FIELDS), generator=gen, dtype=torch.float64)
    x[1, 2, :, F["S_only_mass"]] = x[1, 2, :, F["R_only_mass"]] = 0.0  # index 0 / 0 in one (group, head)
    blocks = torch.nn.functional.one_hot(torch.arange(40) // 4).double()  # 10 blocks of 4 sequences
    pooled = Pooled(0, "main", [0, 1], blocks.sum(0), torch.einsum("nk,ghnf->kghf", blocks, x),
                    torch.zeros(10, 5, 6, 18), torch.zeros(10, 5, 2, 18, 18))
    for fn in (per_row("entropy"), lift("S_only+both"), summed(["S_only_mass", "both_mass"]), index_fn("mass"),
               excess("S")):
        for group in (0, None):
            value, ci = pooled.estimate(fn, group)
            ref_value, ref_ci = pooled.estimate(lambda u, fn=fn: fn(u), group)  # not a Ratio: autograd
            print(fn, group, float((value - ref_value).abs().nan_to_num().max()), float((ci - ref_ci).abs().nan_to_num().max()))
            torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-14, equal_nan=True)
            torch.testing.assert_close(ci, ref_ci, rtol=1e-10, atol=1e-14, equal_nan=True)
    value, ci = pooled.estimate(index_fn("mass"), None)
    assert value[1, 2].isnan() and ci[1, 2].isnan() and value.isfinite().sum() == value.numel() - 1
