"""Scripted probe runs: determinism, resume after a kill, atomic output, bad arguments, the CLI,
the registry, the kernel statistics source and the model-free divergence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from workbench import AOConfig, from_config
from workbench.checkpoint import save
from workbench.cli import main as cli_main
from workbench.data import CharTokenizer
from workbench.probing import ProbeRegistryError, discover, read_table, run_probes
from workbench.probing import registry as registry_module
from workbench.probing.divergence import nearest_keys, order_divergence, row_overlaps

REPO = Path(__file__).resolve().parents[1]
FAST_PROBES = "parts,histograms,specialisation,sink,entropy,by_step,ablation,knockout"
TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def tiny(variant: str = "two_stream", d_head: int = 8, n_ctx: int = 16):
    cfg = AOConfig(variant=variant, n_layers=2, d_model=32, n_heads=2, d_head=d_head, d_mlp=48, n_ctx=n_ctx,
                   d_vocab=len(set(TEXT)), seed=1, init_range=0.3)
    model = from_config(cfg).eval()
    model.tokenizer = CharTokenizer.from_text(TEXT)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A saved tiny two-stream checkpoint with its validation text, like a bundled one."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-16"
    val = TEXT[-400:]
    save(tiny(), path, data={"val_text": "val.txt", "val_fraction": 0.1, "corpus": {"fingerprint": "test"}},
         extra_files={"val.txt": val.encode()})
    return path


def run(checkpoint, out=None, **kw):
    args = dict(probes=FAST_PROBES, max_sequences=12, batch_size=3, causal_sequences=6, progress=False, heads="0.1")
    args.update(kw)
    return run_probes(checkpoint, out=out, **args)


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)


# ---- determinism, output, resume ---------------------------------------------------------------


def test_run_writes_a_tidy_table_and_metadata(checkpoint, tmp_path):
    result = run(checkpoint, tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["metadata.json", "probes.parquet"]  # no .partial, no temp files left
    table = read_table(tmp_path / "out")
    assert list(table.columns)[:9] == ["checkpoint", "layer", "stream", "head", "probe", "metric", "value", "chance", "ci"]
    assert_same_table(table, result.table)
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    print(json.dumps({k: meta[k] for k in ("checkpoint", "data", "rows_probed", "git_commit")}, indent=1, default=str))
    assert meta["checkpoint"]["name"] == "tiny-16" and len(meta["checkpoint"]["sha256"]) == 16
    assert meta["data"]["fingerprint"] and meta["data"]["split"] == "val"
    assert meta["seed"] == 0 and meta["sequences_probed"] == 12
    assert meta["rows_probed"] == {"content": 12 * 16, "query": 12 * 16}
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0] or meta["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert meta["git_commit"] is None or len(meta["git_commit"]) == 40
    assert set(table.checkpoint) == {"tiny-16"}


def test_deterministic_for_a_seed(checkpoint):
    a, b, c = run(checkpoint).table, run(checkpoint).table, run(checkpoint, seed=1).table
    assert_same_table(a, b)
    assert not a.value.equals(c.value)


def test_killed_run_resumes_to_the_same_table(checkpoint, tmp_path):
    full = run(checkpoint, tmp_path / "full").table

    class Killed(Exception):
        pass

    def kill_after_two(key, batch):
        if key.startswith("stats") and batch == 1:
            raise Killed

    with pytest.raises(Killed):
        run(checkpoint, tmp_path / "resumed", on_shard=kill_after_two)
    partial = tmp_path / "resumed" / ".partial"
    assert not (tmp_path / "resumed" / "probes.parquet").exists()
    assert sorted(p.name for p in (partial / "stats_reference").iterdir()) == ["00000.safetensors", "00001.safetensors"]
    seen = []
    resumed = run(checkpoint, tmp_path / "resumed", on_shard=lambda key, batch: seen.append((key, batch)))
    assert ("stats_reference", 0) not in seen and ("stats_reference", 2) in seen  # only the missing batches ran
    assert_same_table(full, resumed.table)
    assert not partial.exists()


def test_sigkilled_cli_run_resumes_to_the_same_table(checkpoint, tmp_path):
    """A real SIGKILL (no cleanup) in the middle of a run, then `workbench probe` again."""
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal
        from workbench.probing import run_probes
        def die(key, batch):
            if key.startswith("stats") and batch == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        run_probes({str(checkpoint)!r}, out={str(out)!r}, probes="parts,sink,knockout", max_sequences=12, batch_size=3,
                   causal_sequences=6, seed=3, progress=False, on_shard=die, device="cpu")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out / ".partial" / "state.json").is_file() and not (out / "probes.parquet").exists()
    cli = [sys.executable, "-m", "workbench.cli", "probe", "--checkpoint", str(checkpoint), "--out", str(out),
           "--probes", "parts,sink,knockout", "--max-sequences", "12", "--batch-size", "3", "--causal-sequences", "6",
           "--seed", "3", "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    print(proc.stdout, proc.stderr[-2000:])
    assert proc.returncode == 0
    full = run_probes(checkpoint, probes="parts,sink,knockout", max_sequences=12, batch_size=3, causal_sequences=6,
                      seed=3, progress=False, device="cpu").table
    assert_same_table(read_table(out), full)


def test_other_arguments_are_refused_and_a_finished_run_is_reused(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint, out, on_shard=lambda key, batch: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(ValueError, match=r"partial run with other arguments \(seed: 0 there, 5 now\)"):
        run(checkpoint, out, seed=5)
    first = run(checkpoint, out)
    again = run(checkpoint, out)
    assert "already holds this run's results" in capsys.readouterr().out
    assert_same_table(first.table, again.table)
    with pytest.raises(ValueError, match=r"finished run with other arguments .*r: 4 there, 2 now"):
        run(checkpoint, out, r=2)


# ---- bad arguments -----------------------------------------------------------------------------


def test_default_batch_size_follows_the_path(checkpoint, capfd):
    """64 on the kernel path (GPU-bound work, measured in benchmarks/), 8 on the reference path
    (patterns in memory); --fast without CUDA falls back to the reference and so to 8."""
    for fast in (False, True):
        meta = run(checkpoint, batch_size=None, probes="parts", max_sequences=10, fast=fast, device="cpu").metadata
        assert meta["spec"]["batch_size"] == 8, meta["spec"]
    if torch.cuda.is_available():
        meta = run(checkpoint, batch_size=None, probes="parts", max_sequences=10, fast=True, device="cuda").metadata
        assert meta["spec"]["batch_size"] == 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(probes="parts,nope"), r"unknown probe\(s\) \['nope'\]; known probes: ablation, by_step"),
        (dict(r=0), r"r=0 is out of range: it must be at least 1"),
        (dict(w=16), r"w=16 is out of range: .* below seq_len=16"),
        (dict(r=2.5), r"r=2.5 must be an integer"),
        (dict(max_sequences=0), r"max_sequences=0 must be a positive integer"),
        (dict(batch_size=0), r"batch_size=0 must be a positive integer"),
        (dict(heads="7.0"), r"head '7.0' is not in the model"),
        (dict(seq_len=99), r"seq_len=99 must be between 2 and the model's n_ctx=16"),
        (dict(split="test"), r"split='test' is unknown"),
    ],
)
def test_bad_arguments_fail_clearly_and_write_nothing(checkpoint, tmp_path, kwargs, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        run(checkpoint, out, **kwargs)
    assert not out.exists()


def test_missing_checkpoint_and_empty_data(checkpoint, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"no checkpoint called 'no-such-model'"):
        run("no-such-model", out)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"holds no text"):
        run(checkpoint, out, data=str(empty))
    short = tmp_path / "short.txt"
    short.write_text("the fox")
    with pytest.raises(ValueError, match=r"tokens.*seq_len=16"):
        run(checkpoint, out, data=str(short), split="all")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(checkpoint, out, data=str(tmp_path / "missing.txt"))
    assert not out.exists()


def test_cli_errors_are_one_line_and_exit_2(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli_main(["probe", "--checkpoint", str(checkpoint), "--out", str(out), "--probes", "bogus"])
    err = capsys.readouterr().err
    print(err)
    assert rc == 2 and "unknown probe(s) ['bogus']" in err and not out.exists()
    rc = cli_main(["probe", "--checkpoint", str(checkpoint), "--out", str(out), "--r", "-1"])
    assert rc == 2 and "r=-1" in capsys.readouterr().err
    rc = cli_main(["probe", "--list"])
    listing = capsys.readouterr().out
    assert rc == 0 and "knockout" in listing and "divergence" in listing


def test_fast_without_cuda_falls_back_loudly(checkpoint, capsys):
    if torch.cuda.is_available():
        pytest.skip("has CUDA: --fast runs the kernel")
    fast = run(checkpoint, probes="parts", fast=True)
    err = capsys.readouterr().err
    assert "WARNING: --fast needs a CUDA device" in err and "falling back to the reference path" in err
    assert "fallback" in fast.metadata["statistics_source"]["used"]
    assert_same_table(fast.table, run(checkpoint, probes="parts").table)


# ---- statistics sources ------------------------------------------------------------------------


def _plant_scores(model):
    """A permanent hook on layer 0's first stream scores: every row looks at key 0 only."""
    from workbench.hook_names import hook_name

    def plant(scores, hook):
        new = torch.full_like(scores, -1e4)
        new[..., 0] = 0.0
        return new.masked_fill(scores == float("-inf"), float("-inf"))

    name = hook_name("attn_scores", 0, model.stream_names[0])
    model.add_hook(name, plant, is_permanent=True)
    return name


