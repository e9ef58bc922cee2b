"""Overview: the hypothesis under test; the study's verdict on it (the gap to two_stream against
length with intervals over seeds, validation curves, head labels along training); the bundled
checkpoints' own held-out evaluation (NLL table and gaps); the checkpoints and their probe results."""

import streamlit as st

from app_pages.common import (PAGES, catalog, checkpoints_root, export_menu, head_takeaways, nll_table, results_root, show_figure,
                             study_frame)
from workbench import app_data, viz

st.title("Any-order autoregressive models: where does each head look?")
st.markdown(f"**The hypothesis under test** (the paper's claim, not a finding of this workbench). {app_data.CLAIM}")
st.caption(
    "This workbench measures it head by head and stream by stream: how much of each head's attention "
    "falls on the *semantic set* S_r (keys within r positions of the target) and on the *structural set* "
    "R_w (the w most recently generated keys), against what uniform attention would give."
)

entries = catalog()
n_ok = sum(not e.error for e in entries)
n_probed = sum(e.probes is not None for e in entries)
c1, c2, c3 = st.columns(3)
c1.metric("checkpoints", f"{n_ok} of {len(entries)} loadable" if len(entries) != n_ok else len(entries))
c2.metric("with probe results", n_probed)
c3.metric("NLL table", "yes" if (results_root() / "nll.json").is_file() else "missing")

st.subheader("The study")
st.caption("Does the gap of each single-stream variant to two_stream grow from the shortest length to the longest? Every variant x "
           "length x seed is trained the same way (its model is its validation minimum within one token budget) and evaluated on the same "
           "held-out windows and orders, "
           "so each seed's gap is paired; the seeds are the replicates of the interval (docs/study.md).")
try:
    effect = study_frame("study_length_effect")
except app_data.AppInputError as err:
    effect = None
    st.info(f"{err} Until then the claim above is untested here; below is only the bundled checkpoints' own evaluation.")
if effect is not None:
    seed_gaps, over_seeds = study_frame("study_seed_gaps"), study_frame("study_gaps")
    if len(effect):
        st.markdown("**Verdict on the length effect** (any-order bits/token):\n" +
                    "\n".join(f"- {app_data.study_verdict(e)}" for e in effect.to_dict("records")))
        try:
            stalled = app_data.study_stalled(study_frame("study_curves"))
        except app_data.AppInputError:
            stalled = None  # the curves' own message comes with their figure below
        run_rows = study_frame("study_runs")
        for variant in effect["variant"] if stalled is not None else ():
            note = app_data.stalled_note(variant, stalled, run_rows)
            if note:
                st.warning(note)
    else:
        st.info(app_data.study_pending(over_seeds))
    fig = viz.gap_figure(seed_gaps, over_seeds)
    show_figure(fig, key="overview_study_gap")
    export_menu("study_gaps", frame=seed_gaps.merge(over_seeds, on=["variant", "length"], suffixes=("", "_over_seeds")), fig=fig)
    with st.expander("Every run, and the change of each gap with length, as numbers"):
        run_table = study_frame("study_runs")
        st.dataframe(run_table, hide_index=True, key="overview_study_runs")
        export_menu("study_runs", frame=run_table)
        st.dataframe(effect, hide_index=True, key="overview_study_effect")
        export_menu("study_length_effect", frame=effect)
    try:
        curves = study_frame("study_curves")
        runs = curves[curves["kind"] == "run"]
        fig = viz.curves_figure(runs)
        show_figure(fig, key="overview_study_curves")
        export_menu("study_curves", frame=runs, fig=fig)
        sweep = curves[curves["kind"] == "sweep"]
        if len(sweep):
            with st.expander("The size sweep that chose the model size"):
                fig = viz.curves_figure(sweep, title="Size sweep: validation curves (any-order bits/token; ★ the run's best model)")
                show_figure(fig, key="overview_study_sweep")
                export_menu("study_sweep", frame=sweep, fig=fig)
    except app_data.AppInputError as err:
        st.info(str(err))
    try:
        emergence = study_frame("study_emergence")
        seed0 = emergence[emergence["seed"] == 0]
        fig = viz.emergence_figure(seed0)
        show_figure(fig, key="overview_study_emergence")
        st.caption("Seed 0 of each variant and length, probed at its log-spaced snapshots and at best/; the counts are the "
                   "per-stream summary of the Head specialisation page.")
        export_menu("study_emergence", frame=seed0, fig=fig)
    except app_data.AppInputError as err:
        st.info(str(err))

