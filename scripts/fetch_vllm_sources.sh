#!/usr/bin/env bash
# Unpack one vLLM release's Python sources (no compiled kernels) side by side
# with the pinned vLLM, plus the pure-Python packages it needs that the pin
# lacks, so tests can run the hotfixes against an affected release.
# Usage: scripts/fetch_vllm_sources.sh VERSION DEST [EXTRA_PACKAGE ...]
set -euo pipefail
version=${1:?usage: fetch_vllm_sources.sh VERSION DEST [EXTRA_PACKAGE ...]}
dest=${2:?usage: fetch_vllm_sources.sh VERSION DEST [EXTRA_PACKAGE ...]}
shift 2
python=${PYTHON_BIN:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch_vllm_sources: downloading vllm==$version (wheel, no dependencies)"
"$python" -m pip download --quiet --no-deps "vllm==$version" -d "$tmp"
rm -rf "$dest"
mkdir -p "$dest/src" "$dest/deps"
"$python" - "$tmp" "$dest/src" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("vllm-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if n.startswith("vllm/") and not n.endswith(".so")]
    zf.extractall(sys.argv[2], names)
print(f"fetch_vllm_sources: {len(names)} files from {wheel.name}")
PY
if [ "$#" -gt 0 ]; then
    echo "fetch_vllm_sources: extra packages: $*"
    "$python" -m pip install --quiet --no-deps --target "$dest/deps" "$@"
fi
echo "$version" > "$dest/VERSION"
