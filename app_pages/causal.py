"""Causal checks: ablate heads or knock out their semantic / structural sets and see the change in
NLL; the committed probe results first, then live runs on validation windows."""

import streamlit as st

from app_pages.common import (
    bounded_int,
    catalog,
    checkpoint_picker,
    ensure_choice,
    export_menu,
    get_model,
    loadable,
    probe_results,
    show_figure,
)
from workbench import app_data, viz

st.title("Causal checks")
st.caption(
    "A probe label means more when removing what the head looks at hurts. Ablation replaces a head's output "
    "(hook_z) by zero or by its mean; knockout blocks the head's semantic set S_r or structural set R_w "
    "(scores set to −inf), against a random set of the same size as control. ΔNLL is intervened − clean, "
    "in bits/token, paired per sequence, with a 95% CI over 16 blocks of contiguous windows (over sequences "
    "when there are fewer than 32)."
)

names = loadable(catalog())
ckpt = checkpoint_picker("Checkpoint", "p_causal_ckpt", names, default="two_stream-128")
if ckpt is None:
    st.stop()

# ---- committed results --------------------------------------------------------------------------------------------
st.subheader("From the probe results")
res = probe_results(ckpt, allow_quick=False)
if res is not None:
    ablation = app_data.ablation_frame(res.table)
    knockout = app_data.knockout_frame(res.table)
    if ablation.empty and knockout.empty:
        st.info(f"The probe results of {ckpt} ({res.source}) hold no causal checks; run `workbench probe --probes ablation,knockout`.")
    if not ablation.empty:
        kinds = sorted(ablation["kind"].unique())
        kind = st.radio("Ablation", kinds, key="p_causal_ablation_kind", horizontal=True, format_func=lambda k: f"{k} ablation")
        rows = ablation[ablation["kind"] == kind]
        frame = rows.assign(label="", dnll_ci=rows["ci"], dnll_chance=float("nan"))
        grids = {(ckpt, s): app_data.head_grid(frame, s, "dnll") for s in dict.fromkeys(frame["stream"])}
        fig = viz.head_maps(grids, title=f"{ckpt}: ΔNLL when one head is {kind}-ablated (bits/token)",
                            value_name="ΔNLL (bits)", colour="value", diverging=True, digits=3)
        show_figure(fig, key="causal_ablation_map")
        export_menu("ablation", frame=ablation, fig=fig)
        clean = res.table[res.table["metric"] == "clean_bits"]
        if len(clean):
            st.caption(f"Clean NLL of those sequences: {clean['value'].iloc[0]:.3f} ± {clean['ci'].iloc[0]:.3f} bits/token "
                       f"({int(clean['n'].iloc[0])} sequences).")
    if not knockout.empty:
        names_k = [f"L{r.layer}.{r.stream}.H{r.head} ({r.label}): {'S_r' if r.set == 'semantic' else 'R_w'}" for r in knockout.itertuples()]
        values = list(knockout["dnll"]) + list(knockout["random_dnll"])
        cis = list(knockout["ci"]) + list(knockout["random_ci"])
        groups = [f"{s} set" for s in knockout["set"]] + ["random set (same size)"] * len(knockout)
        show_figure(viz.effect_bars(names_k + names_k, values, cis, groups=groups,
                                    title=f"{ckpt}: knocking out a head's set vs as many random keys"), key="causal_knockout")
        shown_k = app_data.effect_table(knockout)
        st.dataframe(shown_k, hide_index=True, key="causal_knockout_table",
                     column_config={app_data.EFFECT_COLUMNS[c]: st.column_config.NumberColumn(format="%.4f") for c in
                                    ("dnll", "ci", "random_dnll", "random_ci", "excess", "excess_ci", "keys")})
        export_menu("knockout", frame=knockout)

# ---- live -------------------------------------------------------------------------------------------------------------
st.subheader("Run your own")
loaded = get_model(ckpt)
if loaded is None:
    st.stop()
