"""Evaluation in bits per token: any-order NLL (Monte Carlo over orders, with a confidence
interval), left-to-right NLL, and NLL as a function of the generation step.

The any-order NLL of a sequence is E_σ[-log2 p(x | σ)] / T. It is estimated with `n_orders`
uniformly random orders per window; windows are the independent units of the 95% confidence
interval (each window's estimate averages its orders), so the interval covers both the order
noise and the choice of windows.

CLI: `workbench eval --checkpoint NAME [--data SPEC] [--orders K] [--out FILE.json]`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.models import HookedAOModel
from workbench.orders import random_orders
from workbench.results_io import write_json_atomic
from workbench.stats import mean_and_ci


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% confidence interval over `n` independent units."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    @classmethod
    def of(cls, values: Tensor) -> Estimate:
        mean, half = mean_and_ci(values)
        return cls(mean, mean - half, mean + half, values.numel())

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {(self.ci_high - self.ci_low) / 2:.4f}"


@torch.no_grad()
def per_window_bits(
    model: HookedAOModel,
    windows: Int[Tensor, "window pos"],
    n_orders: int,
    seed: int,
    batch_size: int = 32,
    left_to_right: bool = False,
) -> tuple[Tensor, Tensor]:
    """(mean bits per token per window [window], bits per generation step [window, order, step])."""
    generator = torch.Generator().manual_seed(seed)
    device = model.W_E.device
    n_windows, n_pos = windows.shape
    orders = 1 if left_to_right else n_orders
    by_step = torch.empty(n_windows, orders, n_pos, dtype=torch.float64)
    for o in range(orders):
        for start in range(0, n_windows, batch_size):
            tokens = windows[start : start + batch_size].to(device)
            batch = tokens.shape[0]
            if left_to_right:
                order = torch.arange(n_pos).expand(batch, n_pos)
            else:
                order = random_orders(batch, n_pos, generator)
            order = order.to(device)
            nll = model.nll(tokens, order)  # [batch, pos], nats
            by_step[start : start + batch, o] = (nll.gather(1, order) / math.log(2)).double().cpu()
    return by_step.mean(dim=(1, 2)), by_step


def evaluate(
    model: HookedAOModel,
    windows: Int[Tensor, "window pos"],
    n_orders: int = 4,
    seed: int = 0,
    batch_size: int = 32,
    n_step_bins: int = 16,
) -> dict[str, Any]:
    """Any-order NLL, left-to-right NLL and NLL by fraction revealed, all in bits per token."""
    if windows.ndim != 2 or windows.shape[0] == 0:
        raise ValueError(f"need a non-empty [window, pos] tensor of token ids, got shape {tuple(windows.shape)}")
    any_order, by_step = per_window_bits(model, windows, n_orders, seed, batch_size)
    l2r, _ = per_window_bits(model, windows, 1, seed, batch_size, left_to_right=True)
    n_pos = windows.shape[1]
    bins = min(n_step_bins, n_pos)
    edges = torch.linspace(0, n_pos, bins + 1).round().long()
    per_bin = [by_step[:, :, edges[i] : edges[i + 1]].mean(dim=(1, 2)) for i in range(bins)]
    return {
        "any_order_bits": asdict(Estimate.of(any_order)),
        "left_to_right_bits": asdict(Estimate.of(l2r)),
        "by_fraction_revealed": [
            {"fraction": ((edges[i] + edges[i + 1]) / 2 / n_pos).item(), **asdict(Estimate.of(v))}
            for i, v in enumerate(per_bin)
        ],
        "n_windows": windows.shape[0],
        "seq_len": n_pos,
        "n_orders": n_orders,
        "seed": seed,
    }


# ---- CLI ---------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="any-order and left-to-right NLL of checkpoints, in bits per token")
    p.add_argument("--checkpoint", required=True, nargs="+", help="checkpoint names or paths")
    p.add_argument("--data", default=None, help="corpus spec (default: the checkpoint's bundled validation text)")
    p.add_argument("--orders", type=int, default=4, help="random orders per window (Monte Carlo)")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate N evenly spaced windows")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=_run)


def validation_windows(model: HookedAOModel, data: str | None, max_windows: int | None) -> Tensor:
    """Windows of n_ctx tokens: the checkpoint's own validation text, or the validation split of
    the corpus `data` tokenised with the checkpoint's tokenizer."""
    from workbench.data import load_corpus, sequential_windows, train_val_split

    info = model.checkpoint
    seq_len = model.cfg.n_ctx
    if data is None:
        val_text = info.data.get("val_text")
        if val_text is None or not (info.path / val_text).is_file():
            raise ValueError(
                f"checkpoint {info.name} bundles no validation text; pass --data with the corpus it "
                f"was trained on ({info.data.get('corpus', {}).get('source', 'unknown')})."
            )
        tokens = model.tokenizer.encode_tensor((info.path / val_text).read_text(encoding="utf-8"))
    else:
        corpus = load_corpus(data)
        tokens = train_val_split(model.tokenizer.encode_tensor(corpus.text), seq_len,
                                 info.data.get("val_fraction", 0.1)).val
    windows = sequential_windows(tokens, seq_len)
    if max_windows and max_windows < len(windows):  # evenly spaced: an unbiased subset of the text
        windows = windows[torch.linspace(0, len(windows) - 1, max_windows).round().long()]
    return windows


def _run(args: argparse.Namespace) -> None:
    from workbench.checkpoint import load

    results = {}
    for i, name in enumerate(args.checkpoint):
        model = load(name, device=args.device)
        windows = validation_windows(model, args.data, args.max_windows)
        if i == 0:
            print(f"{'checkpoint':<26} {'any-order bits/token':>22} {'left-to-right':>18} {'windows':>8}")
        result = evaluate(model, windows, args.orders, args.seed, args.batch_size)
        result["checkpoint"] = model.checkpoint.name
        result["variant"] = model.cfg.variant
        results[model.checkpoint.name] = result
        a, l = Estimate(**result["any_order_bits"]), Estimate(**result["left_to_right_bits"])
        print(f"{model.checkpoint.name:<26} {str(a):>22} {str(l):>18} {result['n_windows']:>8}")
    if args.out:
        write_json_atomic(Path(args.out), results)
        print(f"wrote {args.out}")