def test_fast_with_hooks_on_scores_falls_back_to_the_reference(capsys):
    """--fast computes patterns from q and k, so hooks at hook_attn_scores / hook_pattern would be
    skipped: make_source picks the reference path instead, with a warning naming the hooks (even
    on a CUDA device), and a run on such a model writes the reference's table."""
    from workbench.probing.sources import ReferenceSource, make_source

    model = tiny()
    name = _plant_scores(model)
    source, note = make_source(True, "cuda", model)
    err = capsys.readouterr().err
    assert isinstance(source, ReferenceSource) and name in note
    assert "WARNING" in err and name in err and "falling back to the reference path" in err
    data = torch.randint(0, model.cfg.d_vocab, (4, 16), generator=torch.Generator().manual_seed(0))
    fast = run_probes(model, data=data, probes="parts,specialisation", fast=True, device="cpu", progress=False)
    assert_same_table(fast.table, run_probes(model, data=data, probes="parts,specialisation", progress=False).table)
    planted = fast.table.query("layer == 0 and stream == 'content' and metric == 'neither'")["value"]
    assert len(planted) == model.cfg.n_heads and (planted > 1 - 1e-9).all()  # the planted scores were used


def test_kernel_source_refuses_hooks_on_scores():
    """A hook attached after the source was chosen is never skipped silently: collect raises."""
    from workbench.probing.sources import KernelSource

    model = tiny(d_head=16)
    name = _plant_scores(model)
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 16))
    with pytest.raises(RuntimeError, match=name.replace(".", r"\.")):
        KernelSource().collect(model, tokens, torch.randperm(16)[None], r=2, w=3)



