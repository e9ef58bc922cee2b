"""Execute the example notebooks top to bottom and save them with their outputs (CPU, a minute).

    PYTHONPATH=. .venv/bin/python examples/execute_notebooks.py

The notebooks are committed executed (tests/test_notebook.py checks that every code cell ran, in
order, without errors, that figures carry plotly.js rather than loading it from a CDN, and that no
progress bar leaked into the outputs); run this after editing one.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def execute(path: Path, timeout_s: int = 600) -> nbformat.NotebookNode:
    """`path` executed in a fresh kernel (cwd: the repository root, workbench from this checkout)."""
    os.environ["PYTHONPATH"] = str(ROOT)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def main() -> int:
    for path in sorted((ROOT / "examples").glob("*.ipynb")):
        started = time.time()
        nb = execute(path)
        tmp = path.with_suffix(".ipynb.tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, path)  # atomic: a failed run leaves the committed notebook as it was
        print(f"{path.name}: executed in {time.time() - started:.0f} s, {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
