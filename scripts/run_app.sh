#!/usr/bin/env bash
# Set up .venv (CPU torch) and open the app on the bundled checkpoints.
# No file watcher: Streamlit would otherwise watch the directory of every imported module under
# the repo, .venv included (thousands of inotify watches, "Inotify queue overflowed" when the
# tests write files). Developers who want reload-on-save can pass --server.fileWatcherType auto.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/streamlit run app.py --server.headless true --server.fileWatcherType none "$@"
