"""Shared by the app tests: a results directory with a synthetic probe table of known values (so a
test can check that a figure shows exactly those numbers), and helpers to read AppTest output."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from workbench.checkpoint import BUNDLED_DIR

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")
N_LAYERS, N_HEADS = 4, 6
STREAMS = {"two_stream": ("content", "query"), "decoupled_rope": ("main",), "sigma_gpt": ("main",)}
PARTS = ("S_only", "R_only", "both", "neither")
STUDY_SAMPLE = REPO / "tests" / "data" / "study"
"""The study's three files (study.json, study-curves.json, study-emergence.json) as a tiny CPU
rehearsal of scripts/study.py and scripts/study_results.py wrote them: two_stream and
decoupled_rope at lengths 16 and 32, seeds 0 and 1 (the curves also hold length-128 runs)."""


def synthetic_index(checkpoint: str, layer: int, stream: str, head: int) -> float:
    """A distinct, known specialisation index per head, in [-1, 1]."""
    shift = 0.1 if checkpoint.endswith("1024") else 0.0
    s = {"content": 0, "query": 1, "main": 2}[stream]
    return round(math.sin(1 + layer * 7 + head * 3 + s * 11) * 0.9 - shift, 4)


def synthetic_excess(index: float, which: str) -> float:
    """A head's normalised excess on S_r ("S") or R_w ("R"), from its synthetic index: 0 at chance."""
    return round(0.8 * (1 + index) / 2 if which == "S" else 0.8 * (1 - index) / 2, 4)


def synthetic_rows(checkpoint: str):
    """(checkpoint, probe, Row) triples of every metric the app reads, with known values."""
    from workbench.probing.table import Row

    variant = checkpoint.rsplit("-", 1)[0]
    out = []
    for stream in STREAMS[variant]:
        for layer in range(N_LAYERS):
            for head in range(N_HEADS):
                where = dict(layer=layer, stream=stream, head=head, n=1000)
                index = synthetic_index(checkpoint, layer, stream, head)
                s_only, r_only = 0.3 * (1 + index) / 2 + 0.01, 0.3 * (1 - index) / 2 + 0.01
                masses = {"S_only": s_only, "R_only": r_only, "both": 0.2, "neither": 1 - s_only - r_only - 0.2}
                chances = {"S_only": 0.05, "R_only": 0.04, "both": 0.02, "neither": 0.89}
                for part in PARTS:
                    out.append((checkpoint, "parts", Row(metric=part, value=masses[part], chance=chances[part], ci=0.01, **where)))
                    out.append((checkpoint, "parts", Row(metric=f"{part}_lift", value=masses[part] / chances[part], chance=1.0, ci=0.1, **where)))
                sem, struct = masses["S_only"] + masses["both"], masses["R_only"] + masses["both"]
                out += [
                    (checkpoint, "parts", Row(metric="semantic_set", value=sem, chance=0.07, ci=0.01, **where)),
                    (checkpoint, "parts", Row(metric="structural_set", value=struct, chance=0.06, ci=0.01, **where)),
                    (checkpoint, "parts", Row(metric="semantic_set_lift", value=sem / 0.07, chance=1.0, ci=0.1, **where)),
                    (checkpoint, "parts", Row(metric="structural_set_lift", value=struct / 0.06, chance=1.0, ci=0.1, **where)),
                    (checkpoint, "specialisation", Row(metric="index", value=index, chance=0.1, ci=0.05, **where)),
                    (checkpoint, "specialisation", Row(metric="semantic_excess", value=synthetic_excess(index, "S"), chance=0.0, ci=0.02, **where)),
                    (checkpoint, "specialisation", Row(metric="structural_excess", value=synthetic_excess(index, "R"), chance=0.0, ci=0.02, **where)),
                    (checkpoint, "specialisation", Row(metric="label", value=index, chance=0.1,
                                                       label="semantic" if index > 0.3 else "structural" if index < -0.3 else "mixed", **where)),
                    (checkpoint, "entropy", Row(metric="entropy", value=2.0 + layer / 10, chance=5.5, ci=0.02, **where)),
                    (checkpoint, "sink", Row(metric="sink", value=0.05 * head, chance=0.02, ci=0.01, **where)),
                ]
                for which in ("semantic", "recency"):
                    for b in range(10):
                        out.append((checkpoint, "histograms", Row(metric=f"{which}_hist", value=0.1, chance=0.1, ci=0.01, x=b, **where)))
                for start in (0, 1, 2, 4, 8, 16, 32, 64):
                    for metric, value in (("S_only", s_only), ("R_only", r_only), ("index", index)):
                        out.append((checkpoint, "by_step", Row(metric=metric, value=value, chance=0.05, ci=0.02, x=start, **where)))
                for kind in ("zero", "mean"):
                    out.append((checkpoint, "ablation", Row(metric=f"{kind}_dnll", value=dnll(layer, stream, head, kind), ci=0.01,
                                                             layer=layer, stream=stream, head=head, n=8)))
    out.append((checkpoint, "ablation", Row(metric="clean_bits", value=2.5, ci=0.05, n=8)))
    stream = STREAMS[variant][-1]
    for head in (0, 1):
        where = dict(layer=1, stream=stream, head=head, label="semantic", n=8)
        for key_set, value in (("semantic", 0.2 + head / 10), ("structural", 0.05)):
            out += [
                (checkpoint, "knockout", Row(metric=f"knockout_{key_set}", value=value, ci=0.02, chance=0.01, **where)),
                (checkpoint, "knockout", Row(metric=f"knockout_{key_set}_random", value=0.01, ci=0.005, **where)),
                (checkpoint, "knockout", Row(metric=f"knockout_{key_set}_excess", value=value - 0.01, ci=0.02, chance=0.0, **where)),
                (checkpoint, "knockout", Row(metric=f"knockout_{key_set}_keys", value=4.0, **where)),
            ]
    for length in (16, 32, 64, 128, 256, 512, 1024):
        for k in (1, 4, 16):
            if k < length:
                out.append((checkpoint, "divergence", Row(metric=f"overlap_k{k}", value=overlap(length, k), chance=overlap(length, k),
                                                          ci=0.01, n=4, x=length)))
    return out


