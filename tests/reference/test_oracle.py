"""The oracle checked against computations that do not share its code.

Every rank's partial and the reference come from ``moe_partial``; a bug there
cancels out in ``check``.  Here the oracle meets hand-computed tokens and a plain
loop over (token, k) written independently, and the comparison meets inputs
just outside and just inside each dtype's tolerance.
"""

from __future__ import annotations

import pytest
import torch

from vllm_ep_kit.reference.moe import (
    FP8_GROUP,
    TOLERANCE,
    RoutingCase,
    Tokens,
    dequantize_fp8,
    moe_partial,
    moe_reference,
    source_tokens,
    within_tolerance,
)


def hand_tokens() -> Tokens:
    # token 0 -> experts 0 (w 0.25) and 3 (w 0.75); token 1 -> experts 5 (w 0.5) and 6 (0.5)
    return Tokens(
        x=torch.tensor([[1.0, 2.0], [4.0, -8.0]]),
        topk_ids=torch.tensor([[0, 3], [5, 6]], dtype=torch.int32),
        topk_weights=torch.tensor([[0.25, 0.75], [0.5, 0.5]]),
    )


def test_hand_computed_tokens():
    # s_e = 1 + (e mod 7) / 8: s0 = 1, s3 = 1.375, s5 = 1.625, s6 = 1.75
    out = moe_reference(hand_tokens(), num_experts=8)
    token0 = 0.25 * 1.0 + 0.75 * 1.375  # 1.28125
    token1 = 0.5 * 1.625 + 0.5 * 1.75  # 1.6875
    assert torch.equal(out, torch.tensor([[token0, 2 * token0], [4 * token1, -8 * token1]]))


def test_hand_computed_partials_per_ep_rank():
    # 8 experts over 2 EP ranks: 0-3 on rank 0, 4-7 on rank 1
    tokens = hand_tokens()
    rank0 = moe_partial(tokens, 8, 2, 0)
    rank1 = moe_partial(tokens, 8, 2, 1)
    assert torch.equal(rank0, torch.tensor([[1.28125, 2.5625], [0.0, 0.0]]))
    assert torch.equal(rank1, torch.tensor([[0.0, 0.0], [6.75, -13.5]]))


def loop_reference(tokens: Tokens, num_experts: int) -> torch.Tensor:
    """The MoE sum written as loops, from the definition in the module docstring."""
    values = tokens.values().double()
    out = torch.zeros(values.shape, dtype=torch.float64)
    for t in range(tokens.x.shape[0]):
        for k in range(tokens.topk_ids.shape[1]):
            expert = int(tokens.topk_ids[t, k])
            scale = 1.0 + (expert % 7) / 8.0
            out[t] += float(tokens.topk_weights[t, k]) * scale * values[t]
    return out


@pytest.mark.parametrize("dtype", sorted(TOLERANCE))
def test_random_tokens_against_the_loop(dtype):
    hidden = 512 if dtype in ("fp8", "mxfp8", "nvfp4") else 32
    case = RoutingCase(tokens=(5, 3), num_experts=16, top_k=4, hidden=hidden, dtype=dtype)
    for source in range(2):
        tokens = source_tokens(case, source)
        want = loop_reference(tokens, case.num_experts)
        assert torch.allclose(
            moe_reference(tokens, case.num_experts).double(), want, atol=1e-5, rtol=1e-5
        )
        parts = sum(moe_partial(tokens, case.num_experts, 4, r).double() for r in range(4))
        assert torch.allclose(parts, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", sorted(TOLERANCE))
@pytest.mark.parametrize("factor, close", [(0.5, True), (3.0, False), (5.0, False)])
def test_comparison_just_inside_and_outside_the_tolerance(dtype, factor, close):
    """Before, the only negative control was an fp32 error above 0.1: tolerances x100 passed."""
    expected = torch.linspace(-3.0, 3.0, 64).reshape(8, 8)
    actual = expected.clone()
    tol = TOLERANCE[dtype]
    # allclose allows atol + rtol * |expected| = tol * (1 + |expected|)
    actual[2, 5] += factor * tol * (1.0 + abs(float(expected[2, 5])))
    assert within_tolerance(actual, expected, dtype) is close


def test_a_shape_mismatch_is_never_close():
    assert not within_tolerance(torch.zeros(2, 3), torch.zeros(3, 2), "fp32")


def test_fp8_dequantisation_scales_each_group_of_columns():
    # two groups of FP8_GROUP columns, over a leading [ranks, tokens] shape as received
    x = torch.full((2, 1, 2 * FP8_GROUP), 3.0).to(torch.float8_e4m3fn)
    scale = torch.tensor([[[2.0, 0.5]], [[-1.0, 4.0]]])
    want = torch.cat(
        [
            torch.full((2, 1, FP8_GROUP), 3.0) * scale[..., :1],
            torch.full((2, 1, FP8_GROUP), 3.0) * scale[..., 1:],
        ],
        dim=-1,
    )
    assert torch.equal(dequantize_fp8(x, scale), want)
