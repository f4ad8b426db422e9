#!/usr/bin/env bash
# Create a virtualenv with one tested vLLM release, its torch, the test tools and this
# package.  VLLM_RELEASE picks requirements/vllm-$VLLM_RELEASE.txt; by default the primary
# release, the one requirements/common.txt includes.  On a machine without an NVIDIA driver,
# apply the CPU adjustments (requirements/cpu-remove.txt, cpu-overrides-$VLLM_RELEASE.txt).
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

primary=$(sed -n 's/^-r vllm-\(.*\)\.txt$/\1/p' requirements/common.txt)
release=${VLLM_RELEASE:-$primary}
pins=requirements/vllm-$release.txt
if [ ! -f "$pins" ]; then
    tested=""
    for file in requirements/vllm-*.txt; do
        name=${file#requirements/vllm-}
        tested="$tested ${name%.txt}"
    done
    echo "install_venv: VLLM_RELEASE=$release has no $pins; tested releases:$tested" >&2
    exit 2
fi
if ! command -v "$PYTHON" >/dev/null; then
    echo "install_venv: $PYTHON not found; set PYTHON=/path/to/python3.11 or newer" >&2
    exit 2
fi
echo "install_venv: creating $VENV for vLLM $release with $("$PYTHON" --version)"
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip
# torch first, exactly at vLLM's pin: where a local CPU wheel of it exists
# (find-links), pip takes it instead of the multi-GB CUDA build.
torch_pin=$(grep -E '^torch==' "$pins")
echo "install_venv: installing $torch_pin"
"${pip[@]}" install --quiet "$torch_pin"
echo "install_venv: installing $pins, requirements/base.txt, requirements/test-tools.txt"
"${pip[@]}" install --quiet -r "$pins" -r requirements/base.txt -r requirements/test-tools.txt -e .

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "install_venv: no NVIDIA driver: applying CPU adjustments"
    mapfile -t remove < <(grep -vE '^\s*(#|$)' requirements/cpu-remove.txt)
    "${pip[@]}" uninstall --yes --quiet "${remove[@]}" || true
    overrides=requirements/cpu-overrides-$release.txt
    if [ -f "$overrides" ]; then
        "${pip[@]}" install --quiet --no-deps -r "$overrides"
    fi
fi
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "vllm", "flashinfer-python", "vllm-ep-kit"):
    print(f"install_venv: {name} {md.version(name)}")
PY
