"""Head specialisation: layer x head maps per stream, the semantic/structural plane, one head in
detail, and model vs model or length vs length side by side."""

from functools import partial

import pandas as pd
import streamlit as st

from app_pages.common import (
    PAGES,
    catalog,
    checkpoint_picker,
    cached_figure,
    ensure_choice,
    export_menu,
    head_frame,
    head_frame_at,
    head_from_selection,
    joint_histograms,
    loadable,
    probe_results,
    results_root,
    select_head,
    show_figure,
    summary_and_takeaway,
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
    ensure_choice("p_heads_metric", metric_keys, "semantic_excess")
    metric = st.selectbox("Map shows", metric_keys, key="p_heads_metric", format_func=lambda k: app_data.HEAD_METRICS[k][1])

results, base, sources = {}, {}, {}
for name in shown:
    res = probe_results(name)
    if res is None:
        continue
    results[name] = res
    sources[name] = f"{res.source}|{res.metadata.get('created_utc')}|{len(res.table)}"
    base[name] = head_frame(name, sources[name], res)
if not base:
    st.stop()

# ---- r and w --------------------------------------------------------------------------------------------
# Labels and parts depend on (r, w). Committed results hold one (r, w); the joint semantic x recency
# histogram (app_data.JOINT_METRIC) lets any other (r, w) on its bin edges be read out.
committed = {name: (res.r, res.w) for name, res in results.items()}
first = next(iter(committed.values()))
joints = {name: joint_histograms(name, sources[name], res) for name, res in results.items()}
readable = all(joints.values()) and len(set(committed.values())) == 1 and None not in first
widths = app_data.readable_widths(min(entries[n].n_ctx for n in results)) if readable else [first[0] or 4]
rw = st.columns([1, 1, 4])
for key, value in (("p_heads_r", first[0]), ("p_heads_w", first[1])):
    ensure_choice(key, widths, value)
r = rw[0].select_slider("r (semantic set S_r)", widths, key="p_heads_r", disabled=not readable or len(widths) < 2)
w = rw[1].select_slider("w (structural set R_w)", widths, key="p_heads_w", disabled=not readable or len(widths) < 2)
with rw[2]:
    if readable:
        st.caption(f"The results hold the joint semantic x recency histogram, so r and w can be read out at any bin edge; "
                   f"away from the committed r = {first[0]}, w = {first[1]} the values are pooled read-outs without intervals.")
    else:
        st.info("r and w are fixed at the committed " + ", ".join(f"{n}: r = {c[0]}, w = {c[1]}" for n, c in committed.items())
                + ": these results hold no joint semantic x recency histogram (metric `joint_hist`), which reading "
                  "other r and w needs. Re-run `workbench probe` with a version that records it.")
at_committed = not readable or (r, w) == first
frames = {name: f if at_committed else head_frame_at(name, sources[name], r, w, f, joints[name]) for name, f in base.items()}


def describe(res: app_data.ProbeResults) -> str:
    meta = res.metadata
    data = meta.get("data", {})
    bits = [f"committed r = {res.r}, w = {res.w}" if res.r is not None else "",
            f"{data.get('n_sequences', meta.get('sequences_probed', '?'))} sequences of {data.get('seq_len', '?')} tokens",
            f"orders: {data.get('orders', 'random')}", f"95% CIs over {res.ci_over('statistics')}", res.source]
    return " · ".join(b for b in bits if b)


def on_select(key: str) -> None:
    """A click (or box) on a map cell or a scatter point selects that head: both carry
    (checkpoint, layer, stream, head) as customdata."""
    picked = head_from_selection(st.session_state.get(key))
    if picked is not None:
        select_head(*picked)


# ---- what the heads do ------------------------------------------------------------------------------
st.subheader("What the heads do")
for name, f in frames.items():
    summary, line = summary_and_takeaway(name, sources[name], r, w, f)
    st.markdown(f"**{line}**")
    st.dataframe(summary, hide_index=True, key=f"heads_summary_{name}",
                 column_config={column: st.column_config.NumberColumn(format="%+.2f") for column in app_data.MEDIANS})
    st.caption(describe(results[name]))
    export_menu(f"summary_{name}", frame=summary, code=app_data.heads_snippet([name], metric, r=r, w=w, committed=first,
                                                                             root=results_root()), label="Export summary")

# ---- maps ---------------------------------------------------------------------------------------------
metric_label = app_data.over_chance_name(metric)
st.subheader(f"Layer x head: {metric_label}")
st.caption("Every map is centred at chance (0, white: what uniform attention over the visible keys gives; "
           + ("a lift is shown as log2 lift" if metric.endswith("lift") else
              "the normalised excess, the labels' measure, is 0 at chance and 1 when every row puts all its non-null mass "
              "on the set, at any r, w and length, so maps of both lengths compare" if metric.endswith("_excess") else
              "the value minus its chance")
           + "), on one colour scale for every stream and checkpoint. The hover gives the value, its 95% CI and chance.")
if metric in app_data.PER_ROW and not at_committed:
    st.info(f"The {app_data.HEAD_METRICS[metric][1].split(' (')[0]} needs per-row quantities the joint histogram does not "
            f"hold, so it exists at the committed r = {first[0]}, w = {first[1]} only; the masses, lifts and index are read "
            "out at any r, w.")
view = (tuple(frames), tuple(sources[n] for n in frames), r, w)  # what the maps and the scatter depend on


def build_maps():
    grids = {(name, s): app_data.head_grid(f, s, metric) for name, f in frames.items() for s in dict.fromkeys(f["stream"])}
    return viz.head_maps(grids, title=" vs ".join(frames), value_name=metric_label, colour="excess")


cells = pd.concat([f.assign(checkpoint=name) for name, f in frames.items()], ignore_index=True)


# ---- the maps, the scatter and the selected head ------------------------------------------------------------
# One fragment: a click on a map cell or a scatter point, or another head picked below, reruns only
# this part; the controls and the summary above stay as they are.
@st.fragment
def heads_view() -> None:
    fig = cached_figure("maps", (*view, metric), build_maps)
    show_figure(fig, key="heads_maps", selection_mode="points", on_select=partial(on_select, "heads_maps"))
    export_menu("heads_maps", frame=cells, fig=fig, code=app_data.heads_snippet(list(frames), metric, r=r, w=w, committed=first,
                                                                                root=results_root()))
    labels_present = sorted({lab for f in frames.values() for lab in f["label"] if lab})
    if labels_present:
        st.caption(f"Letters after a value: the head's label ({label_legend(labels_present)}); thresholds in "
                   "workbench/probing/specialisation.py.")
    selected_head_view()


def selected_head_view() -> None:
    st.subheader("Heads in the semantic / structural plane")
    plane = st.radio("Plane", list(app_data.SCATTER_PLANES), key="p_heads_plane", horizontal=True)
    x_key, y_key = app_data.SCATTER_PLANES[plane]
    fig = cached_figure("scatter", (*view, plane), lambda: viz.head_scatter(
        cells, x=x_key, y=y_key, x_title=app_data.HEAD_METRICS[x_key][1], y_title=app_data.HEAD_METRICS[y_key][1],
        title="Each point is a head (colour: stream; cross: chance for uniform attention); click one to open it below"))
    # The same figure whichever head is selected: a changed figure is drawn anew in the browser.
    show_figure(fig, key="heads_scatter", on_select=partial(on_select, "heads_scatter"), selection_mode=("points", "box"))
    one_head()


def one_head() -> None:
    """The selected head in detail: label, metrics, parts, histograms, by-step curves, causal checks."""
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
        return

    res = results[head_ckpt]
    if at_committed:
        label_line = f"label at r = {r}, w = {w}: **{record['label'] or 'n/a'}**"
    else:
        labels = app_data.head_labels(res.table)
        committed_label = next(iter(labels[(labels["layer"] == layer) & (labels["stream"] == stream) & (labels["head"] == head)]["label"]), "")
        label_line = (f"label at the committed r = {first[0]}, w = {first[1]}: **{committed_label or 'n/a'}** "
                      f"(labels at r = {r}, w = {w} need a probe run there)")
    st.markdown(f"**{head_ckpt} · {stream} stream · layer {layer} · head {head}** — {label_line}")
    m = st.columns(5)
    m[0].metric("specialisation index", f"{record['index']:+.3f}", delta=f"{record['index_excess']:+.3f} over chance", delta_color="off",
                help=f"95% CI ± {record['index_ci']:.3f}; chance {record['index_chance']:+.3f}")
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
    st.table(parts.set_index("part").style.format("{:.3f}", na_rep="n/a"))
    export_menu(f"parts_{head_ckpt}_L{layer}_{stream}_H{head}", frame=parts, label="Export this head", code=app_data.heads_snippet(
        list(frames), metric, r=r, w=w, committed=first, head=(head_ckpt, layer, stream, head), root=results_root()))

    hists = app_data.head_histograms(res.table, layer, stream, head)
    if hists:
        titles = {"semantic": "semantic distance |pos − target|", "recency": "recency (steps since generated)",
                  "own": "distance to the row's own position"}
        show_figure(viz.histogram_figure({titles[k]: v for k, v in hists.items()},
                                         x_titles={titles["semantic"]: "distance bin", titles["recency"]: "recency bin",
                                                   titles["own"]: "distance bin"},
                                         title="Where the attention goes, by log2 bins (dashes: uniform attention)"),
                    key="head_histograms")
        export_menu(f"histograms_{head_ckpt}_L{layer}_{stream}_H{head}",
                    frame=pd.concat([v.assign(histogram=k) for k, v in hists.items()], ignore_index=True), label="Export histograms")
    steps = app_data.head_by_step(res.table, layer, stream, head, ["S_only", "R_only", "both", "index", "sink"])
    if len(steps):
        show_figure(viz.by_step_figure(steps, title=f"Along the generation: parts and index by how many keys the row sees (committed r = {first[0]}, w = {first[1]})",
                                       names={"S_only": "S-only mass", "R_only": "R-only mass", "both": "both", "index": "index", "sink": "null-key mass"}),
                    key="head_by_step")

    causal = app_data.ablation_frame(res.table)
    mine = causal[(causal["layer"] == layer) & (causal["stream"] == stream) & (causal["head"] == head)]
    knock = app_data.knockout_frame(res.table)
    mine_k = knock[(knock["layer"] == layer) & (knock["stream"] == stream) & (knock["head"] == head)]
    if len(mine) or len(mine_k):
        st.markdown(f"**Causal checks of this head** (ΔNLL in bits/token, 95% CI over {res.ci_over('causal')})")
        if len(mine):
            st.table(app_data.effect_table(mine.set_index("kind")[["dnll", "ci", "n"]]).style.format("{:+.4f}", subset=["ΔNLL (bits/token)", "± 95%"]))
        if len(mine_k):
            shown_k = app_data.effect_table(mine_k.set_index("set")[["dnll", "ci", "random_dnll", "random_ci", "excess", "excess_ci", "keys"]])
            st.table(shown_k.style.format("{:.4f}"))

    if st.button("Open this head in the sample browser", key="head_open_sample", icon=":material/text_fields:"):
        st.session_state["p_sample_ckpt"] = head_ckpt
        st.session_state["p_sample_layer"] = int(layer)
        st.session_state["p_sample_stream"] = stream
        st.session_state["p_sample_head"] = int(head)
        st.session_state["p_sample_r"], st.session_state["p_sample_w"] = int(r), int(w)
        st.switch_page(PAGES["samples"])


heads_view()