@pytest.mark.parametrize("variant", ["two_stream", "decoupled_rope", "sigma_gpt"])
def test_kernel_source_matches_the_reference(variant):
    """The --fast path (hooks -> Triton kernel; on CPU in Triton's interpreter) against the reference."""
    from workbench.probing.engine import F
    from workbench.probing.sources import KernelSource, ReferenceSource

    device = "cuda" if torch.cuda.is_available() else "cpu"  # the compiled kernel takes CUDA tensors only
    model = tiny(variant, d_head=16).to(device)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)
    order = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) for i in range(2)]).to(device)
    kernel = KernelSource().collect(model, tokens, order, r=2, w=3)
    reference = ReferenceSource().collect(model, tokens, order, r=2, w=3)
    assert kernel.keys() == reference.keys()
    for key in kernel:
        a, b = kernel[key], reference[key]
        if key.endswith("step_sink"):  # both report the null-key mass per step
            assert a == 1 and b == 1
        if key.endswith("u_block"):
            assert (a[:, 1:, :, F["sink_mass"]] > 0).any()
        print(key, (a - b).abs().max().item())
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("variant", ["two_stream", "decoupled_rope"])
def test_kernel_source_cuda_graphs_give_the_eager_sums(variant):
    """KernelSource captures a stream's statistics call in a CUDA graph the second time a batch
    shape comes: batch 0 eager, batch 1 captured and replayed, batches 2-3 replayed, and a smaller
    last batch eager again. Every batch's sums equal the always-eager source's, bit for bit."""
    from workbench.probing.sources import KernelSource

    model = tiny(variant, d_head=16).to("cuda")
    gen = torch.Generator().manual_seed(0)
    graphed, eager = KernelSource(), KernelSource(graphs=False)
    for batch in (3, 3, 3, 3, 2):
        tokens = torch.randint(0, model.cfg.d_vocab, (batch, 16), generator=gen)
        order = torch.stack([torch.randperm(16, generator=gen) for _ in range(batch)])
        a = {k: v.clone() for k, v in graphed.collect(model, tokens, order, r=2, w=3).items()}
        b = eager.collect(model, tokens, order, r=2, w=3)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), batch
    assert sum(g is not None for g in graphed._seen.values()) == len(model.stream_names)


# ---- registry ----------------------------------------------------------------------------------


def test_a_probe_file_in_a_probe_dir_is_found_and_run(tmp_path, monkeypatch):
    (tmp_path / "my_probe.py").write_text(textwrap.dedent("""
        from workbench.probing import Row, probe

        @probe("test_row_count", needs=("stats",))
        def row_count(ctx):
            \"\"\"Probed rows per (layer, stream).\"\"\"
            for (layer, stream), pooled in ctx.stats.items():
                yield Row(metric="rows", value=float(pooled.total("rows")[0]), layer=layer, stream=stream)
    """))
    try:
        probes = discover([tmp_path])
        assert probes["test_row_count"].description == "Probed rows per (layer, stream)."
        table = run_probes(tiny(), data=torch.zeros(4, 16, dtype=torch.long), probes="test_row_count", progress=False).table
        assert table.value.tolist() == [64.0] * 4
    finally:
        registry_module.unregister("test_row_count")


