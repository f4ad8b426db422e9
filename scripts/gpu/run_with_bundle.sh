#!/usr/bin/env bash
# Run a command on an air-gapped GPU host from the repository root, using a bundle made by
# `vllm-ep-kit bundle device/bundle --vllm ...` (tarred as device/bundle.tar.xz) and the
# committed FlashInfer JIT cache, e.g.
#   scripts/gpu/run_with_bundle.sh python3 -m pytest tests/distributed -v
# docs/gpu-validation.md lists the runs made this way.
set -euo pipefail
bundle_tar=${VLLM_EP_KIT_BUNDLE:-device/bundle.tar.xz}
work=${VLLM_EP_KIT_GPU_WORK:-/tmp/vllm-ep-kit-gpu}
if [ ! -f "$bundle_tar" ]; then
    echo "run_tests.sh: bundle $bundle_tar not found (VLLM_EP_KIT_BUNDLE)" >&2
    exit 2
fi
mkdir -p "$work/unpacked" "$work/flashinfer-workspace"
tar xJf "$bundle_tar" -C "$work/unpacked"
for cache in assets/flashinfer-jit/*.tar.xz; do
    tar xJf "$cache" -C "$work/flashinfer-workspace"
done
# shellcheck source=/dev/null
source "$work/unpacked/bundle/bootstrap.sh"
export FLASHINFER_CUDA_ARCH_LIST=${FLASHINFER_CUDA_ARCH_LIST:-9.0a}
export FLASHINFER_WORKSPACE_BASE="$work/flashinfer-workspace"
export PYTHONPATH="$PWD:$PYTHONPATH"
export NCCL_NVLS_ENABLE=0
python3 -c 'import torch, vllm, flashinfer; print("torch", torch.__version__, "vllm", vllm.__version__, "flashinfer", flashinfer.__version__, "gpus", torch.cuda.device_count())'
exec "$@"
