"""The hook tables of docs/hooks.md, generated from live models so they cannot drift, and the
TransformerLens parity table, generated from the tests that check each row (`@parity` in
tests/test_tl_*.py and tests/test_stream_view.py, see tests/tl_parity.py).

    python scripts/hooks_table.py            # print the tables
    python scripts/hooks_table.py --write    # replace them in docs/hooks.md
    python scripts/hooks_table.py --check    # exit 1 if docs/hooks.md is out of date (tests do this)

Shapes come from one forward of a tiny model of each variant whose sizes are all different
(batch 2, T = 5 tokens, 3 heads, d_head 4, d_model 16, d_mlp 24), so every size maps back to its
name; whether an axis of length T / T+1 is a slot, a key or a step comes from the hook's role.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench import AOConfig, from_config  # noqa: E402
from workbench.stream_view import StreamView  # noqa: E402

DOC = ROOT / "docs" / "hooks.md"
BEGIN, END = "<!-- hooks-table:begin (scripts/hooks_table.py --write) -->", "<!-- hooks-table:end -->"
PARITY_BEGIN, PARITY_END = "<!-- parity-table:begin (scripts/hooks_table.py --write) -->", "<!-- parity-table:end -->"
PARITY_TESTS = [ROOT / "tests" / "test_stream_view.py"] + sorted((ROOT / "tests").glob("test_tl_*.py"))
VARIANTS = ("two_stream", "decoupled_rope", "sigma_gpt")
BATCH, N_POS = 2, 5
SIZES = {BATCH: "batch", 3: "head", 4: "d_head", 16: "d_model", 24: "d_mlp", 1: "1"}

WHAT = {  # hook suffix (or root name) -> what it holds
    "hook_resid_pre": "residual stream entering block l",
    "hook_attn_out": "attention output (sum of heads + b_O)",
    "hook_resid_mid": "resid_pre + attn_out",
    "hook_mlp_out": "MLP output",
    "hook_resid_post": "resid_mid + mlp_out",
    "ln1.hook_scale": "LayerNorm scale before attention",
    "ln1.hook_normalized": "LayerNorm output before attention",
    "ln2.hook_scale": "LayerNorm scale before the MLP",
    "ln2.hook_normalized": "LayerNorm output before the MLP",
    "attn.hook_q": "queries, before rotation",
    "attn.hook_k": "keys, before rotation",
    "attn.hook_v": "values",
    "attn.hook_rot_q": "queries rotated by the row's reference position",
    "attn.hook_rot_k": "keys rotated by the key's own position",
    "attn.hook_attn_scores": "scaled scores, invisible keys -inf",
    "attn.hook_pattern": "attention probabilities, causal in slots",
    "attn.hook_z": "per-head weighted values",
    "attn.hook_result": "per-head output (formed only when hooked)",
    "mlp.hook_pre": "MLP pre-activation",
    "mlp.hook_post": "MLP activation",
    "hook_order": "σ: the position generated at each step",
    "content.hook_pos": "position each content slot holds (-1: BOS)",
    "content.hook_embed": "token embeddings, BOS vector at slot 0",
    "query.hook_pos": "position each query row predicts",
    "query.hook_embed": "the learned content-free start vector, per row",
    "query.ln_final.hook_scale": "final LayerNorm scale",
    "query.ln_final.hook_normalized": "final LayerNorm output (then W_U)",
    "hook_pos": "own position of each slot (-1: BOS)",
    "hook_target_pos": "target position of each slot",
    "hook_embed": "token embeddings, BOS vector at slot 0",
    "hook_pos_embed": "own-position embedding (0 for BOS)",
    "hook_target_embed": "target-position embedding",
    "ln_final.hook_scale": "final LayerNorm scale",
    "ln_final.hook_normalized": "final LayerNorm output (then W_U)",
}


def tiny(variant: str):
    cfg = AOConfig(variant=variant, n_layers=1, d_model=16, n_heads=3, d_head=4, d_mlp=24, n_ctx=8, d_vocab=7, seed=0)
    return from_config(cfg).eval()


def axis_role(name: str, dim: int) -> str:
    suffix = name.rsplit(".", 1)[-1]
    if suffix == "hook_order":
        return "step"
    if suffix in ("hook_attn_scores", "hook_pattern"):
        return "slot" if dim == 2 else "key"
    if suffix in ("hook_k", "hook_v", "hook_rot_k"):
        return "key"
    return "slot"


def shape_text(name: str, shape: torch.Size) -> str:
    parts = []
    for dim, size in enumerate(shape):
        if dim > 0 and size in (N_POS, N_POS + 1):
            parts.append(f"{axis_role(name, dim)} (T{'+1' if size == N_POS + 1 else ''})")
        elif size in SIZES:
            parts.append(SIZES[size])
        else:
            raise ValueError(f"{name}: size {size} of dim {dim} has no name; extend SIZES.")
    return "[" + ", ".join(parts) + "]"


def what(name: str) -> str:
    key = name.split(".", 2)[-1] if name.startswith("blocks.") else name  # drop "blocks.{l}."
    if name.startswith("blocks.") and key.split(".")[0] in ("content", "query"):
        key = key.split(".", 1)[1]
    if key not in WHAT:
        raise KeyError(f"hook {name} has no description; add {key!r} to WHAT in scripts/hooks_table.py.")
    return WHAT[key]


def layer_free(name: str) -> str:
    return name.replace("blocks.0.", "blocks.{l}.", 1)


def variant_table(variant: str) -> str:
    model = tiny(variant)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.d_vocab, (BATCH, N_POS), generator=g)
    order = torch.stack([torch.randperm(N_POS, generator=g) for _ in range(BATCH)])
    _, cache = model.run_with_cache(tokens, order)
    two = model.cfg.n_streams == 2
    lines = [f"### `{variant}`", ""]
    if two:
        lines += ["| stream | hook | shape | holds | StreamView name | view shape |", "|---|---|---|---|---|---|"]
    else:
        lines += ["StreamView(model) uses these names and shapes unchanged.", ""]
        lines += ["| hook | shape | holds |", "|---|---|---|"]
    for stream in model.stream_names:
        view = StreamView(model, stream, order)
        _, view_cache = view.run_with_cache(tokens)
        by_model_name = {m: v for v, m in view.model_names.items()}
        for name in model.hook_dict:
            if name not in by_model_name:
                continue  # another stream's
            view_name = by_model_name[name]
            row = f"`{layer_free(name)}` | {shape_text(name, cache[name].shape)} | {what(name)}"
            if two:
                row = (
                    f"{stream} | {row} | `{layer_free(view_name)}` | "
                    f"{shape_text(view_name, view_cache[view_name].shape)}"
                )
            elif view_cache[view_name].shape != cache[name].shape or view_name != name:
                raise AssertionError(f"a single-stream view changed {name}")
            lines.append(f"| {row} |")
    return "\n".join(lines)


def tables() -> str:
    return "\n\n".join(variant_table(v) for v in VARIANTS)


def parity_table() -> str:
    """One row per `@parity` test, in file order (importing the test modules registers them)."""
    import importlib

    from tests.tl_parity import ROWS

    ROWS.clear()
    for path in PARITY_TESTS:
        name = f"tests.{path.stem}"
        if name in sys.modules:
            importlib.reload(sys.modules[name])  # registers its rows again after ROWS.clear()
        else:
            importlib.import_module(name)
    lines = ["| feature | TransformerLens | ours | status | test |", "|---|---|---|---|---|"]
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    for row in ROWS:
        lines.append(f"| {cell(row.feature)} | `{cell(row.transformer_lens)}` | {cell(row.ours)} | {cell(row.status)} | `{row.test}` |")
    return "\n".join(lines)


def replace_block(text: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    if begin not in text or end not in text:
        raise ValueError(f"{DOC} has no {begin} ... {end} block.")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block}\n{end}{tail}"


def updated(text: str) -> str:
    """docs/hooks.md with both generated blocks replaced."""
    return replace_block(replace_block(text, tables()), parity_table(), PARITY_BEGIN, PARITY_END)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="replace the tables in docs/hooks.md")
    group.add_argument("--check", action="store_true", help="exit 1 if docs/hooks.md is out of date")
    args = parser.parse_args()
    if not (args.write or args.check):
        print(tables() + "\n\n" + parity_table())
        return 0
    text = DOC.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            print("docs/hooks.md is out of date: run python scripts/hooks_table.py --write", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
