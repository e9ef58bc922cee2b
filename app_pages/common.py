"""What every page shares: the caches (models, results, runs), pickers whose choice survives a
page switch, and the one way a page reports a problem (a message, never a traceback).

Caching: models and per-sample runs are `st.cache_resource` (one shared object, never copied:
a SampleRun of a 1024-long two-stream text holds ~100 MB of patterns); tables and small results
are `st.cache_data`. Hooked runs hold the model's lock (`app_data.LoadedModel.lock`), because
hooks are module state shared by every session using the model.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import streamlit as st

from workbench import app_data
from workbench.app_data import AppInputError, LoadedModel

PAGES = {
    "overview": "app_pages/overview.py",
    "heads": "app_pages/heads.py",
    "samples": "app_pages/samples.py",
    "causal": "app_pages/causal.py",
    "divergence": "app_pages/divergence.py",
}
KEEP_PREFIX = "p_"
"""Widget keys starting with this survive page switches (app.py re-assigns them on each run)."""


def keep_widget_state() -> None:
    """Streamlit forgets a widget's value when its page is not shown; re-assigning keeps it."""
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith(KEEP_PREFIX):
            st.session_state[key] = st.session_state[key]


# ---- where checkpoints and results come from ------------------------------------------------------------

SOURCE_KEYS = {"checkpoints": "p_source_checkpoints", "results": "p_source_results"}


def _chosen(kind: str) -> Path | None:
    """The directory this session picked in the sidebar, if it is usable (else None: the default)."""
    text = str(st.session_state.get(SOURCE_KEYS[kind]) or "").strip()
    if not text:
        return None
    try:
        return app_data.source_dir(kind, text)
    except AppInputError:
        return None


def checkpoints_root() -> Path:
    """This session's checkpoints directory: the sidebar's choice, else $WORKBENCH_CHECKPOINTS or the bundled ones."""
    return _chosen("checkpoints") or app_data.checkpoints_dir()


def results_root() -> Path:
    """This session's results directory: the sidebar's choice, else $WORKBENCH_RESULTS or `results/`."""
    return _chosen("results") or app_data.results_dir()


def source_pickers() -> None:
    """The sidebar's "bring your own": a checkpoints directory and a results directory, by path on
    the machine the app runs on. A path that cannot be used says why; the default stays in use."""
    with st.sidebar.expander("Your checkpoints and results", icon=":material/folder_open:"):
        for kind, label, default in (("checkpoints", "Checkpoints directory", app_data.checkpoints_dir()),
                                     ("results", "Results directory", app_data.results_dir())):
            default = app_data.shown_path(default)
            text = st.text_input(label, key=SOURCE_KEYS[kind], placeholder=default,
                                 help=f"A path on the machine the app runs on. Empty: {default}")
            if text.strip():
                try:
                    st.caption(f"Using {app_data.shown_path(app_data.source_dir(kind, text))}")
                except AppInputError as err:
                    st.error(f"{err} Using {default}.")


# ---- caches ---------------------------------------------------------------------------------------------


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(show_spinner="Loading the checkpoint...", max_entries=6)
def _loaded_model(path: str) -> LoadedModel:
    return LoadedModel(app_data.load_model(path))


def get_model(name: str) -> LoadedModel | None:
    """The cached model of a checkpoint, or None after showing why it cannot be loaded."""
    try:
        return _loaded_model(str(checkpoints_root() / name))
    except AppInputError as err:
        st.error(str(err))
        return None


@st.cache_data(show_spinner=False, max_entries=8)
def _catalog(root: str, results: str, stamp: tuple) -> list[app_data.CheckpointEntry]:
    return app_data.catalog(Path(root), Path(results))


def catalog() -> list[app_data.CheckpointEntry]:
    root, results = checkpoints_root(), results_root()
    stamp = (_mtime(root), _mtime(results / "probes"))
    return _catalog(str(root), str(results), stamp)


@st.cache_data(show_spinner=False, max_entries=4)
def _nll_table(path: str, mtime: float):
    return app_data.nll_table(Path(path))


