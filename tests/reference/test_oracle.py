"""The oracle checked against computations that do not share its code.

Every rank's partial and the reference come from ``moe_partial``; a bug there
cancels out in ``check``.  Here the oracle meets hand-computed tokens and a plain
loop over (token, k) written independently, and the comparison meets inputs
just outside and just inside each dtype's tolerance.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from vllm_ep_kit.reference.formats import FORMATS, dequantize, from_wire
from vllm_ep_kit.reference.moe import (
    FP8_GROUP,
    RoutingCase,
    Tokens,
    concat_tokens,
    expert_owner,
    max_error,
    moe_partial,
    moe_reference,
    source_tokens,
)
from vllm_ep_kit.reference.tolerance import COMBINE


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
    torch.testing.assert_close(
        out, torch.tensor([[token0, 2 * token0], [4 * token1, -8 * token1]]), rtol=0, atol=0
    )


def test_hand_computed_partials_per_ep_rank():
    # 8 experts over 2 EP ranks: 0-3 on rank 0, 4-7 on rank 1
    tokens = hand_tokens()
    rank0 = moe_partial(tokens, 8, 2, 0)
    rank1 = moe_partial(tokens, 8, 2, 1)
    torch.testing.assert_close(rank0, torch.tensor([[1.28125, 2.5625], [0.0, 0.0]]), rtol=0, atol=0)
    torch.testing.assert_close(rank1, torch.tensor([[0.0, 0.0], [6.75, -13.5]]), rtol=0, atol=0)


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


@pytest.mark.parametrize("dtype", sorted(COMBINE))
def test_random_tokens_against_the_loop(dtype):
    hidden = 512 if dtype in ("fp8", "mxfp8", "nvfp4") else 32
    case = RoutingCase(tokens=(5, 3), num_experts=16, top_k=4, hidden=hidden, dtype=dtype)
    for source in range(2):
        tokens = source_tokens(case, source)
        want = loop_reference(tokens, case.num_experts)
        torch.testing.assert_close(
            moe_reference(tokens, case.num_experts).double(), want, rtol=1e-05, atol=1e-05
        )
        parts = sum(moe_partial(tokens, case.num_experts, 4, r).double() for r in range(4))
        torch.testing.assert_close(parts, want, rtol=1e-05, atol=1e-05)


def test_a_numeric_error_planted_in_the_oracle_fails_with_the_mismatched_element_count(
    monkeypatch,
):
    """The comparison above, run against an oracle off by 1e-3 in one element: the failure
    says how many elements differ, by how much and where, not just "False"."""
    right = moe_reference

    def off_by_a_little(tokens: Tokens, num_experts: int) -> torch.Tensor:
        out = right(tokens, num_experts).clone()
        out[1, 3] += 1e-3
        return out

    monkeypatch.setitem(globals(), "moe_reference", off_by_a_little)
    with pytest.raises(AssertionError) as failure:
        test_random_tokens_against_the_loop("fp32")
    message = str(failure.value)
    assert "Mismatched elements: 1 / 160" in message, message
    assert re.search(r"Greatest absolute difference: 0\.00099\d* at index \(1, 3\)", message)


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
    torch.testing.assert_close(dequantize(x, scale), want, rtol=0, atol=0)


def hidden_for(dtype: str) -> int:
    """A hidden size whose rows every kernel can move in ``dtype``."""
    return 512 if FORMATS[dtype].quantised else 64


def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Bit-equal (one-byte floats compared as their bytes), or both None."""
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.float(), b.float())


