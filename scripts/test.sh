#!/usr/bin/env bash
# Installs the dev tools and runs the checks CI runs: ruff, mypy (strict on feddx), pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not smollm2").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
# The clinician page's browser test drives Debian's chromium through Playwright (Playwright's
# own browser download needs the internet); install it when it is missing and we may.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# Several service replicas share state in Redis: tests/serve/test_replicas.py starts Debian's
# redis-server on a loopback port; install it when it is missing and we may.
if ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
export HF_HUB_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
# Two workers (the 2-core machine the suite's 10-minute goal is set on; FEDDX_TEST_WORKERS
# overrides, 0 runs in one process), one torch thread each so they do not oversubscribe the
# cores. --dist loadscope keeps each test module on one worker, so a module's fixtures (a
# trained adapter, a demo run) are built once, not once per worker.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python -m pytest -n "${FEDDX_TEST_WORKERS:-2}" --dist loadscope "$@"
