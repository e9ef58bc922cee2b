"""How fast the app answers on this machine: the first page after warm-up, and interactions.

Two measurements, each after a warm-up (imports done, models loaded, caches filled, as on a
server that has been running):

- **script**: Streamlit's AppTest runs the page script in-process, so the time is the server's
  share: running the page and building every figure, without network or drawing.
- **browser**: Debian's headless Chromium (Playwright) against `streamlit run app.py`: from the
  click (or navigation) until the app is idle and the awaited text is on screen, so websocket,
  figure transfer and Plotly drawing are included. Skipped, and said so, without Chromium.

Targets (issues 6 and 19): first page <= 3 s, an interaction <= 0.5 s, on an idle 2-core CPU machine.
The machine may not be idle: the load average is recorded before and after each measurement and
printed beside it, so a number taken under load says so.

    python benchmarks/bench_app.py [--repeats 5] [--no-browser]

Writes benchmarks/results/app-<host>-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TARGETS = {"first_page_s": 3.0, "interaction_s": 0.5}


def summary(times: list[float], load_before: float | None = None) -> dict:
    """Median / max / min of `times`, with the 1-minute load average before and after."""
    return {"median_s": round(statistics.median(times), 4), "max_s": round(max(times), 4), "min_s": round(min(times), 4),
            "n": len(times), "load_1min": [round(load_before if load_before is not None else os.getloadavg()[0], 2),
                                          round(os.getloadavg()[0], 2)]}


def load() -> float:
    return os.getloadavg()[0]


def script_timings(repeats: int) -> dict[str, dict]:
    from streamlit.testing.v1 import AppTest

    app = str(REPO / "app.py")

    def fresh(page: str | None = None, **state) -> AppTest:
        at = AppTest.from_file(app, default_timeout=600)
        for k, v in state.items():
            at.session_state[k] = v
        at.run()
        if page:
            at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    # warm-up: every page once, both sample-browser checkpoints loaded
    for page in (None, "heads", "samples", "causal", "divergence"):
        fresh(page)
    fresh("samples", p_sample_ckpt="decoupled_rope-1024")

    out: dict[str, dict] = {}
    times, l0 = [], load()
    for _ in range(repeats):
        t = time.perf_counter()
        fresh()
        times.append(time.perf_counter() - t)
    out["first page (overview), new session"] = summary(times, l0)

    for label, ckpt in (("step the order, two_stream-128", "two_stream-128"), ("step the order, decoupled_rope-1024", "decoupled_rope-1024")):
        at = fresh("samples", p_sample_ckpt=ckpt)
        times, l0 = [], load()
        for _ in range(repeats):
            t = time.perf_counter()
            at.button(key="sample_next").click().run()
            times.append(time.perf_counter() - t)
        out[label] = summary(times, l0)

    at = fresh("samples")
    times, l0 = [], load()
    for i in range(repeats):
        t = time.perf_counter()
        at.selectbox(key="p_sample_head").set_value((i + 1) % 6).run()
        times.append(time.perf_counter() - t)
    out["pick another head, sample browser (128)"] = summary(times, l0)

    for label, state in (("select a head, head page", {}),
                         ("select a head, head page comparing two lengths", {"p_heads_compare": "the other length"})):
        at = fresh("heads", **state)
        times, l0 = [], load()
        for i in range(repeats):
            at.session_state["p_head_layer"] = i % 4
            t = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t)
        out[label] = summary(times, l0)

    at = fresh("samples")
    times, l0 = [], load()
    for i in range(repeats):  # a new seed: a new order, so one hooked forward pass (not cached)
        t = time.perf_counter()
        at.number_input(key="p_sample_seed").set_value(1000 + i).run()
        times.append(time.perf_counter() - t)
    out["change the order (new seed: runs the model), two_stream-128"] = summary(times, l0)
    return out


BARE_APP = """
import streamlit as st
st.session_state.setdefault("n", 0)
st.button("next", on_click=lambda: st.session_state.update(n=st.session_state.n + 1))
st.write(f"value {st.session_state.n} done")
"""


def bare_rerun(p, chromium: str, repeats: int) -> dict:
    """Reference: the round trip of a bare Streamlit app (a button and a line of text) on this
    machine, i.e. the floor under any interaction, before the workbench draws anything."""
    import tempfile

    from tests.test_browser import CHROMIUM_ARGS, app_server, wait_idle

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bare.py"
        script.write_text(BARE_APP)
        with app_server(script=script) as url, tempfile.TemporaryDirectory() as profile:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = ctx.new_page()
            page.goto(url)
            page.get_by_text("value 0 done").wait_for()
            wait_idle(page)
            times, l0 = [], load()
            for i in range(1, repeats + 3):
                t = time.perf_counter()
                page.get_by_role("button", name="next").click()
                page.get_by_text(f"value {i} done").wait_for()
                wait_idle(page, poll=0.02, quiet_polls=1)
                times.append(time.perf_counter() - t)
            ctx.close()
    return summary(times[2:], l0)


def browser_timings(repeats: int) -> dict[str, dict] | str:
    from tests.test_browser import CHROMIUM_ARGS, app_server, chromium_path, go_to, wait_idle

    chromium = chromium_path()
    if chromium is None:
        return "skipped: no chromium (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "skipped: playwright is not installed"
    import tempfile

    out: dict[str, dict] = {}
    with app_server() as url, sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
                                                   viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        wait_idle(page)
        for title in ("Head specialisation", "Sample browser", "Causal checks", "Order divergence"):
            go_to(page, title)  # warm-up
        times, l0 = [], load()
        for _ in range(repeats):
            t = time.perf_counter()
            page.goto(url)  # a new session: the whole page, scripts, first run
            page.get_by_text("own held-out evaluation").first.wait_for()
            page.locator(".js-plotly-plot").first.wait_for()
            wait_idle(page, poll=0.02, quiet_polls=1)
            times.append(time.perf_counter() - t)
        out["first page (overview), new session"] = summary(times, l0)
        go_to(page, "Sample browser")
        page.get_by_text(", step 64: attention", exact=False).first.wait_for()  # a new session starts at step 64
        times, l0 = [], load()
        for current in range(64, 64 + repeats):
            t = time.perf_counter()
            page.get_by_role("button", name="step ▶").click()
            page.get_by_text(f", step {current + 1}: attention", exact=False).first.wait_for()
            wait_idle(page, poll=0.02, quiet_polls=1)
            times.append(time.perf_counter() - t)
        out["step the order, two_stream-128"] = summary(times, l0)

        go_to(page, "Head specialisation")
        plot = page.locator(".js-plotly-plot").first
        plot.scroll_into_view_if_needed()
        times, l0 = [], load()
        config = json.loads((REPO / "checkpoints" / "two_stream-128" / "checkpoint.json").read_text())["config"]
        n_layers, n_heads = config["n_layers"], config["n_heads"]
        for i in range(repeats):
            layer, head = (i + 1) % n_layers, (2 * i + 1) % n_heads
            drag = page.locator(".js-plotly-plot").first.locator(".nsewdrag").nth(1)  # the query-stream map, found afresh
            drag.wait_for(state="visible")
            box = drag.bounding_box()
            t = time.perf_counter()
            page.mouse.click(box["x"] + box["width"] * (head + 0.5) / n_heads, box["y"] + box["height"] * (layer + 0.5) / n_layers)
            page.get_by_text(f"query stream · layer {layer} · head {head}", exact=False).first.wait_for()
            wait_idle(page, poll=0.02, quiet_polls=1)
            times.append(time.perf_counter() - t)
        out["select a head (click a map cell), head page"] = summary(times, l0)

        scatter = page.locator(".js-plotly-plot").filter(has_text="Each point is a head").first
        scatter.scroll_into_view_if_needed()
        wait_idle(page)
        # query-stream points at least 10 px from any other point, so a click cannot land on a neighbour
        points = scatter.evaluate("""gd => { const L = gd._fullLayout, pts = [];
            gd.data.forEach((t, i) => { if (t.customdata && t.customdata.length && t.customdata[0].length === 4)
                gd.calcdata[i].forEach((c, j) => pts.push({px: L.xaxis.l2p(c.x) + L._size.l, py: L.yaxis.l2p(c.y) + L._size.t,
                                                            cd: t.customdata[j]})); });
            return pts.filter(p => p.cd[2] === 'query' && Math.min(...pts.filter(q => q !== p).map(
                q => Math.hypot(q.px - p.px, q.py - p.py))) > 10); }""")
        times, l0 = [], load()
        for i in range(repeats):
            point = points[(7 * i + 3) % len(points)]  # a different head each time (7 is prime to most counts)
            scatter.wait_for(state="visible")
            box = scatter.bounding_box()
            t = time.perf_counter()
            page.mouse.click(box["x"] + point["px"], box["y"] + point["py"])
            _, layer, stream, head = point["cd"]
            page.get_by_text(f"{stream} stream · layer {layer} · head {head}", exact=False).first.wait_for()
            wait_idle(page, poll=0.02, quiet_polls=1)
            times.append(time.perf_counter() - t)
        out["select a head (click a scatter point), head page"] = summary(times, l0)
        ctx.close()
        out["reference: a bare Streamlit rerun (button + text, no workbench)"] = bare_rerun(p, chromium, repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    import streamlit
    import torch

    # The head page needs probe results: the committed ones when two_stream-128 has them, else
    # synthetic tables of the same shape (tests/app_support.py); the timing does not depend on the values.
    results = REPO / "results"
    if not (results / "probes" / "two_stream-128" / "probes.parquet").is_file():
        import tempfile

        from tests.app_support import make_results

        results = make_results(Path(tempfile.mkdtemp()) / "results")
    os.environ["WORKBENCH_RESULTS"] = str(results)
    load_start = os.getloadavg()
    script = script_timings(args.repeats)
    browser = "skipped: --no-browser" if args.no_browser else browser_timings(args.repeats)
    host = platform.node() or socket.gethostname()
    record = {
        "benchmark": "app", "date": date.today().isoformat(), "host": host, "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "streamlit": streamlit.__version__,
        "torch": torch.__version__, "load_average_start": load_start, "load_average": os.getloadavg(), "targets": TARGETS,
        "results": "committed" if results == REPO / "results" else "synthetic (no committed results for two_stream-128)",
        "script": script, "browser": browser,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"app-{host}-{record['date']}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# App benchmark: {host}, {record['date']}", "",
             f"{record['cpus']} CPUs, torch {record['torch']} ({record['torch_threads']} threads), streamlit {record['streamlit']}, "
             f"load average (1, 5, 15 min) at the start {', '.join(f'{x:.1f}' for x in record['load_average_start'])}, "
             f"at the end {', '.join(f'{x:.1f}' for x in record['load_average'])}"
             + (" (NOT idle: other jobs shared the CPUs, so these times are upper bounds for an idle machine)."
                if max(record["load_average_start"][0], record["load_average"][0]) > 0.5 * (record["cpus"] or 1) else "."),
             f"Targets: first page <= {TARGETS['first_page_s']} s, an interaction <= {TARGETS['interaction_s']} s. "
             f"{args.repeats} repeats after a warm-up; median (max). Probe results: {record['results']}.", ""]
    for name, table in (("Script (AppTest, server side only)", script), ("Browser (headless Chromium, end to end)", browser)):
        lines += [f"## {name}", ""]
        if isinstance(table, str):
            lines += [table, ""]
            continue
        lines += ["| what | median s | max s | target s | load (1 min) before, after |", "|---|---:|---:|---:|---|"]
        for what, s in table.items():
            target = ("" if what.startswith(("reference", "change the order")) else TARGETS["first_page_s"] if what.startswith("first page")
                      else TARGETS["interaction_s"])
            lines.append(f"| {what} | {s['median_s']:.3f} | {s['max_s']:.3f} | {target} | {s['load_1min'][0]:.1f}, {s['load_1min'][1]:.1f} |")
        lines.append("")
    lines += ["Notes: the script times are the server's share (running the page, building every figure). The browser",
              "times are end to end with Chromium on the same machine as the server, so both share its CPUs; the",
              "reference row is the round trip of a bare Streamlit app here, the floor under any interaction.",
              "Stepping reruns only a fragment (the step view), whose text grid and prediction bars are HTML, not Plotly",
              "figures (a changed figure is mounted anew in the browser); a map or scatter click (or a head picked below) reruns",
              "only the head fragment (maps, scatter, one head), where the maps and the scatter are the same figures",
              "whichever head is selected (built once per view, cached; the browser does not redraw them), so only",
              "the one head's histograms and by-step curves are drawn anew. Changing the order runs the model once (no",
              "target: it is a forward pass that keeps every pattern, cached per (text, order) afterwards).", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
