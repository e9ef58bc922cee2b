#!/usr/bin/env bash
# Set up .venv with the test extras (and Debian's Chromium, for the browser test and SVG/PDF
# export), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
exec .venv/bin/python -m pytest "$@"