def nll_table():
    path = results_root() / "nll.json"
    return _nll_table(str(path), _mtime(path))


@st.cache_data(show_spinner=False, max_entries=16)
def _study_frame(loader: str, root: str, stamp: tuple):
    return getattr(app_data, loader)(Path(root))


def study_frame(loader: str):
    """`app_data.<loader>` (`study_runs`, `study_gaps`, ...) of this session's results directory,
    cached until one of the study's files changes; AppInputError while the file is missing."""
    root = results_root()
    return _study_frame(loader, str(root), tuple(_mtime(root / name) for name in app_data.STUDY_FILES))


@st.cache_data(show_spinner="Reading probe results...", max_entries=16)
def _probe_results(checkpoint: str, root: str, mtime: float) -> app_data.ProbeResults:
    return app_data.load_probe_results(checkpoint, Path(root))


@st.cache_data(show_spinner="Running the probes on a few validation windows (CPU)...", max_entries=16)
def _quick_results(checkpoint_path: str, n_sequences: int, r: int, w: int) -> app_data.ProbeResults:
    return app_data.quick_probe_results(checkpoint_path, n_sequences=n_sequences, r=r, w=w)


def quick_key(checkpoint: str) -> str:
    return f"quick_probe_{checkpoint}"


def probe_results(checkpoint: str, *, allow_quick: bool = True) -> app_data.ProbeResults | None:
    """Committed results of a checkpoint; else a quick estimate if one was asked for on this
    session; else None after showing where results come from (and a button for the estimate)."""
    root = results_root()
    table = app_data.probe_results_path(checkpoint, root) / "probes.parquet"
    try:
        return _probe_results(checkpoint, str(root), _mtime(table))
    except AppInputError as err:
        missing = str(err)
    quick = st.session_state.get(quick_key(checkpoint))
    if quick:
        try:
            return _quick_results(str(checkpoints_root() / checkpoint), *quick)
        except AppInputError as err:
            st.error(str(err))
            return None
    st.info(missing + (" Or compute a quick estimate here:" if allow_quick else
                       " The quick estimate (on the Head specialisation page) holds no causal checks; use \"Run your own\" below."))
    if allow_quick:
        n = 4 if _n_ctx(checkpoint) <= 256 else 1
        if st.button(f"Compute a quick estimate for {checkpoint} ({n} validation windows, on CPU)", key=f"btn_{quick_key(checkpoint)}"):
            st.session_state[quick_key(checkpoint)] = (n, 4, 4)
            st.rerun()
    return None


def _n_ctx(checkpoint: str) -> int:
    for entry in catalog():
        if entry.name == checkpoint:
            return entry.n_ctx
    return 0


@st.cache_data(show_spinner=False, max_entries=32)
def head_frame(checkpoint: str, source: str, _results: app_data.ProbeResults):
    """Per-head table of a probe result (keyed by checkpoint and where the result came from)."""
    return app_data.head_frame(_results.table)


@st.cache_data(show_spinner=False, max_entries=4)
def _head_takeaways(checkpoints: str, root: str, stamp: tuple) -> list[str]:
    lines = []
    for entry in app_data.catalog(Path(checkpoints), Path(root)):
        if entry.probes is None:
            continue
        try:
            res = app_data.load_probe_results(entry.name, Path(root))
        except AppInputError as err:
            lines.append(f"{entry.name}: {err}")
            continue
        lines.append(app_data.takeaway(entry.name, app_data.stream_summary(app_data.head_frame(res.table)), res.r, res.w))
    return lines


def head_takeaways() -> list[str]:
    """The one-line takeaway of every checkpoint with committed probe results."""
    entries = catalog()
    stamp = tuple((e.name, _mtime(e.probes)) for e in entries if e.probes is not None)
    return _head_takeaways(str(checkpoints_root()), str(results_root()), stamp)


@st.cache_data(show_spinner=False, max_entries=32)
def joint_histograms(checkpoint: str, source: str, _results: app_data.ProbeResults):
    """The joint semantic x recency histograms of a probe result ({} when it has none)."""
    return app_data.joint_histograms(_results.table)


