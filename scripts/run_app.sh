#!/usr/bin/env bash
# Set up .venv (CPU torch) and open the app on the bundled checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/streamlit run app.py --server.headless true "$@"