def dnll(layer: int, stream: str, head: int, kind: str) -> float:
    return round(0.01 * (layer + 1) * (head + 1) * (1.5 if kind == "zero" else 1.0) * (1.2 if stream == "query" else 1.0), 5)


def overlap(length: int, k: int) -> float:
    steps = np.arange(k, length)
    return float((k / steps).mean())


def make_results(root: Path, checkpoints=("two_stream-128", "two_stream-1024", "decoupled_rope-128"), joint=(), study=False) -> Path:
    """A results directory: the real nll.json and synthetic probe tables for `checkpoints`; those
    also in `joint` hold a joint semantic x recency histogram too (`joint_rows`); with `study`, the
    study's files of `STUDY_SAMPLE`."""
    from workbench.probing.table import rows_to_table, write_table

    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "results" / "nll.json", root / "nll.json")
    if study:
        for path in STUDY_SAMPLE.glob("study*.json"):
            shutil.copy(path, root / path.name)
    for name in checkpoints:
        out = root / "probes" / name
        out.mkdir(parents=True, exist_ok=True)
        rows = synthetic_rows(name) + (joint_rows(name)[0] if name in joint else [])
        write_table(rows_to_table(rows), out / "probes.parquet")
        n_ctx = int(name.rsplit("-", 1)[1])
        (out / "metadata.json").write_text(json.dumps({
            "r": 4, "w": 4, "created_utc": "2026-01-01T00:00:00+00:00",
            "data": {"seq_len": n_ctx, "n_sequences": 8, "orders": "random"}, "sequences_probed": 8,
        }))
    return root