@st.cache_data(show_spinner=False, max_entries=64)
def head_frame_at(checkpoint: str, source: str, r: int, w: int, _heads, _joints):
    """`app_data.head_frame_at`, cached per (checkpoint, source, r, w): moving a slider back is free."""
    return app_data.head_frame_at(_heads, _joints, r, w)


@st.cache_resource(show_spinner=False, max_entries=32)
def cached_figure(kind: str, key: tuple, _build):
    """A figure that depends only on `key` (what is shown, not which head is selected), built once
    and shared, never copied: a click then costs no figure building. Callers must not mutate it."""
    return _build()


@st.cache_data(show_spinner=False, max_entries=64)
def summary_and_takeaway(checkpoint: str, source: str, r: int, w: int, _heads):
    """The per-stream summary of a checkpoint's heads and its one-line takeaway, at (r, w)."""
    summary = app_data.stream_summary(_heads)
    return summary, app_data.takeaway(checkpoint, summary, r, w)


@st.cache_data(show_spinner=False, max_entries=4)
def _committed_divergence(checkpoints: str, root: str, stamp: tuple):
    for entry in app_data.catalog(Path(checkpoints), Path(root)):
        if entry.probes is None:
            continue
        try:
            frame = app_data.divergence_frame(app_data.load_probe_results(entry.name, Path(root)).table)
        except AppInputError:
            continue
        if len(frame):
            return entry.name, frame
    return None


def committed_divergence():
    """(checkpoint, frame) of the first committed probe run that holds the divergence probe, or None."""
    entries = catalog()
    stamp = tuple((e.name, _mtime(e.probes)) for e in entries if e.probes is not None)
    return _committed_divergence(str(checkpoints_root()), str(results_root()), stamp)


@st.cache_data(show_spinner="Comparing orders (no model needed)...", max_entries=8)
def divergence_live(lengths: tuple, ks: tuple, n_orders: int, seed: int):
    return app_data.divergence_live(lengths, ks, n_orders, seed)


@st.cache_data(show_spinner=False, max_entries=16)
def val_samples(checkpoint: str, n_ctx: int) -> list[tuple[int, str]]:
    try:
        return app_data.val_samples(checkpoints_root() / checkpoint, n_ctx)
    except Exception:  # noqa: BLE001 (an unreadable val.txt just means no samples to offer)
        return []


@st.cache_resource(show_spinner="Running the model on the text...", max_entries=4)
def _sample_run(path: str, ids: tuple, order: tuple) -> app_data.SampleRun:
    return app_data.run_sample(_loaded_model(path), ids, order)


def sample_run(checkpoint: str, ids: tuple, order: tuple) -> app_data.SampleRun:
    """One (text, order) through the model, cached: stepping, picking a head or r / w reuse it."""
    return _sample_run(str(checkpoints_root() / checkpoint), ids, order)


# ---- pickers ------------------------------------------------------------------------------------------------


def loadable(entries: list[app_data.CheckpointEntry]) -> list[str]:
    return [e.name for e in entries if not e.error]


def checkpoint_picker(label: str, key: str, names: list[str], default: str | None = None, **kwargs) -> str | None:
    """A selectbox over `names` whose value is kept (and repaired if the list changed)."""
    if not names:
        st.warning(f"No checkpoints found in {app_data.shown_path(checkpoints_root())}. Train one with `workbench train`, or "
                   "set WORKBENCH_CHECKPOINTS to a directory of checkpoints.")
        return None
    if st.session_state.get(key) not in names:
        st.session_state[key] = default if default in names else names[0]
    return st.selectbox(label, names, key=key, **kwargs)