st.subheader("Checkpoints")
if not entries:
    st.warning(f"No checkpoints in {app_data.shown_path(checkpoints_root())}. Train one with `workbench train`, pick a directory in the sidebar, or set "
               "WORKBENCH_CHECKPOINTS to a directory of checkpoints.")
else:
    listing = app_data.catalog_frame(entries)
    st.dataframe(listing, hide_index=True, key="overview_catalog")
    export_menu("checkpoints", frame=listing)
    for e in entries:
        if e.error:
            st.error(f"Checkpoint {e.name} cannot be loaded: {e.error}")

st.subheader("The bundled checkpoints' own held-out evaluation")
st.caption("The checkpoints this workbench ships, one model per variant and length (one seed), each evaluated on its held-out "
           "text (results/nll.json, `workbench eval`). This is not the study: these intervals hold the evaluation's noise only, "
           "not the spread between training runs.")
try:
    table = nll_table()
except app_data.AppInputError as err:
    table = None
    st.info(str(err))
if table is not None:
    gaps = app_data.nll_gaps(table)
    if len(gaps):
        parts = [f"{g.variant} − two_stream at {g.length}: **{g.gap:+.3f} ± {g.ci:.3f}**" if g.paired else
                 f"{g.variant} − two_stream at {g.length}: **{g.gap:+.3f}** (not evaluated on the same windows: no paired interval)"
                 for g in gaps.itertuples()]
        st.markdown("**NLL.** Gaps in any-order bits/token (95% intervals): " + "; ".join(parts) + ".")
        change = app_data.gap_change(gaps)
        if len(change):
            st.markdown("Change of the gap with length: " + "; ".join(
                f"{c.variant}: **{c.change:+.3f} ± {c.ci:.3f}** from {c.frm} to {c.to}" for c in change.rename(columns={"from": "frm"}).itertuples())
                + ". One model per variant and length (one seed).")
        st.caption("Gaps are paired (both models on the same windows and orders) with intervals blocked over 16 "
                   "contiguous stretches of windows; the change with length adds the two lengths' variances "
                   "(separate windows). docs/results.md says how they were made.")
    show_figure(viz.nll_bars(table, title="Bits per token on the held-out text, bundled checkpoints (95% CI over windows)"), key="overview_nll")
    shown = table.rename(columns={
        "any_order": "any-order bits/token", "any_order_ci": "± (95%)", "left_to_right": "left-to-right bits/token",
        "left_to_right_ci": "±  (95%)", "windows": "windows", "orders": "orders per window"})
    st.dataframe(shown, hide_index=True, key="overview_nll_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in shown.columns if "bits" in c or "±" in c})
    export_menu("nll", frame=table)
    # drawn only once opened (a closed expander's figure would still be sent and laid out on the first page)
    with st.expander("NLL as the text fills in (by fraction already generated)", key="overview_fraction_open",
                     on_change="rerun") as fraction:
        if fraction.open:
            try:
                show_figure(viz.nll_fraction_figure(app_data.nll_by_fraction(results_root() / "nll.json")), key="overview_fraction")
            except app_data.AppInputError as err:
                st.info(str(err))
takeaways = head_takeaways()
if takeaways:
    st.markdown("**Heads**, at the committed r and w:\n" + "\n".join(f"- {line}" for line in takeaways))

st.subheader("Probe results")
if n_probed == 0:
    st.info("No probe results are committed yet (results/probes/<checkpoint>/). Run "
            "`workbench probe --checkpoint <name> --out results/probes/<name>`; the head page can also compute a "
            "quick estimate on a few validation windows.")
else:
    for e in entries:
        if e.probes is not None:
            st.caption(f"{e.name}: `{app_data.shown_path(e.probes)}`")

st.subheader("Pages")
c = st.columns(4)
c[0].page_link(PAGES["heads"], label="Head specialisation", icon=":material/grid_view:", help="layer x head maps per stream; compare models and lengths")
c[1].page_link(PAGES["samples"], label="Sample browser", icon=":material/text_fields:", help="step through a generation order and see where a head looks")
c[2].page_link(PAGES["causal"], label="Causal checks", icon=":material/science:", help="ablate or knock out heads and see the change in NLL")
c[3].page_link(PAGES["divergence"], label="Order divergence", icon=":material/call_split:", help="'near the target' vs 'recent' as the length grows")