@pytest.mark.parametrize(("top_k", "num_experts"), [(1, 4), (4, 4), (2, 16)])
def test_a_case_takes_top_k_from_one_to_every_expert(top_k, num_experts):
    case = RoutingCase(tokens=(3,), num_experts=num_experts, top_k=top_k)
    ids = source_tokens(case, 0).topk_ids
    assert ids.shape == (3, top_k)
    assert all(len(set(row)) == top_k for row in ids.tolist())  # distinct experts per token
    assert ids.min() >= 0 and ids.max() < num_experts


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"top_k": 0}, "top_k=0: expected 1..num_experts=16"),
        ({"top_k": 17}, "top_k=17: expected 1..num_experts=16"),
        ({"dtype": "int4"}, "dtype='int4': expected one of ['bf16', 'fp16', 'fp32', 'fp8'"),
        ({"tokens": (3, -1)}, "tokens=(3, -1): counts must be >= 0"),
    ],
)
def test_a_case_refuses_a_bad_field_by_name(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RoutingCase(**{"tokens": (2,), **fields})


def test_a_case_describes_itself_in_one_line():
    case = RoutingCase(tokens=(3, 0), num_experts=8, top_k=2, hidden=32, dtype="fp16")
    assert case.describe() == "tokens=[3, 0] E=8 k=2 h=32 fp16"


@pytest.mark.parametrize("dtype", ["bf16", "fp8", "nvfp4"])
@pytest.mark.parametrize("source", [0, 1])
def test_a_sources_tensors_have_the_case_shapes_even_when_empty(dtype, source):
    hidden = hidden_for(dtype)
    case = RoutingCase(tokens=(0, 3), top_k=4, hidden=hidden, dtype=dtype)
    t = source_tokens(case, source)
    n = case.tokens[source]
    assert (t.topk_ids.shape, t.topk_weights.shape) == ((n, 4), (n, 4))
    assert (t.topk_ids.dtype, t.topk_weights.dtype) == (torch.int32, torch.float32)
    assert t.values().shape == (n, hidden)
    assert t.x.dtype == FORMATS[dtype].value_dtype
    if FORMATS[dtype].quantised:
        assert t.x_scale.shape == (n, FORMATS[dtype].scale_columns(hidden, 0))


def test_every_rank_regenerates_the_same_tokens_and_each_source_its_own():
    case = RoutingCase(tokens=(4, 4), dtype="fp8", hidden=512)
    first, again = source_tokens(case, 1), source_tokens(case, 1)
    for name in ("x", "topk_ids", "topk_weights", "x_scale"):
        assert same(getattr(first, name), getattr(again, name)), name
    other_source = source_tokens(case, 0)
    other_seed = source_tokens(RoutingCase(tokens=(4, 4), dtype="fp8", hidden=512, seed=7), 1)
    for other in (other_source, other_seed):
        assert not torch.equal(first.values(), other.values())
        assert not torch.equal(first.topk_weights, other.topk_weights)
        assert not torch.equal(first.topk_ids, other.topk_ids)


def test_router_weights_are_positive_spread_and_sum_to_one_per_token():
    weights = source_tokens(RoutingCase(tokens=(64,), top_k=4), 0).topk_weights
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(64))
    assert weights.min() > 0
    # a combine that swaps two of a token's weights must change its result noticeably
    spread = weights.max(dim=1).values / weights.min(dim=1).values
    assert spread.max() > 3


def test_experts_are_owned_in_contiguous_blocks_of_integer_ranks():
    owner = expert_owner(8, 4)
    assert owner.dtype == torch.int64 and owner.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match=re.escape("num_experts=8 is not divisible by ep_size=3")):
        expert_owner(8, 3)


def test_ids_outside_the_experts_add_nothing_on_both_sides_of_each_bound():
    # 8 experts: ids 0 and 7 count (s0 = s7 = 1); -100, -1, 8 and 50 add nothing
    tokens = Tokens(
        x=torch.tensor([[1.0, -2.0]]),
        topk_ids=torch.tensor([[-100, -1, 0, 7, 8, 50]], dtype=torch.int32),
        topk_weights=torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]),
    )
    torch.testing.assert_close(moe_reference(tokens, 8), torch.tensor([[0.7, -1.4]]))
    # on 2 EP ranks: expert 0 on rank 0, expert 7 on rank 1
    torch.testing.assert_close(moe_partial(tokens, 8, 2, 0), torch.tensor([[0.3, -0.6]]))
    torch.testing.assert_close(moe_partial(tokens, 8, 2, 1), torch.tensor([[0.4, -0.8]]))


