"""Sample browser: pick or paste text, pick a generation order, step through it, and see where one
head of one stream looks at each step (target, semantic set and structural set marked)."""

import streamlit as st

from app_pages.common import (
    export_menu,
    bounded_int,
    catalog,
    checkpoint_picker,
    ensure_choice,
    ensure_range,
    get_model,
    loadable,
    sample_run,
    show_figure,
    val_samples,
)
from workbench import app_data, viz

st.title("Sample browser")
st.caption(
    "Step t generates position σ[t]. Each stream has one attention row per step: the query row (two-stream) "
    "and the single-stream row predict σ[t] without seeing it; the content row of step t holds the token just "
    "generated. Cells are coloured by that row's attention; the sets follow docs/coordinates.md."
)

names = loadable(catalog())
ckpt = checkpoint_picker("Checkpoint", "p_sample_ckpt", names, default="two_stream-128")
if ckpt is None:
    st.stop()
loaded = get_model(ckpt)
if loaded is None:
    st.stop()
model = loaded.model
n_ctx = model.cfg.n_ctx

# ---- the text ------------------------------------------------------------------------------------------
SOURCES = ("validation sample", "your text")
samples = val_samples(ckpt, n_ctx)
left, right = st.columns([1, 2])
with left:
    ensure_choice("p_sample_source", list(SOURCES))
    source = st.radio("Text", SOURCES, key="p_sample_source", horizontal=True)
with right:
    if source == "validation sample":
        if not samples:
            st.warning(f"{ckpt} bundles no validation text (val.txt); paste your own text instead.")
            st.stop()
        ensure_range("p_sample_val", 0, len(samples) - 1, 0)
        index = st.selectbox(
            "Validation window", list(range(len(samples))), key="p_sample_val",
            format_func=lambda i: f"chars {samples[i][0]:,}+: {app_data.display_char(samples[i][1][:48])}...",
        )
        text = samples[index][1]
        replace = False
    else:
        upload = st.file_uploader("Upload a text file (UTF-8)", key="sample_upload", help="Its text replaces the box below.")
        if upload is not None and st.session_state.get("sample_upload_seen") != upload.file_id:
            st.session_state["sample_upload_seen"] = upload.file_id
            try:
                st.session_state["p_sample_text"] = app_data.read_text_upload(upload.getvalue(), upload.name)
            except app_data.AppInputError as err:
                st.error(str(err))
        if "p_sample_text" not in st.session_state:
            st.session_state["p_sample_text"] = samples[0][1] if samples else ""
        text = st.text_area(f"Paste text (the model reads {n_ctx} tokens at a time)", key="p_sample_text", height=110)
        replace = st.checkbox("replace unknown characters", key="p_sample_replace",
                              help="Characters the tokenizer does not know become '?' (or a space).")

try:
    prepared = app_data.prepare_text(text, model.tokenizer, n_ctx, replace_unknown=replace,
                                     start=int(st.session_state.get("p_sample_window", 0)))
except app_data.AppInputError as err:
    st.error(str(err))
    st.stop()
for note in prepared.notes:
    st.info(note)
