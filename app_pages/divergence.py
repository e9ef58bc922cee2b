"""Order divergence: how much "near the target" and "recently generated" overlap as the length
grows, with no model at all (Pynadath and Zhang, 2026)."""

import streamlit as st

from app_pages.common import bounded_int, committed_divergence, divergence_live, ensure_range, export_menu, show_figure
from workbench import app_data, viz

st.title("Order divergence")
st.markdown(
    "For a row at step t of a random order σ of length T, let **A** be the k visible keys nearest the target "
    "position σ[t] and **B** the k most recently generated keys. Their overlap |A ∩ B| / k is what a single "
    "attention stream can serve with one pattern. Under uniformly random orders the step at which a key was "
    "generated says nothing about where it sits, so the overlap is k/t on average and falls like k·ln(T)/T: "
    "sizeable at T = 128, small at T = 1024."
)

# ---- the curve -----------------------------------------------------------------------------------------------------
committed = committed_divergence()

SOURCES = ("committed probe results", "compute here")
if committed is None:
    st.session_state["p_div_source"] = SOURCES[1]
source = st.radio("Curve from", SOURCES, key="p_div_source", horizontal=True, disabled=committed is None,
                  help=None if committed else "No probe results with the divergence probe are committed; computing here.")
if source == SOURCES[0] and committed is not None:
    name, frame = committed
    st.caption(f"From results/probes/{name} (the divergence probe is model-free: any checkpoint's run holds the same curve).")
else:
    c = st.columns(4)
    max_options = [256, 512, 1024, 2048, 4096]
    if st.session_state.get("p_div_max") not in max_options:
        st.session_state["p_div_max"] = 2048
    max_len = c[0].select_slider("Longest T", max_options, key="p_div_max")
    if "p_div_ks" not in st.session_state:
        st.session_state["p_div_ks"] = [1, 4, 16]
    ks = c[1].multiselect("k", [1, 2, 4, 8, 16, 32, 64], key="p_div_ks")
    ensure_range("p_div_orders", 2, 64, 16)
    n_orders = c[2].slider("Orders per length", 2, 64, key="p_div_orders")
    seed = bounded_int(c[3], "Seed", "p_div_seed", 0, 2**31 - 1, 0)
    if not ks:
        st.warning("Pick at least one k.")
        st.stop()
    lengths = tuple(t for t in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if t <= max_len)
    frame = divergence_live(lengths, tuple(sorted(ks)), int(n_orders), int(seed))
curve = viz.divergence_figure(frame)
show_figure(curve, key="div_curve")
export_menu("divergence", frame=frame, fig=curve)
marks = frame[frame["length"].isin([128, 1024])].pivot_table(index="k", columns="length", values="overlap")
if marks.shape[1] == 2:
    st.markdown("Overlap at the two bundled lengths: " + "; ".join(
        f"k = {k}: **{row[128]:.3f}** at 128 vs **{row[1024]:.3f}** at 1024" for k, row in marks.iterrows()) + ".")

# ---- one row ------------------------------------------------------------------------------------------------------------
st.subheader("One row, drawn")
c = st.columns(4)
lengths = [32, 64, 128, 256, 512, 1024, 2048]
if st.session_state.get("p_div_ex_len") not in lengths:
    st.session_state["p_div_ex_len"] = 128
length = c[0].select_slider("Length T", lengths, key="p_div_ex_len")
k = bounded_int(c[1], "k", "p_div_ex_k", 1, min(64, length - 1), 16)
ensure_range("p_div_ex_step", int(k), length - 1, length // 2)
step = c[2].slider("Step t", int(k), length - 1, key="p_div_ex_step")
ex_seed = bounded_int(c[3], "Order seed", "p_div_ex_seed", 0, 2**31 - 1, 0)
example = app_data.divergence_example(length, int(step), int(k), int(ex_seed))
show_figure(viz.divergence_strip(length, example["target"], example["visible"], example["nearest"], example["recent"],
                                 title=f"T = {length}, step {example['step']}: target position {example['target']}, "
                                       f"overlap {example['overlap']:.2f} (chance k/t = {int(k) / example['step']:.2f})"),
            key="div_strip")
st.caption("Why the length T does not change the overlap at a fixed step t: both sets are drawn from the t keys "
           "visible at that step, and under a random order their positions are a uniform sample whatever T is, so "
           "the expected overlap is k/t. T matters through the steps there are: a longer text has more rows at large "
           "t, where the overlap is small, so the average over t = k..T−1 falls like k·ln(T)/T.")
