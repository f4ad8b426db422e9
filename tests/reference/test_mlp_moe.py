"""The SiLU-MLP MoE reference of the layer tests, against a computation that does not share
its code: the definition written as loops in float64, hand-picked routes, and inputs just
inside and just outside each layer tolerance."""

from __future__ import annotations

import math

import pytest
import torch

from vllm_ep_kit.reference.mlp_moe import (
    MlpExperts,
    mlp_moe_partial,
    mlp_moe_reference,
    softmax_topk,
)
from vllm_ep_kit.reference.moe import RoutingCase, Tokens
from vllm_ep_kit.reference.tolerance import LAYER

EXPERTS = MlpExperts(num_experts=4, hidden=8, intermediate=6)


def routed(ids, weights, hidden=8, seed=0) -> Tokens:
    gen = torch.Generator().manual_seed(seed)
    n = len(ids)
    return Tokens(
        x=torch.randn(n, hidden, generator=gen),
        topk_ids=torch.tensor(ids, dtype=torch.int32),
        topk_weights=torch.tensor(weights, dtype=torch.float32),
    )


def loop_moe(tokens: Tokens, experts: MlpExperts, owned=None) -> torch.Tensor:
    """f_e(x) = W2_e (silu(W1_e x) * W3_e x), summed over a token's routes with their weights,
    in float64, one (token, route) at a time; silu(h) = h / (1 + e^-h)."""
    w13, w2 = (w.double() for w in experts.weights())
    inter = experts.intermediate
    x = tokens.x.double()
    out = torch.zeros(x.shape[0], experts.hidden, dtype=torch.float64)
    for t in range(x.shape[0]):
        for k in range(tokens.topk_ids.shape[1]):
            e = int(tokens.topk_ids[t, k])
            if not 0 <= e < experts.num_experts or (owned is not None and e not in owned):
                continue
            h = [float(v) for v in w13[e] @ x[t]]
            act = torch.tensor(
                [h[i] / (1 + math.exp(-h[i])) * h[inter + i] for i in range(inter)],
                dtype=torch.float64,
            )
            out[t] += float(tokens.topk_weights[t, k]) * (w2[e] @ act)
    return out


def test_weights_have_the_layer_shapes_and_are_exact_in_bf16():
    w13, w2 = EXPERTS.weights()
    assert w13.shape == (4, 12, 8) and w2.shape == (4, 8, 6)
    assert w13.dtype == w2.dtype == torch.float32
    for w in (w13, w2):
        torch.testing.assert_close(w.bfloat16().float(), w, rtol=0, atol=0)
        assert w.abs().max() > 0


def test_weights_are_the_same_for_a_seed_and_differ_for_another():
    assert all(torch.equal(a, b) for a, b in zip(EXPERTS.weights(), EXPERTS.weights(), strict=True))
    other = MlpExperts(num_experts=4, hidden=8, intermediate=6, seed=EXPERTS.seed + 1)
    assert not torch.equal(EXPERTS.weights()[0], other.weights()[0])
    assert not torch.equal(EXPERTS.weights()[1], other.weights()[1])


def test_reference_is_the_definition_computed_as_loops():
    tokens = routed([[0, 3], [1, 2], [3, 1]], [[0.25, 0.75], [0.5, 0.5], [0.9, 0.1]])
    out = mlp_moe_reference(tokens, EXPERTS)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), loop_moe(tokens, EXPERTS), atol=1e-5, rtol=1e-5)


