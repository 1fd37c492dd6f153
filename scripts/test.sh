#!/usr/bin/env bash
# The README's test command: a fresh virtualenv with the CPU torch wheel, the package with its dev extra, ruff and
# import-linter, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
if ! command -v espeak-ng >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq espeak-ng) >/dev/null 2>&1 || echo "warning: espeak-ng could not be installed"
fi
# redis-server for the job queue's tests (tests/test_queue.py, test_job_store.py start one on a loopback port).
if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null 2>&1 || echo "warning: redis-server could not be installed; the queue tests are skipped"
fi
# Debian's chromium for tests/test_browser.py (Playwright drives it; Playwright's own browser download is not used).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || echo "warning: chromium could not be installed; the browser test is skipped"
fi
# Lint, format and the layer contracts (docs/architecture.md) before the tests.
"$VENV/bin/ruff" check --quiet .
"$VENV/bin/ruff" format --check --quiet .
"$VENV/bin/lint-imports" --no-cache >/dev/null || "$VENV/bin/lint-imports" --no-cache
exec "$VENV/bin/python" -m pytest -q "$@"
