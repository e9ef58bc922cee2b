"""The workbench's Streamlit app: browse head specialisation per stream, model and length.

    streamlit run app.py        (or: bash scripts/run_app.sh, which sets up .venv first)

Presentation only: every number comes from `workbench.app_data` and every figure from
`workbench.viz`; the pages live in `app_pages/` (docs/app.md walks through them).
"""

import streamlit as st

from app_pages.common import PAGES, keep_widget_state

st.set_page_config(page_title="AO-ARM workbench", page_icon=":material/hub:", layout="wide")
keep_widget_state()

pages = [
    st.Page(PAGES["overview"], title="Overview", icon=":material/home:", default=True),
    st.Page(PAGES["heads"], title="Head specialisation", icon=":material/grid_view:"),
    st.Page(PAGES["samples"], title="Sample browser", icon=":material/text_fields:"),
    st.Page(PAGES["causal"], title="Causal checks", icon=":material/science:"),
    st.Page(PAGES["divergence"], title="Order divergence", icon=":material/call_split:"),
]
st.navigation(pages).run()
