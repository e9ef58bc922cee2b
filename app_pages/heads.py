"""Head specialisation: layer x head maps per stream, the semantic/structural plane, one head in
detail, and model vs model or length vs length side by side."""

from functools import partial

import numpy as np
import pandas as pd
import streamlit as st

from app_pages.common import (
    PAGES,
    catalog,
    checkpoint_picker,
    ensure_choice,
    head_frame,
    head_from_selection,
    loadable,
    probe_results,
    select_head,
    show_figure,
)
from workbench import app_data, viz
from workbench.viz.heads import label_legend

st.title("Head specialisation")
st.caption(
    "Per head and stream: attention mass on the semantic set S_r (keys within r positions of the row's "
    "target), on the structural set R_w (keys generated at most w steps ago), their lifts over uniform "
    "attention, and the specialisation index (S-only − R-only) / (S-only + R-only): +1 all semantic, −1 all "
    "structural. Click a head in a map or the scatter to open it below."
)

entries = {e.name: e for e in catalog()}
names = loadable(list(entries.values()))
COMPARE = ("nothing", "the other length", "another variant, same length", "any checkpoint")

top = st.columns([2, 2, 2, 3])
with top[0]:
    main = checkpoint_picker("Checkpoint", "p_heads_ckpt", names, default="two_stream-128")
if main is None:
    st.stop()
with top[1]:
    st.selectbox("Compare with", COMPARE, key="p_heads_compare")
compare = st.session_state["p_heads_compare"]


def partner(name: str, how: str) -> list[str]:
    e = entries[name]
    if how == "the other length":
        return [n for n in names if entries[n].variant == e.variant and entries[n].n_ctx != e.n_ctx]
    if how == "another variant, same length":
        return [n for n in names if entries[n].n_ctx == e.n_ctx and entries[n].variant != e.variant]
    if how == "any checkpoint":
        return [n for n in names if n != name]
    return []


shown = [main]
if compare != "nothing":
    options = partner(main, compare)
    with top[2]:
        if options:
            other = checkpoint_picker("Second checkpoint", "p_heads_other", options)
            shown.append(other)
        else:
            st.info(f"No checkpoint is '{compare}' of {main}.")
metric_keys = list(app_data.HEAD_METRICS)
with top[3]:
    ensure_choice("p_heads_metric", metric_keys, "index")
    metric = st.selectbox("Map shows", metric_keys, key="p_heads_metric", format_func=lambda k: app_data.HEAD_METRICS[k][1])

results, frames = {}, {}
for name in shown:
    res = probe_results(name)
    if res is None:
        continue
    results[name] = res
    frames[name] = head_frame(name, f"{res.source}|{res.metadata.get('created_utc')}|{len(res.table)}", res)
if not frames:
    st.stop()


def describe(res: app_data.ProbeResults) -> str:
    meta = res.metadata
    data = meta.get("data", {})
    bits = [f"r = {res.r}, w = {res.w}" if res.r is not None else "",
            f"{data.get('n_sequences', meta.get('sequences_probed', '?'))} sequences of {data.get('seq_len', '?')} tokens",
            f"orders: {data.get('orders', 'random')}", res.source]
    return " · ".join(b for b in bits if b)


def on_map_select(key: str, checkpoint: str) -> None:
    """A click on a map cell selects that head."""
    picked = head_from_selection(st.session_state.get(key))
    if picked is not None:
        select_head(checkpoint, picked[1], picked[2], picked[3])


def on_scatter_select(key: str) -> None:
    picked = head_from_selection(st.session_state.get(key))
    if picked is not None and picked[0] is not None:
        select_head(*picked)


# ---- maps ---------------------------------------------------------------------------------------------
metric_label = app_data.HEAD_METRICS[metric][1]
grids = {name: {s: app_data.head_grid(f, s, metric) for s in dict.fromkeys(f["stream"])} for name, f in frames.items()}
values = np.concatenate([g["value"].ravel() for by in grids.values() for g in by.values()])
finite = values[np.isfinite(values)]
diverging = metric == "index"
zmin = float(finite.min()) if finite.size else 0.0
zmax = float(finite.max()) if finite.size else 1.0
if metric in ("index",):
    zmin, zmax = -1.0, 1.0
st.subheader(f"Layer x head: {metric_label}")
columns = st.columns(len(frames))
for col, (name, by_stream) in zip(columns, grids.items()):
    with col:
        fig = viz.head_maps(by_stream, title=name, value_name=metric_label, zmin=zmin, zmax=zmax, diverging=diverging)
        show_figure(fig, key=f"heads_map_{name}", selection_mode="points",
                    on_select=partial(on_map_select, f"heads_map_{name}", name))
        st.caption(describe(results[name]))
labels_present = sorted({lab for f in frames.values() for lab in f["label"] if lab})
if labels_present:
    st.caption(f"Letters after a value: the head's label ({label_legend(labels_present)}); thresholds in "
               "workbench/probing/specialisation.py.")

# ---- scatter --------------------------------------------------------------------------------------------
st.subheader("Heads in the semantic / structural plane")
plane = st.radio("Plane", list(app_data.SCATTER_PLANES), key="p_heads_plane", horizontal=True)
x_key, y_key = app_data.SCATTER_PLANES[plane]
points = pd.concat([f.assign(checkpoint=name) for name, f in frames.items()], ignore_index=True)
selected = (st.session_state.get("p_head_ckpt"), st.session_state.get("p_head_layer"),
            st.session_state.get("p_head_stream"), st.session_state.get("p_head_head"))
