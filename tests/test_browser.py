"""Real-browser test of the app: Debian's headless Chromium, driven by Playwright, goes through the
pages, clicks a head in a map, opens it in the sample browser, steps the order, runs a causal
check, and saves a screenshot of each page.

Chromium must be the system one (`apt-get install chromium`; `scripts/setup_env.sh` installs it
when run as root); Playwright's own browser downloads are never used. Without Chromium this test
fails and says how to install it: it is part of CI, not an optional extra.

Also a script, for the screenshots in docs/screenshots (real results, a taller window):

    python -m tests.test_browser --out docs/screenshots
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PAGES = ("overview", "heads", "samples", "causal", "divergence")


def chromium_path() -> str | None:
    """Debian's chromium (or $CHROMIUM)."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_server(env: dict[str, str] | None = None, timeout: float = 90.0, script: Path | None = None):
    """`streamlit run app.py` (or `script`) on a free port; yields its URL; stops the process it started."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(script or REPO / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],  # others editing the repo must not pop up "source changed"
        cwd=REPO, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the app did not start (exit code {proc.poll()}):\n{log.read()[-3000:]}") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)


def wait_idle(page, timeout_ms: int = 120_000, poll: float = 0.35, quiet_polls: int = 2) -> None:
    """Until Streamlit's "Running..." widget has been gone for `quiet_polls` polls in a row."""
    deadline = time.time() + timeout_ms / 1000
    quiet = 0
    while quiet < quiet_polls:
        if time.time() > deadline:
            raise TimeoutError("the app kept running for too long")
        time.sleep(poll)
        running = page.locator('[data-testid="stStatusWidget"]').count() > 0
        quiet = 0 if running else quiet + 1


def shoot(page, path: Path) -> Path:
    """A screenshot of the page's whole content column: Streamlit scrolls inside a fixed-height
    container, so the window is made as tall as the content first, then put back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    content = page.locator('[data-testid="stMainBlockContainer"]')
    height = int(page.evaluate("() => document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollHeight"))
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], height + 80)})
    page.mouse.move(0, 0)  # no hover label in the picture
    time.sleep(1.0)  # plotly redraws on resize
    wait_idle(page)
    content.screenshot(path=str(path), animations="disabled")
    page.set_viewport_size(size)
    return path


def go_to(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=60_000)
    wait_idle(page)


def tour(url: str, out: Path, *, viewport=(1400, 1000), run_causal: bool = True, cell: tuple[int, int] = (2, 4)) -> dict[str, Path]:
    """Go through every page as a user would; return the screenshots by page. `cell` = the
    (layer, head) clicked in the query-stream map and then opened in the sample browser."""
    layer, head = cell
    from playwright.sync_api import sync_playwright

    chromium = chromium_path()
    shots: dict[str, Path] = {}
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            page = ctx.new_page()
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_text("where does each head look", exact=False).first.wait_for()
            wait_idle(page)
            page.locator(".js-plotly-plot").first.wait_for()
            assert page.get_by_text("own held-out evaluation").count() == 1
            shots["overview"] = shoot(page, out / "overview.png")

            # Head specialisation: click the cell (layer, head) of the query-stream map.
            go_to(page, "Head specialisation")
            plot = page.locator(".js-plotly-plot").first
            plot.scroll_into_view_if_needed()
            drag = plot.locator(".nsewdrag").nth(1)
            box = drag.bounding_box()
            page.mouse.click(box["x"] + box["width"] * (head + 0.5) / 6, box["y"] + box["height"] * (layer + 0.5) / 4)
            page.get_by_text(f"query stream · layer {layer} · head {head}", exact=False).first.wait_for()
            wait_idle(page)
            shots["heads"] = shoot(page, out / "heads.png")

            # Open it in the sample browser and step the order.
            page.get_by_role("button", name="Open this head in the sample browser").click()
            page.get_by_role("heading", name="Sample browser").first.wait_for()
            wait_idle(page)
            page.get_by_text(f"L{layer} query H{head}, step 64", exact=False).first.wait_for()
            for expected in (65, 66):
                page.get_by_role("button", name="step ▶").click()
                page.get_by_text(f"L{layer} query H{head}, step {expected}", exact=False).first.wait_for()
                wait_idle(page)
            page.get_by_text("Generation order").first.scroll_into_view_if_needed()
            shots["samples"] = shoot(page, out / "samples.png")

            go_to(page, "Causal checks")
            if run_causal:
                page.get_by_role("button", name="Run").click()
                page.get_by_text("Clean NLL:", exact=False).first.wait_for(timeout=120_000)
                wait_idle(page)
            shots["causal"] = shoot(page, out / "causal.png")

            go_to(page, "Order divergence")
            page.get_by_text("One row, drawn").first.wait_for()
            shots["divergence"] = shoot(page, out / "divergence.png")
            errors = page.locator('[data-testid="stException"]').count()
            assert errors == 0, "a page showed a traceback"
        finally:
            ctx.close()
    return shots


@pytest.mark.browser
def test_browser_tour(tmp_path):
    if chromium_path() is None:
        pytest.fail(
            "Debian's chromium is not installed, so the real-browser test cannot run. Install it with "
            "`sudo apt-get install chromium` (scripts/setup_env.sh does this when run as root), or point "
            "$CHROMIUM at a Chromium binary.",
            pytrace=False,
        )
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]' (scripts/run_tests.sh does).", pytrace=False)
    from tests.app_support import make_results

    results = make_results(tmp_path / "results")
    with app_server({"WORKBENCH_RESULTS": str(results)}) as url:
        shots = tour(url, tmp_path / "screenshots")
    assert set(shots) == set(PAGES)
    for name, path in shots.items():
        assert path.is_file() and path.stat().st_size > 20_000, f"the {name} screenshot looks empty"
    print("screenshots in", tmp_path / "screenshots")


def require_browser() -> None:
    if chromium_path() is None:
        pytest.fail("Debian's chromium is not installed: `sudo apt-get install chromium` (scripts/setup_env.sh does this as root), "
                    "or point $CHROMIUM at a Chromium binary.", pytrace=False)


@contextmanager
def browser_page(url: str, width: int, height: int = 1000):
    """A fresh headless Chromium page at `url`, `width` x `height` pixels, once the app is idle."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
                                                   viewport={"width": width, "height": height})
        try:
            page = ctx.new_page()
            page.set_default_timeout(90_000)
            page.goto(url)
            wait_idle(page)
            yield page
        finally:
            ctx.close()


