#!/usr/bin/env bash
# Disaggregated (prefill/decode) accuracy sweep over NIXL-connected vLLM pairs.
#
# Config arrays, each run only when its flag is 1 (flags are spelled 1/0 in
# every CI step; `vllm-ep-kit lint-ci` checks that every flag below is set to 1
# by at least one step that runs this script):
#   RUN_TP=1      tensor-parallel configs          (TP_CONFIGS)
#   RUN_DPEP=1    data-parallel + expert-parallel  (DPEP_CONFIGS)
#   SW_ATTN=1     sliding-window models (gemma-3)  (SW_ATTN_CONFIGS)
#   SW_HMA=1      sliding window with the hybrid memory allocator (SW_HMA_CONFIGS)
# Each config is "model|prefill args|decode args".  DRY_RUN=1 prints the plan.
# Real runs need GPUs, vLLM with NIXL, and run_one_config below (see docs).
set -euo pipefail

RUN_TP=${RUN_TP:-0}
RUN_DPEP=${RUN_DPEP:-0}
SW_ATTN=${SW_ATTN:-0}
SW_HMA=${SW_HMA:-0}
DRY_RUN=${DRY_RUN:-0}
ACCURACY_THRESHOLD=${ACCURACY_THRESHOLD:-0.7}

TP_CONFIGS=(
    "Qwen/Qwen3-0.6B|--tensor-parallel-size 1|--tensor-parallel-size 2"
    "Qwen/Qwen3-0.6B|--tensor-parallel-size 2|--tensor-parallel-size 1"
)
DPEP_CONFIGS=(
    "Qwen/Qwen3-30B-A3B-FP8|--data-parallel-size 2 --enable-expert-parallel|--data-parallel-size 2 --enable-expert-parallel"
)
SW_ATTN_CONFIGS=(
    "google/gemma-3-4b-it|--tensor-parallel-size 1|--tensor-parallel-size 1"
)
SW_HMA_CONFIGS=(
    "google/gemma-3-4b-it|--tensor-parallel-size 1 --no-disable-hybrid-kv-cache-manager|--tensor-parallel-size 1 --no-disable-hybrid-kv-cache-manager"
)

selected=()
if [[ "$RUN_TP" == 1 ]]; then selected+=("${TP_CONFIGS[@]}"); fi
if [[ "$RUN_DPEP" == 1 ]]; then selected+=("${DPEP_CONFIGS[@]}"); fi
if [[ "$SW_ATTN" == 1 ]]; then selected+=("${SW_ATTN_CONFIGS[@]}"); fi
if [[ "$SW_HMA" == 1 ]]; then selected+=("${SW_HMA_CONFIGS[@]}"); fi

if [[ ${#selected[@]} -eq 0 ]]; then
    echo "config_sweep: no config array selected; set RUN_TP, RUN_DPEP, SW_ATTN or SW_HMA to 1" >&2
    exit 2
fi

run_one_config() {
    local model=$1 prefill_args=$2 decode_args=$3
    # shellcheck disable=SC2086  # the args strings are word lists by design
    python -m tests.e2e.disagg_pair --model "$model" \
        --prefill-args "$prefill_args" --decode-args "$decode_args" \
        --threshold "$ACCURACY_THRESHOLD"
}

for config in "${selected[@]}"; do
    IFS='|' read -r model prefill_args decode_args <<< "$config"
    echo "config_sweep: model=$model prefill=[$prefill_args] decode=[$decode_args]"
    if [[ "$DRY_RUN" != 1 ]]; then
        run_one_config "$model" "$prefill_args" "$decode_args"
    fi
done