if prepared.n_total > n_ctx:
    ensure_range("p_sample_window", 0, prepared.n_total - n_ctx, prepared.start)
    st.slider("Window start (token)", 0, prepared.n_total - n_ctx, key="p_sample_window", step=max(1, n_ctx // 8))
length = len(prepared.ids)

# ---- the order ---------------------------------------------------------------------------------------------
o = st.columns([2, 1, 3])
ensure_choice("p_sample_order", list(app_data.ORDER_KINDS))
kind = o[0].radio("Generation order", app_data.ORDER_KINDS, key="p_sample_order", horizontal=True)
seed = bounded_int(o[1], "Seed", "p_sample_seed", 0, 2**31 - 1, 0, disabled=kind != "random")
custom = o[2].text_input("Custom order (positions or ranges; the rest follow left to right)", key="p_sample_custom",
                         placeholder="e.g. 0-9, 40, 20-29", disabled=kind != "custom")
try:
    order = app_data.make_order(kind, length, int(seed or 0), custom or "")
except app_data.AppInputError as err:
    st.error(str(err))
    st.stop()

run = sample_run(ckpt, tuple(int(i) for i in prepared.ids), tuple(int(p) for p in order))

# ---- which row -------------------------------------------------------------------------------------------------
h = st.columns([1, 1, 1, 1, 1, 2])
ensure_choice("p_sample_layer", list(range(run.n_layers)))
ensure_choice("p_sample_stream", list(run.stream_names), "query" if "query" in run.stream_names else None)
ensure_choice("p_sample_head", list(range(run.n_heads)))
layer = h[0].selectbox("Layer", list(range(run.n_layers)), key="p_sample_layer")
stream = h[1].selectbox("Stream", list(run.stream_names), key="p_sample_stream")
head = h[2].selectbox("Head", list(range(run.n_heads)), key="p_sample_head")
r = bounded_int(h[3], "r (semantic)", "p_sample_r", 1, n_ctx - 1, 4, help="S_r: keys within r positions of the target")
w = bounded_int(h[4], "w (structural)", "p_sample_w", 1, n_ctx - 1, 4, help="R_w: keys generated at most w steps before")
coordinates = h[5].radio("Lay out by", app_data.COORDINATES, key="p_sample_coords", horizontal=True)


@st.fragment
def step_view(run: app_data.SampleRun, layer: int, stream: str, head: int, r: int, w: int, coordinates: str, reproduce: dict) -> None:
    """Everything that changes with the step. A fragment: stepping reruns only this part, so the
    controls above and the NLL chart below are not rebuilt or redrawn."""
    length = run.length

    def move_step(delta: int) -> None:
        st.session_state["p_sample_step"] = min(max(int(st.session_state.get("p_sample_step", 0)) + delta, 0), length - 1)

    ensure_range("p_sample_step", 0, length - 1, min(length // 2, length - 1))
    s = st.columns([1, 1, 8])
    s[0].button("◀ step", key="sample_prev", on_click=move_step, args=(-1,), disabled=st.session_state["p_sample_step"] <= 0)
    s[1].button("step ▶", key="sample_next", on_click=move_step, args=(1,), disabled=st.session_state["p_sample_step"] >= length - 1)
    if length > 1:
        step = s[2].slider("Generation step t", 0, length - 1, key="p_sample_step", label_visibility="collapsed")
    else:
        step = 0

    row = app_data.attention_row(run, layer, stream, head, step, r, w)
    st.markdown(f"**{app_data.row_summary(run, row)}**")

    cells = app_data.row_cells(run, row, coordinates)
    main, side = st.columns([3, 1])
    with main:
        columns = 64 if length > 128 else 32
        window = None
        if length > 256:
            whole = st.toggle("Show the whole text", key="p_sample_whole",
                              help="Long texts show 256 cells around the target by default.")
            if not whole:
                first = max(0, (cells["target"] // columns - 2) * columns)
                window = (first, min(length, first + 4 * columns))
        target_note = "the row's own token (position σ[t])" if stream == "content" else "target: predicted, hidden from the model"
        grid = viz.text_grid(
            cells["tokens"], cells["weight"], target=cells["target"], semantic=cells["semantic"], structural=cells["structural"],
            positions=cells["positions"], steps=cells["steps"], own=cells["own"], target_note=target_note, columns=columns,
            window=window, title=f"L{layer} {stream} H{head}, step {step}: attention over the text ({coordinates})",
        )
        st.html(grid)
    with side:
        top = app_data.top_predictions(run, step, k=8)
        truth = top[top["true"]].iloc[0]
        st.metric("p(true token)", f"{truth['probability']:.1%}",
                  help=f"rank {int(truth['rank'])} of {len(run.vocab)}; NLL {run.bits_by_step[step]:.2f} bits")
        st.html(viz.prediction_bars(top["token"].tolist(), top["probability"].tolist(), top["true"].tolist(),
                                    title=f"Prediction for position {row.target}"))

    p = st.columns(6)
    for c, name in zip(p, ("S_only", "R_only", "both", "neither")):
        c.metric(f"{name.replace('_', '-')} mass", f"{row.parts[name]:.3f}", help=f"chance (uniform) {row.chance[name]:.3f}")
    p[4].metric("null-key mass", f"{row.null_mass:.3f}")
    p[5].metric("entropy (bits)", f"{row.entropy:.2f}")
    export_menu(f"sample_L{layer}_{stream}_H{head}_step{step}", frame=app_data.row_frame(run, row), arrays=app_data.row_arrays(run, row),
                page=grid,
                code=app_data.sample_snippet(reproduce["checkpoint"], text_source=reproduce["text_source"], n_ctx=reproduce["n_ctx"],
                                             replace_unknown=reproduce["replace_unknown"], start=reproduce["start"],
                                             order=reproduce["order"], row=(layer, stream, head, step, r, w)),
                label="Export this row")

    if st.toggle("Show the row key by key", key="p_sample_bars",
                 help="A bar per key, coloured by part (drawn on demand: each figure costs a browser redraw per step)."):
        bars = app_data.row_bars(run, row, coordinates)
        show_figure(viz.attention_bars(bars["x"], bars["weights"], bars["categories"], bars["hover"], chance=bars["chance"],
                                       x_title=bars["x_title"], title="The same row, key by key"), key="sample_bars")

    if st.toggle("Show the head's whole pattern", key="p_sample_pattern"):
        pat_coords = "generation" if coordinates == "generation order" else "sequence"
        pattern = app_data.head_pattern(run, layer, stream, head, pat_coords)
        highlight = row.slot if pat_coords == "generation" else row.target
        show_figure(viz.pattern_heatmap(pattern["z"], pattern["rows"], pattern["keys"], row_title=pattern["row_title"],
                                        key_title=pattern["key_title"], highlight_row=highlight,
                                        title=f"L{layer} {stream} H{head}: every row ({coordinates})"), key="sample_pattern")


reproduce = dict(checkpoint=model.checkpoint.path, text_source=("validation", index) if source == "validation sample" else ("text", text), n_ctx=n_ctx,
                 replace_unknown=bool(replace), start=prepared.start, order=(kind, int(seed or 0), custom or ""))
step_view(run, layer, stream, head, int(r), int(w), coordinates, reproduce)
show_figure(viz.nll_steps_figure(run.bits_by_step, title=f"NLL along this order: {run.bits.mean():.3f} bits/token on average"),
            key="sample_nll")