def test_the_oracle_reads_any_leading_shape_as_rows():
    # a one-sided receive buffer is [ranks, max_tokens, ...]: each slice is its own rows
    case = RoutingCase(tokens=(3, 3), dtype="fp8", hidden=512)
    a, b = source_tokens(case, 0), source_tokens(case, 1)
    stacked = Tokens(
        x=torch.stack([a.x, b.x]),
        topk_ids=torch.stack([a.topk_ids, b.topk_ids]),
        topk_weights=torch.stack([a.topk_weights, b.topk_weights]),
        x_scale=torch.stack([a.x_scale, b.x_scale]),
    )
    want = torch.stack([moe_partial(t, 16, 4, 1) for t in (a, b)])
    torch.testing.assert_close(moe_partial(stacked, 16, 4, 1), want, rtol=0, atol=0)
    want = torch.stack([moe_reference(t, 16) for t in (a, b)])
    torch.testing.assert_close(moe_reference(stacked, 16), want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", sorted(FORMATS))
def test_the_oracle_runs_where_its_tokens_are(dtype):
    """No table is built on the host: inside a CUDA graph capture a host tensor is copied
    once and read after it is freed. The meta device refuses any mix with a CPU tensor."""
    case = RoutingCase(tokens=(3,), dtype=dtype, hidden=hidden_for(dtype))
    tokens = source_tokens(case, 0).to("meta")
    for out in (moe_partial(tokens, case.num_experts, 4, 1), moe_reference(tokens, 16)):
        assert (out.device.type, out.shape) == ("meta", (3, case.hidden))


@pytest.mark.parametrize("dtype", ["bf16", "fp8", "nvfp4"])
def test_tokens_move_whole_to_a_device(dtype):
    tokens = source_tokens(RoutingCase(tokens=(3,), dtype=dtype, hidden=hidden_for(dtype)), 0)
    moved = tokens.to("meta")
    for name in ("x", "topk_ids", "topk_weights", "x_scale"):
        was, now = getattr(tokens, name), getattr(moved, name)
        if was is None:
            assert now is None, name
        else:
            assert (now.device.type, now.shape, now.dtype) == ("meta", was.shape, was.dtype)


@pytest.mark.parametrize("dtype", ["bf16", "fp8", "nvfp4"])
def test_tokens_travel_as_bytes_and_read_back_as_sent(dtype):
    tokens = source_tokens(RoutingCase(tokens=(3,), dtype=dtype, hidden=hidden_for(dtype)), 0)
    x, scale, ids, weights = tokens.wire("cpu")
    assert x.dtype == (torch.bfloat16 if dtype == "bf16" else torch.uint8)
    assert (scale is None) == (dtype == "bf16")
    torch.testing.assert_close(
        dequantize(*from_wire(dtype, x, scale)), tokens.values(), rtol=0, atol=0
    )
    torch.testing.assert_close(ids, tokens.topk_ids, rtol=0, atol=0)
    torch.testing.assert_close(weights, tokens.topk_weights, rtol=0, atol=0)
    on_meta = tokens.wire("meta")
    assert {t.device.type for t in on_meta if t is not None} == {"meta"}


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_concatenated_tokens_are_the_parts_rows_in_order(dtype):
    case = RoutingCase(tokens=(2, 3), dtype=dtype, hidden=hidden_for(dtype))
    a, b = source_tokens(case, 0), source_tokens(case, 1)
    both = concat_tokens([a, b])
    torch.testing.assert_close(both.values(), torch.cat([a.values(), b.values()]), rtol=0, atol=0)
    torch.testing.assert_close(both.topk_ids, torch.cat([a.topk_ids, b.topk_ids]), rtol=0, atol=0)
    torch.testing.assert_close(
        both.topk_weights, torch.cat([a.topk_weights, b.topk_weights]), rtol=0, atol=0
    )
    assert (both.x_scale is None) == (dtype == "bf16")


@pytest.mark.parametrize(
    ("actual", "expected", "error"),
    [
        (torch.zeros(0, 4), torch.zeros(0, 4), 0.0),
        (torch.tensor([2.5]), torch.tensor([2.0]), 0.5),
        (torch.tensor([[1.0, 3.0], [-4.0, 0.0]]), torch.tensor([[1.0, 1.0], [-1.0, 0.0]]), 3.0),
        (torch.zeros(2, 3), torch.zeros(3, 2), math.inf),
    ],
)
def test_max_error_is_the_largest_difference_and_infinite_across_shapes(actual, expected, error):
    assert max_error(actual, expected) == error
