"""The workbench's Streamlit app: browse head specialisation per stream, model and length.

    streamlit run app.py        (or: bash scripts/run_app.sh, which sets up .venv first)

Presentation only: every number comes from `workbench.app_data` and every figure from
`workbench.viz`; the pages live in `app_pages/` (docs/app.md walks through them).
"""

import streamlit as st

from app_pages.common import PAGES, keep_widget_state, source_pickers

st.set_page_config(page_title="AO-ARM workbench", page_icon=":material/hub:", layout="wide")
keep_widget_state()
source_pickers()

pages = [
    st.Page(PAGES["overview"], title="Overview", icon=":material/home:", default=True),
    st.Page(PAGES["heads"], title="Head specialisation", icon=":material/grid_view:"),
    st.Page(PAGES["samples"], title="Sample browser", icon=":material/text_fields:"),
    st.Page(PAGES["causal"], title="Causal checks", icon=":material/science:"),
    st.Page(PAGES["divergence"], title="Order divergence", icon=":material/call_split:"),
]
page = st.navigation(pages)
try:
    page.run()
except Exception as err:  # noqa: BLE001 -- a bug, not bad input (bad input gets its own message on each page)
    st.error(f"This page hit an unexpected error ({type(err).__name__}: {err}). The other pages still work; "
             "please report it with the details below.")
    with st.expander("Details"):
        st.exception(err)
