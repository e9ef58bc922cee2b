"""The pages of the Streamlit app (app.py): presentation only, compute lives in `workbench/`."""
