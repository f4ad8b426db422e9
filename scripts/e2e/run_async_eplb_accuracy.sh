#!/usr/bin/env bash
# Async EPLB accuracy (upstream PR 40168): vllm serve DP=4 + EP + async EPLB, GSM8K via lm-eval.
# Usage: scripts/e2e/run_async_eplb_accuracy.sh [--model M] [--threshold 0.8]
#        [--num-questions N] [--port P] [--output-dir DIR]
set -euo pipefail
exec python -m tests.e2e.eplb_accuracy "$@"
