#!/usr/bin/env bash
# Run a command on an air-gapped GPU host from the repository root, using a bundle made by
# `vllm-ep-kit bundle device/bundle --vllm ...` (tarred as device/bundle.tar.xz) and the
# committed FlashInfer JIT cache, e.g.
#   scripts/gpu/run_with_bundle.sh python3 -m pytest tests/distributed -v
# docs/gpu-evidence.md lists the runs made this way.
set -euo pipefail
bundle_tar=${VLLM_EP_KIT_BUNDLE:-device/bundle.tar.xz}
# The committed JIT cache records absolute source paths under this folder: another
# folder makes FlashInfer rebuild its modules (minutes; assets/flashinfer-jit/README.md).
work=${VLLM_EP_KIT_GPU_WORK:-/tmp/vllm-ep-kit-gpu}
if [ ! -f "$bundle_tar" ]; then
    echo "run_with_bundle.sh: bundle $bundle_tar not found (VLLM_EP_KIT_BUNDLE)" >&2
    exit 2
fi
mkdir -p "$work/unpacked" "$work/flashinfer-workspace"
# Unpack once per bundle: later calls in the same job reuse the tree (and the JIT
# cache, which may have grown since).
stamp="$work/unpacked/.from-$(stat -c %s-%Y "$bundle_tar")"
if [ ! -f "$stamp" ]; then
    echo "run_with_bundle.sh: unpacking $bundle_tar" >&2
    tar xJf "$bundle_tar" -C "$work/unpacked"
    for cache in assets/flashinfer-jit/*.tar.xz; do
        tar xJf "$cache" -C "$work/flashinfer-workspace"
    done
    # The bootstrap of this checkout (installs wheels once, pins their mtimes) replaces
    # the one the bundle was made with, so older bundles get its fixes too.
    python3 -c 'import sys; sys.path.insert(0, "."); from vllm_ep_kit.commands.bundle import BOOTSTRAP; print(BOOTSTRAP, end="")' \
        > "$work/unpacked/bundle/bootstrap.sh"
    touch "$stamp"
fi
# vLLM's compiled kernels (the bundle ships stubs): VLLM_EP_KIT_VLLM_KERNELS names a folder
# holding _C_stable_libtorch.abi3.so[.xz] and/or _moe_C_stable_libtorch.abi3.so[.xz]
# (each near the 64 MiB carry limit: stage them there in separate calls).
if [ -n "${VLLM_EP_KIT_VLLM_KERNELS:-}" ]; then
    vllm_dir="$work/unpacked/bundle/site/vllm"
    found=0
    for lib in "$VLLM_EP_KIT_VLLM_KERNELS"/*.abi3.so "$VLLM_EP_KIT_VLLM_KERNELS"/*.abi3.so.xz; do
        [ -f "$lib" ] || continue
        name=$(basename "$lib" .xz)
        if [ ! -f "$vllm_dir/$name" ]; then
            echo "run_with_bundle.sh: installing vLLM kernel library $name" >&2
            if [ "${lib%.xz}" != "$lib" ]; then xz -dc "$lib" > "$vllm_dir/$name.part"
            else cp "$lib" "$vllm_dir/$name.part"; fi
            mv "$vllm_dir/$name.part" "$vllm_dir/$name"
        fi
        found=$((found + 1))
    done
    if [ "$found" -eq 0 ]; then
        echo "run_with_bundle.sh: no *.abi3.so[.xz] in VLLM_EP_KIT_VLLM_KERNELS=$VLLM_EP_KIT_VLLM_KERNELS" >&2
        exit 2
    fi
fi
# A newer NCCL for vLLM's PyNccl (vLLM 0.32.0 needs >= 2.29.7; torch 2.11 carries 2.28.9):
# VLLM_EP_KIT_NCCL names a folder holding libnccl*.so.2, or an xz of it split into
# *.xz.partNN pieces (206 MB wheel: one piece per carry). torch keeps its own NCCL.
if [ -n "${VLLM_EP_KIT_NCCL:-}" ]; then
    nccl_so="$work/nccl/libnccl.so.2"
    if [ ! -f "$nccl_so" ]; then
        mkdir -p "$work/nccl"
        shopt -s nullglob
        parts=("$VLLM_EP_KIT_NCCL"/*.xz.part*)
        plain=("$VLLM_EP_KIT_NCCL"/libnccl*.so.2)
        shopt -u nullglob
        if [ "${#parts[@]}" -gt 0 ]; then
            echo "run_with_bundle.sh: joining ${#parts[@]} NCCL pieces" >&2
            # xz's own checksum fails a missing or damaged piece.
            cat "${parts[@]}" | xz -dc > "$nccl_so.part"
        elif [ "${#plain[@]}" -gt 0 ]; then
            cp "${plain[0]}" "$nccl_so.part"
        else
            echo "run_with_bundle.sh: no libnccl*.so.2 or *.xz.partNN in VLLM_EP_KIT_NCCL=$VLLM_EP_KIT_NCCL" >&2
            exit 2
        fi
        mv "$nccl_so.part" "$nccl_so"
    fi
    export VLLM_NCCL_SO_PATH="$nccl_so"
fi
# Stand-ins for compiled modules this checkout knows vLLM imports (older bundles lack
# some); a stand-in whose real library was installed above is removed.
# A bundle made without --vllm has no vLLM: no stand-ins then (they would make an empty
# namespace package of vllm/).
if [ -f "$work/unpacked/bundle/site/vllm/__init__.py" ]; then
    python3 -c 'import sys; sys.path.insert(0, "."); from vllm_ep_kit.commands.bundle import write_kernel_stubs; write_kernel_stubs(sys.argv[1])' \
        "$work/unpacked/bundle/site/vllm"
fi
# shellcheck source=/dev/null
source "$work/unpacked/bundle/bootstrap.sh"
export FLASHINFER_CUDA_ARCH_LIST=${FLASHINFER_CUDA_ARCH_LIST:-9.0a}
export FLASHINFER_WORKSPACE_BASE="$work/flashinfer-workspace"
export PYTHONPATH="$PWD:$PYTHONPATH"
export NCCL_NVLS_ENABLE=0
python3 -c 'import importlib.util as u, torch, flashinfer; v = __import__("vllm").__version__ if u.find_spec("vllm") else "absent (bundle without --vllm)"; print("torch", torch.__version__, "vllm", v, "flashinfer", flashinfer.__version__, "gpus", torch.cuda.device_count())'
exec "$@"