def pick(page, label: str, option: str) -> None:
    """Choose `option` in the selectbox labelled `label`."""
    page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


def comparison(page, path: Path) -> dict:
    """Compare two_stream-128 with the other length on the head page, screenshot the maps to
    `path`, and return what the figure measures: colour bars, and per panel its width and x range."""
    go_to(page, "Head specialisation")
    pick(page, "Compare with", "the other length")
    page.get_by_text("two_stream-128 vs two_stream-1024").first.wait_for()
    wait_idle(page)
    plot = page.locator(".js-plotly-plot").filter(has_text="two_stream-128 vs two_stream-1024").first
    plot.scroll_into_view_if_needed()
    wait_idle(page)
    page.mouse.move(0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot.screenshot(path=str(path))
    return plot.evaluate(r"""gd => ({
        colorbars: gd.querySelectorAll('.colorbar').length,
        panels: Object.keys(gd._fullLayout).filter(k => /^xaxis\d*$/.test(k)).map(k => {
            const a = gd._fullLayout[k]; return {width: a._length, range: a.range}; }),
        width: gd._fullLayout.width })""")


@pytest.mark.browser
def test_browser_comparison_at_1500px_is_wrapped_on_one_colour_scale(tmp_path):
    require_browser()
    from tests.app_support import make_results

    results = make_results(tmp_path / "results")
    with app_server({"WORKBENCH_RESULTS": str(results)}) as url, browser_page(url, 1500) as page:
        layout = comparison(page, tmp_path / "comparison-1500.png")
        assert layout["colorbars"] == 1, layout
        assert len(layout["panels"]) == 4
        for panel in layout["panels"]:
            assert panel["width"] / 6 >= 60, f"a head cell is {panel['width'] / 6:.0f} px wide at 1500 px: squeezed"
            assert panel["range"] == [-0.5, 5.5]
        assert (tmp_path / "comparison-1500.png").stat().st_size > 20_000
        assert page.locator('[data-testid="stException"]').count() == 0


@pytest.mark.browser
def test_browser_clicking_a_scatter_point_selects_its_head(tmp_path):
    require_browser()
    from tests.app_support import make_results

    results = make_results(tmp_path / "results")
    with app_server({"WORKBENCH_RESULTS": str(results)}) as url, browser_page(url, 1500) as page:
        go_to(page, "Head specialisation")
        scatter = page.locator(".js-plotly-plot").filter(has_text="Each point is a head").first
        scatter.scroll_into_view_if_needed()
        wait_idle(page)
        # The query-stream point farthest from every other point, so the click cannot hit a neighbour.
        target = scatter.evaluate("""gd => {
            const L = gd._fullLayout, pts = [];
            gd.data.forEach((t, i) => { if (t.customdata && t.customdata.length && t.customdata[0].length === 4)
                gd.calcdata[i].forEach((c, j) => pts.push({px: L.xaxis.l2p(c.x) + L._size.l, py: L.yaxis.l2p(c.y) + L._size.t,
                                                            cd: t.customdata[j], stream: t.customdata[j][2]})); });
            let best = null, bestGap = -1;
            for (const p of pts) { if (p.stream !== 'query') continue;
                const gap = Math.min(...pts.filter(q => q !== p).map(q => Math.hypot(q.px - p.px, q.py - p.py)));
                if (gap > bestGap) { best = p; bestGap = gap; } }
            return {...best, gap: bestGap, clickmode: L.clickmode}; }""")
        assert target["clickmode"] == "event+select", target
        assert target["gap"] > 8, target
        box = scatter.bounding_box()
        page.mouse.click(box["x"] + target["px"], box["y"] + target["py"])
        _, layer, stream, head = target["cd"]
        page.get_by_text(f"two_stream-128 · {stream} stream · layer {layer} · head {head}", exact=False).first.wait_for(timeout=60_000)
        assert page.locator('[data-testid="stException"]').count() == 0


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshots of every page of the app (for the docs).")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--max-height", type=int, default=1600, help="crop each page to this many pixels from the top")
    parser.add_argument("--cell", type=int, nargs=2, default=(0, 1), metavar=("LAYER", "HEAD"),
                        help="the query-stream head to click and open in the sample browser")
    args = parser.parse_args()
    if chromium_path() is None:
        sys.exit("no chromium: apt-get install chromium")
    from PIL import Image

    with app_server() as url:
        shots = tour(url, args.out, viewport=(args.width, args.height), cell=tuple(args.cell))
        with browser_page(url, 1500) as page:
            comparison(page, args.out / "comparison.png")
        shots["comparison"] = args.out / "comparison.png"
        for name, path in shots.items():
            image = Image.open(path)
            image = image.crop((0, 0, image.width, min(image.height, args.max_height)))
            image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
            print(name, path, f"{path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
