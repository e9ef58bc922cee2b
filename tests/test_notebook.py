"""The example notebooks and docs/hooks.md cannot rot: the notebooks execute top to bottom on the
CPU (nbclient), are committed without outputs, and the hooks guide's tables and code match the
live models."""

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
CELL_TIMEOUT_S = 600  # generous for a loaded CI machine; the whole notebook takes about a minute


def test_there_is_an_example_notebook():
    assert NOTEBOOKS, "examples/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebooks_have_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    stale = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and (cell.outputs or cell.execution_count)]
    assert not stale, (
        f"{path.name}: code cells {stale} carry outputs or execution counts; clear them before committing "
        "(Jupyter: Edit > Clear All Outputs, or `jupyter nbconvert --clear-output --inplace`)."
    )


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
