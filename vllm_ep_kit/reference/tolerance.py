"""The one tolerance table: how far a result may be from the fp32 reference, and why.

Two kinds of result are compared.  A dispatch + combine through a backend (``check``,
the kernel and manager tests, ``bench``'s check) moves tokens and sums expert outputs:
dispatch must be exact, and only the combine's arithmetic in the payload's dtype
rounds.  A MoE layer (the layer matrix, vLLM's own expert kernels) also does the
experts' GEMMs and activation in its dtype.  Each entry is ``(atol, rtol)``; a
tensor is close when every element is (``torch.allclose``'s rule) and the shapes
agree.  :func:`mismatch` says, where it is not, how many elements differ, the
greatest differences and where (torch.testing's account).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# A dispatch + combine, per payload dtype (atol = rtol).  fp8 payloads (per-token scales)
# are combined in bf16 and compared with the reference of the *dequantised* inputs, so
# only the bf16 combine rounds: bf16's tolerance; likewise MXFP8 and NVFP4.
COMBINE = {
    "bf16": Tolerance(2e-2, 2e-2),
    "fp16": Tolerance(2e-3, 2e-3),
    "fp32": Tolerance(1e-5, 1e-5),
    "fp8": Tolerance(2e-2, 2e-2),
    "mxfp8": Tolerance(2e-2, 2e-2),
    "nvfp4": Tolerance(2e-2, 2e-2),
}

# A MoE layer's output, per activation dtype and expert kernels.  fp8 is upstream's value
# for its MoE layer tests (vLLM PR 41299 moved it from 6e-2).  "tf32": fp32 activations
# through kernels whose matmuls read fp32 as TF32 (10-bit mantissa, about 1e-3 relative
# per product), as Triton's tl.dot does by default.  "bf16-fused": bf16 through vLLM's
# fused_experts, which rounds to bf16 three times per expert (first GEMM, activation,
# weighted second GEMM) before the top-k sum; measured on an H200 (hidden 512, 64
# tokens): max error 0.027 with fp32 weights and 0.024 with bf16-exact ones, where
# (2e-2, 2e-2) failed an element; so 3e-2 (evidence:
# tests/kernels/moe/test_moe_layer.py::test_vllm_fused_experts_per_ep_rank, 1x H200).
LAYER = {
    "fp32": Tolerance(1e-4, 1e-4),
    "tf32": Tolerance(5e-3, 5e-3),
    "bf16": Tolerance(2e-2, 2e-2),
    "bf16-fused": Tolerance(3e-2, 3e-2),
    "fp8": Tolerance(6.5e-2, 6.5e-2),
}

# bench's own check of each timed round trip: bf16 hidden states summed over up to
# top_k ranks, the combine's bf16 rounding only; the largest error over ranks.
BENCH_CHECK = COMBINE["bf16"]


def close(actual: torch.Tensor, expected: torch.Tensor, tolerance: Tolerance) -> bool:
    """Same shape, and every element within ``tolerance`` of ``expected`` (compared in fp32)."""
    return actual.shape == expected.shape and bool(
        torch.allclose(actual.float(), expected.float(), atol=tolerance.atol, rtol=tolerance.rtol)
    )


def mismatch(actual: torch.Tensor, expected: torch.Tensor, tolerance: Tolerance) -> str:
    """ "" when close, else torch.testing's account in one line: how many elements differ,
    the greatest differences and where (a rank's note says what went wrong, not just that)."""
    try:
        torch.testing.assert_close(
            actual.float(), expected.float(), atol=tolerance.atol, rtol=tolerance.rtol
        )
    except AssertionError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return "; ".join(lines)
    return ""