model = loaded.model
all_heads = [app_data.HeadRef(layer, s, h).name for layer in range(model.cfg.n_layers) for s in model.stream_names
             for h in range(model.cfg.n_heads)]
picked = st.session_state.get("p_head_ckpt") == ckpt and app_data.HeadRef(
    int(st.session_state.get("p_head_layer", 0)), str(st.session_state.get("p_head_stream", "")), int(st.session_state.get("p_head_head", 0))).name
default_heads = [picked] if picked in all_heads else [all_heads[0]]
if [h for h in st.session_state.get("p_causal_heads", []) if h not in all_heads] or "p_causal_heads" not in st.session_state:
    st.session_state["p_causal_heads"] = default_heads
if "p_causal_kinds" not in st.session_state:
    st.session_state["p_causal_kinds"] = ["zero ablation", "knock out semantic set S_r", "knock out random keys (as many as S_r)"]
with st.form("causal_form"):
    c = st.columns([3, 3])
    heads = c[0].multiselect("Heads", all_heads, key="p_causal_heads")
    kinds = c[1].multiselect("Interventions", list(app_data.INTERVENTIONS), key="p_causal_kinds")
    d = st.columns(5)
    ensure_choice("p_causal_mode", ["all picked heads at once", "each head on its own"])
    mode = d[0].radio("Heads", ["all picked heads at once", "each head on its own"], key="p_causal_mode")
    max_seq = 32 if model.cfg.n_ctx <= 256 else 8
    if not isinstance(st.session_state.get("p_causal_n"), int) or st.session_state["p_causal_n"] > max_seq:
        st.session_state["p_causal_n"] = min(8, max_seq)
    n_seq = d[1].slider("Validation windows", 2, max_seq, key="p_causal_n")
    r = bounded_int(d[2], "r (semantic)", "p_causal_r", 1, model.cfg.n_ctx - 1, 4)
    w = bounded_int(d[3], "w (structural)", "p_causal_w", 1, model.cfg.n_ctx - 1, 4)
    seed = bounded_int(d[4], "Seed (orders)", "p_causal_seed", 0, 2**31 - 1, 0)
    submitted = st.form_submit_button("Run", type="primary")
if submitted:
    try:
        with st.spinner("Running the model with and without the interventions..."):
            result = app_data.run_causal(loaded, [app_data.HeadRef.parse(h) for h in heads], kinds, n_sequences=int(n_seq),
                                         r=int(r), w=int(w), seed=int(seed), joint=mode.startswith("all"))
        st.session_state["causal_result"] = (ckpt, result)
    except app_data.AppInputError as err:
        st.error(str(err))
stored = st.session_state.get("causal_result")
if stored is not None and stored[0] == ckpt:
    result = stored[1]
    eff = result.effects
    clean = result.clean_bits.mean()
    st.markdown(f"Clean NLL: **{clean:.3f} bits/token** on {result.n_sequences} windows of {result.seq_len} tokens "
                "under seeded random orders.")
    labels = [f"{i} · {h}" if len(eff["heads"].unique()) > 1 else i for i, h in zip(eff["intervention"], eff["heads"])]
    groups = ["random" if "random" in i else "semantic" if "semantic" in i else "structural" if "structural" in i else "ablation"
              for i in eff["intervention"]]
    show_figure(viz.effect_bars(labels, eff["dnll"], eff["ci"], groups=groups, title="Change in NLL"), key="causal_live")
    if eff["excess"].isna().all():
        st.caption("Pick a set knockout and the random knockout of the same size to get the paired excess over random keys.")
    st.dataframe(app_data.effect_table(eff), hide_index=True, key="causal_live_table",
                 column_config={app_data.EFFECT_COLUMNS[c]: st.column_config.NumberColumn(format=f) for c, f in
                                (("dnll", "%+.4f"), ("ci", "%.4f"), ("excess", "%+.4f"), ("excess_ci", "%.4f"), ("bits", "%.3f"))})
    export_menu("causal_live", frame=eff)