def ensure_choice(key: str, options: list, default=None) -> None:
    """Reset a kept widget value that is no longer among its options (another model, a shorter text)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]


def ensure_range(key: str, low: int, high: int, default: int) -> None:
    value = st.session_state.get(key)
    if not isinstance(value, int) or not low <= value <= high:
        st.session_state[key] = min(max(default, low), high)


def bounded_int(container, label: str, key: str, low: int, high: int, default: int, **kwargs) -> int:
    """An integer input that says when a typed value is out of range (Streamlit's own bounds drop
    it silently): the value is kept in the box, a warning names the range, and the nearest
    allowed value is used."""
    value = st.session_state.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        st.session_state[key] = min(max(default, low), high)
    value = int(container.number_input(label, step=1, key=key, **kwargs))
    if not low <= value <= high:
        used = min(max(value, low), high)
        container.warning(f"{label}: {value} is outside {low}–{high}; using {used}.")
        return used
    return value


def show_figure(fig, key: str | None = None, **kwargs):
    """st.plotly_chart with the app's defaults (full width, no Plotly logo; the camera icon saves
    an SVG drawn by the user's browser)."""
    config = {"displaylogo": False, "scrollZoom": False, "toImageButtonOptions": {"format": "svg", "filename": key or "figure"}}
    return st.plotly_chart(fig, key=key, config=config, **kwargs)


def export_menu(key: str, *, frame=None, fig=None, arrays=None, page: str | None = None, code: str | None = None,
                label: str = "Export") -> None:
    """A popover with downloads of what is on screen: the frame (CSV, Parquet), named arrays
    (safetensors, .npz), the figure (HTML, SVG, PDF), an HTML fragment drawn on the page as a
    standalone page (`page`: the sample browser's text grid) and "copy as Python". The files are made only
    when a button is clicked (deferred), and clicking does not rerun the page. SVG and PDF buttons
    that cannot work here are disabled and a warning says why and how to fix it."""
    with st.popover(label, icon=":material/download:"):
        row = st.columns(4)
        n = 0
        if frame is not None:
            for fmt, mime in app_data.FRAME_FORMATS.items():
                row[n % 4].download_button(fmt.upper(), data=partial(app_data.frame_bytes, frame, fmt), file_name=f"{key}.{fmt}",
                                           mime=mime, key=f"dl_{key}_{fmt}", on_click="ignore")
                n += 1
        if arrays is not None:
            for fmt, mime in app_data.ARRAY_FORMATS.items():
                row[n % 4].download_button(fmt, data=partial(app_data.array_bytes, arrays, fmt), file_name=f"{key}.{fmt}",
                                           mime=mime, key=f"dl_{key}_{fmt}", on_click="ignore")
                n += 1
        if fig is not None:
            problem = app_data.vector_export_problem()
            for fmt, mime in app_data.FIGURE_FORMATS.items():
                off = problem is not None and fmt in app_data.VECTOR_FORMATS
                row[n % 4].download_button(f"figure .{fmt}", data=b"" if off else partial(app_data.figure_bytes, fig, fmt),
                                           file_name=f"{key}.{fmt}", mime=mime, key=f"dl_{key}_fig_{fmt}", on_click="ignore",
                                           disabled=off, help=problem if off else None)
                n += 1
            if problem:
                st.warning(f"{problem} Meanwhile the chart's camera icon saves an SVG drawn by your browser.")
        if page is not None:
            row[n % 4].download_button("text grid .html", data=partial(app_data.html_page, page, key), file_name=f"{key}_grid.html",
                                       mime="text/html", key=f"dl_{key}_page", on_click="ignore")
        if code is not None:
            st.caption("Copy as Python: this rebuilds the view through the API (copy icon at the top right).")
            st.code(code, language="python")


def select_head(checkpoint: str, layer: int, stream: str, head: int) -> None:
    """Make (checkpoint, layer, stream, head) the selected head of the head page and the sample browser."""
    st.session_state["p_head_ckpt"] = checkpoint
    st.session_state["p_head_layer"] = int(layer)
    st.session_state["p_head_stream"] = stream
    st.session_state["p_head_head"] = int(head)


def head_from_selection(selection) -> tuple[str, int, str, int] | None:
    """(checkpoint, layer, stream, head) of the first selected point of a heads figure (a map cell
    or a scatter point), from its customdata."""
    try:
        points = selection["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points or []:
        custom = point.get("customdata")
        if custom is not None and len(custom) >= 4:
            return str(custom[0]), int(custom[1]), str(custom[2]), int(custom[3])
    return None
