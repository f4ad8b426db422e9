#!/usr/bin/env bash
# Create the project virtualenv with vLLM, its torch, and this package.
# On a machine without an NVIDIA driver, apply the CPU adjustments recorded in
# requirements/cpu-remove.txt and requirements/cpu-overrides.txt.
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

if ! command -v "$PYTHON" >/dev/null; then
    echo "install_venv: $PYTHON not found; set PYTHON=/path/to/python3.11 or newer" >&2
    exit 2
fi
echo "install_venv: creating $VENV with $("$PYTHON" --version)"
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip
# torch first, exactly at vLLM's pin: where a local CPU wheel of it exists
# (find-links), pip takes it instead of the multi-GB CUDA build.
torch_pin=$(grep -E '^torch==' requirements/torch-pin.txt)
echo "install_venv: installing $torch_pin"
"${pip[@]}" install --quiet "$torch_pin"
echo "install_venv: installing requirements/test.txt (vLLM and its dependencies)"
"${pip[@]}" install --quiet -r requirements/test.txt -e .

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "install_venv: no NVIDIA driver: applying CPU adjustments"
    mapfile -t remove < <(grep -vE '^\s*(#|$)' requirements/cpu-remove.txt)
    "${pip[@]}" uninstall --yes --quiet "${remove[@]}" || true
    "${pip[@]}" install --quiet --no-deps -r requirements/cpu-overrides.txt
fi
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "vllm", "flashinfer-python", "vllm-ep-kit"):
    print(f"install_venv: {name} {md.version(name)}")
PY