def make_checkpoints(root: Path, names=("two_stream-128",), broken: str | None = "broken-128") -> Path:
    """A checkpoints directory: copies of bundled checkpoints and one whose JSON is garbage."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (root / name).exists():
            shutil.copytree(BUNDLED_DIR / name, root / name)
    if broken:
        (root / broken).mkdir(exist_ok=True)
        (root / broken / "checkpoint.json").write_text("{ not json")
    return root


def decode(value):
    """Plotly's JSON writes numeric arrays as {"dtype", "bdata" (base64), "shape"}; turn those
    back into nested lists so tests compare plain numbers."""
    if isinstance(value, dict):
        if "bdata" in value and "dtype" in value:
            array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
            if "shape" in value:
                array = array.reshape([int(n) for n in str(value["shape"]).split(",")])
            return array.tolist()
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def figures(at) -> list[dict]:
    """Every plotly figure on the page as its JSON spec (data and layout), arrays decoded."""
    return [decode(json.loads(chart.proto.spec)) for chart in at.get("plotly_chart")]


def figure(at, title_part: str) -> dict:
    """The figure whose title contains `title_part` (fails listing the titles there are)."""
    found = figures(at)
    titles = [f["layout"].get("title", {}).get("text") or "" for f in found]
    for fig, title in zip(found, titles):
        if title_part in title:
            return fig
    raise AssertionError(f"no figure titled *{title_part}*; the page has {titles}")


class _GridParser(HTMLParser):
    """The cells of `viz.text_grid`'s HTML: per cell its attention (`data-w`), position, text and style."""

    def __init__(self):
        super().__init__()
        self.cells: list[dict] = []
        self.title_parts: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-w" in a:
            self.cells.append({"weight": float(a["data-w"]) if a["data-w"] else math.nan, "pos": int(a["data-pos"]),
                               "style": a.get("style", ""), "tip": a.get("title", ""), "char": "", "own": False})
            self._in = "cell"
        elif tag == "i" and a.get("class") == "own" and self.cells:
            self.cells[-1]["own"] = True
        elif tag == "div" and "font-weight:600" in a.get("style", ""):
            self._in = "title"

    def handle_endtag(self, tag):
        if tag == "div":
            self._in = None

    def handle_data(self, data):
        if self._in == "cell":
            self.cells[-1]["char"] += data
        elif self._in == "title":
            self.title_parts.append(data)


def parse_text_grid(html: str) -> dict:
    """`viz.text_grid`'s HTML read back: title, and per cell weight (NaN: not a key), pos, char, style, tip."""
    parser = _GridParser()
    parser.feed(html)
    cells = parser.cells
    return {"title": "".join(parser.title_parts), "cells": cells, "weight": np.array([c["weight"] for c in cells]),
            "pos": [c["pos"] for c in cells], "chars": [c["char"] for c in cells]}


def text_grid(at, title_part: str) -> dict:
    """The text grid (`st.html`) whose title contains `title_part`, parsed (fails listing the titles there are)."""
    found = [parse_text_grid(e.proto.body) for e in at.get("html")]
    for grid in found:
        if title_part in grid["title"]:
            return grid
    raise AssertionError(f"no text grid titled *{title_part}*; the page has {[g['title'] for g in found]}")


def prediction_bars(at, title_part: str) -> dict:
    """The prediction bars (`st.html`) whose title contains `title_part`: tokens, probabilities, and
    which bar is highlighted as the true token."""
    for e in at.get("html"):
        body = e.proto.body
        if 'class="pb"' in body and title_part in body:
            rows = re.findall(r'data-token="([^"]*)" data-p="([^"]*)">.*?<b style="[^"]*background:([^";]*)', body)
            return {"tokens": [html.unescape(t) for t, _, _ in rows], "p": [float(p) for _, p, _ in rows],
                    "true": [colour == "#e7298a" for _, _, colour in rows]}
    raise AssertionError(f"no prediction bars titled *{title_part}*")


def texts(at) -> str:
    """All markdown, captions, info, warning and error text on the page, joined (for `in` checks)."""
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "subheader"):
        parts += [str(e.value) for e in at.get(kind)]
    return "\n".join(parts)


