"""The example notebooks and docs/hooks.md cannot rot: the notebooks are committed executed, with
figures that show offline, and execute top to bottom on the CPU (nbclient); the hooks guide's
tables and code match the live models and the tests."""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))
HOOKS_DOC = ROOT / "docs" / "hooks.md"
CELL_TIMEOUT_S = 600  # generous for a loaded CI machine; the whole notebook takes a few minutes
# Ways to load plotly.js from the network (the "notebook_connected" renderer's). plotly's HTML also
# links MathJax from a CDN, for LaTeX in figure text, which these figures do not use.
CDN_LOADERS = re.compile(r"""<script[^>]*src=["'][^"']*plotly|cdn\.plot\.ly/plotly-|require(js)?\.config\(\{\s*paths""")


def test_there_is_an_example_notebook():
    assert NOTEBOOKS, "examples/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebooks_are_executed_with_offline_figures(path):
    """Every code cell ran, in order, without an error or anything on stderr (no progress bars,
    no warnings); every figure carries its data, and plotly.js is embedded once, never loaded from
    a CDN. Re-execute with `python examples/execute_notebooks.py` after editing a notebook."""
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), (
        f"{path.name} is not executed top to bottom; run `python examples/execute_notebooks.py`."
    )
    outputs = [o for cell in code for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"{path.name} printed to stderr: {stderr[0][:200]!r}"
    shows = [cell for cell in code if ".show()" in cell.source]
    for cell in shows:
        assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in cell.outputs), cell.source[:80]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert html.count("* plotly.js v") == 1, "plotly.js must be embedded exactly once (renderer 'notebook')"
    loaders = CDN_LOADERS.findall(html)
    assert not loaders, f"{path.name} loads plotly.js from the network ({loaders}); figures would be blank offline."


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports workbench from the checkout
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    started = time.time()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on the first failure
    print(f"{path.name}: {time.time() - started:.0f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def _hooks_table_module():
    spec = importlib.util.spec_from_file_location("hooks_table", ROOT / "scripts" / "hooks_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hooks_doc_table_matches_the_live_models():
    hooks_table = _hooks_table_module()
    text = HOOKS_DOC.read_text()
    assert hooks_table.updated(text) == text, (
        "docs/hooks.md's hook tables differ from the live models (or its parity table from the tests); run `python scripts/hooks_table.py --write`."
    )


@pytest.mark.slow
def test_hooks_doc_code_runs():
    """Every ```python block of docs/hooks.md, in order, in one namespace (a bundled checkpoint)."""
    blocks = re.findall(r"```python\n(.*?)```", HOOKS_DOC.read_text(), re.S)
    assert len(blocks) >= 10
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/hooks.md python block {i}", "exec"), namespace)  # noqa: S102
