#!/usr/bin/env bash
# Set up .venv with the test extras (and Debian's Chromium for the browser test), then run the
# whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "could not install chromium; the browser test will fail and say so"
  else
    echo "chromium is not installed and this is not root: run 'sudo apt-get install chromium' for the browser test"
  fi
fi
exec .venv/bin/python -m pytest "$@"