def no_exceptions(at) -> None:
    assert not at.exception, f"the page raised: {[e.value for e in at.exception]}"


def random_pattern(n_heads: int, n_rows: int, n_keys: int, seed: int = 0) -> np.ndarray:
    """[head, row, key] attention rows over the visible keys j <= i, peaky (a few keys hold most mass)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.5, (n_heads, n_rows, n_keys))
    visible = np.arange(n_keys)[None, :] <= np.arange(n_rows)[:, None]
    weights = np.where(visible, np.exp(logits), 0.0)
    return weights / weights.sum(-1, keepdims=True)


def joint_from_pattern(pattern: np.ndarray, layout) -> tuple[np.ndarray, np.ndarray]:
    """The joint semantic-distance x recency histogram of `pattern` [head, row, key] by brute
    force: (mass [head, sem_bin, rec_bin], chance [sem_bin, rec_bin]) per probed row."""
    import torch

    from workbench.kernels.contract import N_BINS, distance_bin

    key_pos, row_ref = layout.key_pos[0].numpy(), layout.row_ref[0].numpy()
    n_heads, n_rows, n_keys = pattern.shape
    mass, chance = np.zeros((n_heads, N_BINS, N_BINS)), np.zeros((N_BINS, N_BINS))
    probed = [i for i in range(n_rows) if row_ref[i] >= 0]
    for i in probed:
        keys = np.arange(i + 1)
        null = key_pos[keys] < 0
        sem = distance_bin(torch.as_tensor(np.where(null, -1, np.abs(key_pos[keys] - row_ref[i])))).numpy()
        rec = distance_bin(torch.as_tensor(np.where(null, -1, i - keys + layout.recency_offset))).numpy()
        np.add.at(mass, (slice(None), sem, rec), pattern[:, i, keys])
        np.add.at(chance, (sem, rec), 1.0 / len(keys))
    return mass / len(probed), chance / len(probed)


def joint_rows(checkpoint: str, seed: int = 0):
    """(checkpoint, probe, Row) triples of a joint histogram per head (app_data.JOINT_METRIC), from a
    random pattern under a random order of 64 positions, and the patterns and layouts used."""
    import torch

    from workbench.app_data import JOINT_METRIC
    from workbench.orders import probe_layout, random_orders
    from workbench.probing.table import Row

    variant = checkpoint.rsplit("-", 1)[0]
    order = random_orders(1, 64, torch.Generator().manual_seed(seed))
    out, used = [], {}
    for s, stream in enumerate(STREAMS[variant]):
        layout = probe_layout(order, stream)
        n_rows, n_keys = layout.row_ref.shape[1], layout.key_pos.shape[1]
        for layer in range(N_LAYERS):
            pattern = random_pattern(N_HEADS, n_rows, n_keys, seed=seed + 100 * layer + 10 * s)
            used[(layer, stream)] = (pattern, layout)
            mass, chance = joint_from_pattern(pattern, layout)
            for head in range(N_HEADS):
                for sb, rb in zip(*np.nonzero(chance)):
                    out.append((checkpoint, "histograms", Row(metric=JOINT_METRIC, value=float(mass[head, sb, rb]),
                                                              chance=float(chance[sb, rb]), layer=layer, stream=stream, head=head,
                                                              x=int(sb), y=int(rb), n=64)))
    return out, used


def bundled_gap_text(results: Path, variant: str = "decoupled_rope", length: int = 128) -> str:
    """How the Overview states the bundled checkpoints' paired gap of `variant` to two_stream at
    `length` (from results/nll.json through the data layer), up to its value."""
    from workbench import app_data

    gaps = app_data.nll_gaps(app_data.nll_table(results / "nll.json"))
    [gap] = gaps[(gaps["variant"] == variant) & (gaps["length"] == length)]["gap"]
    return f"{variant} − two_stream at {length}: **{gap:+.3f}"