fig = viz.head_scatter(points, x=x_key, y=y_key, x_title=app_data.HEAD_METRICS[x_key][1], y_title=app_data.HEAD_METRICS[y_key][1],
                       title="Each point is a head (colour: stream; cross: chance for uniform attention)",
                       selected=selected if None not in selected else None)
show_figure(fig, key="heads_scatter", on_select=partial(on_scatter_select, "heads_scatter"), selection_mode=("points", "box"))

# ---- one head ---------------------------------------------------------------------------------------------
st.subheader("One head")
ensure_choice("p_head_ckpt", list(frames), main)
cols = st.columns(4)
head_ckpt = cols[0].selectbox("Checkpoint", list(frames), key="p_head_ckpt")
frame = frames[head_ckpt]
ensure_choice("p_head_stream", list(dict.fromkeys(frame["stream"])))
ensure_choice("p_head_layer", sorted(frame["layer"].unique().tolist()))
ensure_choice("p_head_head", sorted(frame["head"].unique().tolist()))
layer = cols[1].selectbox("Layer", sorted(frame["layer"].unique().tolist()), key="p_head_layer")
stream = cols[2].selectbox("Stream", list(dict.fromkeys(frame["stream"])), key="p_head_stream")
head = cols[3].selectbox("Head", sorted(frame["head"].unique().tolist()), key="p_head_head")
record = app_data.head_record(frame, layer, stream, head)
if record is None:
    st.warning(f"{head_ckpt} has no results for layer {layer}, stream {stream}, head {head}.")
    st.stop()

res = results[head_ckpt]
st.markdown(f"**{head_ckpt} · {stream} stream · layer {layer} · head {head}** — label: **{record['label'] or 'n/a'}**")
m = st.columns(5)
m[0].metric("specialisation index", f"{record['index']:+.3f}", help=f"95% CI ± {record['index_ci']:.3f}; chance {record['index_chance']:+.3f}")
m[1].metric("semantic lift (S_r)", f"{record['semantic_lift']:.2f}x")
m[2].metric("structural lift (R_w)", f"{record['structural_lift']:.2f}x")
m[3].metric("entropy (bits)", f"{record['entropy']:.2f}", help=f"uniform attention: {record['entropy_chance']:.2f} bits")
m[4].metric("null-key mass", f"{record['sink']:.3f}", help=f"chance {record['sink_chance']:.3f}")
parts = pd.DataFrame({
    "part": ["S only", "R only", "both", "neither"],
    "attention mass": [record[k] for k in ("S_only", "R_only", "both", "neither")],
    "95% CI": [record[f"{k}_ci"] for k in ("S_only", "R_only", "both", "neither")],
    "chance (uniform)": [record[f"{k}_chance"] for k in ("S_only", "R_only", "both", "neither")],
})
parts["lift"] = parts["attention mass"] / parts["chance (uniform)"]
# Small tables as st.table (static HTML): selecting a head redraws them, and a data grid costs more to draw.
st.table(parts.set_index("part").style.format("{:.3f}"))

hists = app_data.head_histograms(res.table, layer, stream, head)
if hists:
    titles = {"semantic": "semantic distance |pos − target|", "recency": "recency (steps since generated)",
              "own": "distance to the row's own position"}
    show_figure(viz.histogram_figure({titles[k]: v for k, v in hists.items()},
                                     x_titles={titles["semantic"]: "distance bin", titles["recency"]: "recency bin",
                                               titles["own"]: "distance bin"},
                                     title="Where the attention goes, by log2 bins (dashes: uniform attention)"),
                key="head_histograms")
steps = app_data.head_by_step(res.table, layer, stream, head, ["S_only", "R_only", "both", "index", "sink"])
if len(steps):
    show_figure(viz.by_step_figure(steps, title="Along the generation: parts and index by how many keys the row sees",
                                   names={"S_only": "S-only mass", "R_only": "R-only mass", "both": "both", "index": "index", "sink": "null-key mass"}),
                key="head_by_step")

causal = app_data.ablation_frame(res.table)
mine = causal[(causal["layer"] == layer) & (causal["stream"] == stream) & (causal["head"] == head)]
knock = app_data.knockout_frame(res.table)
mine_k = knock[(knock["layer"] == layer) & (knock["stream"] == stream) & (knock["head"] == head)]
if len(mine) or len(mine_k):
    st.markdown("**Causal checks of this head** (ΔNLL in bits/token, 95% CI over sequences)")
    if len(mine):
        st.table(mine.set_index("kind")[["dnll", "ci", "n"]].style.format({"dnll": "{:+.4f}", "ci": "{:.4f}", "n": "{:d}"}))
    if len(mine_k):
        shown = mine_k.set_index("set")[["dnll", "ci", "random_dnll", "random_ci", "excess", "excess_ci", "keys"]]
        st.table(shown.style.format("{:.4f}"))

if st.button("Open this head in the sample browser", key="head_open_sample", icon=":material/text_fields:"):
    st.session_state["p_sample_ckpt"] = head_ckpt
    st.session_state["p_sample_layer"] = int(layer)
    st.session_state["p_sample_stream"] = stream
    st.session_state["p_sample_head"] = int(head)
    st.switch_page(PAGES["samples"])
