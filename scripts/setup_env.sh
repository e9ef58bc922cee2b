#!/usr/bin/env bash
# Create .venv and install the workbench into it, CPU-only: torch is pinned to the CPU build
# first, so nothing pulls the multi-GB CUDA wheels. Also Debian's chromium when missing (as root):
# kaleido draws the app's SVG / PDF exports with it, and the browser test drives it; neither ever
# downloads a browser of its own. Usage: scripts/setup_env.sh [EXTRAS]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "could not install chromium: SVG/PDF export and the browser test will say so"
  else
    echo "chromium is not installed and this is not root: run 'sudo apt-get install chromium' for SVG/PDF export and the browser test"
  fi
fi
