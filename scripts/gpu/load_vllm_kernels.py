#!/usr/bin/env python3
"""Load vLLM's stable-ABI kernel libraries into this host's torch and run one MoE kernel.

    python3 scripts/gpu/load_vllm_kernels.py LIB.so [LIB.so ...]

Answers, on a real GPU host: does vLLM's wheel (built for a newer torch on the
libtorch stable ABI) load into the torch installed here?
For each library: dlopen with immediate binding (names a missing symbol),
``torch.ops.load_library``, the ops it registered; for ``_moe_C`` also
``topk_softmax`` (vs softmax + topk), for ``_C`` ``silu_and_mul`` (vs torch).
Prints one JSON object per library; exit status 1 if any failed.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

import torch


def registered_ops(namespace: str) -> list[str]:
    return sorted(
        n for n in torch._C._dispatch_get_all_op_names() if n.startswith(namespace + "::")
    )


def run_topk_softmax() -> dict:
    """vLLM's fused router top-k vs softmax + topk in fp32."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(64, 16, device="cuda", generator=gen)
    k = 4
    weights = torch.empty(64, k, device="cuda")
    ids = torch.empty(64, k, dtype=torch.int32, device="cuda")
    token_expert = torch.empty(64, k, dtype=torch.int32, device="cuda")
    torch.ops._moe_C.topk_softmax(weights, ids, token_expert, logits, False, None, None)
    want_w, want_ids = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    return {
        "op": "_moe_C.topk_softmax",
        "ids_equal": bool(torch.equal(ids.long(), want_ids)),
        "max_weight_error": float((weights - want_w).abs().max()),
    }


def run_silu_and_mul() -> dict:
    """vLLM's fused SiLU-and-multiply (the MoE experts' activation) vs torch in bf16."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, 2 * 512, device="cuda", generator=gen).bfloat16()
    out = torch.empty(64, 512, device="cuda", dtype=torch.bfloat16)
    torch.ops._C.silu_and_mul(out, x)
    want = torch.nn.functional.silu(x[:, :512].float()) * x[:, 512:].float()
    return {"op": "_C.silu_and_mul", "max_error": float((out.float() - want).abs().max())}


KERNEL_CHECKS = {"_moe_C": run_topk_softmax, "_C": run_silu_and_mul}


def main(paths: list[str]) -> int:
    failed = 0
    for path in paths:
        row: dict = {
            "library": os.path.basename(path),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        }
        try:
            ctypes.CDLL(path, mode=os.RTLD_NOW)
            torch.ops.load_library(path)
            namespace = os.path.basename(path).split("_stable_libtorch")[0]
            row["ops"] = registered_ops(namespace)
            if namespace in KERNEL_CHECKS and torch.cuda.is_available():
                row["kernel"] = KERNEL_CHECKS[namespace]()
            row["loaded"] = True
        except Exception as exc:  # noqa: BLE001 (every failure is the answer, reported as data)
            row["loaded"] = row.get("ops") is not None
            row["error"] = f"{type(exc).__name__}: {exc}"
            failed += 1
        print(json.dumps(row))
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1:]))