def test_duplicate_probe_names_say_where_the_first_one_is(tmp_path):
    (tmp_path / "a.py").write_text("from workbench.probing import probe\n@probe('dup_test')\ndef a(ctx):\n    return []\n")
    (tmp_path / "b.py").write_text("from workbench.probing import probe\n\n\n@probe('dup_test')\ndef b(ctx):\n    return []\n")
    try:
        with pytest.raises(ProbeRegistryError) as err:
            discover([tmp_path])
        print(err.value)
        assert "probe name 'dup_test' is defined twice: first at" in str(err.value)
        assert f"{tmp_path / 'a.py'}:2" in str(err.value) and f"{tmp_path / 'b.py'}:4" in str(err.value)
    finally:
        registry_module.unregister("dup_test")
    with pytest.raises(ProbeRegistryError, match="must be lower-case"):
        registry_module.probe("Bad Name")(lambda ctx: [])
    with pytest.raises(ProbeRegistryError, match="needs \\['gpu'\\]"):
        registry_module.probe("needs_gpu", needs=("gpu",))(lambda ctx: [])


# ---- divergence --------------------------------------------------------------------------------


def test_divergence_matches_a_brute_force_count():
    g = torch.Generator().manual_seed(0)
    orders = torch.stack([torch.randperm(13, generator=g) for _ in range(5)])
    for k in (1, 3):
        fast = row_overlaps(orders, k, nearest_keys(orders, 3))
        for b, order in enumerate(orders.tolist()):
            for t in range(k, 13):
                visible = list(range(t))  # key steps
                nearest = sorted(visible, key=lambda j: (abs(order[j] - order[t]), order[j] > order[t]))[:k]
                overlap = len(set(nearest) & set(range(t - k, t))) / k
                assert fast[b, t - k].item() == overlap, (k, b, t)


def test_divergence_is_chance_under_random_orders_and_shrinks_with_length():
    points = order_divergence([16, 64, 256], ks=(4,), n_orders=64, seed=0)
    for p in points:
        print(p)
        assert abs(p.overlap - p.chance) < 4 * p.ci + 1e-3
    assert points[0].overlap > points[1].overlap > points[2].overlap
    assert order_divergence([32], ks=(4,), n_orders=8, seed=1) == order_divergence([32], ks=(4,), n_orders=8, seed=1)


def test_a_probe_failing_before_any_work_leaves_nothing(tmp_path):
    (tmp_path / "broken.py").write_text(textwrap.dedent("""
        from workbench.probing import probe

        @probe("test_broken", needs=())
        def broken(ctx):
            raise RuntimeError("this probe is broken")
    """))
    out = tmp_path / "new" / "out"
    try:
        discover([tmp_path])
        with pytest.raises(RuntimeError, match="broken"):
            run_probes(tiny(), data=torch.zeros(4, 16, dtype=torch.long), probes="test_broken", out=out, progress=False)
        assert not (tmp_path / "new").exists()
    finally:
        registry_module.unregister("test_broken")


def test_xlnet_null_slot_counts_for_row_0_only_on_both_paths():
    """XLNet: only row 0 sees the null slot, so the sink chance is 1 for that row and 0 for every
    other (it was 1 / (i + 1) for all, giving uniform attention lifts above 1); the kernel source
    (interpreted on CPU) and the reference agree."""
    from workbench.probing.engine import F
    from workbench.probing.sources import KernelSource, ReferenceSource

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = from_config(AOConfig(variant="xlnet", n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=32, n_ctx=12,
                                 d_vocab=11)).eval().to(device)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 11, (2, 12), generator=gen)
    order = torch.stack([torch.randperm(12, generator=gen) for _ in range(2)])
    with torch.no_grad():
        kernel = KernelSource().collect(model, tokens.to(device), order.to(device), r=2, w=2)
        reference = ReferenceSource().collect(model, tokens, order, r=2, w=2)
    for key in reference:
        assert torch.allclose(kernel[key].cpu(), reference[key].cpu(), rtol=1e-5, atol=1e-4), key
    for stream in ("content", "query"):
        u = reference[f"L0.{stream}.u_block"].sum(0)
        assert torch.equal(u[0, :, F["sink_chance"]], torch.full((2,), 2.0 if stream == "query" else 0.0,
                                                                 dtype=torch.float64))