def test_each_route_counts_with_its_own_weight():
    """Swapping the weights of two routes changes the output (the weight is per route)."""
    tokens = routed([[0, 3]], [[0.2, 0.8]])
    swapped = Tokens(x=tokens.x, topk_ids=tokens.topk_ids, topk_weights=torch.tensor([[0.8, 0.2]]))
    a, b = mlp_moe_reference(tokens, EXPERTS), mlp_moe_reference(swapped, EXPERTS)
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(b.double(), loop_moe(swapped, EXPERTS), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ep_size", [1, 2, 4])
def test_partials_hold_each_ranks_own_experts_and_sum_to_the_reference(ep_size):
    tokens = routed([[0, 3], [1, 2], [3, 1], [2, 0]], [[0.3, 0.7], [0.5, 0.5], [0.6, 0.4], [1, 0]])
    per_rank = EXPERTS.num_experts // ep_size
    total = torch.zeros(4, 8, dtype=torch.float64)
    for rank in range(ep_size):
        owned = set(range(rank * per_rank, (rank + 1) * per_rank))
        part = mlp_moe_partial(tokens, EXPERTS, ep_size, rank).double()
        torch.testing.assert_close(part, loop_moe(tokens, EXPERTS, owned), atol=1e-5, rtol=1e-5)
        total += part
    torch.testing.assert_close(total, loop_moe(tokens, EXPERTS), atol=1e-5, rtol=1e-5)


def test_a_rank_owning_none_of_a_tokens_experts_adds_nothing_for_it():
    # experts 0-1 on rank 0, 2-3 on rank 1; token 0 goes to rank 1 only
    tokens = routed([[2, 3], [0, 2]], [[0.5, 0.5], [0.5, 0.5]])
    rank0 = mlp_moe_partial(tokens, EXPERTS, 2, 0)
    torch.testing.assert_close(rank0[0], torch.zeros(8), rtol=0, atol=0)
    assert rank0[1].abs().max() > 0


def test_ids_outside_the_experts_add_nothing():
    tokens = routed([[-1, 4], [1, 9]], [[0.5, 0.5], [0.5, 0.5]])
    out = mlp_moe_reference(tokens, EXPERTS)
    torch.testing.assert_close(out[0], torch.zeros(8), rtol=0, atol=0)
    only_one = routed([[1, 1]], [[0.5, 0.0]])
    only_one = Tokens(
        x=tokens.x[1:], topk_ids=only_one.topk_ids, topk_weights=only_one.topk_weights
    )
    torch.testing.assert_close(out[1:], mlp_moe_reference(only_one, EXPERTS))


def test_bf16_matmuls_stay_within_the_bf16_tolerance_and_give_fp32():
    case = RoutingCase(tokens=(16,), num_experts=4, top_k=2, hidden=8)
    gen = torch.Generator().manual_seed(3)
    tokens = routed(
        torch.randint(0, 4, (16, 2), generator=gen).tolist(), [[0.5, 0.5]] * 16, seed=case.seed
    )
    fp32 = mlp_moe_partial(tokens, EXPERTS)
    bf16 = mlp_moe_partial(tokens, EXPERTS, dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, fp32)  # the matmuls did run in bf16
    torch.testing.assert_close(bf16, fp32, atol=LAYER["bf16"].atol, rtol=LAYER["bf16"].rtol)


def test_softmax_topk_takes_the_largest_logits_and_renormalises_them():
    # softmax weights are proportional to e^logit: 1, 2, 4, 0.5 -> top 2 are experts 2, 1
    logits = torch.tensor([[0.0, math.log(2), math.log(4), math.log(0.5)]])
    weights, ids = softmax_topk(logits, 2)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert ids.tolist() == [[2, 1]]
    torch.testing.assert_close(weights, torch.tensor([[4 / 6, 2 / 6]]))


def test_softmax_topk_reads_low_precision_logits_in_fp32():
    logits = torch.tensor([[1.0, 3.0, 2.0]], dtype=torch.bfloat16)
    weights, ids = softmax_topk(logits, 3)
    assert ids.tolist() == [[1, 2, 0]]
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(1))


def test_weights_are_scaled_by_the_fan_in_of_each_matmul():
    """w13 ~ N(0, 1/hidden), w2 ~ N(0, 1/intermediate): outputs keep the inputs' scale."""
    big = MlpExperts(num_experts=16, hidden=64, intermediate=32)
    w13, w2 = big.weights()
    assert float(w13.std()) == pytest.approx(64**-0.5, rel=0.05)
    assert float(w2.std()) == pytest.approx(32**-0.5, rel=0.05)


def test_a_reference_over_all_experts_needs_no_ep_split():
    """Three experts cannot be split over two EP ranks; the full reference never splits."""
    three = MlpExperts(num_experts=3, hidden=8, intermediate=6)
    tokens = routed([[0, 2], [1, 0]], [[0.5, 0.5], [0.25, 0.75]])
    torch.testing.assert_close(
        mlp_moe_reference(tokens, three).double(), loop_moe(tokens, three), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="not divisible"):
        mlp_moe_partial(tokens, three, 2, 0)


def test_softmax_topk_renormalises_each_token_on_its_own():
    logits = torch.tensor([[0.0, math.log(3), 5.0], [math.log(2), 0.0, -9.0]])
    weights, ids = softmax_topk(logits, 2)
    assert ids.tolist() == [[2, 1], [0, 1]]
    e5 = math.exp(5.0)
    torch.testing.assert_close(
        weights, torch.tensor([[e5 / (e5 + 3), 3 / (e5 + 3)], [2 / 3, 1 / 3]])
    )


def test_softmax_topk_routes_over_the_last_dimension_of_any_leading_shape():
    logits = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    weights, ids = softmax_topk(logits, 3)
    rows = [softmax_topk(logits[i], 3) for i in range(2)]
    torch.testing.assert_close(ids, torch.stack([i for _, i in rows]), rtol=0, atol=0)
    torch.testing.assert_close(weights, torch.stack([w for w, _ in rows]), rtol=0, atol=0)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 5))
